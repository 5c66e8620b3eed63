"""The audit hash chain (pure): each event's hash covers the previous event's hash and the event
itself, so an event edited, removed or inserted by hand breaks the chain at that point.

``hash = sha256(prev_hash + canonical JSON of the event)``, or HMAC-SHA256 with
``LORAGATE_AUDIT_SIGNING_KEY`` when one is set: then only a holder of the key can write a link
that verifies. The walk reads events oldest first and names the first broken link.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from service.clock import as_utc

GENESIS = "0" * 64  # the prev_hash of the first event ever written
PRUNE = "audit.prune"  # the event the retention job writes after removing the oldest events


@dataclass(frozen=True, slots=True)
class EventFields:
    """What an event's hash covers."""

    id: int
    at: datetime
    actor: str
    actor_role: str | None
    os_user: str | None
    action: str
    object: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    request_id: str | None
    client: str | None


@dataclass(frozen=True, slots=True)
class Link:
    event: EventFields
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class Head:
    """The newest event as the chain's head row names it."""

    last_id: int
    hash: str


def canonical(event: EventFields) -> str:
    return json.dumps(
        {
            "id": event.id, "at": as_utc(event.at).isoformat(timespec="microseconds"),
            "actor": event.actor, "actor_role": event.actor_role, "os_user": event.os_user,
            "action": event.action, "object": event.object, "before": event.before,
            "after": event.after, "request_id": event.request_id, "client": event.client,
        },
        sort_keys=True, separators=(",", ":"), ensure_ascii=True,
    )  # fmt: skip


def link_hash(prev_hash: str, event: EventFields, key: bytes = b"") -> str:
    """The hex hash of ``event`` after ``prev_hash``: HMAC-SHA256 with ``key``, else SHA-256."""
    message = (prev_hash + canonical(event)).encode()
    if key:
        return hmac.new(key, message, hashlib.sha256).hexdigest()
    return hashlib.sha256(message).hexdigest()


def prune_record(removed: int, through: Head, before: datetime) -> dict[str, Any]:
    """The ``after`` of an ``audit.prune`` event: what the next walk starts from."""
    return {
        "removed": removed, "through_id": through.last_id, "through_hash": through.hash,
        "before": as_utc(before).isoformat(),
    }  # fmt: skip


class Problem(StrEnum):
    EDITED = "hash_mismatch"  # the event's fields no longer give its hash
    RELINKED = "prev_hash_mismatch"  # events removed or inserted before this one
    HEAD = "head_mismatch"  # the newest events removed (or the head row changed)
    UNSIGNED = "unsigned"  # a key is set, but no event (or not the newest) is signed with it


@dataclass(frozen=True, slots=True)
class Break:
    event_id: int | None  # None: the break is in the head row, not at an event
    problem: Problem
    detail: str


@dataclass(frozen=True, slots=True)
class Verdict:
    checked: int
    first_id: int | None
    last_id: int | None
    head: Head | None
    broken: Break | None

    @property
    def intact(self) -> bool:
        return self.broken is None


class ChainWalk:
    """Feed every event oldest first with ``add``, then ``finish`` with the head row.

    The first event must follow the start of the chain, or, once the retention job pruned, the
    last event it removed: the newest ``audit.prune`` event records that event's hash, and it is
    only known by the end of the walk. With a key, events written before the key was set may be
    plain SHA-256 (each signed one vouches for every link before it), but once a signed event is
    seen every later one must be signed too, and so must the newest.
    """

    def __init__(self, key: bytes = b"") -> None:
        self._key = key
        self._checked = 0
        self._first: Link | None = None
        self._last: Link | None = None
        self._start = GENESIS
        self._start_from = "the start of the chain"
        self._signed = False
        self._broken: Break | None = None

    def add(self, link: Link) -> None:
        self._checked += 1
        event = link.event
        if self._first is None:
            self._first = link
        elif self._last is not None and link.prev_hash != self._last.hash:
            self._break(
                event.id, Problem.RELINKED,
                f"its prev_hash is not the hash of event {self._last.event.id}, the one before "
                "it: events were removed or inserted between them (or that event rewritten)",
            )  # fmt: skip
        self._check_hash(link)
        if event.action == PRUNE and event.after is not None:
            self._start = str(event.after.get("through_hash"))
            self._start_from = (
                f"event {event.after.get('through_id')}, the last one the retention job removed "
                f"(audit.prune event {event.id})"
            )
        self._last = link

    def finish(self, head: Head | None) -> Verdict:
        first, last = self._first, self._last
        if first is not None and first.prev_hash != self._start:
            # The first event comes before any break the walk found.
            self._broken = Break(
                first.event.id, Problem.RELINKED,
                f"the oldest event does not follow {self._start_from}: older events were removed "
                "outside the retention job",
            )  # fmt: skip
        if self._key and last is not None and not self._signed:
            self._break(
                last.event.id, Problem.UNSIGNED,
                "no event is signed with the configured key: the trail was rewritten, or "
                "nothing was audited since the key was set",
            )  # fmt: skip
        self._check_head(head, last)
        return Verdict(
            self._checked, first.event.id if first else None, last.event.id if last else None,
            head, self._broken,
        )  # fmt: skip

    def _check_hash(self, link: Link) -> None:
        plain = link_hash(link.prev_hash, link.event)
        if self._key:
            if hmac.compare_digest(link.hash, link_hash(link.prev_hash, link.event, self._key)):
                self._signed = True
                return
            if not self._signed and hmac.compare_digest(link.hash, plain):
                return  # written before the key was set
            self._break(
                link.event.id, Problem.EDITED,
                "its fields do not give its hash under the configured key: it was edited after "
                "it was written, written by hand, or signed with another key"
                + (" (events before it are signed)" if self._signed else ""),
            )  # fmt: skip
        elif not hmac.compare_digest(link.hash, plain):
            self._break(
                link.event.id, Problem.EDITED,
                "its fields do not give its hash: it was edited after it was written (or it was "
                "signed with a key this check was not given: LORAGATE_AUDIT_SIGNING_KEY)",
            )  # fmt: skip

    def _check_head(self, head: Head | None, last: Link | None) -> None:
        if head is None:
            self._break(None, Problem.HEAD, "the chain head row is missing")
            return
        if last is None:
            if head.last_id != 0:
                self._break(
                    None, Problem.HEAD,
                    f"there are no events, but the head names event {head.last_id}: every "
                    "event was removed",
                )  # fmt: skip
            return
        if head.last_id > last.event.id:
            self._break(
                None, Problem.HEAD,
                f"the head names event {head.last_id}, the newest event is {last.event.id}: the "
                "newest events were removed",
            )  # fmt: skip
        elif head.last_id < last.event.id:
            self._break(
                None, Problem.HEAD,
                f"the head names event {head.last_id}, but events up to {last.event.id} exist: "
                "events were added by hand after it (or the head was moved back)",
            )  # fmt: skip
        elif head.hash != last.hash:
            self._break(
                None, Problem.HEAD,
                f"the head's hash is not that of event {head.last_id}: the newest event was "
                "replaced (or the head row changed)",
            )  # fmt: skip

    def _break(self, event_id: int | None, problem: Problem, detail: str) -> None:
        if self._broken is None:
            self._broken = Break(event_id, problem, detail)
