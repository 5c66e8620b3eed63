"""The evaluation domain's tables (service.evaluation): packs, their cases, runs, answers.

Apart from ``models`` to keep each module small; ``alembic/env.py`` imports both, so the
metadata the migrations are checked against holds every table.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from service.db.models import Base


class EvalPack(Base):
    """An immutable evaluation pack ``route/name@version`` (service.evaluation)."""

    __tablename__ = "eval_packs"
    __table_args__ = (UniqueConstraint("route", "name", "version", name="uq_eval_packs_version"),)

    id: Mapped[str] = mapped_column(String(300), primary_key=True)  # "route/name@version"
    route: Mapped[str] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str | None] = mapped_column(String(32), nullable=True)
    cases: Mapped[int] = mapped_column(Integer)
    kinds: Mapped[dict[str, int]] = mapped_column(JSON)
    # Where the cases came from and what was left out, and why.
    sources: Mapped[dict[str, Any]] = mapped_column(JSON)


class EvalCase(Base):
    __tablename__ = "eval_cases"

    pack_id: Mapped[str] = mapped_column(String(300), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    messages: Mapped[list[dict[str, str]]] = mapped_column(JSON)
    expected: Mapped[str] = mapped_column(Text)
    fields: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    slices: Mapped[dict[str, str]] = mapped_column(JSON)
    review_item_id: Mapped[str | None] = mapped_column(String(32), nullable=True)


class EvalRun(Base):
    """One evaluation of a candidate (and its baseline) on a pack (service.evaluation.runs).

    ``running`` while a gateway answers its cases (its version is wanted on the pool meanwhile);
    then ``done`` with ``figures``, ``failed`` with ``reason``, or ``interrupted`` (its gateway
    stopped or stopped beating). Never changed once it has ended.
    """

    __tablename__ = "eval_runs"
    __table_args__ = (Index("ix_eval_runs_route_created", "route", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    route: Mapped[str] = mapped_column(String(200))
    pack_id: Mapped[str] = mapped_column(String(300))
    pool: Mapped[str] = mapped_column(String(100))
    candidate: Mapped[str] = mapped_column(String(300))
    # What was asked ("stable", "base", a version or none) and what it meant when it started.
    baseline_ref: Mapped[str | None] = mapped_column(String(300), nullable=True)
    baseline: Mapped[str | None] = mapped_column(String(300), nullable=True)
    concurrency: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    started_by: Mapped[str | None] = mapped_column(String(32), nullable=True)
    figures: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class EvalAnswer(Base):
    """One case answered by one arm of a run: what came back and how it was judged."""

    __tablename__ = "eval_answers"

    run_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    arm: Mapped[str] = mapped_column(String(16), primary_key=True)  # candidate | baseline
    position: Mapped[int] = mapped_column(Integer, primary_key=True)  # the case's in its pack
    answer: Mapped[str | None] = mapped_column(Text, nullable=True)  # None: the call failed
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    schema_valid: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    escalated: Mapped[bool] = mapped_column(Boolean)
    confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    completion_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
