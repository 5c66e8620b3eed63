"""A fake vLLM server on a real socket whose behaviour each test scripts.

The gateway talks to engines over aiohttp, so the fake listens on 127.0.0.1. Each request pops
the next ``Behaviour`` (or uses the default) and the fake keeps every body it received, plus a
count of requests whose client went away before the answer was finished.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from service.engine.adapter_host import PROBE_PROMPT

MODEL = "fake-base"


@dataclass
class Behaviour:
    """What the next request gets.

    kind: ok | status | garbage | html | broken_stream | stall | error_event | close
    """

    kind: str = "ok"
    status: int = 200
    delay_s: float = 0.0
    tokens: list[str] = field(default_factory=lambda: ["Hello", " from", " the", " fake"])
    token_delay_s: float = 0.0
    cut_after: int = 2
    body: bytes = b""
    # Per token, when the request asks for logprobs (default -0.05 each).
    logprobs: list[float] | None = None
    # Answer only once this is set; an adapter unloaded meanwhile fails the request (404), as
    # vLLM fails requests on an adapter that goes away.
    hold: asyncio.Event | None = None
    finish: str = "stop"  # the last choice's finish_reason (e.g. "length": cut by max_tokens)
    # Chat: the answer calls these tools, (name, arguments) each, instead of writing text.
    tool_calls: list[tuple[str, str]] | None = None
    # Per choice when the request asks for `n` > 1: choice i writes choice_tokens[i].
    choice_tokens: list[list[str]] | None = None


class FakeEngine:
    def __init__(self) -> None:
        self.script: deque[Behaviour] = deque()
        self.default = Behaviour()
        self.requests: list[dict[str, Any]] = []
        self.probes = 0
        self.probe_delay_s = 0.0  # how long a health probe waits (as behind a busy engine)
        self.cancelled = 0
        self.completed = 0
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.url = ""
        # Runtime LoRA: loaded adapters (name -> path); names in `refuse` fail to load here
        # (as vLLM refuses an adapter whose rank is over its --max-lora-rank).
        self.adapters: dict[str, str] = {}
        self.refuse: set[str] = set()
        self.adapter_calls: list[tuple[str, str]] = []
        self.adapter_probes = 0
        # What requests for one model get when nothing is scripted (e.g. a worse candidate).
        self.by_model: dict[str, Behaviour] = {}
        # Per model: the tokens it writes, from the request's body (an answer that depends on
        # the question); takes precedence over the behaviour's own tokens.
        self.writers: dict[str, Callable[[dict[str, Any]], list[str]]] = {}

    def restart(self) -> None:
        """What a vLLM restart does to runtime-loaded adapters: they are gone."""
        self.adapters.clear()

    def then(self, *behaviours: Behaviour) -> FakeEngine:
        self.script.extend(behaviours)
        return self

    async def start(self) -> FakeEngine:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        app.router.add_post("/v1/completions", self._handle)
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/load_lora_adapter", self._load)
        app.router.add_post("/v1/unload_lora_adapter", self._unload)
        # Cancel a handler when its client goes away (as vLLM aborts the request), and do not
        # wait for stalled handlers at shutdown.
        self._runner = web.AppRunner(
            app, handle_signals=False, handler_cancellation=True, shutdown_timeout=0.5
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _health(self, _: web.Request) -> web.Response:
        return web.Response(text="")

    async def _models(self, _: web.Request) -> web.Response:
        names = [MODEL, *self.adapters]
        return web.json_response({"object": "list", "data": [{"id": n} for n in names]})

    async def _load(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.adapter_calls.append(("load", body["lora_name"]))
        if body["lora_name"] in self.adapters:
            return _error(400, f"The lora adapter '{body['lora_name']}' has already been loaded.")
        if body["lora_name"] in self.refuse:
            return _error(400, "LoRA rank 16 is greater than max_lora_rank 8.")
        self.adapters[body["lora_name"]] = body["lora_path"]
        return web.Response(text=f"Success: LoRA adapter '{body['lora_name']}' added successfully.")

    async def _unload(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.adapter_calls.append(("unload", body["lora_name"]))
        if self.adapters.pop(body["lora_name"], None) is None:
            return _error(404, f"The lora adapter '{body['lora_name']}' cannot be found.")
        return web.Response(text="Success")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body.get("model") != MODEL and body.get("model") not in self.adapters:
            return _error(404, f"The model `{body.get('model')}` does not exist.")
        if body.get("prompt") == "ping" and body.get("max_tokens") == 1:
            self.probes += 1
            await asyncio.sleep(self.probe_delay_s)
            return web.json_response(_completion(body, ["ok"], "length", next(self._ids)))
        if body.get("prompt") == PROBE_PROMPT:  # the placement's smoke check
            self.adapter_probes += 1
            return web.json_response(_completion(body, ["Billing"], "length", next(self._ids)))
        self.requests.append(body)
        model = str(body.get("model"))
        behaviour = self.script.popleft() if self.script else self.by_model.get(model, self.default)
        if model in self.writers:
            behaviour = dataclasses.replace(behaviour, tokens=self.writers[model](body))
        try:
            response = await self._respond(request, body, behaviour)
        except (asyncio.CancelledError, ConnectionResetError):
            # The client left: cancelled while waiting, or a write found the connection closed.
            self.cancelled += 1
            raise
        self.completed += 1
        return response

    async def _respond(
        self, request: web.Request, body: dict[str, Any], b: Behaviour
    ) -> web.StreamResponse:
        if b.delay_s:
            await asyncio.sleep(b.delay_s)
        if b.hold is not None:
            await b.hold.wait()
            model = body.get("model")
            if model != MODEL and model not in self.adapters:
                return _error(404, f"The model `{model}` was unloaded while in flight.")
        if b.kind == "close":
            assert request.transport is not None
            request.transport.close()
            raise asyncio.CancelledError
        if b.kind == "status":
            return web.json_response(
                {"error": {"message": f"scripted failure {b.status}", "code": b.status}},
                status=b.status,
            )
        if b.kind == "html":
            return web.Response(body=b"<html>a proxy error page</html>", content_type="text/html")
        if b.kind == "garbage" and not body.get("stream"):  # streams get one bad event instead
            return web.Response(body=b.body or b"<html>not json</html>", content_type="text/html")
        if not body.get("stream"):
            n = body.get("n") or 1
            rid = next(self._ids)
            answer = _completion(body, b.tokens, b.finish, rid)
            answer["choices"] = [
                _completion(body, _tokens_of(b, i), b.finish, rid)["choices"][0] | {"index": i}
                for i in range(n)
            ]
            for choice in answer["choices"]:
                tokens = _tokens_of(b, choice["index"])
                if b.tool_calls and "messages" in body:
                    choice["message"]["content"] = None
                    choice["message"]["tool_calls"] = [
                        {"id": f"call-{i}", "type": "function",
                         "function": {"name": name, "arguments": arguments}}
                        for i, (name, arguments) in enumerate(b.tool_calls)
                    ]  # fmt: skip
                    choice["finish_reason"] = "tool_calls" if b.finish == "stop" else b.finish
                if body.get("logprobs") and "messages" in body:
                    values = b.logprobs or [-0.05] * len(tokens)
                    choice["logprobs"] = {
                        "content": [
                            {"token": t, "logprob": lp, "bytes": list(t.encode()),
                             "top_logprobs": []}
                            for t, lp in zip(tokens, values, strict=True)
                        ]
                    }  # fmt: skip
            return web.json_response(_with_vllm_fields(answer))
        return await self._stream(request, body, b)

    async def _stream(
        self, request: web.Request, body: dict[str, Any], b: Behaviour
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        rid = next(self._ids)
        chat = "messages" in body
        await response.write(_event(_chunk(body, rid, chat, None, role=True)))
        for index, token in enumerate(b.tokens):
            if b.kind == "broken_stream" and index == b.cut_after:
                assert request.transport is not None
                request.transport.close()
                return response
            if b.kind == "stall" and index == b.cut_after:
                await asyncio.sleep(3600)
            if b.kind == "error_event" and index == b.cut_after:
                await response.write(_event({"error": {"message": "engine died", "code": 500}}))
                await response.write(b"data: [DONE]\n\n")
                return response
            if b.kind == "garbage" and index == b.cut_after:
                await response.write(b"data: {not json\n\n")
            if b.token_delay_s:
                await asyncio.sleep(b.token_delay_s)
            last = index == len(b.tokens) - 1
            chunk = _chunk(body, rid, chat, token, finish=b.finish if last else None)
            if b.tool_calls and chat:
                chunk["choices"][0]["delta"] = {"tool_calls": [_call_delta(b, index)]}
            if body.get("logprobs") and chat:  # vLLM sends each chunk's tokens with it
                value = b.logprobs[index] if b.logprobs else -0.05
                chunk["choices"][0]["logprobs"] = {
                    "content": [
                        {"token": token, "logprob": value, "bytes": list(token.encode()),
                         "top_logprobs": []}
                    ]
                }  # fmt: skip
            await response.write(_event(_with_vllm_fields(chunk)))
            for extra in range(1, body.get("n") or 1):  # the other choices, token by token
                other = _chunk(body, rid, chat, token, finish=b.finish if last else None)
                other["choices"][0]["index"] = extra
                await response.write(_event(other))
        if (body.get("stream_options") or {}).get("include_usage"):
            await response.write(_event(_usage_chunk(body, rid, len(b.tokens))))
        await response.write(b"data: [DONE]\n\n")
        return response


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "code": status}}, status=status)


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _usage(count: int) -> dict[str, int]:
    return {"prompt_tokens": 7, "completion_tokens": count, "total_tokens": 7 + count}


def _completion(body: dict[str, Any], tokens: list[str], finish: str, rid: int) -> dict[str, Any]:
    text = "".join(tokens)
    if "messages" in body:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": finish,
        }
        kind = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "finish_reason": finish}
        kind = "text_completion"
    return {
        "id": f"cmpl-{rid}",
        "object": kind,
        "created": 0,
        "model": body["model"],
        "choices": [choice],
        "usage": _usage(len(tokens)),
    }


def _chunk(
    body: dict[str, Any],
    rid: int,
    chat: bool,
    token: str | None,
    *,
    role: bool = False,
    finish: str | None = None,
) -> dict[str, Any]:
    if chat:
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {"content": token}
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
        kind = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": token or "", "finish_reason": finish}
        kind = "text_completion"
    return {"id": f"cmpl-{rid}", "object": kind, "model": body["model"], "choices": [choice]}


def _usage_chunk(body: dict[str, Any], rid: int, count: int) -> dict[str, Any]:
    return {"id": f"cmpl-{rid}", "model": body["model"], "choices": [], "usage": _usage(count)}


# What vLLM adds to OpenAI's answers (seen from vLLM 0.32): the gateway must drop them all.
VLLM_ANSWER_FIELDS = {"prompt_logprobs": None, "prompt_token_ids": None, "kv_transfer_params": None}
VLLM_CHOICE_FIELDS = {"stop_reason": None, "token_ids": None, "routed_experts": None}
VLLM_MESSAGE_FIELDS = {"reasoning": None}


def _with_vllm_fields(answer: dict[str, Any]) -> dict[str, Any]:
    for choice in answer["choices"]:
        choice.update(VLLM_CHOICE_FIELDS)
        message = choice.get("message") or choice.get("delta")
        if message is not None:
            message.update(VLLM_MESSAGE_FIELDS)
    return answer | VLLM_ANSWER_FIELDS


def _tokens_of(b: Behaviour, index: int) -> list[str]:
    if b.choice_tokens is not None and index < len(b.choice_tokens):
        return b.choice_tokens[index]
    return b.tokens


def _call_delta(b: Behaviour, index: int) -> dict[str, Any]:
    """A streamed tool call, as vLLM streams it: the first token's event brings the call's id
    and name, each later one a piece of its arguments (the tokens split them)."""
    assert b.tool_calls is not None
    name, arguments = b.tool_calls[0]
    if index == 0:
        return {"index": 0, "id": "call-0", "type": "function", "function": {"name": name}}
    pieces = len(b.tokens) - 1
    size = -(-len(arguments) // pieces)
    return {"index": 0, "function": {"arguments": arguments[(index - 1) * size : index * size]}}
