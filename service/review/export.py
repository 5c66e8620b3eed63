"""Reviewers' decisions as training data: chat JSONL that ``loragate adapters train`` accepts.

Which rows become examples:

- ``approved`` review items: the model's answer, as the reviewer accepted it;
- ``corrected`` review items: the reviewer's corrected answer;
- optionally, answers nobody reviewed but the guard trusted: chat request records with status
  200, not a shadow call, ``schema_valid`` true, not escalated, not under review, and
  ``confidence >= include_unreviewed_above`` (their answer: ``choices[0].message.content`` of
  the stored response, or the relayed text of a stream).

``rejected`` items (and anything still pending, claimed or parked) never are. Time filters
(``since`` inclusive, ``until`` exclusive) apply to ``decided_at`` for review items and to
``created_at`` for request records.

Each example is the stored request's ``messages`` (roles system, user and assistant; string
content, or a list of text parts joined) followed by ``{"role": "assistant", "content":
answer}``, written as one JSON object per line. Requests that cannot be parsed, have no
messages, use other roles, lack a user message, or whose answer is empty are skipped and counted.

Redaction (on by default) replaces, in every message's content (the answer included):

- e-mail addresses (``name@domain.tld``) with ``<email>``;
- phone-number-like digit runs (9 to 15 digits, with a leading ``+`` or parentheses, or split
  into at least three groups by spaces or hyphens, e.g. ``+44 20 7946 0958``,
  ``(555) 123-4567``, ``555-123-4567``) with ``<phone>``;
- any other run of 9 or more digits (optionally split by single spaces or hyphens: card, IBAN,
  account and contiguous phone numbers) with ``<number>``.

Digits inside words or identifiers (``order42``, hex ids) are never touched, nor are ISO dates,
decimals (a ``.`` ends a run) or shorter numbers. It is deliberately conservative: a safety net,
not a guarantee; a route whose requests carry personal data needs its own scrubbing upstream.
Redaction runs before duplicates are removed (same messages and same answer: one is kept).

An example whose input repeats an evaluation case of an exported route, exactly or nearly
(``service.evaluation.leakage``), is held out: a version must not be trained on what it will
be tested on. The manifest counts them (``held_out_exact``, ``held_out_near``).

JSON strings keep every value verbatim: an answer starting ``=``, ``+``, ``-`` or ``@`` (a
spreadsheet formula) or holding ``<script>`` is plain data inside the JSON string; only the
line separators that ``str.splitlines`` would break a line on (U+0085, U+2028, U+2029) are
written escaped, so every example stays on one line.

The split is deterministic and order-free: an example goes to validation when the first 8 bytes
of ``sha256(f"{seed}\\n{line}")``, read as a fraction of 2**64, fall below ``val_fraction``;
when that leaves a side empty and there are two or more examples, the example with the lowest
(or highest) hash value moves over. Lines are written in hash order, so the files (and their
sha256) do not depend on the order the database returned rows in.

The snapshot id is ``"ds-" + sha256("train:<train sha256>\\nvalidation:<validation sha256>\\n")``
cut to 16 hex digits: the same data always has the same id, whatever the filters or the time.
``export_and_record`` builds an export and records its snapshot: the one operation behind
``POST /v1/reviews/export`` (``service.review.export_api``) and ``loragate reviews export``
(``service.review.cli``). The files are written to disk as the rows are read, a batch at a
time from a server-side cursor, and split and hashed on the way
(``service.review.export_files``): memory does not grow with the size of the export.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import weakref
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service import clock
from service.audit.actor import Actor
from service.audit.events import record_event
from service.db.models import RequestRecord, ReviewItem, TrainingSnapshot
from service.evaluation.cases import prompt_of
from service.evaluation.store import held_out
from service.guard.answers import answer_text
from service.guard.prompts import prompt_messages
from service.records.redaction import redact
from service.review.export_files import FILES, SpillWriter, hash_fraction
from service.review.queue import write_transaction

SOURCES = ("approved", "corrected", "unreviewed")
# Examples left out because their input repeats an evaluation case's (service.evaluation).
HELD_OUT = ("held_out_exact", "held_out_near")
BATCH_ROWS = 500  # rows fetched at a time while an export is written


@dataclass(frozen=True, slots=True)
class ExportFilters:
    """Which answers become examples (see the module docstring) and how they are split."""

    routes: Sequence[str] | None = None
    tiers: Sequence[str] | None = None  # reviewed items of these risk tiers only
    since: datetime | None = None  # timezone-aware, like ``until``
    until: datetime | None = None
    include_unreviewed_above: float | None = None
    val_fraction: float = 0.1
    seed: int = 0
    redact: bool = True


class Export:
    """An export written to ``directory`` (train.jsonl, validation.jsonl, all.jsonl) and its
    manifest. Built without a directory of its own, it owns a temporary one, removed by
    ``discard`` or when the export is garbage-collected."""

    def __init__(self, manifest: dict[str, Any], directory: Path, *, temporary: bool) -> None:
        self.manifest = manifest
        self.directory = directory
        self._cleanup = (
            weakref.finalize(self, shutil.rmtree, directory, ignore_errors=True)
            if temporary
            else None
        )

    @property
    def snapshot_id(self) -> str:
        return str(self.manifest["snapshot_id"])

    def path(self, split: str) -> Path:
        """The file of ``train``, ``validation`` or ``all``."""
        return self.directory / FILES[split]

    def chunks(self, split: str, size: int = 64 * 1024) -> Iterator[bytes]:
        """A file's bytes, a chunk at a time (for streaming it out)."""
        with self.path(split).open("rb") as file:
            while chunk := file.read(size):
                yield chunk

    def lines(self, split: str) -> list[str]:
        """A file's lines in memory: for small exports (and tests), not for streaming."""
        return self.path(split).read_text(encoding="utf-8").splitlines()

    @property
    def train_lines(self) -> list[str]:
        return self.lines("train")

    @property
    def val_lines(self) -> list[str]:
        return self.lines("validation")

    @property
    def all_lines(self) -> list[str]:
        return self.lines("all")

    def discard(self) -> None:
        """Remove the temporary directory now (nothing for an export written to ``out``)."""
        if self._cleanup is not None:
            self._cleanup()


