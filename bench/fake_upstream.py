"""An instant OpenAI-compatible upstream for benchmarks: fixed answers, no work.

Raw asyncio protocol + httptools, so the upstream costs as little CPU as possible and the
figures show the gateway's own cost. Streams send three content chunks, usage and [DONE].
"""

from __future__ import annotations

import asyncio
import json
import sys

import httptools
import uvloop

ANSWER = json.dumps(
    {
        "id": "cmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "bench-base",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }
).encode()
UNARY = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
    len(ANSWER),
    ANSWER,
)


def _chunk(payload: dict[str, object]) -> bytes:
    event = b"data: " + json.dumps(payload).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(event), event)


def _delta(content: str, finish: str | None = None) -> dict[str, object]:
    return {
        "id": "cmpl-bench",
        "object": "chat.completion.chunk",
        "model": "bench-base",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}],
    }


STREAM = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    + _chunk(_delta("Hello"))
    + _chunk(_delta(" world"))
    + _chunk(_delta("!", "stop"))
    + _chunk(
        {"id": "cmpl-bench", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3}}
    )
    + b"%x\r\n%s\r\n" % (len(b"data: [DONE]\n\n"), b"data: [DONE]\n\n")
    + b"0\r\n\r\n"
)


class Upstream(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.body: list[bytes] = []
        self.transport: asyncio.WriteTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_message_begin(self) -> None:
        self.body = []

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        assert self.transport is not None
        streaming = b'"stream":true' in b"".join(self.body).replace(b" ", b"")
        self.transport.write(STREAM if streaming else UNARY)


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Upstream, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
