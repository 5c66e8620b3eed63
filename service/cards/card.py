"""An adapter version's model card: one page an auditor reads, gathered from every domain that
knows something about the version (read only).

What changed and why (the changelog, the training data snapshot and its manifest, the training
manifest written beside the weights), the evaluation runs with the version as candidate or
baseline, its rollouts with their last gate verdicts and history, who registered, started and
decided what (the audit trail), and the drift of every route serving it since it was promoted.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from adapters.errors import AdapterNotFound
from rollout import store as rollout_store
from rollout.store import StoredEvent, StoredRollout
from service.audit.store import AuditFilters, list_events
from service.clock import as_utc
from service.db.models import AdapterVersion, Route, TrainingSnapshot
from service.drift.monitor import DriftReport
from service.evaluation.runs import as_dict, runs_of_version

# The drift of a route since a time, as the card shows it (``drift_summary``).
DriftSince = Callable[[str, datetime], Awaitable[dict[str, Any]]]
AUDIT_LIMIT = 200


async def model_card(
    sessions: async_sessionmaker[AsyncSession], drift: DriftSince, version_id: str
) -> dict[str, Any]:
    async with sessions() as session:
        row = await session.get(AdapterVersion, version_id)
        if row is None:
            raise AdapterNotFound(f"No adapter version '{version_id}'.")
        snapshot = None
        if row.data_snapshot_id is not None:
            snapshot = await session.get(TrainingSnapshot, row.data_snapshot_id)
        runs = await runs_of_version(session, version_id)
        rollouts = await rollout_store.for_candidate(session, version_id)
        history = {r.id: await rollout_store.events(session, r.id) for r in rollouts}
        objects = [f"adapter:{version_id}", *(f"rollout:{r.id}" for r in rollouts)]
        objects += [f"eval_run:{r.id}" for r in runs]
        audit = await _audit(session, objects)
        serving = await session.scalars(select(Route.name).where(Route.target == version_id))
        routes = list(serving)
    promoted = {r.route: e.at for r in rollouts for e in history[r.id] if e.kind == "promoted"}
    registered = as_utc(row.created_at)
    return {
        "version": _version(row),
        "training": {
            "data_snapshot": _snapshot(snapshot),
            "manifest": _training_manifest(Path(row.store_path)),
        },
        "evaluations": [as_dict(run) for run in runs],
        "rollouts": [_rollout(r, history[r.id]) for r in rollouts],
        "audit": audit,
        "serving": {
            route: {
                "since": promoted.get(route, registered).isoformat(),
                "drift": await drift(route, promoted.get(route, registered)),
            }
            for route in routes
        },
    }


def _version(row: AdapterVersion) -> dict[str, Any]:
    return {
        "id": row.id, "name": row.name, "version": row.version, "sha256": row.sha256,
        "pool": row.pool, "base_model": row.base_model, "rank": row.rank, "alpha": row.alpha,
        "target_modules": row.target_modules, "size_bytes": row.size_bytes,
        "created_at": as_utc(row.created_at).isoformat(), "created_by": row.created_by,
        "changelog": row.changelog, "data_snapshot_id": row.data_snapshot_id,
    }  # fmt: skip


def _snapshot(snapshot: TrainingSnapshot | None) -> dict[str, Any] | None:
    if snapshot is None:
        return None
    return {
        "id": snapshot.id, "created_at": as_utc(snapshot.created_at).isoformat(),
        "created_by": snapshot.created_by, "train_examples": snapshot.train_examples,
        "validation_examples": snapshot.validation_examples, "manifest": snapshot.manifest,
    }  # fmt: skip


def _rollout(r: StoredRollout, events: list[StoredEvent]) -> dict[str, Any]:
    return {
        "id": r.id, "route": r.route, "stable": r.stable, "phase": r.state.phase.value,
        "created_at": r.created_at.isoformat(), "created_by": r.created_by,
        "evaluation_run": r.state.evaluation_run,
        "last_verdicts": [
            {"gate": v.gate.value, "verdict": v.verdict.value, "detail": v.detail}
            for v in r.verdicts
        ],
        "events": [
            {"at": e.at.isoformat(), "kind": e.kind, "actor": e.actor, "reason": e.reason}
            for e in events
        ],
    }  # fmt: skip


async def _audit(session: AsyncSession, objects: list[str]) -> list[dict[str, Any]]:
    found = []
    for obj in objects:
        page = await list_events(session, AuditFilters(object=obj, limit=AUDIT_LIMIT))
        found += page.events
    return [
        {"id": e.id, "at": e.at.isoformat(), "actor": e.actor, "role": e.actor_role,
         "action": e.action, "object": e.object}
        for e in sorted(found, key=lambda e: e.id)
    ]  # fmt: skip


def _training_manifest(store: Path) -> dict[str, Any] | None:
    """What training wrote beside the weights (hyperparameters, data digest), if it did."""
    path = store / "manifest.json"
    if not path.is_file():
        return None
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return {"unreadable": f"{type(exc).__name__}: {exc}"}
    return found if isinstance(found, dict) else {"unreadable": "not a JSON object"}


def drift_summary(report: DriftReport) -> dict[str, Any]:
    """A drift report as the card shows it: the route's status and each feature's."""
    return {
        "status": report.status.value,
        "since": report.current.since.isoformat() if report.current.since else None,
        "samples": report.current.samples,
        "features": {f.name: f.status.value for f in report.features},
    }
