"""Shadow cost benchmark: the primary's latency with a 100 % shadow rollout vs. shadow off.

    python bench/bench_shadow.py [--rate 200] [--duration 20] [--warmup 3] [--delay-ms 20]
                                 [--rounds 1] [--tick-s 10]

Starts bench/fake_upstream.py (answers after --delay-ms, standing in for model time) and one
gateway process, registers an adapter version "bench@1" for the default pool, then drives
bench/load.py open-loop at a fixed request rate (non-streaming chat, below saturation, so
latency compares like with like) through the phases, all on the same gateway process:

    off -> shadow (rollout started, shadow step at weight 100) -> off (rollout aborted)

(--rounds N repeats "shadow -> off" N times). It prints per phase the rate achieved, p50 and
p99 of the primary (client-seen) latency, errors, the gateway's CPU per client request (its
shadow calls included) and the shadow calls started and shed; then the p99 and p50 ratios of
each shadow phase to the mean of the "off" phases around it, and how long one rollout analysis
of the window takes at the end of each shadow phase. Compare ratios within one run: these
machines are shared and noisy.

--tick-s is LORAGATE_ROLLOUT_TICK_S, by default the gateway's own 10 s. Each tick reads the
step's window of records (both arms, up to 50,000) and computes its figures on the gateway's
event loop, which stalls requests for as long as that takes, so the figures depend on it:
--tick-s 0.5 shows that cost 20 times as often, and --duration 150 lets the window reach
its 50,000-record cap at 200 req/s (stable + shadow records), as a long shadow step would.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from bench_gateway import (
    BASE_MODEL,
    ROOT,
    create_key,
    free_port,
    gateway_env,
    measured,
    start,
    wait_http,
)
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from service.db.models import AdapterVersion

ROUTE = "chat"
CANDIDATE = "bench@1"
SHADOW_SPEC = {
    "candidate": CANDIDATE,
    # A shadow step that cannot pass during the bench: the rollout stays in shadow.
    "steps": [{"kind": "shadow", "weight": 100, "min_duration_s": 3000, "min_samples": 1000000}],
    "progress_deadline_s": 3600,
}


def add_version(workdir: Path) -> None:
    """Register ``bench@1`` for the default pool straight in the database (no real adapter)."""
    store = workdir / "bench-1"
    store.mkdir()
    engine = create_engine(f"sqlite:///{workdir / 'bench.db'}")
    with Session(engine) as session, session.begin():
        session.add(
            AdapterVersion(
                id=CANDIDATE, name="bench", version=1, sha256="0" * 64, pool="default",
                base_model=BASE_MODEL, rank=8, alpha=16.0, target_modules=["q_proj"],
                size_bytes=1, store_path=str(store), created_at=datetime.now(UTC), changelog="",
            )
        )  # fmt: skip
    engine.dispose()


def rate_load(url: str, key: str, args: argparse.Namespace) -> dict[str, Any]:
    """Open-loop load at --rate from bench/load.py in its own process."""
    command = [
        sys.executable, str(ROOT / "bench" / "load.py"), "--url", url, "--model", ROUTE,
        "--key", key, "--rate", str(args.rate), "--duration", str(args.duration),
        "--warmup", str(args.warmup),
    ]  # fmt: skip
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


SHADOW_LINE = re.compile(r"^loragate_shadow_calls_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")


def shadow_calls(gateway: str, sre: dict[str, str]) -> dict[str, float]:
    """The route's shadow call counters (started, shed) from the gateway's /metrics."""
    counts = {"started": 0.0, "shed": 0.0}
    for line in httpx.get(f"{gateway}/metrics", headers=sre).text.splitlines():
        match = SHADOW_LINE.match(line)
        if match is None or f'route="{ROUTE}"' not in match["labels"]:
            continue
        for outcome in counts:
            if f'outcome="{outcome}"' in match["labels"]:
                counts[outcome] += float(match["value"])
    return counts


def rollout_phase(gateway: str, sre: dict[str, str]) -> str:
    response = httpx.get(f"{gateway}/v1/admin/rollouts/{ROUTE}", headers=sre, timeout=30)
    return str(response.json()["phase"]) if response.status_code == 200 else "none"


def start_shadow(gateway: str, sre: dict[str, str], timeout_s: float = 60.0) -> None:
    """Start the 100 % shadow rollout and wait for the first tick to move it to shadow."""
    response = httpx.post(
        f"{gateway}/v1/admin/rollouts/{ROUTE}", json=SHADOW_SPEC, headers=sre, timeout=120
    )
    if response.status_code != 200:
        raise RuntimeError(f"starting the rollout: HTTP {response.status_code}: {response.text}")
    deadline = time.monotonic() + timeout_s
    while (phase := rollout_phase(gateway, sre)) != "shadow":
        if phase != "pending" or time.monotonic() > deadline:
            raise RuntimeError(f"the rollout is {phase}, not shadow")
        time.sleep(0.2)


def analysis_ms(gateway: str, sre: dict[str, str], tries: int = 3) -> tuple[float, int]:
    """Best wall time of one rollout analysis now (what each tick does) and its window size.

    The analysis reads the current step's window of records (in a database thread) and turns
    them into figures on the gateway's event loop, so most of this time no request moves.
    """
    url = f"{gateway}/v1/admin/rollouts/{ROUTE}/analysis"
    best, samples = float("inf"), 0
    for _ in range(tries):
        began = time.perf_counter()
        answer = httpx.get(url, headers=sre, timeout=60).json()
        best = min(best, (time.perf_counter() - began) * 1000)
        samples = int(answer["stable"]["samples"]) + int(answer["candidate"]["samples"])
    return best, samples


def abort(gateway: str, sre: dict[str, str]) -> None:
    url = f"{gateway}/v1/admin/rollouts/{ROUTE}/abort"
    response = httpx.post(url, json={"reason": "bench"}, headers=sre, timeout=30)
    if response.status_code != 200 or response.json()["phase"] != "aborted":
        raise RuntimeError(f"aborting the rollout: HTTP {response.status_code}: {response.text}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=200.0, help="open-loop requests/s")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds a phase")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds a phase")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="upstream model time")
    parser.add_argument("--rounds", type=int, default=1, help="shadow -> off repeats")
    parser.add_argument("--tick-s", type=float, default=10.0, help="LORAGATE_ROLLOUT_TICK_S")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="loragate-bench-shadow-"))
    upstream_port, gateway_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{upstream_port}"
    env = gateway_env(workdir, upstream)
    env["LORAGATE_ROLLOUT_TICK_S"] = str(args.tick_s)
    python = sys.executable
    fake = [python, str(ROOT / "bench" / "fake_upstream.py"), str(upstream_port)]
    processes = [start([*fake, str(args.delay_ms)])]
    phases: list[tuple[str, dict[str, Any]]] = []
    try:
        cli = [python, "-m", "service"]
        subprocess.run([*cli, "db", "upgrade"], check=True, env=env, cwd=ROOT, capture_output=True)
        key = create_key(env)
        sre = {"Authorization": f"Bearer {create_key(env, 'sre')}"}
        add_version(workdir)
        processes.append(start([*cli, "serve", "--port", str(gateway_port)], env))
        gateway = f"http://127.0.0.1:{gateway_port}"
        wait_http(f"{gateway}/readyz")
        url = f"{gateway}/v1/chat/completions"
        gateway_pid = processes[1].pid

        def phase(name: str) -> None:
            before = shadow_calls(gateway, sre)
            figures = measured(gateway_pid, lambda: rate_load(url, key, args))
            after = shadow_calls(gateway, sre)
            figures["shadow_started"] = after["started"] - before["started"]
            figures["shadow_shed"] = after["shed"] - before["shed"]
            figures["rollout"] = rollout_phase(gateway, sre)
            phases.append((name, figures))
            print(f"measured {name}: p99 {figures['p99_ms']:.2f} ms", file=sys.stderr)

        phase("off")
        for _ in range(args.rounds):
            start_shadow(gateway, sre)
            phase("shadow 100 %")
            phases[-1][1]["analysis_ms"], phases[-1][1]["window"] = analysis_ms(gateway, sre)
            abort(gateway, sre)
            phase("off (aborted)")
        metrics = httpx.get(f"{gateway}/metrics", headers=sre).text
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
    report(args, phases, metrics)


def report(
    args: argparse.Namespace, phases: list[tuple[str, dict[str, Any]]], metrics: str
) -> None:
    print(
        f"open loop {args.rate:.0f} req/s for {args.duration:.0f} s a phase "
        f"(after {args.warmup:.0f} s warm-up), upstream model time {args.delay_ms:.0f} ms, "
        f"non-streaming chat, rollout tick {args.tick_s} s"
    )
    header = (
        f"{'phase':<16} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} "
        f"{'CPU us/req':>10} {'shadow started':>14} {'shed':>6} {'send lag p99':>12} "
        f"{'rollout':>8}"
    )
    print(header)
    print("-" * len(header))
    for name, f in phases:
        print(
            f"{name:<16} {f['rps']:>7.1f} {f['p50_ms']:>8.2f} {f['p99_ms']:>8.2f} "
            f"{f['errors']:>6} {f.get('cpu_us', float('nan')):>10.0f} "
            f"{f['shadow_started']:>14.0f} {f['shadow_shed']:>6.0f} "
            f"{f['send_lag_p99_ms']:>9.2f} ms {f['rollout']:>8}"
        )
    print("(CPU us/req: the gateway process's CPU time per client request, its shadow calls")
    print(" included; send lag: how late the load generator itself sent, a noise floor)")
    print()
    for index in range(1, len(phases), 2):
        off_before, shadow, off_after = phases[index - 1][1], phases[index][1], phases[index + 1][1]
        off_p99 = (off_before["p99_ms"] + off_after["p99_ms"]) / 2
        off_p50 = (off_before["p50_ms"] + off_after["p50_ms"]) / 2
        verdict = "within" if shadow["p99_ms"] <= 1.10 * off_p99 else "NOT within"
        print(
            f"primary p99, shadow 100 % / off (mean of the off runs around it): "
            f"x{shadow['p99_ms'] / off_p99:.3f} ({verdict} 10 %); "
            f"p50: x{shadow['p50_ms'] / off_p50:.3f}; "
            f"off drift (after / before) p99: x{off_after['p99_ms'] / off_before['p99_ms']:.3f}"
        )
        if "cpu_us" in shadow and "cpu_us" in off_before and "cpu_us" in off_after:
            off_cpu = (off_before["cpu_us"] + off_after["cpu_us"]) / 2
            print(
                f"gateway CPU per client request with shadow: {shadow['cpu_us'] - off_cpu:+.0f} us "
                f"(x{shadow['cpu_us'] / off_cpu:.2f})"
            )
    for name, f in phases:
        if "analysis_ms" in f:
            print(
                f"one rollout analysis ({name}, window of {f['window']} records, as each tick "
                f"every {args.tick_s} s does): {f['analysis_ms']:.1f} ms"
            )
    prefixes = ("loragate_records_written_total", "loragate_records_dropped_total")
    written = [m for m in metrics.splitlines() if m.startswith(prefixes)]
    print("gateway records:", "; ".join(written))


if __name__ == "__main__":
    main()
