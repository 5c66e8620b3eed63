"""Closed-loop load: CONCURRENCY workers send requests back to back for DURATION seconds.

With ``--rate R`` the load is open-loop instead: a request is due every 1/R seconds whatever
the earlier ones are doing, so a slower server builds a queue instead of getting fewer
requests. Latency then counts from each request's due time (no coordinated omission), and the
figures add ``send_lag_p99_ms`` (how late this process itself got requests out: when it is
large, the load generator rather than the server shaped the run) and ``max_in_flight``.

Prints one JSON line: completed (after the warm-up), served (all, warm-up included), errors,
req/s, latency p50/p99 (ms) and, for streams, time to first content chunk p50/p99 (ms). Run as
its own process so it does not share the gateway's loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable

import aiohttp
import uvloop


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


async def run(args: argparse.Namespace) -> dict[str, float]:
    body = json.dumps(
        {
            "model": args.model,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": args.max_tokens,
            "stream": args.stream,
        }
    ).encode()
    headers = {"Content-Type": "application/json"}
    if args.key:
        headers["Authorization"] = f"Bearer {args.key}"
    latencies: list[float] = []
    ttfts: list[float] = []
    errors = 0
    served = 0  # every request answered, warm-up included: what a server's CPU time covers
    extra: dict[str, float] = {}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(start: float | None = None, record: bool = True) -> None:
            """One request; its latency counts from ``start`` (default: now)."""
            nonlocal errors, served
            start = time.perf_counter() if start is None else start
            status, first = 0, None
            try:
                async with http.post(args.url, data=body, headers=headers) as response:
                    status = response.status
                    if args.stream:
                        async for line in response.content:
                            if first is None and line.startswith(b"data: {"):
                                first = time.perf_counter() - start
                    else:
                        await response.read()
            except aiohttp.ClientError:
                status = 0
            served += 1
            if not record:
                return
            if first is not None:
                ttfts.append(first * 1000)
            if status != 200:
                errors += 1
            latencies.append((time.perf_counter() - start) * 1000)

        async def worker(deadline: float) -> None:
            while time.perf_counter() < deadline:
                await one()

        if args.rate:
            started = time.perf_counter() + args.warmup
            extra = await open_loop(args, one)
        else:
            warm_deadline = time.perf_counter() + args.warmup
            await asyncio.gather(*(worker(warm_deadline) for _ in range(args.concurrency)))
            latencies.clear()
            ttfts.clear()
            errors = 0
            started = time.perf_counter()
            deadline = started + args.duration
            await asyncio.gather(*(worker(deadline) for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "completed": len(latencies),
        "served": served,
        "errors": errors,
        "rps": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "ttft_p50_ms": percentile(ttfts, 50),
        "ttft_p99_ms": percentile(ttfts, 99),
        **extra,
    }


async def open_loop(
    args: argparse.Namespace, one: Callable[[float, bool], Awaitable[None]]
) -> dict[str, float]:
    """Send one request every 1/rate s for warm-up + duration, regardless of completions.

    Only requests due after the warm-up are recorded; warm-up requests still in flight then
    overlap the measured ones, as steady traffic would. Returns once every request is done.
    """
    interval = 1 / args.rate
    began = time.perf_counter()
    measured_from = began + args.warmup
    deadline = measured_from + args.duration
    tasks: set[asyncio.Task[None]] = set()
    lags: list[float] = []
    max_in_flight = 0
    sent = 0
    while (due := began + sent * interval) < deadline:
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        record = due >= measured_from
        if record:
            lags.append((time.perf_counter() - due) * 1000)
        task = asyncio.create_task(one(due, record))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        max_in_flight = max(max_in_flight, len(tasks))
        sent += 1
    await asyncio.gather(*tasks)
    return {"send_lag_p99_ms": percentile(lags, 99), "max_in_flight": max_in_flight}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", default="bench-base")
    parser.add_argument("--key", default="")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--rate", type=float, default=0.0, help="open-loop requests/s (0: closed loop)"
    )
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    args = parser.parse_args()
    print(json.dumps(uvloop.run(run(args))))


if __name__ == "__main__":
    main()
