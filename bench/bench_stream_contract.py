"""What an output contract costs a streamed answer: per-request gateway time of a stream on a
route with a contract (logprobs collected and taken out of every chunk, the answer judged at the
end, the verdict event) against the same stream on a route without one.

    python bench/bench_stream_contract.py [--requests 400] [--tokens 15] [--rounds 3]

Runs in one process: the gateway app (SQLite in a temporary directory) over an ASGI transport
and the fake engine of the tests on a local port, so each request's CPU time includes the
engine's and the client's, the same for both modes; the difference is the contract's cost.
Prints per mode and round the mean wall time and process CPU time per request, then the mean
difference. Compare within one run: the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.auth import Role  # noqa: E402
from service.db.migrations import upgrade  # noqa: E402
from tests.conftest import make_settings, running_gateway  # noqa: E402
from tests.fake_engine import Behaviour, FakeEngine  # noqa: E402
from tests.guard.test_output_contracts import ROUTE, TOKENS, routes_file  # noqa: E402


async def measure(
    client: httpx.AsyncClient, headers: dict[str, str], route: str, requests: int
) -> tuple[float, float]:
    """Mean wall and CPU milliseconds per streamed request, one request at a time."""
    body: dict[str, Any] = {
        "model": route, "messages": [{"role": "user", "content": "hi"}], "stream": True,
    }  # fmt: skip
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(requests):
        async with client.stream(
            "POST", "/v1/chat/completions", json=body, headers=headers
        ) as response:
            assert response.status_code == 200, await response.aread()
            async for _chunk in response.aiter_bytes():
                pass
    return (
        (time.perf_counter() - wall) * 1000 / requests,
        (time.process_time() - cpu) * 1000 / requests,
    )


async def run(args: argparse.Namespace) -> None:
    engine = await FakeEngine().start()
    tokens = (TOKENS * (args.tokens // len(TOKENS) + 1))[: args.tokens]
    engine.default = Behaviour(tokens=tokens)
    try:
        with tempfile.TemporaryDirectory() as workdir:
            tmp = Path(workdir)
            url = f"sqlite+aiosqlite:///{tmp / 'bench.db'}"
            await asyncio.to_thread(upgrade, url)
            review = {"escalate": "never"}
            settings = make_settings(url, tmp, [engine.url], routes_file=routes_file(tmp, review))
            async with running_gateway(settings) as h:
                headers = h.auth(Role.APP)
                await measure(h.client, headers, "chat", 20)  # warm-up
                await measure(h.client, headers, ROUTE, 20)
                plain_cpu, guarded_cpu = [], []
                for round_ in range(1, args.rounds + 1):
                    for name, route, sink in (
                        ("no contract", "chat", plain_cpu),
                        ("contract", ROUTE, guarded_cpu),
                    ):
                        wall_ms, cpu_ms = await measure(h.client, headers, route, args.requests)
                        sink.append(cpu_ms)
                        print(
                            f"round {round_} {name:<12} wall {wall_ms:7.3f} ms/request  "
                            f"cpu {cpu_ms:7.3f} ms/request"
                        )
                extra = sum(guarded_cpu) / len(guarded_cpu) - sum(plain_cpu) / len(plain_cpu)
                print(
                    f"contract cost: {extra:+.3f} ms CPU per streamed request "
                    f"({len(tokens)} tokens, {args.requests} requests x {args.rounds} rounds)"
                )
    finally:
        await engine.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="requests per mode and round")
    parser.add_argument("--tokens", type=int, default=len(TOKENS), help="tokens per answer")
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
