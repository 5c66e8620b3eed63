"""Hostile and greedy clients: a normal client's latency while others attack the gateway.

    python bench/bench_hostile.py [--requests 200] [--attack-s 6]

Starts bench/fake_upstream.py and `loragate serve` (SQLite, one worker) as separate processes
and measures, sequentially, a normal client's chat latency (p50/p99/max) alone and under:

- schemas: 4 clients looping on `response_format` schemas, once the 16 KiB
  `{"anyOf": [{}, ... 5,300 times]}`, once unique schemas just under the cost bound;
- bodies: a 200 MB body to POST /v1/admin/adapters without a key (time to the answer, bytes the
  client got to send, the gateway's peak memory);
- random keys: 4 clients with made-up keys (request records written, database lookups);
- idle connections: 500 connections that send nothing (how many are still open after the header
  timeout); 1,000 idle sockets from another address while a normal client opens a new
  connection per request (how many it got answered); 20 connections pipelining 3,000 requests
  each and reading nothing (the gateway's memory, how many were closed within 60 s);
- one greedy key: 8 clients flooding with one app key, once without limits and once with
  `--rpm 600 --max-concurrent 2` (what the greedy key got, the normal key's latency).

Figures only; the tests assert behaviour. These machines are shared: compare within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from bench_gateway import ROOT, create_key, free_port, gateway_env, start, wait_http

CHAT = "/v1/chat/completions"
COST_BOUND = 2000


def chat(**extra: Any) -> dict[str, Any]:
    return {
        "model": "chat",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 8,
        **extra,
    }


def with_schema(schema: dict[str, Any]) -> dict[str, Any]:
    return chat(
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
    )


def latency(url: str, key: str, n: int, body: dict[str, Any] | None = None) -> dict[str, float]:
    times: list[float] = []
    statuses: Counter[int] = Counter()
    with httpx.Client(timeout=60) as client:
        for _ in range(n):
            began = time.perf_counter()
            answer = client.post(url + CHAT, json=body or chat(), headers=bearer(key))
            times.append((time.perf_counter() - began) * 1000)
            statuses[answer.status_code] += 1
    times.sort()
    return {
        "p50_ms": statistics.median(times),
        "p95_ms": times[int(len(times) * 0.95) - 1],
        "p99_ms": times[int(len(times) * 0.99) - 1],
        "max_ms": times[-1],
        "ok": statuses[200] / n,
    }


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def under(
    attack: Callable[[threading.Event], None], clients: int, measure: Callable[[], Any]
) -> Any:
    stop = threading.Event()
    threads = [threading.Thread(target=attack, args=(stop,)) for _ in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # let the attack get going
    try:
        return measure()
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def schema_attacker(
    url: str, key: str, make: Callable[[], dict[str, Any]], seen: Counter[int]
) -> Callable[[threading.Event], None]:
    def attack(stop: threading.Event) -> None:
        with httpx.Client(timeout=120) as client:
            while not stop.is_set():
                answer = client.post(url + CHAT, json=with_schema(make()), headers=bearer(key))
                seen[answer.status_code] += 1

    return attack


def body_flooder(url: str, key: str, seen: Counter[int]) -> Callable[[threading.Event], None]:
    """The comparison for the schema attack: 16 KB bodies refused for an unknown field."""
    body = chat(messages=[{"role": "user", "content": "x" * 16_000}], best_of=1)

    def attack(stop: threading.Event) -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                seen[client.post(url + CHAT, json=body, headers=bearer(key)).status_code] += 1

    return attack


def key_flooder(url: str, seen: Counter[int]) -> Callable[[threading.Event], None]:
    def attack(stop: threading.Event) -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                key = f"lg-{secrets.token_hex(6)}-{secrets.token_urlsafe(16)}"
                seen[client.post(url + CHAT, json=chat(), headers=bearer(key)).status_code] += 1

    return attack


def greedy(url: str, key: str, seen: Counter[int]) -> Callable[[threading.Event], None]:
    def attack(stop: threading.Event) -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                seen[client.post(url + CHAT, json=chat(), headers=bearer(key)).status_code] += 1

    return attack


def memory_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def big_body_without_key(port: int, chunked: bool, size: int = 200_000_000) -> dict[str, float]:
    """Sends a 200 MB body (declared, or chunked without a length) until the answer comes."""
    sock = socket.create_connection(("127.0.0.1", port))
    began = time.perf_counter()
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
    sock.sendall(
        b"POST /v1/admin/adapters HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"{framing}\r\n\r\n".encode()
    )
    sock.settimeout(0.001)
    piece = b" " * (1 << 20)
    chunk = b"%x\r\n" % len(piece) + piece + b"\r\n" if chunked else piece
    sent, answer = 0, b""
    while sent < size:
        try:
            answer = sock.recv(4096)
            if answer:
                break
        except TimeoutError:
            pass
        try:
            sock.sendall(chunk)
        except OSError:
            break
        sent += len(piece)
    if chunked and sent >= size and not answer:
        sock.sendall(b"0\r\n\r\n")
    sock.settimeout(60)
    try:
        answer = answer or sock.recv(4096)
    except TimeoutError:
        answer = b""  # no answer within a minute of the last byte
    sock.close()
    return {
        "answer_ms": (time.perf_counter() - began) * 1000,
        "sent_mb": sent / 1e6,
        "status": float(answer.split()[1]) if answer else 0.0,
    }


def idle_connections(port: int, count: int, wait_s: float) -> int:
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    time.sleep(wait_s)
    still_open = 0
    for sock in socks:
        sock.settimeout(0.01)
        try:
            if sock.recv(1) == b"":
                continue  # closed by the server
        except TimeoutError:
            still_open += 1
        except OSError:
            continue
        finally:
            sock.close()
    return still_open


def idle_flood(url: str, port: int, key: str, sockets: int, requests: int) -> dict[str, Any]:
    """``sockets`` idle sockets from 127.0.0.2 (the attacker reconnects one more before each
    request), and a normal client from 127.0.0.1 sending ``requests`` requests, each on a new
    connection: how many were answered 200."""
    flood = [socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.2", 0))
             for _ in range(sockets)]  # fmt: skip
    ok = 0
    try:
        for _ in range(requests):
            flood.append(
                socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.2", 0))
            )
            with contextlib.suppress(httpx.TransportError), httpx.Client(timeout=30) as client:
                ok += client.post(url + CHAT, json=chat(), headers=bearer(key)).is_success
    finally:
        for sock in flood:
            sock.close()
    return {"answered": f"{ok}/{requests}"}


def pipeliners(port: int, pid: int, key: str, clients: int, requests: int) -> dict[str, Any]:
    """``clients`` connections with a 4 KB receive buffer, each pipelining ``requests`` chat
    requests and reading nothing: the gateway's memory, and how many it closed in 60 s."""
    body = json.dumps(chat()).encode()
    request = (
        b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    )  # fmt: skip
    before = memory_kb(pid, "VmRSS")
    socks = []
    for _ in range(clients):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.settimeout(5)
        with contextlib.suppress(OSError):  # the gateway stops reading, or cuts it
            sock.sendall(request * requests)
        socks.append(sock)
    deadline = time.monotonic() + 60
    closed = 0
    peak = memory_kb(pid, "VmRSS")
    while time.monotonic() < deadline and closed < clients:
        time.sleep(1)
        peak = max(peak, memory_kb(pid, "VmRSS"))
        closed = 0
        for sock in socks:
            try:
                sock.send(b"\r\n")
            except OSError:
                closed += 1
    for sock in socks:
        sock.close()
    return {"rss_kb_before": before, "rss_kb_peak": peak, "closed_in_60s": closed}


