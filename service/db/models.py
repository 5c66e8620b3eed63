"""Tables. Every change here needs an Alembic migration under ``alembic/versions``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    secret_hash: Mapped[str] = mapped_column(String(64))
    allowed_routes: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # {"rpm", "tpm", "max_concurrent", "routes": {route: {...}}}: see service/limits/quota.py.
    limits: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # A reviewer key limited to review items of these risk tiers (null: every tier).
    allowed_tiers: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)


class RateWindow(Base):
    """Requests and tokens one limit scope (a key, or a key on a route) used in one minute."""

    __tablename__ = "rate_windows"

    scope: Mapped[str] = mapped_column(String(240), primary_key=True)
    minute: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger)
    tokens: Mapped[int] = mapped_column(BigInteger)


class RateLease(Base):
    """A request in flight under a concurrency limit; it lapses at ``expires_at`` (epoch
    seconds) if the gateway that took it dies before giving it back."""

    __tablename__ = "rate_leases"

    scope: Mapped[str] = mapped_column(String(240), primary_key=True)
    lease: Mapped[str] = mapped_column(String(36), primary_key=True)
    expires_at: Mapped[float] = mapped_column(Float)


class Route(Base):
    __tablename__ = "routes"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    pool: Mapped[str] = mapped_column(String(200))
    target: Mapped[str] = mapped_column(String(300))
    max_tokens_cap: Mapped[int | None] = mapped_column(Integer, nullable=True)
    default_max_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    description: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The output contract: a Draft 2020-12 JSON Schema, and the review policy (see guard.policy).
    output_schema: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    review_policy: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # low | medium | high | critical: the review policy's defaults (service.guard.tiers).
    risk: Mapped[str] = mapped_column(String(16), server_default="medium")
    # Service targets and drift minimums the route sets (service.routes.monitoring); None: defaults.
    monitoring: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class RequestRecord(Base):
    __tablename__ = "request_records"
    __table_args__ = (
        Index("ix_request_records_route_created", "route", "created_at"),
        Index("ix_request_records_created", "created_at"),
        Index("ix_request_records_rollout_created", "rollout_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    endpoint: Mapped[str] = mapped_column(String(32))
    key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    route: Mapped[str | None] = mapped_column(String(200), nullable=True)
    target: Mapped[str | None] = mapped_column(String(300), nullable=True)
    arm: Mapped[str] = mapped_column(String(16))
    replica: Mapped[str | None] = mapped_column(String(300), nullable=True)
    stream: Mapped[bool] = mapped_column(Boolean)
    status_code: Mapped[int] = mapped_column(Integer)
    error_type: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    latency_ms: Mapped[float] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    tokens_in: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tokens_out: Mapped[int | None] = mapped_column(Integer, nullable=True)
    finish_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    request_body: Mapped[str | None] = mapped_column(Text, nullable=True)
    response_body: Mapped[str | None] = mapped_column(Text, nullable=True)
    rollout_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    shadow_of: Mapped[str | None] = mapped_column(String(36), nullable=True)
    # Per top-level JSON field of stable's answer: did this shadow answer agree?
    agreement: Mapped[dict[str, bool] | None] = mapped_column(JSON, nullable=True)
    # Filled by the output guard (schema, confidence, review); null where nothing judged them.
    schema_valid: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    escalated: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    # The answer's values of its contract's top-level categorical and number fields
    # (service.guard.output_fields), binned by drift monitoring.
    fields: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class AdapterVersion(Base):
    """An immutable LoRA adapter version ``name@version``, stored by content (sha256)."""

    __tablename__ = "adapter_versions"
    __table_args__ = (
        UniqueConstraint("name", "version", name="uq_adapter_versions_name_version"),
        UniqueConstraint("name", "sha256", name="uq_adapter_versions_name_sha256"),
    )

    id: Mapped[str] = mapped_column(String(200), primary_key=True)  # "name@version"
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    pool: Mapped[str] = mapped_column(String(200))
    base_model: Mapped[str] = mapped_column(String(300))
    rank: Mapped[int] = mapped_column(Integer)
    alpha: Mapped[float] = mapped_column(Float)
    target_modules: Mapped[list[str]] = mapped_column(JSON)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    store_path: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    data_snapshot_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    changelog: Mapped[str] = mapped_column(Text, default="")


class Rollout(Base):
    """A route's move from its stable target to a candidate; ``version`` guards every update."""

    __tablename__ = "rollouts"
    __table_args__ = (
        # At most one active rollout per route: ``active_route`` is the route while active.
        UniqueConstraint("active_route", name="uq_rollouts_active_route"),
        Index("ix_rollouts_route_created", "route", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    route: Mapped[str] = mapped_column(String(200))
    active_route: Mapped[str | None] = mapped_column(String(200), nullable=True)
    stable: Mapped[str] = mapped_column(String(300))
    candidate: Mapped[str] = mapped_column(String(300))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    phase: Mapped[str] = mapped_column(String(16))
    step: Mapped[int] = mapped_column(Integer)
    step_started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    failures: Mapped[int] = mapped_column(Integer)
    inconclusive: Mapped[int] = mapped_column(Integer)
    paused_phase: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # The offline evaluation's run (service.evaluation), once the evaluate step started it.
    evaluation_run: Mapped[str | None] = mapped_column(String(32), nullable=True)
    verdicts: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    # The per-arm figures the verdicts were judged on, kept once the rollout has ended.
    figures: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    version: Mapped[int] = mapped_column(Integer)
    created_by: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class RolloutEvent(Base):
    """Append-only history of a rollout: every transition and command, with actor and reason."""

    __tablename__ = "rollout_events"
    __table_args__ = (
        UniqueConstraint("rollout_id", "version", name="uq_rollout_events_rollout_version"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rollout_id: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    kind: Mapped[str] = mapped_column(String(32))
    from_phase: Mapped[str] = mapped_column(String(16))
    to_phase: Mapped[str] = mapped_column(String(16))
    step: Mapped[int] = mapped_column(Integer)
    actor: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    # The state version this event produced: (rollout_id, version) is unique, so a transition
    # can be recorded only once even when two replicas race.
    version: Mapped[int] = mapped_column(Integer)


class ReviewItem(Base):
    """An answer that needs a person: claimed under a lease with a fencing token, then decided.

    ``claim_token`` grows by one with every claim, so a decision or heartbeat carrying an older
    token is recognisably stale; ``expiries`` counts leases that ran out (too many parks it).
    """

    __tablename__ = "review_items"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(36))
    route: Mapped[str] = mapped_column(String(200))
    target: Mapped[str] = mapped_column(String(300))
    reason: Mapped[str] = mapped_column(String(32))
    priority: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    claimed_by: Mapped[str | None] = mapped_column(String(32), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    claim_token: Mapped[int] = mapped_column(Integer)
    expiries: Mapped[int] = mapped_column(Integer)
    answer: Mapped[str] = mapped_column(Text)
    request_body: Mapped[str | None] = mapped_column(Text, nullable=True)
    confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    field_confidence: Mapped[dict[str, float] | None] = mapped_column(JSON, nullable=True)
    schema_errors: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    decided_by: Mapped[str | None] = mapped_column(String(32), nullable=True)
    corrected_answer: Mapped[str | None] = mapped_column(Text, nullable=True)
    reject_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The route's risk tier when the item was queued (reviewer keys' limits, queue SLA).
    risk: Mapped[str] = mapped_column(String(16), server_default="medium")
    # 2: decided by two reviewers independently (``review_votes``), who must agree.
    reviews_needed: Mapped[int] = mapped_column(Integer, server_default="1")
    votes: Mapped[int] = mapped_column(Integer, server_default="0")
    # When the item was first seen past its tier's target age (counted once, by one replica).
    sla_breached_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


# The claim order: the highest priority first, then the oldest.
Index("ix_review_items_claim", ReviewItem.state, ReviewItem.priority.desc(), ReviewItem.created_at)
Index("ix_review_items_route_state", ReviewItem.route, ReviewItem.state)
Index("ix_review_items_request", ReviewItem.request_id)


class ReviewDecision(Base):
    """Append-only audit trail of a review item: decisions, expired leases, parking."""

    __tablename__ = "review_decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    item_id: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    reviewer: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    claim_token: Mapped[int] = mapped_column(Integer)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)


class ReviewVote(Base):
    """One of the two independent decisions on an item that needs two reviewers; append-only.

    The unique constraints make the database itself refuse a reviewer deciding the same item
    twice, and a third vote."""

    __tablename__ = "review_votes"
    __table_args__ = (
        UniqueConstraint("item_id", "reviewer", name="uq_review_votes_item_reviewer"),
        UniqueConstraint("item_id", "seq", name="uq_review_votes_item_seq"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    item_id: Mapped[str] = mapped_column(String(32))
    seq: Mapped[int] = mapped_column(Integer)  # 1 or 2, in the order they came
    reviewer: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))
    corrected_answer: Mapped[str | None] = mapped_column(Text, nullable=True)
    reject_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    claim_token: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


DECISION_KINDS = ("approve", "correct", "reject")
Index("ix_review_decisions_item", ReviewDecision.item_id, ReviewDecision.id)
# At most one decision per item, whatever races: the database itself refuses a second one.
Index(
    "ux_review_decisions_one_decision",
    ReviewDecision.item_id,
    unique=True,
    sqlite_where=ReviewDecision.kind.in_(DECISION_KINDS),
    postgresql_where=ReviewDecision.kind.in_(DECISION_KINDS),
)


class DriftReference(Base):
    """What a route's version is compared with for drift: a time range of its own records.

    At most one automatic reference (``pinned`` false: frozen when the version was promoted, or
    from its first records) and one pinned by a person per route and version. ``profile`` holds
    the range's histograms once computed (see ``service.drift``), so the reference stays what it
    was after its records are pruned.
    """

    __tablename__ = "drift_references"
    __table_args__ = (
        UniqueConstraint("route", "target", "pinned", name="uq_drift_references_kind"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    route: Mapped[str] = mapped_column(String(200))
    target: Mapped[str] = mapped_column(String(300))
    pinned: Mapped[bool] = mapped_column(Boolean)
    source: Mapped[str] = mapped_column(String(32))  # rollout | first_records | pinned
    since: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    until: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    samples: Mapped[int] = mapped_column(Integer)
    rollout_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    profile: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str | None] = mapped_column(String(64), nullable=True)


class TrainingSnapshot(Base):
    """An exported training data set (see ``service.review.export``), named by its content.

    ``id`` is what an adapter version's ``data_snapshot_id`` names; the manifest holds the
    filters, counts and each file's sha256.
    """

    __tablename__ = "training_snapshots"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    train_sha256: Mapped[str] = mapped_column(String(64))
    validation_sha256: Mapped[str] = mapped_column(String(64))
    train_examples: Mapped[int] = mapped_column(Integer)
    validation_examples: Mapped[int] = mapped_column(Integer)


class ReviewSession(Base):
    """A reviewer signed in to the browser UI: the cookie holds a random token, the table its
    sha256 (never the API key). Revoking the key ends its sessions: the key is looked up on
    every request."""

    __tablename__ = "review_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class GatewayPeer(Base):
    """A running gateway as the others see it (PostgreSQL): the adapter versions its snapshot
    wants and, of the others, those it still has requests in flight on. Written by the gateway
    itself (see ``service.engine.peers``); a row whose heartbeat is old is a dead gateway's."""

    __tablename__ = "gateway_peers"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    wanted: Mapped[list[str]] = mapped_column(JSON)
    draining: Mapped[dict[str, int]] = mapped_column(JSON)  # version -> requests in flight


class AuditEvent(Base):
    """Append-only: one change made through the admin, SRE or reviewer API or the CLI, written in
    the transaction of the change (``service.audit``). A database trigger refuses updates and
    deletes, except deletes of events older than a pruning cutoff (``AuditPruneCutoff``).
    Events form a hash chain (``service.audit.chain``): ids are given by the writer, one past
    the chain head's, so they have no gaps."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_at", "at"),
        Index("ix_audit_events_actor", "actor", "id"),
        Index("ix_audit_events_action", "action", "id"),
        Index("ix_audit_events_object", "object", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(64))  # a key id, or "cli"
    actor_role: Mapped[str | None] = mapped_column(String(16), nullable=True)
    os_user: Mapped[str | None] = mapped_column(String(64), nullable=True)  # CLI only
    action: Mapped[str] = mapped_column(String(64))
    object: Mapped[str] = mapped_column(String(300))
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    client: Mapped[str | None] = mapped_column(String(64), nullable=True)
    prev_hash: Mapped[str] = mapped_column(String(64))  # the hash of the event before it
    hash: Mapped[str] = mapped_column(String(64))  # hex sha256 (or HMAC) over prev_hash + fields


class AuditChainHead(Base):
    """One row: the newest audit event's id and hash. Writers lock it, so the chain never forks,
    and it shows when the newest events are removed. A trigger lets it only move forward."""

    __tablename__ = "audit_chain_head"
    __table_args__ = (CheckConstraint("id = 1", name="ck_audit_chain_head_one_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_id: Mapped[int] = mapped_column(Integer)  # 0 before the first event
    hash: Mapped[str] = mapped_column(String(64))


class AuditPruneCutoff(Base):
    """Written and removed again inside a retention pruning transaction: while a row is there,
    the audit trigger lets events older than ``cutoff`` be deleted (and nothing else)."""

    __tablename__ = "audit_prune_cutoffs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    cutoff: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ReviewCallback(Base):
    """The outbox of review callbacks: a decision to post to a route's callback URL, written in
    the decision's transaction and retried with backoff until delivered or given up."""

    __tablename__ = "review_callbacks"
    __table_args__ = (Index("ix_review_callbacks_due", "state", "next_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    review_id: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer)
    next_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ReviewCallbackAttempt(Base):
    """One try of a review callback: the HTTP status it got, or the error."""

    __tablename__ = "review_callback_attempts"
    __table_args__ = (Index("ix_review_callback_attempts_callback", "callback_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    callback_id: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class ConfigVersion(Base):
    """One row: on SQLite, how many times routes, keys, adapter versions or a rollout's traffic
    changed, counted by triggers (migration 0014) and read by the snapshot's refresh. On
    PostgreSQL the same triggers send a NOTIFY instead and ``n`` stays 0."""

    __tablename__ = "config_version"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    n: Mapped[int] = mapped_column(BigInteger)
