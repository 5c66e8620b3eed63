"""Reading an engine's non-streamed answer: first choice, message text, finish reason."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from service.guard.tool_calls import calls_of, comparable_calls


def first_choice(answer: Mapping[str, Any]) -> Mapping[str, Any]:
    """The answer's first choice, or an empty mapping when it has none."""
    choices = answer.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return {}


def answer_text(answer: Mapping[str, Any], *, chat: bool) -> str | None:
    """The first choice's text: a chat message's content, or a completion's ``text``."""
    choice = first_choice(answer)
    if chat:
        message = choice.get("message")
        content = message.get("content") if isinstance(message, dict) else None
    else:
        content = choice.get("text")
    return content if isinstance(content, str) else None


def first_finish_reason(answer: Mapping[str, Any]) -> str | None:
    reason = first_choice(answer).get("finish_reason")
    return reason if isinstance(reason, str) else None


def comparable(answer: Mapping[str, Any], *, chat: bool) -> str | None:
    """The first choice as a shadow comparison reads it: its tool calls when it made some
    (names and arguments, see ``guard.tool_calls``), else its text."""
    if chat:
        calls = calls_of(first_choice(answer).get("message"))
        if calls:
            return comparable_calls(calls)
    return answer_text(answer, chat=chat)


def reviewed_answer(answer: dict[str, Any]) -> dict[str, Any]:
    """The answer as a reviewer reads it: itself when it is one choice of text, else one
    choice whose text is every choice (text and tool calls) as JSON."""
    choices = answer.get("choices")
    if not isinstance(choices, list):
        return answer
    shown = []
    for choice in choices:
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            return answer
        entry: dict[str, Any] = {"index": choice.get("index"), "content": message.get("content")}
        if calls_of(message):
            entry["tool_calls"] = [
                {"name": c.get("function", {}).get("name"),
                 "arguments": c.get("function", {}).get("arguments")}
                for c in calls_of(message)
            ]  # fmt: skip
        shown.append(entry)
    if len(shown) == 1 and "tool_calls" not in shown[0]:
        return answer
    text = json.dumps({"choices": shown}, indent=1, ensure_ascii=False)
    return {**answer, "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