def note(line: tuple[str, Any]) -> None:
    """Printed at once: a run cut short still shows what it measured."""
    name, figures = line
    if isinstance(figures, dict) and "p50_ms" in figures:
        figures = " ".join(f"{k} {v:.1f}" for k, v in figures.items())
    print(f"{name:<46} {figures}", flush=True)


def other_attacks(
    url: str, port: int, pid: int, keys: list[str], sre: str, n: int, workdir: Path
) -> None:
    """Schemas, bodies, random keys and idle connections (see the module docstring)."""
    seen: Counter[int] = Counter()
    note(
        (
            "4 clients, 16 KB bodies refused otherwise",
            under(body_flooder(url, keys[4], seen), 4, lambda: latency(url, keys[0], n)),
        )
    )
    note(("  their answers", dict(seen)))
    seen = Counter()
    attack = {"anyOf": [{} for _ in range(5300)]}
    note(
        (
            "4 clients, 5,300-anyOf schema",
            under(
                schema_attacker(url, keys[1], lambda: attack, seen),
                4,
                lambda: latency(url, keys[0], n),
            ),
        )
    )
    note(("  their answers", dict(seen)))
    seen = Counter()

    def unique() -> dict[str, Any]:
        return {"$comment": secrets.token_hex(8), "anyOf": [{} for _ in range(COST_BOUND - 3)]}

    small = {"type": "object", "properties": {"label": {"enum": ["a", "b"]}}}
    note(
        (
            "4 clients, unique schemas at the bound",
            under(schema_attacker(url, keys[2], unique, seen), 4, lambda: latency(url, keys[0], n)),
        )
    )
    note(
        (
            "  same, normal client with a small schema",
            under(
                schema_attacker(url, keys[2], unique, seen),
                4,
                lambda: latency(url, keys[0], n // 4, with_schema(small)),
            ),
        )
    )
    note(("  their answers", dict(seen)))
    rss_before = memory_kb(pid, "VmRSS")
    note(("200 MB body, no key", big_body_without_key(port, chunked=False)))
    note(("200 MB chunked body, no key", big_body_without_key(port, chunked=True)))
    note(
        (
            "  gateway memory (kB) before, after, peak",
            (rss_before, memory_kb(pid, "VmRSS"), memory_kb(pid, "VmHWM")),
        )
    )
    seen = Counter()
    began = time.monotonic()
    note(
        (
            "4 clients, random keys",
            under(key_flooder(url, seen), 4, lambda: latency(url, keys[0], n)),
        )
    )
    flood_s = time.monotonic() - began
    time.sleep(1.0)  # records are shipped in the background
    rows = (
        sqlite3.connect(workdir / "bench.db")
        .execute("SELECT status_code, count(*) FROM request_records GROUP BY 1")
        .fetchall()
    )
    metrics = httpx.get(f"{url}/metrics", headers=bearer(sre)).text
    lookups = [
        line for line in metrics.splitlines() if line.startswith("loragate_key_lookups_total")
    ]
    note(("  their answers, in s", (dict(seen), round(flood_s, 1))))
    note(("  records by status", rows))
    note(("  key lookups", lookups))
    note(("500 idle connections, still open after 4 s", idle_connections(port, 500, 4.0)))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument(
        "--only", choices=["greedy", "connections"], default=None,
        help="run only the one-greedy-key attack, or only the connection floods",
    )  # fmt: skip
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="loragate-hostile-"))
    upstream_port, port = free_port(), free_port()
    env = gateway_env(workdir, f"http://127.0.0.1:{upstream_port}")
    env["LORAGATE_CLIENT_HEADER_TIMEOUT_S"] = "2"
    python, url = sys.executable, f"http://127.0.0.1:{port}"
    processes = [start([python, str(ROOT / "bench" / "fake_upstream.py"), str(upstream_port)])]
    try:
        subprocess.run(
            [python, "-m", "service", "db", "upgrade"],
            check=True,
            env=env,
            cwd=ROOT,
            capture_output=True,
        )
        keys = [create_key(env) for _ in range(5)]
        unlimited = create_key(env)
        limited = create_key(env, "app", "--rpm", "600", "--max-concurrent", "2")
        sre = create_key(env, "sre")
        processes.append(start([python, "-m", "service", "serve", "--port", str(port)], env))
        wait_http(f"{url}/readyz", timeout_s=60)
        pid, n = processes[1].pid, args.requests
        note(("alone", latency(url, keys[0], n)))
        if args.only is None:
            other_attacks(url, port, pid, keys, sre, n, workdir)
        if args.only in (None, "connections"):
            note(("1,000 idle sockets, a normal client", idle_flood(url, port, keys[0], 1000, 20)))
            note(
                (
                    "20 clients pipelining 3,000, reading nothing",
                    pipeliners(port, pid, keys[3], 20, 3000),
                )
            )
            note(("alone after the floods", latency(url, keys[0], n)))
        if args.only == "connections":
            return
        for name, key in (("without limits", unlimited), ("rpm 600, 2 at once", limited)):
            seen: Counter[int] = Counter()
            began = time.monotonic()
            note(
                (
                    f"8 clients, one key {name}",
                    under(greedy(url, key, seen), 8, lambda: latency(url, keys[0], n)),
                )
            )
            note(("  its answers, in s", (dict(seen), round(time.monotonic() - began, 1))))
        note(("alone again", latency(url, keys[0], n)))
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(30)


if __name__ == "__main__":
    main()
