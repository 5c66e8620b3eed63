"""All configuration in one object, read from the environment (``LORAGATE_*``) or a ``.env`` file.

Nothing reads the environment at import time: build ``Settings()`` in the CLI (or a test) and
pass it to ``create_app``.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Where the managed engine keeps the converted bundled model, under data_dir/models.
BUNDLED_MODEL_DIR = "smollm2-135m-instruct"


class RecordBodies(StrEnum):
    FULL = "full"
    REDACTED = "redacted"
    NONE = "none"


class Fsync(StrEnum):
    """When the record spool's appends reach the disk (see ``spool_fsync``)."""

    ALWAYS = "always"
    INTERVAL = "interval"
    NEVER = "never"


class WhenFull(StrEnum):
    REFUSE = "refuse"
    DROP = "drop"


class WhenStoreDown(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


def _default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "loragate"


class EnginePoolSettings(BaseModel):
    """Replicas of one vLLM server configuration serving the same base model."""

    name: str = Field(description="Pool name that routes refer to.")
    base_model: str = Field(description="Model name the replicas serve (vLLM --served-model-name).")
    urls: list[str] = Field(description="Base URLs of the replicas, e.g. http://10.0.0.5:8000.")
    max_lora_rank: int = Field(default=16, ge=1, le=512)
    model_dir: Path | None = Field(
        default=None,
        description="Local copy of the base model (safetensors), used to validate adapters; "
        "adapters cannot be registered for a pool without it.",
    )
    tool_call_parser: str | None = Field(
        default=None,
        description="The vLLM tool-call parser the replicas run with (--enable-auto-tool-choice "
        "--tool-call-parser NAME). Without one, requests with tools must name the call "
        "(tool_choice required or a function); `auto` is refused with 400.",
    )
    max_loras: int | None = Field(
        default=None,
        ge=1,
        description="The replicas' vLLM --max-loras: adapters one batch runs at once (slots). "
        "Declared, requests prefer a replica where their version is already running; see README "
        "'Many adapters on one pool'.",
    )
    max_cpu_loras: int | None = Field(
        default=None,
        ge=1,
        description="The replicas' vLLM --max-cpu-loras: adapters each keeps in host memory. With "
        "this or max_loras declared, each replica holds at most this many versions (else "
        "max_loras), placed by traffic; unset, every version a route wants is on every replica.",
    )
    priority_scheduling: bool = Field(
        default=False,
        description="The replicas run with vLLM --scheduling-policy priority: evaluation runs "
        "send their calls at a lower priority than live traffic, so a batch takes live "
        "requests first. Unset, evaluation calls queue like any other.",
    )
    spill_queue_depth: int = Field(
        default=16,
        ge=1,
        description="With a declared capacity: requests in flight past which a replica is "
        "saturated; when all of a version's replicas are, its replica set grows.",
    )
    rate_half_life_s: float = Field(
        default=60.0,
        gt=0,
        description="With a declared capacity: half-life of the request rates placement sizes "
        "each version's replica set by.",
    )

    @property
    def capacity(self) -> int | None:
        """Versions a replica holds, when declared."""
        return self.max_cpu_loras or self.max_loras


class ManagedEngineSettings(BaseModel):
    """The local vLLM child process started when no engine pool is configured."""

    pool_name: str = "default"
    served_model_name: str = "smollm2-135m-instruct"
    host: str = "127.0.0.1"
    port: int = 8801
    max_lora_rank: int = 16
    max_loras: int = 4
    max_cpu_loras: int | None = Field(
        default=None,
        ge=1,
        description="vLLM --max-cpu-loras (vLLM's default: max_loras). Set, the managed pool "
        "declares both as its capacity and places versions by traffic within it.",
    )
    max_model_len: int = 2048
    dtype: str = Field(
        default="cpu-auto",
        description="vLLM --dtype; `cpu-auto`: bfloat16 where the CPU computes it natively "
        "(AVX512-BF16 or AMX), else float32 (measured here: about 3x faster than emulated "
        "bfloat16 on an AVX2-only CPU).",
    )
    kv_cache_gib: int = 1
    python: str | None = Field(
        default=None, description="Interpreter that has vLLM installed (default: this one)."
    )
    model_dir: Path | None = Field(
        default=None, description="Use this model directory instead of the bundled model."
    )
    cpu_bind: str | None = Field(
        default=None,
        description="CPU build only: cores for vLLM's worker threads (VLLM_CPU_OMP_THREADS_BIND, "
        "e.g. '1' or '0-3'); default: vLLM picks. Give replicas on one machine separate cores.",
    )
    startup_timeout_s: float = 600.0
    restart_backoff_s: float = 2.0
    tool_call_parser: str | None = Field(
        default="hermes",
        description="vLLM's tool-call parser (--tool-call-parser) for tool_choice auto; the "
        "bundled model gets a ChatML chat template that writes tools in the Hermes format it "
        "reads. None: no parser, no template (tool_choice auto refused).",
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LORAGATE_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Field(default_factory=_default_data_dir)
    database_url: str | None = Field(
        default=None, description="SQLAlchemy async URL; default is a SQLite file in data_dir."
    )
    routes_file: Path | None = Field(
        default=None, description="YAML file of routes, synced into the database at start."
    )

    engines: list[EnginePoolSettings] = Field(default_factory=list)
    managed_engine: ManagedEngineSettings = Field(default_factory=ManagedEngineSettings)

    connect_timeout_s: float = 2.0
    first_byte_timeout_s: float = 120.0
    idle_timeout_s: float = 30.0
    health_probe_interval_s: float = 5.0
    health_probe_timeout_s: float = 10.0
    engine_keepalive_s: float = Field(
        default=4.0,
        gt=0,
        description="How long an idle connection to an engine is kept; keep it below the "
        "engine's own keep-alive (vLLM's VLLM_HTTP_TIMEOUT_KEEP_ALIVE, 5 s by default).",
    )
    probe_failures_to_eject: int = Field(
        default=2, ge=1, description="Consecutive failed probes before a replica is ejected."
    )
    eject_for_s: float = 10.0

    max_body_bytes: int = 1_000_000
    default_max_tokens: int = 256
    max_tokens_cap: int = 1024
    max_top_logprobs: int = 20
    max_stop_sequences: int = 4
    max_messages: int = 256
    max_choices: int = Field(
        default=4,
        ge=1,
        le=16,
        description="The most choices (`n`) a request may ask for; a route's review policy "
        "may set its own `max_choices`.",
    )

    record_bodies: RecordBodies = Field(
        default=RecordBodies.FULL,
        description="Request and answer bodies in records and the spool: full, redacted "
        "(e-mails, phone and long digit runs masked, as in the training export) or none.",
    )
    redact_bodies: bool = Field(
        default=False, description="Older name: true means record_bodies=none."
    )
    record_batch_size: int = Field(
        default=5000, gt=0, description="Most records the shipper writes in one transaction."
    )
    record_flush_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="How often the shipper moves spooled records into the database: the most "
        "a record waits there (its durability is the spool's, see spool_fsync).",
    )
    record_drain_timeout_s: float = Field(
        default=20.0,
        gt=0,
        description="At shutdown, how long the shipper may take to move what is spooled; what "
        "it does not move stays in the spool and is shipped at the next start.",
    )
    spool_dir: Path | None = Field(
        default=None, description="The record spool (default: data_dir/spool); one per gateway."
    )
    spool_fsync: Fsync = Field(
        default=Fsync.INTERVAL,
        description="interval (every spool_fsync_interval_s), always (each record) or never: "
        "what a power loss can take. A killed process loses nothing under any of them.",
    )
    spool_fsync_interval_s: float = Field(default=0.2, gt=0)
    spool_max_bytes: int = Field(
        default=2 * 1024**3, gt=0, description="Largest spool (records the database has not taken)."
    )
    records_when_full: WhenFull = Field(
        default=WhenFull.REFUSE,
        description="With a full spool: refuse (503 records_unavailable) or drop (answer, "
        "count each lost record in loragate_records_dropped_total).",
    )
    record_retention_days: float = Field(
        default=30,
        ge=0,
        description="Records older than this are deleted (0 keeps them), except those a review "
        "item refers to.",
    )
    audit_retention_days: float = Field(
        default=0,
        ge=0,
        description="Audit events older than this are deleted (0, the default, keeps them "
        "forever); independent of record_retention_days.",
    )
    audit_signing_key: SecretStr = Field(
        default=SecretStr(""),
        description="When set, audit events are chained with HMAC-SHA256 under this key instead "
        "of plain SHA-256: someone with only database access cannot forge a chain that "
        "`loragate audit verify` accepts. Set it before the first change you want signed; "
        "changing it breaks verification of the events signed with the old one.",
    )
    hold_commit_timeout_s: float = Field(
        default=5.0, gt=0, description="Longest wait to store a held answer's review item."
    )
    snapshot_refresh_s: float = Field(
        default=2.0,
        gt=0,
        description="Seconds between looks at whether routes, rollouts, keys or adapter versions "
        "changed; a look reloads them only when they did (on SQLite: the change count that the "
        "database's triggers keep). On PostgreSQL every change reloads every gateway at once "
        "(the triggers notify); this periodic reload runs only while that listener is down.",
    )

    adapter_import_root: Path | None = Field(
        default=None,
        description="Adapters are registered only from directories under this root "
        "(default: data_dir/imports).",
    )
    training_cache_dir: Path | None = Field(
        default=None,
        description="Earlier training runs, by the sha256 of their inputs: `adapters train` and "
        "`adapters demo` with the same inputs reuse them (default: data_dir/training-cache).",
    )
    training_cache_max_bytes: int = Field(
        default=2 * 1024**3,
        gt=0,
        description="Largest training cache; the least recently used runs go first.",
    )
    training_threads: int = Field(
        default=0,
        ge=0,
        description="Compute threads of `adapters train` and `adapters demo`; 0: the cores "
        "other processes (a local engine) leave free, decided again every few seconds.",
    )
    max_adapter_bytes: int = Field(
        default=512 * 1024 * 1024, description="Largest adapter directory accepted."
    )
    adapter_inspect_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="Time allowed to the peft worker process that reads an adapter's config.",
    )
    adapter_inspect_concurrency: int = Field(
        default=2,
        ge=1,
        description="peft worker processes run at once (each takes about 420 MB).",
    )

    adapter_reconcile_interval_s: float = 5.0
    adapter_unload_grace_s: float = Field(
        default=60.0,
        description="An adapter version no route uses is unloaded after this long, once idle.",
    )
    peer_heartbeat_s: float = Field(
        default=5.0,
        gt=0,
        description="PostgreSQL: how often each gateway rewrites its row of wanted adapter "
        "versions and requests in flight, which other gateways read before unloading a version.",
    )
    peer_stale_after_s: float = Field(
        default=30.0,
        gt=0,
        description="PostgreSQL: a gateway whose row is older than this is taken for dead and "
        "no longer holds back unloads. Keep it well above peer_heartbeat_s.",
    )

    rollout_tick_s: float = Field(
        default=10.0, gt=0, description="Seconds between analyses of each active rollout."
    )
    shadow_max_concurrency: int = Field(
        default=32, ge=1, description="Shadow calls in flight at once; more are shed and counted."
    )
    shadow_timeout_s: float = Field(
        default=120.0, gt=0, description="A shadow call (and its comparison) is dropped after this."
    )

    # Offline evaluation runs (see README "Evaluation packs and runs").
    eval_max_runs: int = Field(
        default=2, ge=1, description="Evaluation runs one gateway answers at once; more get 429."
    )
    eval_max_concurrency: int = Field(
        default=8,
        ge=1,
        description="The most calls in flight one evaluation run may ask for (its own "
        "`concurrency`, 2 by default): an evaluation must not crowd out live traffic.",
    )
    eval_heartbeat_s: float = Field(
        default=5.0, gt=0, description="How often a running evaluation marks itself alive."
    )
    eval_stale_after_s: float = Field(
        default=60.0,
        gt=0,
        description="A running evaluation not marked alive for this long lost its gateway: it "
        "is ended `interrupted` and no longer keeps its versions loaded.",
    )

    # Drift monitoring (see README "Drift monitoring").
    drift_window_s: float = Field(
        default=3600.0, gt=0, description="The current window: the last this many seconds."
    )
    drift_min_samples: int = Field(
        default=200,
        ge=1,
        description="Values a feature needs in the current window; with fewer its status is "
        "insufficient.",
    )
    drift_reference_min_samples: int = Field(
        default=500,
        ge=1,
        description="Records a reference needs: an automatic one is the version's rollout "
        "window, or its first this many records as stable, extended until it has them.",
    )
    drift_bins: int = Field(
        default=10, ge=2, le=50, description="Quantile bins of a number feature's reference."
    )
    drift_psi_warn: float = Field(default=0.1, gt=0, description="PSI at or over this: warn.")
    drift_psi_drift: float = Field(default=0.2, gt=0, description="PSI at or over this: drift.")
    drift_js_warn: float = Field(
        default=0.1, gt=0, le=1, description="Jensen-Shannon distance at or over this: warn."
    )
    drift_js_drift: float = Field(
        default=0.2, gt=0, le=1, description="Jensen-Shannon distance at or over this: drift."
    )
    drift_false_alarm_rate: float = Field(
        default=0.01,
        gt=0,
        le=0.1,
        description="The share of windows of unchanged traffic in which a route may read warn "
        "or drift: its features' chi-square p-values are corrected together (Holm) at this rate.",
    )
    service_latency_p95_ms: float = Field(
        default=10000.0, gt=0, description="A route's default target: p95 latency (ms)."
    )
    service_ttft_p95_ms: float = Field(
        default=5000.0,
        gt=0,
        description="A route's default target: p95 time to first token (ms).",
    )
    service_error_budget: float = Field(
        default=0.05,
        ge=0,
        lt=1,
        description="A route's default share of requests that may get 5xx.",
    )
    service_limit_budget: float = Field(
        default=0.05,
        ge=0,
        lt=1,
        description="A route's default share of answers that may end at a limit (finish_reason "
        "length).",
    )
    drift_interval_s: float = Field(
        default=60.0,
        ge=0,
        description="Seconds between refreshes of the drift gauges of every route; 0 turns the "
        "loop off (the API and CLI still answer).",
    )

    review_callback_allowlist: list[str] = Field(
        default_factory=list,
        description="URL prefixes a route's review callback may start with (e.g. "
        "https://tickets.internal/hooks/); callbacks elsewhere are not sent. An entry whose "
        "path a server could read two ways (dot segments, ';', encoded '.', '/', '\\' or ';', "
        "double encoding) stops the start.",
    )
    review_callback_attempts: int = Field(
        default=10, ge=1, description="Tries of a review callback before it is given up."
    )
    review_callback_backoff_s: float = Field(
        default=2.0, gt=0, description="Wait after a callback's first failed try; doubles each try."
    )
    review_callback_backoff_max_s: float = Field(
        default=600.0, gt=0, description="The longest wait between two tries of a callback."
    )
    review_callback_poll_s: float = Field(
        default=5.0,
        gt=0,
        description="Seconds between looks at the callback outbox (a decision on this gateway "
        "wakes it at once; this finds retries and other gateways' callbacks).",
    )
    review_stats_interval_s: float = Field(
        default=15.0, gt=0, description="Seconds between refreshes of the review queue gauges."
    )
    review_ui_lease_s: float = Field(
        default=300.0,
        ge=2,
        le=3600,
        description="The lease of a claim made in the reviewer UI (/review); the open item's "
        "page renews it every third of this while it stays open.",
    )
    review_session_ttl_s: float = Field(
        default=8 * 3600.0,
        gt=0,
        description="A reviewer's browser session (/review) ends this long after sign-in.",
    )
    review_sla_critical_s: float = Field(
        default=15 * 60.0,
        gt=0,
        description="Target age of an open review item of a critical route; older ones are "
        "overdue: counted, highlighted and handed out first.",
    )
    review_sla_high_s: float = Field(
        default=3600.0, gt=0, description="Target age of an open review item of a high route."
    )
    review_sla_medium_s: float = Field(
        default=4 * 3600.0,
        gt=0,
        description="Target age of an open review item of a medium route.",
    )
    review_sla_low_s: float = Field(
        default=24 * 3600.0, gt=0, description="Target age of an open review item of a low route."
    )
    secure_cookies: bool = Field(
        default=False,
        description="Clients reach the gateway over HTTPS (e.g. through a TLS proxy): the "
        "review UI's session cookie gets the Secure flag (it does anyway on an https request).",
    )

    # Hostile and greedy clients (see README "Limits on clients").
    schema_check_workers: int = Field(
        default=1,
        ge=1,
        description="Worker threads that check clients' response_format schemas (the event "
        "loop never does).",
    )
    schema_check_queue: int = Field(
        default=32,
        ge=1,
        description="Schema checks that may wait for a worker; past it the costliest is "
        "refused with 503 schema_check_busy.",
    )
    schema_check_cache: int = Field(
        default=1024, ge=1, description="Schema verdicts kept, by the schema's sha256."
    )
    key_lookups_per_s: float = Field(
        default=20.0,
        gt=0,
        description="Database lookups of key ids not in the snapshot (a key created since the "
        "last refresh), at most this many a second; past it such a key waits for a look for "
        "changes (SQLite: the change count; PostgreSQL: the changes heard) and is refused (401) "
        "if that does not load it. A key found is kept until the next refresh.",
    )
    unknown_keys_remembered: int = Field(
        default=10_000,
        ge=0,
        description="Key ids found unknown, remembered until the next snapshot refresh so that "
        "one sent again costs no lookup.",
    )
    redis_url: str | None = Field(
        default=None,
        description="Count per-key limits in this Redis (redis://host:6379/0) instead of the "
        "database. Every gateway must use the same store for the limits to hold across them.",
    )
    limit_store_timeout_s: float = Field(
        default=1.0,
        gt=0,
        description="How long a request waits for the limits store before it counts as down.",
    )
    limits_when_store_down: WhenStoreDown = Field(
        default=WhenStoreDown.OPEN,
        description="open: while the limits store cannot be reached (connection refused or "
        "lost; counted in loragate_rate_limit_store_errors_total), each gateway holds every "
        "key's limits on its own count in memory; closed: those requests are refused with 503 "
        "rate_limits_unavailable. A store that answers too slowly (the key's own burst "
        "queueing) is not down: such a request is refused with 503 either way.",
    )
    limit_lease_s: float = Field(
        default=900.0,
        gt=0,
        description="A request's concurrency slot lapses after this long if its gateway dies "
        "before giving it back; longer than any request may take.",
    )
    client_header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A connection must send a complete request line and headers within this "
        "after it opens or after its previous response.",
    )
    client_body_timeout_s: float = Field(
        default=30.0, gt=0, description="A request's whole body must arrive within this."
    )
    keepalive_timeout_s: float = Field(
        default=5.0, gt=0, description="An idle keep-alive connection is closed after this."
    )
    send_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="A client that reads nothing of its answer for this long while the gateway "
        "has bytes to send it (a stream) is cut; its request is recorded as 499.",
    )
    max_connections: int = Field(
        default=1000,
        ge=1,
        description="Open client connections; past it the oldest idle one is closed (the new "
        "one, when none is idle). Keep it below the process's open-files limit.",
    )
    max_connections_per_client: int = Field(
        default=256,
        ge=0,
        description="Open connections from one client address; past it that address's oldest "
        "idle one is closed (the new one, when none is idle). 0: no cap per address (behind a "
        "proxy that funnels every client through a few addresses).",
    )
    max_pipelined_requests: int = Field(
        default=16,
        ge=1,
        description="Requests one connection may queue behind the one being answered; a "
        "connection that sends more without reading its answers is closed.",
    )

    otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP traces endpoint (e.g. http://collector:4318/v1/traces) for the "
        "gateway's GenAI spans and the managed vLLM's own; tracing is off when unset.",
    )
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _check(self) -> Settings:
        names = [pool.name for pool in self.engines]
        if len(names) != len(set(names)):
            raise ValueError("engine pool names must be unique")
        if self.default_max_tokens > self.max_tokens_cap:
            raise ValueError("default_max_tokens must not exceed max_tokens_cap")
        if self.drift_psi_warn > self.drift_psi_drift or self.drift_js_warn > self.drift_js_drift:
            raise ValueError("a drift warn threshold must not exceed its drift threshold")
        if self.peer_stale_after_s < 2 * self.peer_heartbeat_s:
            raise ValueError("peer_stale_after_s must be at least twice peer_heartbeat_s")
        return self

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'loragate.db'}"

    @property
    def effective_import_root(self) -> Path:
        return self.adapter_import_root or self.data_dir / "imports"

    @property
    def effective_training_cache_dir(self) -> Path:
        return self.training_cache_dir or self.data_dir / "training-cache"

    @property
    def effective_spool_dir(self) -> Path:
        return self.spool_dir or self.data_dir / "spool"

    @property
    def effective_record_bodies(self) -> RecordBodies:
        return RecordBodies.NONE if self.redact_bodies else self.record_bodies

    @property
    def adapter_store_dir(self) -> Path:
        """Content-addressed adapter store: one immutable directory per sha256."""
        return self.data_dir / "adapters"

    @property
    def uses_managed_engine(self) -> bool:
        return not self.engines

    def engine_pools(self) -> list[EnginePoolSettings]:
        """Configured pools, or the one pool of the managed local engine."""
        if self.engines:
            return self.engines
        managed = self.managed_engine
        return [
            EnginePoolSettings(
                name=managed.pool_name,
                base_model=managed.served_model_name,
                urls=[f"http://{managed.host}:{managed.port}"],
                max_lora_rank=managed.max_lora_rank,
                model_dir=managed.model_dir or self.data_dir / "models" / BUNDLED_MODEL_DIR,
                tool_call_parser=managed.tool_call_parser,
                priority_scheduling=True,  # vllm_command starts it so
                max_loras=managed.max_loras if managed.max_cpu_loras else None,
                max_cpu_loras=managed.max_cpu_loras,
            )
        ]