def _dumps(value: object) -> str:
    line = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    # json leaves these unescaped, but str.splitlines (and so the training loader) breaks on them.
    return line.replace("\x85", "\\u0085").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def example_line(request_body: str | None, answer: str | None, *, redacted: bool) -> str | None:
    """One JSONL line: the request's messages plus the answer; ``None`` when unusable."""
    messages = prompt_messages(request_body)
    if messages is None or answer is None or not answer.strip():
        return None
    messages.append({"role": "assistant", "content": answer})
    if redacted:
        messages = [{"role": m["role"], "content": redact(m["content"])} for m in messages]
    return _dumps({"messages": messages})


def _record_answer(body: str | None, stream: bool | None) -> str | None:
    """The answer text of a stored chat response (or of a relayed stream)."""
    if not body:
        return None
    if stream:
        return body
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    return answer_text(payload, chat=True) if isinstance(payload, dict) else None


def split_lines(
    lines: Iterable[str], *, val_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """(train, validation) by each line's hash, both in hash order; see the module docstring."""
    if not 0 <= val_fraction < 1:
        raise ValueError("val_fraction must be at least 0 and below 1")
    ranked = sorted((hash_fraction(line, seed), line) for line in set(lines))
    train = [line for value, line in ranked if value >= val_fraction]
    val = [line for value, line in ranked if value < val_fraction]
    if len(ranked) >= 2 and val_fraction > 0 and not val:
        val, train = [train[0]], train[1:]
    elif len(ranked) >= 2 and not train:
        train, val = [val[-1]], val[:-1]
    return train, val


def content_bytes(lines: Sequence[str]) -> bytes:
    """A file's content: one line each, newline-terminated."""
    return "".join(f"{line}\n" for line in lines).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def snapshot_id_of(train_sha: str, val_sha: str) -> str:
    digest = sha256_hex(f"train:{train_sha}\nvalidation:{val_sha}\n".encode())
    return f"ds-{digest[:16]}"


def _item_rows(filters: ExportFilters, since: datetime | None, until: datetime | None) -> Any:
    items = select(
        ReviewItem.state, ReviewItem.request_body, ReviewItem.answer, ReviewItem.corrected_answer,
    ).where(ReviewItem.state.in_(("approved", "corrected")))  # fmt: skip
    if filters.routes:
        items = items.where(ReviewItem.route.in_(list(filters.routes)))
    if filters.tiers is not None:
        items = items.where(ReviewItem.risk.in_(list(filters.tiers)))
    if since is not None:
        items = items.where(ReviewItem.decided_at >= since)
    if until is not None:
        items = items.where(ReviewItem.decided_at < until)
    return items.order_by(ReviewItem.id)


def _record_rows(
    filters: ExportFilters, threshold: float, since: datetime | None, until: datetime | None
) -> Any:
    records = select(
        RequestRecord.request_body, RequestRecord.response_body, RequestRecord.stream
    ).where(
        RequestRecord.endpoint == "chat",
        RequestRecord.status_code == 200,
        RequestRecord.arm != "shadow",
        RequestRecord.shadow_of.is_(None),
        RequestRecord.schema_valid.is_(True),
        (RequestRecord.escalated.is_(None)) | (RequestRecord.escalated.is_(False)),
        RequestRecord.confidence >= threshold,
        RequestRecord.id.not_in(select(ReviewItem.request_id)),
    )
    if filters.routes:
        records = records.where(RequestRecord.route.in_(list(filters.routes)))
    if since is not None:
        records = records.where(RequestRecord.created_at >= since)
    if until is not None:
        records = records.where(RequestRecord.created_at < until)
    return records.order_by(RequestRecord.id)


async def _rows(session: AsyncSession, query: Any, batch_size: int) -> AsyncIterator[Any]:
    """The query's rows, fetched ``batch_size`` at a time from a server-side cursor."""
    result = await session.stream(query.execution_options(yield_per=batch_size))
    async for batch in result.partitions(batch_size):
        for row in batch:
            yield row


async def build_export(
    session: AsyncSession, filters: ExportFilters, out: Path | None = None, *,
    now: datetime | None = None, batch_size: int = BATCH_ROWS,
) -> Export:  # fmt: skip
    """Write the examples to ``out`` (train.jsonl, validation.jsonl, all.jsonl; a temporary
    directory the export owns when ``None``) as rows are read, ``batch_size`` rows at a time,
    without duplicates, split, and described in a manifest; memory holds a batch of rows and
    one spill bucket (``service.review.export_files``), never the whole export."""
    if not 0 <= filters.val_fraction < 1:
        raise ValueError("val_fraction must be at least 0 and below 1")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if out is not None:
        return await _build(session, filters, out, now, batch_size, temporary=False)
    directory = Path(tempfile.mkdtemp(prefix="loragate-export-"))
    try:
        return await _build(session, filters, directory, now, batch_size, temporary=True)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise


async def _build(
    session: AsyncSession, filters: ExportFilters, directory: Path, now: datetime | None,
    batch_size: int, *, temporary: bool,
) -> Export:  # fmt: skip
    threshold, redacted = filters.include_unreviewed_above, filters.redact
    since = clock.require_utc(filters.since) if filters.since is not None else None
    until = clock.require_utc(filters.until) if filters.until is not None else None
    counts = dict.fromkeys((*SOURCES, "skipped", *HELD_OUT), 0)
    held = await held_out(session, filters.routes or None)
    spill = SpillWriter(Path(tempfile.mkdtemp(prefix=".spill-", dir=_made(directory))),
                        filters.seed)  # fmt: skip

    def add(source: str, body: str | None, answer: str | None) -> None:
        line = example_line(body, answer, redacted=redacted)
        if line is None:
            counts["skipped"] += 1
        elif leak := held.leak(prompt_of(prompt_messages(body) or ())):
            counts[f"held_out_{leak}"] += 1
        else:
            counts[source] += 1
            spill.add(line)

    try:
        async for state, body, answer, corrected in _rows(
            session, _item_rows(filters, since, until), batch_size
        ):
            add(state, body, corrected if state == "corrected" else answer)
        if threshold is not None:
            query = _record_rows(filters, threshold, since, until)
            async for body, response, stream in _rows(session, query, batch_size):
                add("unreviewed", body, _record_answer(response, stream))
        written = spill.finish(directory, filters.val_fraction)
    finally:
        spill.discard()
    manifest: dict[str, Any] = {
        "snapshot_id": snapshot_id_of(written.sha256["train"], written.sha256["validation"]),
        "format": "chat-jsonl",
        "sha256": written.sha256,
        "counts": {**{source: counts[source] for source in SOURCES},
                   "duplicates_removed": written.duplicates, "skipped": counts["skipped"],
                   **{key: counts[key] for key in HELD_OUT},
                   "train": written.train, "validation": written.validation},
        "held_out_inputs": len(held),
        "filters": {
            "routes": sorted(filters.routes) if filters.routes else None,
            "tiers": sorted(filters.tiers) if filters.tiers is not None else None,
            "since": since.isoformat() if since else None,
            "until": until.isoformat() if until else None,
            "include_unreviewed_above": threshold,
            "val_fraction": filters.val_fraction,
            "seed": filters.seed,
            "redact": redacted,
        },
        "created_at": (now or clock.now()).astimezone(UTC).isoformat(),
    }  # fmt: skip
    return Export(manifest, directory, temporary=temporary)


def _made(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return directory


async def save_snapshot(session: AsyncSession, export: Export, created_by: str | None) -> bool:
    """Record the export's snapshot in the caller's transaction; ``False`` if it already was.

    The id is the data's content, so saving the same data again (even concurrently: the insert
    does nothing on a conflicting id) keeps the first record.
    """
    manifest = export.manifest
    values = {
        "id": export.snapshot_id,
        "created_at": datetime.fromisoformat(manifest["created_at"]),
        "created_by": created_by,
        "manifest": manifest,
        "train_sha256": manifest["sha256"]["train"],
        "validation_sha256": manifest["sha256"]["validation"],
        "train_examples": manifest["counts"]["train"],
        "validation_examples": manifest["counts"]["validation"],
    }
    dialect = (await session.connection()).dialect.name
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    statement = (
        insert(TrainingSnapshot).values(**values).on_conflict_do_nothing(index_elements=["id"])
    )
    result = await session.execute(statement)
    return int(cast(CursorResult[Any], result).rowcount) == 1


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """A recorded snapshot as the API and CLI show it."""

    id: str
    created_at: datetime  # UTC, aware
    created_by: str | None
    train_examples: int
    validation_examples: int
    manifest: dict[str, Any]


async def list_snapshots(session: AsyncSession, limit: int) -> list[SnapshotInfo]:
    """Recorded snapshots, newest first."""
    query = select(TrainingSnapshot).order_by(TrainingSnapshot.created_at.desc()).limit(limit)
    return [_info(row) for row in await session.scalars(query)]


def _info(row: TrainingSnapshot) -> SnapshotInfo:
    return SnapshotInfo(
        row.id, clock.as_utc(row.created_at), row.created_by, row.train_examples,
        row.validation_examples, row.manifest,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class RecordedExport:
    export: Export
    created: bool  # False: the same data had been recorded before


async def export_and_record(
    sessions: async_sessionmaker[AsyncSession],
    filters: ExportFilters,
    created_by: str | None,
    audit: Actor | None = None,
    out: Path | None = None,
) -> RecordedExport:
    """The export written to ``out`` (a temporary directory the export owns when ``None``),
    with its snapshot recorded (and audited for ``audit`` in the same transaction): the one
    operation of the API and the CLI."""
    async with sessions() as session:
        export = await build_export(session, filters, out)
    # A short write of its own (on SQLite, holding the write lock from its start).
    async with write_transaction(sessions) as session:
        created = await save_snapshot(session, export, created_by)
        if audit is not None:
            counts = export.manifest["counts"]
            await record_event(
                session, audit, "review.export", f"snapshot:{export.snapshot_id}",
                after={"created": created, "filters": export.manifest["filters"],
                       "train": counts["train"], "validation": counts["validation"]},
            )  # fmt: skip
        return RecordedExport(export, created)
