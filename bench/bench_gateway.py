"""Gateway overhead benchmark: the instant upstream alone vs. loragate in front of it.

    python bench/bench_gateway.py [--duration 8] [--concurrency 32] [--rounds 1]

Starts bench/fake_upstream.py, a gateway (one uvicorn worker, SQLite records, auth, metrics
all on) and bench/load.py as separate processes, then prints one table: throughput at a fixed
concurrency, p50/p99 latency, the per-request overhead measured at concurrency 1, and the time
to first streamed chunk, each with its ratio to the direct figure. Compare ratios within one
run: these machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
BASE_MODEL = "bench-base"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout_s: float = 30.0, ok: tuple[int, ...] = (200,)) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code in ok:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up in {timeout_s}s")


def load(
    url: str, *, key: str = "", model: str, stream: bool, concurrency: int, duration: float
) -> dict[str, Any]:
    """Closed-loop load with wrk when installed (non-streaming), else bench/load.py."""
    if not stream and shutil.which("wrk"):
        return wrk_load(url, key=key, model=model, concurrency=concurrency, duration=duration)
    command = [
        sys.executable, str(ROOT / "bench" / "load.py"), "--url", url, "--model", model,
        "--concurrency", str(concurrency), "--duration", str(duration),
    ]  # fmt: skip
    if key:
        command += ["--key", key]
    if stream:
        command.append("--stream")
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
if os.getenv("BENCH_KEY") ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")
end
"""


def _wrk_ms(text: str) -> float:
    value = float(text.rstrip("usm"))
    if text.endswith("us"):
        return value / 1000
    if text.endswith("ms"):
        return value
    return value * 1000


