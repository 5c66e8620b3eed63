"""A chat request's messages as plain ``{"role", "content"}`` text. Pure.

What the training export and evaluation packs read from a stored request: string content, or
OpenAI content parts that are all text (joined); roles system, user and assistant only.
"""

from __future__ import annotations

import json

ROLES = frozenset({"system", "user", "assistant"})


def content_text(raw: object) -> str | None:
    """A message's content as text: a string, or OpenAI content parts that are all text."""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, list):  # OpenAI content parts: only text parts are usable
        texts = []
        for part in raw:
            if not isinstance(part, dict) or part.get("type") != "text":
                return None
            text = part.get("text")
            if not isinstance(text, str):
                return None
            texts.append(text)
        return "".join(texts)
    return None


def plain_messages(raw: object) -> list[dict[str, str]] | None:
    """``raw`` as a list of text messages with at least one user message; ``None`` if unusable."""
    if not isinstance(raw, list) or not raw:
        return None
    messages = []
    for message in raw:
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            return None
        content = content_text(message.get("content"))
        if content is None:
            return None
        messages.append({"role": str(message["role"]), "content": content})
    if not any(m["role"] == "user" for m in messages):
        return None
    return messages


def prompt_messages(request_body: str | None) -> list[dict[str, str]] | None:
    """The stored request's messages as ``{"role", "content"}``; ``None`` when unusable."""
    if not request_body:
        return None
    try:
        payload = json.loads(request_body)
    except ValueError:
        return None
    return plain_messages(payload.get("messages") if isinstance(payload, dict) else None)
