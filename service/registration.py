"""The adapter registry wired to the settings and the database (used by the app and the CLI)."""

from __future__ import annotations

import sys
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker

from adapters.compat import PoolSpec
from adapters.inspect import Inspector, SubprocessInspector
from adapters.registry import Registry, RegistryConfig
from service.db.repositories import SqlAdapterVersions
from service.settings import Settings


def build_registry(
    settings: Settings, sessions: async_sessionmaker[Any], inspector: Inspector | None = None
) -> Registry:
    """A registry over the configured pools; ``inspector`` replaces the peft worker in tests."""
    pools = tuple(
        PoolSpec(p.name, p.base_model, p.max_lora_rank, p.model_dir)
        for p in settings.engine_pools()
    )
    config = RegistryConfig(
        import_root=settings.effective_import_root,
        store_dir=settings.adapter_store_dir,
        max_bytes=settings.max_adapter_bytes,
        pools=pools,
    )
    worker = inspector or SubprocessInspector(
        sys.executable, settings.adapter_inspect_timeout_s, settings.adapter_inspect_concurrency
    )
    return Registry(config, SqlAdapterVersions(sessions), worker)
