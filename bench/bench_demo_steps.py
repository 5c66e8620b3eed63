"""How few training steps the tutorial's story needs: `bad` must disagree with `good` and `good2`
must agree with it, as the demo rollout's `agreement` gate sees them.

For each step budget and seed, trains the demo's three versions (good: seed s, bad: seed s with
shuffled labels, good2: seed s + 1) with `max_steps`, loads them on one real vLLM, asks each about
every bundled ticket under the ticket schema (temperature 0, as the demo's traffic), and prints
the share of tickets whose `category` matches good's answer: the figure the gate compares with
`min_agreement` (0.5 in the demo spec). Seed 0 is the demo itself.

    python bench/bench_demo_steps.py [--steps 12,24,48] [--seeds 0,10,20]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters import dataset, demo, training  # noqa: E402
from service.engine.managed import vllm_command, vllm_environment  # noqa: E402
from service.settings import ManagedEngineSettings  # noqa: E402
from tests.conftest import prepared_model  # noqa: E402

BASE = "smollm2-135m-instruct"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_vllm(model: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    config = ManagedEngineSettings(port=free_port(), max_loras=4)
    with log.open("wb") as out:
        process = subprocess.Popen(
            vllm_command(config, model), env=vllm_environment(config), stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{config.port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError("vLLM did not start")


def categories(url: str, adapter: str, path: Path, schema: dict[str, Any]) -> list[str | None]:
    """The category the adapter gives each bundled ticket (None: no valid answer)."""
    load = {"lora_name": adapter, "lora_path": str(path)}
    httpx.post(f"{url}/v1/load_lora_adapter", json=load, timeout=120).raise_for_status()
    response_format = {"type": "json_schema", "json_schema": {"name": "t", "schema": schema}}

    def ask(messages: list[dict[str, str]]) -> str | None:
        body = {"model": adapter, "messages": messages, "temperature": 0,
                "max_tokens": demo.MAX_TOKENS, "response_format": response_format}  # fmt: skip
        answer = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300).json()
        try:
            return str(json.loads(answer["choices"][0]["message"]["content"])["category"])
        except (ValueError, KeyError, TypeError):
            return None

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        found = list(pool.map(ask, demo.ticket_prompts()))
    httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": adapter}, timeout=60)
    return found


def agreement(a: list[str | None], b: list[str | None]) -> float:
    return sum(x is not None and x == y for x, y in zip(a, b, strict=True)) / len(a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default="12,24,48")
    parser.add_argument("--seeds", default="0,10,20")
    args = parser.parse_args()
    model = prepared_model()
    schema = json.loads(dataset.example_data(demo.SCHEMA_FILE).read_text())
    work = Path(tempfile.mkdtemp(prefix="demo-steps-"))
    data = Path(str(dataset.example_data("tickets.jsonl")))
    engine, url = start_vllm(model, work / "vllm.log")
    rows = []
    try:
        for steps in (int(s) for s in args.steps.split(",")):
            for seed in (int(s) for s in args.seeds.split(",")):
                answers, seconds = {}, 0.0
                for label, offset, shuffled in (("good", 0, False), ("bad", 0, True),
                                                ("good2", 1, False)):  # fmt: skip
                    out = work / f"{label}-{steps}-{seed}"
                    result = training.train(
                        data, out, model, base_model_name=BASE, epochs=training.DEMO_EPOCHS,
                        seed=seed + offset, labels_shuffled=shuffled, max_steps=steps,
                    )  # fmt: skip
                    seconds += result.seconds
                    answers[label] = categories(url, f"{label}-{steps}-{seed}", out, schema)
                row = (steps, seed, agreement(answers["bad"], answers["good"]),
                       agreement(answers["good2"], answers["good"]), seconds / 3)  # fmt: skip
                rows.append(row)
                print(f"steps {row[0]:>3} seed {row[1]:>3}: agreement bad {row[2]:.2f}, "
                      f"good2 {row[3]:.2f}; {row[4]:.0f} s to train each", flush=True)  # fmt: skip
    finally:
        # The server's engine-core and worker processes share its session: end them all.
        os.killpg(engine.pid, signal.SIGKILL)
    print("\nsteps  seed  bad vs good  good2 vs good  train s (each)")
    for steps, seed, bad, good2, seconds in rows:
        print(f"{steps:>5}  {seed:>4}  {bad:>11.2f}  {good2:>13.2f}  {seconds:>14.0f}")


if __name__ == "__main__":
    main()
