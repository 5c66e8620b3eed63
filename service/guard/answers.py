"""Reading an engine's non-streamed answer: first choice, message text, finish reason."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


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
