"""The request record being built while a request is served, finished into a row at the end,
and its encoding in the record spool (``encode``/``decode``: JSON, times as ISO 8601)."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from rollout.core.split import Arm
from service.clock import now
from service.errors import GatewayError
from service.guard.output_fields import FieldValue
from service.records.redaction import redact
from service.settings import RecordBodies

# What a record carries for another domain, to be written with it in one transaction: an
# escalated answer's review item, as plain data (the composition root hands the keeper and the
# shipper the function that writes it).
Attachment = dict[str, Any]

# What a refused request's record keeps of its body: enough to see what the client sent.
REFUSED_BODY_CHARS = 1024


@dataclass(frozen=True, slots=True)
class FinishedRecord:
    """A request's row, and the review item to write with it when the answer was escalated."""

    row: dict[str, Any]
    review: Attachment | None


class RecordDraft:
    __slots__ = (
        "agreement",
        "arm",
        "attempts",
        "confidence",
        "created_at",
        "ended",
        "endpoint",
        "error",
        "escalated",
        "fields",
        "finish_reason",
        "id",
        "key_id",
        "replica",
        "request_body",
        "response_body",
        "review",
        "rollout_id",
        "route",
        "schema_valid",
        "shadow_of",
        "started",
        "status_code",
        "stream",
        "target",
        "tokens_in",
        "tokens_out",
        "ttft_s",
    )  # fmt: skip

    def __init__(self, endpoint: str) -> None:
        self.id = secrets.token_hex(16)  # 4x cheaper than str(uuid4()) on the hot path
        self.created_at = now()
        self.started = time.perf_counter()
        self.endpoint = endpoint
        self.key_id: str | None = None
        self.route: str | None = None
        self.target: str | None = None
        self.arm: str = Arm.STABLE.value
        self.replica: str | None = None
        self.stream = False
        self.status_code = 200
        self.error: GatewayError | None = None
        self.ttft_s: float | None = None
        self.tokens_in: int | None = None
        self.tokens_out: int | None = None
        self.finish_reason: str | None = None
        self.attempts = 0
        self.request_body: str | None = None
        self.response_body: str | None = None
        self.rollout_id: str | None = None
        self.shadow_of: str | None = None
        self.agreement: dict[str, bool] | None = None
        self.schema_valid: bool | None = None
        self.confidence: float | None = None
        self.escalated: bool | None = None
        # The answer's values of its contract's binned fields (drift monitoring).
        self.fields: dict[str, FieldValue] | None = None
        # The review item to write with this record (same transaction), when escalated.
        self.review: Attachment | None = None
        self.ended: float | None = None

    def fail(self, error: GatewayError) -> None:
        self.error = error
        self.status_code = error.status

    def refused_before_engine(self) -> None:
        """Keep only the start of the body of a request no engine saw: storing refused bodies
        whole let four clients flooding 16 KiB schemas slow everyone's record writes (a normal
        client's p95 7.5 -> 62.7 ms, 174 MB of refused bodies)."""
        body = self.request_body
        if body is not None and len(body) > REFUSED_BODY_CHARS:
            self.request_body = (
                f"{body[:REFUSED_BODY_CHARS]}... [refused before the engine: the first "
                f"{REFUSED_BODY_CHARS} of {len(body)} characters kept]"
            )

    def mark_first_token(self) -> None:
        if self.ttft_s is None:
            self.ttft_s = time.perf_counter() - self.started

    def take_usage(self, usage: Any) -> None:
        if isinstance(usage, dict):
            self.tokens_in = usage.get("prompt_tokens")
            self.tokens_out = usage.get("completion_tokens")

    def used_tokens(self) -> int | None:
        """Prompt and completion tokens the engine reported, None when it reported none."""
        if isinstance(self.tokens_in, int) and isinstance(self.tokens_out, int):
            return self.tokens_in + self.tokens_out
        return None

    def stop_clock(self) -> None:
        """Fix the latency now, e.g. before a shadow call waits to compare its answer."""
        if self.ended is None:
            self.ended = time.perf_counter()

    def elapsed_s(self) -> float:
        return (self.ended or time.perf_counter()) - self.started

    def finished(self, latency_s: float, bodies: RecordBodies) -> FinishedRecord:
        return FinishedRecord(self.row(latency_s, bodies), self.review)

    def row(self, latency_s: float, bodies: RecordBodies) -> dict[str, Any]:
        return {
            "id": self.id,
            "created_at": self.created_at,
            "endpoint": self.endpoint,
            "key_id": self.key_id,
            "route": self.route,
            "target": self.target,
            "arm": self.arm,
            "replica": self.replica,
            "stream": self.stream,
            "status_code": self.status_code,
            "error_type": self.error.type if self.error else None,
            "error_code": self.error.code if self.error else None,
            "latency_ms": latency_s * 1000.0,
            "ttft_ms": self.ttft_s * 1000.0 if self.ttft_s is not None else None,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "finish_reason": self.finish_reason,
            "attempts": self.attempts,
            "request_body": _body(self.request_body, bodies),
            "response_body": _body(self.response_body, bodies),
            "rollout_id": self.rollout_id,
            "shadow_of": self.shadow_of,
            "agreement": self.agreement,
            "schema_valid": self.schema_valid,
            "confidence": self.confidence,
            "escalated": self.escalated,
            "fields": self.fields,
        }


def _body(text: str | None, bodies: RecordBodies) -> str | None:
    if text is None or bodies is RecordBodies.FULL:
        return text
    return redact(text) if bodies is RecordBodies.REDACTED else None


def encode(record: FinishedRecord) -> bytes:
    return orjson.dumps({"row": record.row, "review": record.review})


def decode(payload: bytes) -> FinishedRecord:
    """A spooled record; raises ``ValueError``/``KeyError``/``TypeError`` on one it cannot read."""
    data = orjson.loads(payload)
    row = data["row"]
    row["created_at"] = datetime.fromisoformat(row["created_at"])
    row.setdefault("fields", None)  # spooled by a version without the column
    return FinishedRecord(row, data["review"])  # an attachment's times stay ISO strings
