"""How the reviewer pages show an item: ages, confidence that is low, answers as indented JSON,
the request as its messages, schema errors and lease ends as text: plain values in, text out
(no request, no database)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import orjson

from service.guard.prompts import content_text

LOW_CONFIDENCE = 0.5


def age(created_at: datetime, now: datetime) -> str:
    return age_of((now - created_at).total_seconds())


def age_of(span_s: float) -> str:
    seconds = max(0, int(span_s))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h"


def is_low(score: float | None) -> bool:
    return score is not None and score < LOW_CONFIDENCE


def pretty(answer: str) -> str:
    try:
        return json.dumps(orjson.loads(answer), indent=2, ensure_ascii=False)
    except orjson.JSONDecodeError:
        return answer


def text_of(content: Any) -> str:
    """A message's text as the export reads it, else its content as JSON."""
    text = content_text(content)
    return text if text is not None else json.dumps(content, ensure_ascii=False)


def messages(request_body: str | None) -> tuple[list[dict[str, str]], str | None]:
    """The request's messages (role, text), or the body as text when it has none."""
    if request_body is None:
        return [], None
    try:
        body = orjson.loads(request_body)
    except orjson.JSONDecodeError:
        return [], request_body
    if isinstance(body, dict):
        if isinstance(body.get("messages"), list):
            return [
                {"role": str(m.get("role", "?")), "text": text_of(m.get("content"))}
                for m in body["messages"]
                if isinstance(m, dict)
            ], None
        if isinstance(body.get("prompt"), str):
            return [{"role": "prompt", "text": body["prompt"]}], None
    return [], pretty(request_body)


def error_text(error: Any) -> str:
    return error if isinstance(error, str) else json.dumps(error, ensure_ascii=False)


def lease_text(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
