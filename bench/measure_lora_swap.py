"""What one LoRA swap costs on the managed vLLM: one-token completions alternating two adapters
under ``--max-loras 1`` (each request brings its adapter into the one slot) against the same
adapter again and again (none does), medians of each.

With ``--max-cpu-loras 2`` both adapters stay in host memory (a slot swap); with 1 each swap
also reads the adapter again. Starts its own vLLM (the bundled model and two adapter
directories), so run it alone on the machine:

    flock /tmp/loragate-real.lock python bench/measure_lora_swap.py MODEL_DIR ADAPTER_A ADAPTER_B \
        [--host 2] [--requests 30]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.engine.managed import vllm_command, vllm_environment
from service.settings import ManagedEngineSettings

PROMPT = "Classify this support ticket: my invoice is wrong."


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_ready(url: str, engine: subprocess.Popen[bytes], timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if engine.poll() is not None:
            raise SystemExit("vLLM exited before it was ready")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(1)
    raise SystemExit("vLLM was not ready in time")


def complete(url: str, model: str) -> float:
    """Seconds for one greedy one-token completion with ``model``."""
    body = {"model": model, "prompt": PROMPT, "max_tokens": 1, "temperature": 0}
    request = urllib.request.Request(
        url + "/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("adapter_a", type=Path)
    parser.add_argument("adapter_b", type=Path)
    parser.add_argument("--host", type=int, default=2, help="vLLM --max-cpu-loras (1 or 2)")
    parser.add_argument("--requests", type=int, default=30, help="per arm")
    args = parser.parse_args()
    config = ManagedEngineSettings(
        port=free_port(), max_loras=1, max_cpu_loras=args.host, tool_call_parser=None
    )
    command = vllm_command(config, args.model)
    command += ["--lora-modules", f"a={args.adapter_a}", f"b={args.adapter_b}"]
    engine = subprocess.Popen(
        command, env=vllm_environment(config), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{config.port}"
    try:
        wait_ready(url, engine)
        for model in ("a", "b", "a", "b"):  # both read once, the first compilations done
            complete(url, model)
        same = statistics.median(complete(url, "a") for _ in range(args.requests))
        alternating = statistics.median(
            complete(url, model) for model in ("b", "a") * (args.requests // 2)
        )
    finally:
        engine.terminate()
        engine.wait(timeout=60)
    print(
        f"--max-loras 1 --max-cpu-loras {args.host}: same adapter {1000 * same:.1f} ms, "
        f"alternating {1000 * alternating:.1f} ms, a swap {1000 * (alternating - same):.1f} ms"
    )


if __name__ == "__main__":
    main()
