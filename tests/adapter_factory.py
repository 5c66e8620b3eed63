"""Torch-free model and LoRA adapter directories in the layout transformers and peft write.

A tiny Llama base model (config.json + model.safetensors of zeros) and adapters for it: an
``adapter_config.json`` with peft's fields and an ``adapter_model.safetensors`` with
``base_model.model.<module>.lora_A/B.weight`` tensors of random bytes, sized from the base
model's own weight shapes, so the fast tests exercise the real checks in milliseconds.
"""

from __future__ import annotations

import json
import math
import random
import struct
from pathlib import Path
from typing import Any

Shape = tuple[int, ...]
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def write_safetensors(
    path: Path, shapes: dict[str, Shape], seed: int | None = None, zero: str = "\0"
) -> None:
    """F32 tensors; random bytes with a seed, zeros without (and for names containing ``zero``)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        size = math.prod(shape) * 4
        header[name] = {
            "dtype": "F32",
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    rng = random.Random(seed)
    data = b"".join(
        rng.randbytes(math.prod(shape) * 4)
        if seed is not None and zero not in name
        else bytes(math.prod(shape) * 4)
        for name, shape in shapes.items()
    )
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def llama_shapes(hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                 intermediate: int = 128, vocab: int = 256) -> dict[str, Shape]:  # fmt: skip
    kv = hidden // heads * kv_heads
    shapes: dict[str, Shape] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}"
        shapes |= {
            f"{p}.self_attn.q_proj.weight": (hidden, hidden),
            f"{p}.self_attn.k_proj.weight": (kv, hidden),
            f"{p}.self_attn.v_proj.weight": (kv, hidden),
            f"{p}.self_attn.o_proj.weight": (hidden, hidden),
            f"{p}.mlp.gate_proj.weight": (intermediate, hidden),
            f"{p}.mlp.up_proj.weight": (intermediate, hidden),
            f"{p}.mlp.down_proj.weight": (hidden, intermediate),
            f"{p}.input_layernorm.weight": (hidden,),
            f"{p}.post_attention_layernorm.weight": (hidden,),
        }
    shapes["model.norm.weight"] = (hidden,)
    return shapes


def write_base_model(out: Path, hidden: int = 64) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden}
    (out / "config.json").write_text(json.dumps(config))
    write_safetensors(out / "model.safetensors", llama_shapes(hidden))
    return out


def lora_shapes(base: dict[str, Shape], targets: tuple[str, ...], r: int) -> dict[str, Shape]:
    shapes: dict[str, Shape] = {}
    for weight, shape in sorted(base.items()):
        module = weight.removesuffix(".weight")
        if len(shape) == 2 and module.rsplit(".", 1)[-1] in targets:
            out_features, in_features = shape
            shapes[f"base_model.model.{module}.lora_A.weight"] = (r, in_features)
            shapes[f"base_model.model.{module}.lora_B.weight"] = (out_features, r)
    return shapes


def peft_config(r: int, base_model: str | None, targets: tuple[str, ...] | str) -> dict[str, Any]:
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": r,
        "lora_alpha": 2 * r,
        "lora_dropout": 0.0,
        "target_modules": list(targets) if isinstance(targets, tuple) else targets,
        "base_model_name_or_path": base_model,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_dora": False,
        "rank_pattern": {},
        "alpha_pattern": {},
        "inference_mode": True,
        "init_lora_weights": False,
    }


def write_adapter(
    out: Path,
    *,
    base_model: str | None = "tiny-base",
    r: int = 8,
    targets: tuple[str, ...] | str = TARGETS,
    hidden: int = 64,
    seed: int = 0,
    config: dict[str, Any] | None = None,
    zero: str = "\0",
) -> Path:
    """A LoRA adapter for the tiny Llama of ``hidden`` size (64 = the test pool's model); the
    tensors whose names contain ``zero`` (e.g. "lora_B", as peft initialises them) are zeros."""
    out.mkdir(parents=True, exist_ok=True)
    wanted = targets if isinstance(targets, tuple) else TARGETS
    shapes = lora_shapes(llama_shapes(hidden), wanted, r)
    write_safetensors(out / "adapter_model.safetensors", shapes, seed, zero)
    (out / "adapter_config.json").write_text(
        json.dumps(config if config is not None else peft_config(r, base_model, targets))
    )
    (out / "README.md").write_text(f"test adapter, seed {seed}\n")
    return out
