"""The gateway's CPU per request in front of the real managed vLLM, and against the fake engine.

    python bench/bench_engine_cpu.py [--duration 20] [--concurrency 16] [--pairs 3]
                                     [--profile DIR]
    python bench/bench_engine_cpu.py --fake-only RATE
    python bench/bench_engine_cpu.py --bare-rates 5,20,100,400

Starts `loragate serve` on its embedded defaults (SQLite, the managed vLLM with the bundled
model) and sends the same load straight to vLLM, through a bare FastAPI relay
(bench/bare_relay.py: the floor of any Python relay; its CPU per request is printed) and
through the gateway, in turn, `--pairs` times, for non-streamed chat (max_tokens 32) and
streamed chat (max_tokens 64). The gateway's CPU (user + system, from /proc) is read around
every run; its use during the direct runs, when it serves nothing, is its idle use, and is
subtracted from the gateway runs:

    CPU per request = (CPU in the gateway run - idle rate x run time) / requests served

(served: the warm-up's requests too, which the CPU time covers)

Then the same gateway settings, and the bare relay, in front of bench/fake_upstream.py at the
same request rate (open loop), so what only a real engine costs stands out.
Under each gateway run: its CPU per request by thread (event loop, record shipper, database
and worker threads; idle not subtracted). With `--profile DIR`, py-spy samples the gateway
during one run of each mode and the top functions (own time) are printed.
Compare within one run: these machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from functools import partial
from pathlib import Path
from typing import Any

from bench_gateway import ROOT, create_key, free_port, gateway_env, start, wait_http

MODES = {"chat": (False, 32), "stream": (True, 64)}


def cpu_seconds(pid: int) -> float:
    """The whole process's (threads that ended included), user + system, in 10 ms ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each of the process's live threads, by native thread id, to the
    nanosecond (``stat``'s 10 ms ticks are too coarse for a thread that runs a few ms a
    second)."""
    seconds: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            seconds[int(task.name)] = int((task / "schedstat").read_text().split()[0]) / 1e9
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended meanwhile
    return seconds


def thread_names(pid: int) -> dict[int, str]:
    """Python thread names by native id, from py-spy; worker pools are named by their task."""
    out = subprocess.run(
        [str(Path(sys.executable).parent / "py-spy"), "dump", "--pid", str(pid), "--nonblocking"],
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    names: dict[int, str] = {}
    for match in re.finditer(r"^Thread (\d+) \(\w+\): \"([^\"]*)\"", out, re.MULTILINE):
        names[int(match[1])] = re.sub(r"^Thread-\d+ ", "", match[2])
    return names


def by_thread(pid: int, before: dict[int, float], requests: int) -> str:
    """CPU ms per request of each kind of thread since ``before``, largest first."""
    names = thread_names(pid)
    spent: defaultdict[str, float] = defaultdict(float)
    for tid, seconds in thread_cpu(pid).items():
        spent[names.get(tid, "other")] += seconds - before.get(tid, 0.0)
    return ", ".join(
        f"{name} {seconds / max(1, requests) * 1000:.2f}"
        for name, seconds in sorted(spent.items(), key=lambda item: -item[1])
        if seconds > 0
    )


def run_load(url: str, model: str, key: str, mode: str, args: argparse.Namespace,
             rate: float = 0.0) -> dict[str, Any]:  # fmt: skip
    stream, max_tokens = MODES[mode]
    command = [
        sys.executable, str(ROOT / "bench" / "load.py"), "--url", url, "--model", model,
        "--concurrency", str(args.concurrency), "--duration", str(args.duration),
        "--max-tokens", str(max_tokens), "--warmup", "3",
    ]  # fmt: skip
    if key:
        command += ["--key", key]
    if stream:
        command.append("--stream")
    if rate:
        command += ["--rate", f"{rate:.2f}"]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def with_cpu(pid: int, run: Any) -> tuple[dict[str, Any], float, float]:
    """The load's figures, the gateway's CPU seconds and the wall seconds over the run."""
    cpu, wall = cpu_seconds(pid), time.monotonic()
    figures = run()
    return figures, cpu_seconds(pid) - cpu, time.monotonic() - wall


def profile(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pid),
         "-d", str(int(seconds)), "-r", "200", "-f", "raw", "-o", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def top_functions(raw: Path, count: int = 12) -> list[tuple[str, float]]:
    """Own time per function (the stack's last frame) as a share of all samples."""
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not samples.isdigit():
            continue
        leaf = stack.split(";")[-1]
        own[leaf] += int(samples)
        total += int(samples)
    return [(name, n / total) for name, n in own.most_common(count)] if total else []


def gateway_process(workdir: Path, env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    subprocess.run([sys.executable, "-m", "service", "db", "upgrade"], check=True, env=env,
                   cwd=ROOT, capture_output=True)  # fmt: skip
    return start([sys.executable, "-m", "service", "serve", "--port", str(port)], env)


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """Terminate ``processes``, last started first, and forget them."""
    while processes:
        process = processes.pop()
        process.terminate()
        process.wait(120)


def bare_relay(port: int, upstream: str) -> subprocess.Popen[bytes]:
    """bench/bare_relay.py in front of ``upstream``, once it answers."""
    process = start([sys.executable, "-m", "uvicorn", "bench.bare_relay:app", "--log-level",
                     "warning", "--no-access-log", "--port", str(port)],
                    dict(os.environ, BARE_RELAY_UPSTREAM=upstream))  # fmt: skip
    wait_http(f"http://127.0.0.1:{port}/docs", timeout_s=60)
    return process


def row(name: str, figures: dict[str, Any], per_request_ms: float | None) -> None:
    cpu = f"{per_request_ms:7.2f}" if per_request_ms is not None else "      -"
    print(
        f"{name:<28} {figures['rps']:7.2f} {figures['p50_ms']:9.1f} "
        f"{figures['ttft_p50_ms']:9.1f} {figures['errors']:6d} {cpu}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--idle-s", type=float, default=20.0)
    parser.add_argument("--profile", type=Path, default=None)
    parser.add_argument(
        "--fake-only",
        type=float,
        default=None,
        metavar="RATE",
        help="skip vLLM: only the fake engine, at RATE requests/s in both modes",
    )
    parser.add_argument(
        "--bare-rates",
        default=None,
        metavar="R1,R2,...",
        help="only the bare relay in front of the fake engine, at each rate: how its CPU per "
        "request falls as more requests share each wakeup",
    )
    args = parser.parse_args()
    if args.bare_rates is not None:
        bare_by_rate(args, [float(rate) for rate in args.bare_rates.split(",")])
        return
    if args.fake_only is not None:
        print(f"{'run':<28} {'req/s':>7} {'p50 ms':>9} {'ttft ms':>9} {'errors':>6} "
              f"{'CPU ms/req':>7}")  # fmt: skip
        fake_against(args, dict.fromkeys(MODES, args.fake_only))
        return
    workdir = Path(tempfile.mkdtemp(prefix="loragate-engine-cpu-"))
    model_dir = Path.home() / ".cache" / "loragate-test" / "smollm2-135m-instruct"
    subprocess.run([sys.executable, "-m", "service.engine.model_prep", str(model_dir)],
                   check=True, cwd=ROOT, capture_output=True)  # fmt: skip
    port, engine_port, bare_port = free_port(), free_port(), free_port()
    env = dict(os.environ)
    env.update(
        LORAGATE_DATA_DIR=str(workdir),
        LORAGATE_MANAGED_ENGINE__PORT=str(engine_port),
        LORAGATE_MANAGED_ENGINE__MODEL_DIR=str(model_dir),
        LORAGATE_LOG_LEVEL="WARNING",
    )
    env.pop("LORAGATE_ENGINES", None)
    env.pop("LORAGATE_DATABASE_URL", None)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        gateway = gateway_process(workdir, env, port)
        processes.append(gateway)
        key = create_key(env)
        wait_http(f"http://127.0.0.1:{port}/readyz", timeout_s=900)
        bare = bare_relay(bare_port, f"http://127.0.0.1:{engine_port}")
        processes.append(bare)
        direct = f"http://127.0.0.1:{engine_port}/v1/chat/completions"
        relayed = f"http://127.0.0.1:{bare_port}/v1/chat/completions"
        through = f"http://127.0.0.1:{port}/v1/chat/completions"
        model = "smollm2-135m-instruct"
        cpu0, wall0 = cpu_seconds(gateway.pid), time.monotonic()
        time.sleep(args.idle_s)
        idle = (cpu_seconds(gateway.pid) - cpu0) / (time.monotonic() - wall0)
        print(f"gateway idle, no traffic: {idle * 100:.2f} % of a core", flush=True)
        print(f"{'run':<28} {'req/s':>7} {'p50 ms':>9} {'ttft ms':>9} {'errors':>6} "
              f"{'CPU ms/req':>7}")  # fmt: skip
        rates: dict[str, float] = {}
        for mode in MODES:
            per_request: list[float] = []
            floors: list[float] = []
            ratios: list[float] = []
            throughputs: list[float] = []
            for pair in range(args.pairs):
                straight, idle_cpu, idle_wall = with_cpu(
                    gateway.pid, partial(run_load, direct, model, "", mode, args)
                )
                row(f"{mode} direct #{pair + 1}", straight, None)
                floor, bare_cpu, _ = with_cpu(
                    bare.pid, partial(run_load, relayed, model, "", mode, args)
                )
                floors.append(bare_cpu / max(1, floor["served"]) * 1000)
                row(f"{mode} bare relay #{pair + 1}", floor, floors[-1])
                spy = None
                if args.profile is not None and pair == 0:
                    args.profile.mkdir(parents=True, exist_ok=True)
                    spy = profile(gateway.pid, args.duration, args.profile / f"real-{mode}.txt")
                threads = thread_cpu(gateway.pid)
                via, gw_cpu, gw_wall = with_cpu(
                    gateway.pid, partial(run_load, through, "chat", key, mode, args)
                )
                if spy is not None:
                    spy.wait()
                idle_rate = idle_cpu / idle_wall
                ms = (gw_cpu - idle_rate * gw_wall) / max(1, via["served"]) * 1000
                per_request.append(ms)
                ratios.append(via["rps"] / straight["rps"])
                throughputs.append(via["rps"])
                row(f"{mode} via gateway #{pair + 1}", via, ms)
                print(f"    by thread: {by_thread(gateway.pid, threads, via['served'])}")
            rates[mode] = sum(throughputs) / len(throughputs)
            print(
                f"  {mode}: gateway CPU per request {min(per_request):.2f}-"
                f"{max(per_request):.2f} ms (bare relay {min(floors):.2f}-{max(floors):.2f} ms); "
                f"throughput via/direct {min(ratios):.2f}-{max(ratios):.2f}",
                flush=True,
            )
        stop(processes)  # the gateway and the bare relay: the fake engine's runs start their own
        fake_against(args, rates)
        if args.profile is not None:
            for raw in sorted(args.profile.glob("*.txt")):
                print(f"top own time, {raw.stem}:")
                for name, share in top_functions(raw):
                    print(f"  {share * 100:5.1f} %  {name}")
    finally:
        stop(processes)


def fake_against(args: argparse.Namespace, rates: dict[str, float]) -> None:
    """The same gateway in front of the instant fake engine, at the real run's request rate."""
    workdir = Path(tempfile.mkdtemp(prefix="loragate-engine-cpu-fake-"))
    upstream_port, port, bare_port = free_port(), free_port(), free_port()
    upstream = f"http://127.0.0.1:{upstream_port}"
    env = gateway_env(workdir, upstream)
    processes = [start([sys.executable, str(ROOT / "bench" / "fake_upstream.py"),
                        str(upstream_port)])]  # fmt: skip
    try:
        gateway = gateway_process(workdir, env, port)
        processes.append(gateway)
        key = create_key(env)
        wait_http(f"http://127.0.0.1:{port}/readyz", timeout_s=60)
        bare = bare_relay(bare_port, upstream)
        processes.append(bare)
        cpu0, wall0 = cpu_seconds(gateway.pid), time.monotonic()
        time.sleep(args.idle_s)
        idle = (cpu_seconds(gateway.pid) - cpu0) / (time.monotonic() - wall0)
        through = f"http://127.0.0.1:{port}/v1/chat/completions"
        for mode, rate in rates.items():
            spy = None
            if args.profile is not None:
                args.profile.mkdir(parents=True, exist_ok=True)
                spy = profile(gateway.pid, args.duration, args.profile / f"fake-{mode}.txt")
            threads = thread_cpu(gateway.pid)
            via, cpu, wall = with_cpu(
                gateway.pid, partial(run_load, through, "chat", key, mode, args, rate=rate)
            )
            if spy is not None:
                spy.wait()
            ms = (cpu - idle * wall) / max(1, via["served"]) * 1000
            row(f"{mode} via gateway, fake", via, ms)
            print(f"    by thread: {by_thread(gateway.pid, threads, via['served'])}")
            floor, cpu, _ = with_cpu(bare.pid, partial(
                run_load, f"http://127.0.0.1:{bare_port}/v1/chat/completions", "chat", "", mode,
                args, rate=rate,
            ))  # fmt: skip
            row(f"{mode} bare relay, fake", floor, cpu / max(1, floor["served"]) * 1000)
    finally:
        stop(processes)


def bare_by_rate(args: argparse.Namespace, rates: list[float]) -> None:
    upstream_port, bare_port = free_port(), free_port()
    processes = [start([sys.executable, str(ROOT / "bench" / "fake_upstream.py"),
                        str(upstream_port)])]  # fmt: skip
    try:
        bare = bare_relay(bare_port, f"http://127.0.0.1:{upstream_port}")
        processes.append(bare)
        url = f"http://127.0.0.1:{bare_port}/v1/chat/completions"
        for rate in rates:
            figures, cpu, _ = with_cpu(
                bare.pid, partial(run_load, url, "chat", "", "chat", args, rate=rate)
            )
            print(f"bare relay at {rate:g} req/s: "
                  f"{cpu / max(1, figures['served']) * 1000:.2f} ms CPU per request",
                  flush=True)  # fmt: skip
    finally:
        stop(processes)


if __name__ == "__main__":
    main()