def wrk_load(
    url: str, *, key: str, model: str, concurrency: int, duration: float
) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT)
    env = dict(os.environ, BENCH_BODY=json.dumps(body), BENCH_KEY=key)
    warm = ["wrk", "-t1", f"-c{concurrency}", "-d2", "-s", script.name, url]
    subprocess.run(warm, check=True, capture_output=True, env=env)
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{int(duration)}", "--latency", "-s"]
    out = subprocess.run(
        [*command, script.name, url], check=True, capture_output=True, text=True, env=env
    ).stdout
    os.unlink(script.name)
    figures: dict[str, Any] = {"errors": 0, "ttft_p50_ms": float("nan")}
    for line in out.splitlines():
        parts = line.split()
        if "requests in" in line:
            figures["completed"] = int(parts[0])
        elif line.startswith("Requests/sec:"):
            figures["rps"] = float(parts[1])
        elif parts[:1] == ["50%"]:
            figures["p50_ms"] = _wrk_ms(parts[1])
        elif parts[:1] == ["99%"]:
            figures["p99_ms"] = _wrk_ms(parts[1])
        elif "Non-2xx" in line or "Socket errors" in line:
            figures["errors"] += sum(int(p.rstrip(",")) for p in parts if p.rstrip(",").isdigit())
    return figures


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(pid: int | None, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``run``'s figures plus the server's CPU microseconds per completed request."""
    before = cpu_seconds(pid) if pid else 0.0
    figures = run()
    if pid and figures.get("completed"):
        figures["cpu_us"] = (cpu_seconds(pid) - before) / figures["completed"] * 1e6
    return figures


def gateway_env(workdir: Path, upstream: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        LORAGATE_DATA_DIR=str(workdir),
        LORAGATE_DATABASE_URL=f"sqlite+aiosqlite:///{workdir / 'bench.db'}",
        LORAGATE_ENGINES=json.dumps(
            [{"name": "default", "base_model": BASE_MODEL, "urls": [upstream]}]
        ),
        LORAGATE_HEALTH_PROBE_INTERVAL_S="5",
        LORAGATE_LOG_LEVEL="WARNING",
    )
    return env


def create_key(env: dict[str, str], role: str = "app", *limits: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "service", "keys", "create", "--role", role, "--name", "bench",
         *limits],
        check=True, capture_output=True, text=True, env=env, cwd=ROOT,
    ).stdout  # fmt: skip
    return next(line.split()[1] for line in out.splitlines() if line.startswith("key:"))


def row(name: str, figures: dict[str, Any], direct: dict[str, Any] | None) -> str:
    def ratio(field: str) -> str:
        if direct is None or not direct.get(field):
            return "    "
        return f"x{figures[field] / direct[field]:.2f}"

    return (
        f"{name:<34} {figures['rps']:>9.0f} {ratio('rps'):>6} {figures['p50_ms']:>8.2f} "
        f"{ratio('p50_ms'):>6} {figures['p99_ms']:>8.2f} {figures['ttft_p50_ms']:>9.2f} "
        f"{figures['errors']:>6} {figures.get('cpu_us', float('nan')):>8.0f}"
    )


def start(command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, env=env, cwd=ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="loragate-bench-"))
    upstream_port, gateway_port, bare_port = free_port(), free_port(), free_port()
    upstream = f"http://127.0.0.1:{upstream_port}"
    env = gateway_env(workdir, upstream)
    python = sys.executable
    processes = [start([python, str(ROOT / "bench" / "fake_upstream.py"), str(upstream_port)])]
    try:
        cli = [python, "-m", "service"]
        subprocess.run([*cli, "db", "upgrade"], check=True, env=env, cwd=ROOT, capture_output=True)
        key = create_key(env)
        sre = {"Authorization": f"Bearer {create_key(env, 'sre')}"}  # /metrics needs sre/admin
        processes.append(start([*cli, "serve", "--port", str(gateway_port)], env))
        bare_env = dict(os.environ, BARE_RELAY_UPSTREAM=upstream)
        uvicorn = [python, "-m", "uvicorn", "bench.bare_relay:app", "--log-level", "warning"]
        processes.append(start([*uvicorn, "--no-access-log", "--port", str(bare_port)], bare_env))
        gateway = f"http://127.0.0.1:{gateway_port}"
        wait_http(f"{gateway}/readyz")
        wait_http(f"http://127.0.0.1:{bare_port}/docs")
        path = "/v1/chat/completions"
        c, d = args.concurrency, args.duration
        scenarios = [
            (f"non-streaming, concurrency {c}", False, c),
            ("non-streaming, concurrency 1", False, 1),
            (f"streaming, concurrency {c}", True, c),
            ("streaming, concurrency 1", True, 1),
        ]
        results = []
        gateway_pid, bare_pid = processes[1].pid, processes[2].pid
        for name, stream, conc in scenarios:

            def run(
                url: str,
                key: str = "",
                model: str = BASE_MODEL,
                stream: bool = stream,
                conc: int = conc,
            ) -> dict[str, Any]:
                return load(url, key=key, model=model, stream=stream, concurrency=conc, duration=d)

            base = run(upstream + path)
            bare = None
            if not stream:
                bare = measured(bare_pid, lambda: run(f"http://127.0.0.1:{bare_port}{path}"))
            ours = measured(gateway_pid, lambda: run(gateway + path, key, "chat"))
            results.append((name, base, bare, ours))
        metrics = httpx.get(f"{gateway}/metrics", headers=sre).text
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
    report(results, metrics)


def report(
    results: list[tuple[str, dict[str, Any], dict[str, Any] | None, dict[str, Any]]], metrics: str
) -> None:
    header = (
        f"{'scenario':<44} {'req/s':>9} {'ratio':>6} {'p50 ms':>8} {'ratio':>6} "
        f"{'p99 ms':>8} {'ttft p50':>9} {'errors':>6} {'CPU us/req':>8}"
    )
    print(header)
    print("-" * len(header))
    for name, base, bare, ours in results:
        print(row(f"direct upstream   {name}", base, None))
        if bare is not None:
            print(row(f"bare relay        {name}", bare, base))
        print(row(f"loragate          {name}", ours, base))
    print("(CPU us/req: the server process's CPU time per completed request, all threads)")
    print()
    for name, base, bare, ours in results:
        if bare is not None and "concurrency 1" not in name:
            print(f"loragate / bare relay throughput ({name}): x{ours['rps'] / bare['rps']:.2f}")
            if "cpu_us" in ours and "cpu_us" in bare:
                added = ours["cpu_us"] - bare["cpu_us"]
                print(f"loragate CPU per request over the bare relay ({name}): {added:+.0f} us")
        if name.endswith("concurrency 1"):
            line = f"added p50 per request ({name}): {ours['p50_ms'] - base['p50_ms']:.2f} ms"
            if not name.startswith("non"):
                added = ours["ttft_p50_ms"] - base["ttft_p50_ms"]
                line += f"; added time to first chunk: {added:.2f} ms"
            print(line)
    prefixes = ("loragate_records_shipped_total", "loragate_records_dropped_total")
    written = [m for m in metrics.splitlines() if m.startswith(prefixes)]
    print("gateway records:", "; ".join(written))


if __name__ == "__main__":
    main()
