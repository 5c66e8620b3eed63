"""Closed-loop load: CONCURRENCY workers send requests back to back for DURATION seconds.

Prints one JSON line: completed, errors, req/s, latency p50/p99 (ms) and, for streams, time to
first content chunk p50/p99 (ms). Run as its own process so it does not share the gateway's loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

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
            "max_tokens": 8,
            "stream": args.stream,
        }
    ).encode()
    headers = {"Content-Type": "application/json"}
    if args.key:
        headers["Authorization"] = f"Bearer {args.key}"
    latencies: list[float] = []
    ttfts: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one() -> None:
            nonlocal errors
            start = time.perf_counter()
            async with http.post(args.url, data=body, headers=headers) as response:
                if args.stream:
                    first = None
                    async for line in response.content:
                        if first is None and line.startswith(b"data: {"):
                            first = time.perf_counter() - start
                    if first is not None:
                        ttfts.append(first * 1000)
                else:
                    await response.read()
                if response.status != 200:
                    errors += 1
            latencies.append((time.perf_counter() - start) * 1000)

        async def worker(deadline: float, record: bool) -> None:
            while time.perf_counter() < deadline:
                await one()

        warm_deadline = time.perf_counter() + args.warmup
        await asyncio.gather(*(worker(warm_deadline, False) for _ in range(args.concurrency)))
        latencies.clear()
        ttfts.clear()
        errors = 0
        started = time.perf_counter()
        deadline = started + args.duration
        await asyncio.gather(*(worker(deadline, True) for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "completed": len(latencies),
        "errors": errors,
        "rps": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "ttft_p50_ms": percentile(ttfts, 50),
        "ttft_p99_ms": percentile(ttfts, 99),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", default="bench-base")
    parser.add_argument("--key", default="")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    args = parser.parse_args()
    print(json.dumps(uvloop.run(run(args))))


if __name__ == "__main__":
    main()
