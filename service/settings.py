"""All configuration in one object, read from the environment (``LORAGATE_*``) or a ``.env`` file.

Nothing reads the environment at import time: build ``Settings()`` in the CLI (or a test) and
pass it to ``create_app``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Where the managed engine keeps the converted bundled model, under data_dir/models.
BUNDLED_MODEL_DIR = "smollm2-135m-instruct"


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


class ManagedEngineSettings(BaseModel):
    """The local vLLM child process started when no engine pool is configured."""

    pool_name: str = "default"
    served_model_name: str = "smollm2-135m-instruct"
    host: str = "127.0.0.1"
    port: int = 8801
    max_lora_rank: int = 16
    max_loras: int = 4
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

    redact_bodies: bool = False
    record_queue_size: int = 10_000
    record_batch_size: int = 500
    record_flush_interval_s: float = 0.2
    snapshot_refresh_s: float = 2.0

    adapter_import_root: Path | None = Field(
        default=None,
        description="Adapters are registered only from directories under this root "
        "(default: data_dir/imports).",
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

    rollout_tick_s: float = Field(
        default=10.0, gt=0, description="Seconds between analyses of each active rollout."
    )
    shadow_max_concurrency: int = Field(
        default=32, ge=1, description="Shadow calls in flight at once; more are shed and counted."
    )
    shadow_timeout_s: float = Field(
        default=120.0, gt=0, description="A shadow call (and its comparison) is dropped after this."
    )

    review_callback_allowlist: list[str] = Field(
        default_factory=list,
        description="URL prefixes a route's review callback may start with (e.g. "
        "https://tickets.internal/hooks/); callbacks elsewhere are not sent.",
    )
    review_stats_interval_s: float = Field(
        default=15.0, gt=0, description="Seconds between refreshes of the review queue gauges."
    )

    otlp_endpoint: str | None = Field(
        default=None, description="OTLP/HTTP traces endpoint; tracing is off when unset."
    )
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _check(self) -> Settings:
        names = [pool.name for pool in self.engines]
        if len(names) != len(set(names)):
            raise ValueError("engine pool names must be unique")
        if self.default_max_tokens > self.max_tokens_cap:
            raise ValueError("default_max_tokens must not exceed max_tokens_cap")
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
            )
        ]
