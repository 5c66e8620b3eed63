"""A streamed answer under an output contract: collected as it is relayed, judged at its end.

The tokens go to the client as they come (the engine still writes under the contract's
grammar); their logprobs, which the gateway asked for to score the answer, are collected here
and taken out of the chunks again when the client did not ask for them. When the stream ends,
``answer`` rebuilds the non-streamed shape the guard judges, and ``verdict_event`` is the last
event before ``data: [DONE]``: a chunk with one empty delta, so clients that read
``chunk.choices[0].delta.content`` read nothing from it, carrying the ``loragate`` verdict.
"""

from __future__ import annotations

from typing import Any

import orjson

from service.guard.route_guard import METADATA


class StreamedAnswer:
    __slots__ = ("created", "id", "keep_logprobs", "model", "tokens")

    def __init__(self, *, keep_logprobs: bool) -> None:
        self.keep_logprobs = keep_logprobs
        self.tokens: list[Any] = []
        self.id: object = None
        self.created: object = None
        self.model: object = None

    def take(self, event: dict[str, Any]) -> bool:
        """Collect an event's token logprobs; True when the event was changed (logprobs the
        client did not ask for were taken out) and must be written anew."""
        if self.id is None:
            self.id, self.created, self.model = (
                event.get("id"),
                event.get("created"),
                event.get("model"),
            )
        changed = False
        for choice in event.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            logprobs = choice.get("logprobs")
            content = logprobs.get("content") if isinstance(logprobs, dict) else None
            if isinstance(content, list):
                self.tokens.extend(content)
            if logprobs is not None and not self.keep_logprobs:
                choice["logprobs"] = None
                changed = True
        return changed

    def answer(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        """The streamed answer in the non-streamed shape the guard judges."""
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": finish_reason,
            "logprobs": {"content": self.tokens},
        }
        return {
            "id": self.id,
            "object": "chat.completion",
            "model": self.model,
            "choices": [choice],
        }

    def verdict_event(self, metadata: dict[str, Any]) -> bytes:
        """The final SSE event: an empty chunk that carries the verdict under ``loragate``."""
        event = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created if isinstance(self.created, int) else 0,
            "model": self.model,
            "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": None}],
            METADATA: metadata,
        }
        return b"data: " + orjson.dumps(event) + b"\n\n"
