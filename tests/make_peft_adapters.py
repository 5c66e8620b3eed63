"""Build real LoRA adapters with peft for the registration tests (run as its own process:
``python -m tests.make_peft_adapters OUT MODEL_DIR``; imports torch, so never in the test process).

OUT/good and OUT/good_v2: rank 8 on q,k,v,o of the model, random non-zero weights (two seeds);
OUT/rank32: rank 32; OUT/other_base: rank 8 on a tiny random Llama (hidden size 64) saved as
OUT/tiny-llama-64, so both its config and its shapes name another base model.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def save_adapter(model_dir: Path, out: Path, r: int, seed: int) -> None:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(
        r=r, lora_alpha=2 * r, target_modules=TARGETS, init_lora_weights=False,
        task_type="CAUSAL_LM",
    )  # fmt: skip
    get_peft_model(model, config).save_pretrained(out)


def main(out: Path, model_dir: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_adapter(model_dir, out / "good", 8, 0)
    save_adapter(model_dir, out / "good_v2", 8, 1)
    save_adapter(model_dir, out / "rank32", 32, 0)
    tiny = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=256, max_position_embeddings=128,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(tiny).save_pretrained(out / "tiny-llama-64")
    save_adapter(out / "tiny-llama-64", out / "other_base", 8, 0)
    print(f"adapters written to {out}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
