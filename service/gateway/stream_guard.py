"""A streamed answer collected as it is relayed: each choice's text, tool calls, finish reason
and (under a contract) token logprobs, rebuilt at its end into the non-streamed shape.

The tokens go to the client as they come (the engine still writes under the contract's
grammar); their logprobs, which the gateway asked for to score the answer, are collected here
and taken out of the chunks again when the client did not ask for them. When the stream ends,
``answer`` rebuilds the non-streamed shape the guard judges and the record keeps, and
``verdict_event`` is the last event before ``data: [DONE]``: a chunk with one empty delta, so
clients that read ``chunk.choices[0].delta.content`` read nothing from it, carrying the
``loragate`` verdict.
"""

from __future__ import annotations

from typing import Any

import orjson

from service.guard.answers import comparable
from service.guard.route_guard import METADATA


class _Choice:
    __slots__ = ("calls", "finish_reason", "text", "tokens")

    def __init__(self) -> None:
        self.text: list[str] = []
        self.tokens: list[Any] = []
        self.calls: dict[int, dict[str, Any]] = {}  # by the call's index in the deltas
        self.finish_reason: str | None = None

    def take_calls(self, deltas: object) -> None:
        """Tool-call deltas: the first of a call brings its id and name, the rest pieces of
        its arguments."""
        if not isinstance(deltas, list):
            return
        for delta in deltas:
            if not isinstance(delta, dict):
                continue
            index = delta.get("index")
            call = self.calls.setdefault(
                index if isinstance(index, int) else len(self.calls),
                {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
            )
            if isinstance(delta.get("id"), str):
                call["id"] = delta["id"]
            function = delta.get("function")
            if isinstance(function, dict):
                if isinstance(function.get("name"), str):
                    call["function"]["name"] += function["name"]
                if isinstance(function.get("arguments"), str):
                    call["function"]["arguments"] += function["arguments"]

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.text) or None}
        if self.calls:
            message["tool_calls"] = [self.calls[i] for i in sorted(self.calls)]
        elif message["content"] is None:
            message["content"] = ""
        return message


class StreamedAnswer:
    __slots__ = ("chat", "choices", "created", "id", "keep_logprobs", "model")

    def __init__(self, *, keep_logprobs: bool, chat: bool = True) -> None:
        self.keep_logprobs = keep_logprobs
        self.chat = chat
        self.choices: dict[int, _Choice] = {}
        self.id: object = None
        self.created: object = None
        self.model: object = None

    def take(self, event: dict[str, Any]) -> tuple[bool, bool]:
        """Collect an event's choices. Returns (changed, first text): changed when logprobs
        the client did not ask for were taken out (the event must be written anew); first
        text when a piece of an answer arrived."""
        if self.id is None:
            self.id, self.created, self.model = (
                event.get("id"),
                event.get("created"),
                event.get("model"),
            )
        changed = written = False
        for choice in event.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            index = choice.get("index")
            collected = self.choices.get(index if isinstance(index, int) else 0)
            if collected is None:
                collected = self.choices[index if isinstance(index, int) else 0] = _Choice()
            if self.chat:
                delta = choice.get("delta")
                piece = delta.get("content") if isinstance(delta, dict) else None
                if isinstance(delta, dict) and delta.get("tool_calls"):
                    collected.take_calls(delta["tool_calls"])
                    written = True
            else:
                piece = choice.get("text")
            if isinstance(piece, str) and piece:
                collected.text.append(piece)
                written = True
            if isinstance(choice.get("finish_reason"), str):
                collected.finish_reason = choice["finish_reason"]
            logprobs = choice.get("logprobs")
            content = logprobs.get("content") if isinstance(logprobs, dict) else None
            if isinstance(content, list):
                collected.tokens.extend(content)
            if logprobs is not None and not self.keep_logprobs:
                choice["logprobs"] = None
                changed = True
        return changed, written

    @property
    def finish_reason(self) -> str | None:
        first = self.choices.get(0)
        return first.finish_reason if first is not None else None

    def answer(self) -> dict[str, Any]:
        """The streamed answer in the non-streamed shape the guard judges."""
        if not self.chat:
            texts = [
                {"index": index, "text": "".join(c.text), "finish_reason": c.finish_reason}
                for index, c in sorted(self.choices.items())
            ]
            return {"id": self.id, "object": "text_completion", "choices": texts}
        choices = [
            {
                "index": index,
                "message": choice.message(),
                "finish_reason": choice.finish_reason,
                "logprobs": {"content": choice.tokens},
            }
            for index, choice in sorted(self.choices.items())
        ]
        return {"id": self.id, "object": "chat.completion", "model": self.model, "choices": choices}

    def recorded_body(self) -> str:
        """What the record keeps: the text of a one-choice answer without tool calls (as
        before), else the answer's choices as JSON, each with its text and tool calls."""
        if len(self.choices) <= 1 and not any(c.calls for c in self.choices.values()):
            first = self.choices.get(0)
            return "".join(first.text) if first is not None else ""
        answer = self.answer()
        for choice in answer["choices"]:
            choice.pop("logprobs", None)
        return orjson.dumps({"choices": answer["choices"]}).decode()

    def comparable(self) -> str | None:
        """The first choice as a shadow comparison reads it (its text, or its tool calls)."""
        return comparable(self.answer(), chat=self.chat)

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
