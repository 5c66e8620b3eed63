"""How often answers follow the ticket schema: base model vs trained adapters, through vLLM.

    python bench/eval_schema.py --model-dir DIR --adapter good=PATH --adapter bad=PATH

Starts one vLLM (CPU) with runtime LoRA, loads the adapters, sends the held-out tickets of the
bundled dataset (the same seeded split `loragate adapters train` holds out) to the base model
and to each adapter without any output constraint (temperature 0), and prints how many answers
are valid JSON under adapters/data/tickets.schema.json and how many name the right category.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import time
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
from jsonschema import Draft202012Validator

from adapters.dataset import example_data, load_examples, split_examples
from adapters.training import DEFAULT_SEED, DEFAULT_VAL_FRACTION
from service.engine.managed import vllm_command, vllm_environment
from service.settings import ManagedEngineSettings

BASE = "smollm2-135m-instruct"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("vLLM exited during start")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError("vLLM did not start in time")


def score(
    url: str, model: str, examples: list[Any], validator: Draft202012Validator
) -> tuple[int, int]:
    valid = right = 0
    for example in examples:
        messages = [{"role": m.role, "content": m.content} for m in example.prompt]
        answer = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": model, "messages": messages, "max_tokens": 60, "temperature": 0},
            timeout=300,
        ).json()["choices"][0]["message"]["content"]
        try:
            parsed = json.loads(answer)
        except json.JSONDecodeError:
            continue
        if validator.is_valid(parsed):
            valid += 1
            right += parsed["category"] == json.loads(example.answer.content)["category"]
    return valid, right


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--adapter", action="append", default=[], help="NAME=PATH (repeatable)")
    args = parser.parse_args()

    schema = json.loads(example_data("tickets.schema.json").read_text())
    validator = Draft202012Validator(schema)
    with resources.as_file(example_data("tickets.jsonl")) as data:
        examples = load_examples(Path(data))
    _, held_out = split_examples(examples, val_fraction=DEFAULT_VAL_FRACTION, seed=DEFAULT_SEED)

    config = ManagedEngineSettings(port=free_port())
    url = f"http://127.0.0.1:{config.port}"
    process = subprocess.Popen(
        vllm_command(config, args.model_dir), env=vllm_environment(config),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_healthy(url, process)
        models = [BASE]
        for spec in args.adapter:
            name, path = spec.split("=", 1)
            body = {"lora_name": name, "lora_path": str(Path(path).resolve())}
            httpx.post(f"{url}/v1/load_lora_adapter", json=body, timeout=120).raise_for_status()
            models.append(name)
        print(f"{len(held_out)} held-out tickets, no output constraint, temperature 0")
        print(f"{'model':<24} {'schema-valid':>12} {'right category':>15}")
        for model in models:
            valid, right = score(url, model, held_out, validator)
            print(f"{model:<24} {valid:>9}/{len(held_out):<2} {right:>12}/{len(held_out):<2}")
    finally:
        process.terminate()
        process.wait(timeout=60)


if __name__ == "__main__":
    main()
