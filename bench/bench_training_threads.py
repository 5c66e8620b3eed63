"""Training's threads beside a busy engine: fixed counts against following the free cores.

Trains the same short run (the bundled tickets, ``--steps`` optimizer steps) with one thread,
with every core, and with the default (the cores other processes leave free, re-decided every
2 s), first alone and then beside a real vLLM that two clients keep busy, as on a machine that
serves and trains at once (the tutorial's last step, or the test suite's training beside its
real tier). Each run is its own process, ended at ``--timeout`` seconds (printed as `> N s`).

    python bench/bench_training_threads.py [--steps 24] [--timeout 300]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_demo_steps import BASE, start_vllm  # noqa: E402

from adapters import dataset, demo  # noqa: E402
from adapters.training_threads import usable_cores  # noqa: E402
from tests.conftest import prepared_model  # noqa: E402

TRAIN = """
import json, sys, time
from pathlib import Path
from adapters import training
started = time.monotonic()
data, out, model, base, steps, threads = sys.argv[1:7]
training.train(Path(data), Path(out), Path(model), base_model_name=base, seed=5,
               max_steps=int(steps), threads=int(threads) or None)
used = json.loads((Path(sys.argv[2]) / "manifest.json").read_text())["threads"]
print(json.dumps({"seconds": time.monotonic() - started, "threads": used}))
"""


def train_once(work: Path, label: str, steps: int, threads: int, timeout_s: float) -> str:
    data = Path(str(dataset.example_data("tickets.jsonl")))
    command = [sys.executable, "-c", TRAIN, str(data), str(work / label), str(prepared_model()),
               BASE, str(steps), str(threads)]  # fmt: skip
    try:
        done = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, check=True
        )
    except subprocess.TimeoutExpired:
        return f"> {timeout_s:.0f} s"
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return f"{result['seconds']:.0f} s (threads {result['threads']})"


def keep_busy(url: str, stop: threading.Event) -> None:
    """Two clients asking the base model about the bundled tickets until ``stop``."""
    prompts = demo.ticket_prompts()

    def client(offset: int) -> None:
        i = offset
        with httpx.Client(base_url=url, timeout=300) as http:
            while not stop.is_set():
                body = {"model": BASE, "messages": prompts[i % len(prompts)], "max_tokens": 48}
                http.post("/v1/chat/completions", json=body)
                i += 2

    clients = [threading.Thread(target=client, args=(k,)) for k in range(2)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    cores = usable_cores()
    counts = {"1 thread": 1, f"{cores} threads": cores, "free cores (default)": 0}
    work = Path(tempfile.mkdtemp(prefix="training-threads-"))
    rows: list[tuple[str, str, str]] = []
    for name, threads in counts.items():
        took = train_once(work, f"alone-{threads}", args.steps, threads, args.timeout)
        rows.append(("alone", name, took))
        print(rows[-1], flush=True)
    engine, url = start_vllm(prepared_model(), work / "vllm.log")
    stop = threading.Event()
    busy = threading.Thread(target=keep_busy, args=(url, stop))
    try:
        busy.start()
        time.sleep(5)  # the clients' first requests are in the engine
        for name, threads in counts.items():
            took = train_once(work, f"busy-{threads}", args.steps, threads, args.timeout)
            rows.append(("beside a busy vLLM", name, took))
            print(rows[-1], flush=True)
    finally:
        stop.set()
        busy.join()  # the clients' last requests answered
        os.killpg(engine.pid, signal.SIGKILL)
    print(f"\n{args.steps} steps on {cores} cores")
    for where, name, took in rows:
        print(f"{where:<20} {name:<22} {took}")


if __name__ == "__main__":
    main()
