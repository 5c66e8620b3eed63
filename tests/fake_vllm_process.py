"""Stands in for `python -m vllm.entrypoints.openai.api_server ...` in managed-engine tests.

Takes the same arguments, serves /health and a one-token /v1/completions on --port, and runs
until killed. Lets the supervision logic (start, restart after a crash, stop) be tested
without vLLM; the slow tier runs the same logic with real vLLM.
"""

from __future__ import annotations

import argparse

from aiohttp import web


async def health(_: web.Request) -> web.Response:
    return web.Response(text="")


async def completions(request: web.Request) -> web.Response:
    body = await request.json()
    return web.json_response(
        {"id": "x", "model": body["model"], "choices": [{"index": 0, "text": "ok"}]}
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-m")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args, _ = parser.parse_known_args()
    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_post("/v1/completions", completions)
    web.run_app(app, host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
