"""An instant OpenAI-compatible upstream for benchmarks: fixed answers, no work.

    python bench/fake_upstream.py PORT [DELAY_MS]

Raw asyncio protocol + httptools, so the upstream costs as little CPU as possible and the
figures show the gateway's own cost. Streams send three content chunks, usage and [DONE].
DELAY_MS (default 0) holds every answer back that long, standing in for model time.

Just enough of vLLM's runtime LoRA API for a rollout to start: ``GET /v1/models`` lists the
base model and the loaded adapters, ``POST /v1/load_lora_adapter`` and
``/v1/unload_lora_adapter`` change that list, and the gateway's probe (a completions request
with ``logprobs``) gets logprobs that differ between an adapter and the base model.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

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


BASE_MODEL = "bench-base"
# Runtime-loaded adapters (lora_name -> lora_path), shared by every connection.
ADAPTERS: dict[str, str] = {}
DELAY_S = 0.0


def _response(status: int, payload: Any) -> bytes:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    reason = b"OK" if status == 200 else b"Error"
    return b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        status,
        reason,
        len(body),
        body,
    )


def _error(status: int, message: str) -> bytes:
    return _response(status, {"error": {"message": message, "code": status}})


def _lora(path: bytes, body: bytes) -> bytes:
    """vLLM's runtime LoRA endpoints, with the status codes vLLM answers."""
    request = json.loads(body)
    name = str(request["lora_name"])
    if path == b"/v1/load_lora_adapter":
        if name in ADAPTERS:
            return _error(400, f"The lora adapter '{name}' has already been loaded.")
        ADAPTERS[name] = str(request["lora_path"])
        return _response(200, f"Success: LoRA adapter '{name}' added successfully.".encode())
    if ADAPTERS.pop(name, None) is None:
        return _error(404, f"The lora adapter '{name}' cannot be found.")
    return _response(200, b"Success")


def _probe(body: bytes) -> bytes:
    """Greedy tokens with logprobs; a loaded adapter shifts the logprobs off the base model's."""
    model = str(json.loads(body)["model"])
    tokens = ["Billing", " issue", "."]
    logprob = -0.5 if model in ADAPTERS else -0.1
    choice = {
        "index": 0,
        "text": "".join(tokens),
        "finish_reason": "length",
        "logprobs": {"tokens": tokens, "token_logprobs": [logprob] * len(tokens)},
    }
    return _response(
        200, {"id": "cmpl-probe", "object": "text_completion", "model": model, "choices": [choice]}
    )


def _models() -> bytes:
    names = [BASE_MODEL, *ADAPTERS]
    return _response(200, {"object": "list", "data": [{"id": n} for n in names]})


class Upstream(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.body: list[bytes] = []
        self.url = b""
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
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        body = b"".join(self.body)
        if self.url == b"/v1/models":  # control calls answer at once
            self._write(_models())
            return
        if self.url in (b"/v1/load_lora_adapter", b"/v1/unload_lora_adapter"):
            self._write(_lora(self.url, body))
            return
        if self.url == b"/v1/completions" and b'"logprobs"' in body:
            answer = _probe(body)
        else:
            streaming = b'"stream":true' in body.replace(b" ", b"")
            answer = STREAM if streaming else UNARY
        if DELAY_S:  # model time
            asyncio.get_running_loop().call_later(DELAY_S, self._write, answer)
        else:
            self._write(answer)

    def _write(self, answer: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(answer)


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Upstream, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) > 2:
        DELAY_S = float(sys.argv[2]) / 1000
    uvloop.run(main(int(sys.argv[1])))
