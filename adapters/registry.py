"""Registering adapter versions: ``NAME@N``, immutable, stored by content.

``Registry.register`` runs the whole flow:

1. name and pool checked (the pool must have a local copy of its base model);
2. ``scan_source``: the path and the tree under it (no torch, nothing written yet);
3. ``stage``: the files copied once into a private directory of the store and hashed;
4. same name and same sha256 registered already -> that version, as it is (``created=False``);
5. ``read_adapter``: config parsed, every safetensors header checked (on the staged bytes);
6. the peft worker process reads the config; ``check_adapter`` holds it against the pool
   (and refuses an adapter whose LoRA updates are all zero: it would change nothing);
7. under the name's lock: the staged copy becomes ``store/<sha256>`` and the row ``NAME@N`` with
   N = max + 1 is inserted. Another gateway replica may take the same N at the same moment: the
   database's unique constraints refuse the second insert and it is tried once more.

A refusal at any step leaves nothing behind: no row, no stored directory.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from adapters import store
from adapters.compat import BaseModel, CheckedAdapter, PoolSpec, check_adapter
from adapters.errors import (
    AdapterNameInvalid,
    AdapterNotFound,
    AdapterPoolConflict,
    AdapterPoolNotConfigured,
    AdapterPoolUnknown,
    AdapterRegistrationConflict,
)
from adapters.inspect import Inspector
from adapters.locks import KeyedLocks
from adapters.tensors import model_weight_shapes
from adapters.validation import read_adapter, scan_source
from service.audit.actor import Actor
from service.clock import Clock, now

# The same rule as route names: a version's id is NAME@N, so no '@' in NAME.
ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
INSERT_ATTEMPTS = 2


@dataclass(frozen=True, slots=True)
class NewVersion:
    """A version about to be recorded; the repository gives it the next number."""

    name: str
    sha256: str
    pool: str
    base_model: str
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    size_bytes: int
    store_path: Path
    created_by: str | None
    created_at: datetime
    data_snapshot_id: str | None
    changelog: str


@dataclass(frozen=True, slots=True)
class AdapterVersionRecord(NewVersion):
    """A recorded version: what was registered, plus its number and ``NAME@N`` id."""

    id: str
    version: int


class VersionConflict(Exception):
    """Raised by a repository when the insert hit a unique constraint (a concurrent insert)."""


class VersionRepository(Protocol):
    """What registration needs from the database; each call is its own short transaction."""

    async def find_by_content(self, name: str, sha256: str) -> AdapterVersionRecord | None: ...

    async def insert_next(self, new: NewVersion, audit: Actor | None) -> AdapterVersionRecord:
        """Insert as version max + 1 of its name, with its audit event for ``audit`` in the same
        transaction; raise VersionConflict on a collision."""
        ...

    async def get(self, version_id: str) -> AdapterVersionRecord | None: ...

    async def list_versions(self, name: str | None) -> list[AdapterVersionRecord]: ...


@dataclass(frozen=True, slots=True)
class RegistrationRequest:
    name: str
    path: str  # absolute, or relative to the import root
    pool: str | None = None  # default: the first pool
    data_snapshot_id: str | None = None
    changelog: str = ""
    created_by: str | None = None  # key id, or "cli"
    audit: Actor | None = None  # who registers it, for the audit trail


@dataclass(frozen=True, slots=True)
class Registration:
    version: AdapterVersionRecord
    created: bool  # False: the same content was registered under this name already


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    import_root: Path
    store_dir: Path
    max_bytes: int
    pools: tuple[PoolSpec, ...]


class Registry:
    def __init__(
        self,
        config: RegistryConfig,
        versions: VersionRepository,
        inspector: Inspector,
        clock: Clock = now,
    ) -> None:
        self.config = config
        self.versions = versions
        self.inspector = inspector
        self.clock = clock
        self._locks = KeyedLocks()

    async def register(self, request: RegistrationRequest) -> Registration:
        if not ADAPTER_NAME.match(request.name):
            raise AdapterNameInvalid(
                "Adapter names are 1-128 letters, digits, '.', '_', ':' or '-' (no '@')."
            )
        pool = self._pool(request.pool)
        config = self.config
        source = await asyncio.to_thread(
            scan_source, request.path, config.import_root, config.max_bytes
        )
        staged = await asyncio.to_thread(store.stage, source, config.store_dir, config.max_bytes)
        try:
            existing = await self.versions.find_by_content(request.name, staged.sha256)
            if existing is not None:
                return self._same_content(existing, pool)
            checked = await self._check(staged.path, pool)
            async with self._locks.hold(request.name):
                return await self._record(request, pool, staged, checked)
        finally:
            await asyncio.to_thread(store.discard, staged)

    async def get_version(self, version_id: str) -> AdapterVersionRecord:
        found = await self.versions.get(version_id)
        if found is None:
            raise AdapterNotFound(f"No adapter version {version_id!r}.")
        return found

    async def list_versions(self, name: str | None = None) -> list[AdapterVersionRecord]:
        return await self.versions.list_versions(name)

    def _pool(self, name: str | None) -> PoolSpec:
        pools = self.config.pools
        pool = next((p for p in pools if p.name == name), None) if name else pools[0]
        if pool is None:
            known = ", ".join(repr(p.name) for p in pools)
            raise AdapterPoolUnknown(f"No engine pool {name!r}; known pools: {known}.")
        if pool.model_dir is None:
            raise AdapterPoolNotConfigured(
                f"Pool {pool.name!r} has no model_dir: configure a local copy of its base model "
                "(engines[].model_dir, or managed_engine.model_dir) so adapters can be validated."
            )
        return pool

    async def _check(self, adapter_dir: Path, pool: PoolSpec) -> CheckedAdapter:
        contents = await asyncio.to_thread(read_adapter, adapter_dir)
        summary = await self.inspector(adapter_dir)
        base = await asyncio.to_thread(_base_model, pool)
        return check_adapter(
            summary, contents.tensors, base, pool.max_lora_rank, contents.zero_tensors
        )

    def _same_content(self, existing: AdapterVersionRecord, pool: PoolSpec) -> Registration:
        if existing.pool != pool.name:
            raise AdapterPoolConflict(
                f"This content is registered as {existing.id} for pool {existing.pool!r}; "
                "register it under another name for another pool."
            )
        return Registration(existing, created=False)

    async def _record(
        self,
        request: RegistrationRequest,
        pool: PoolSpec,
        staged: store.StagedAdapter,
        checked: CheckedAdapter,
    ) -> Registration:
        conflict: VersionConflict | None = None
        for _ in range(INSERT_ATTEMPTS):
            existing = await self.versions.find_by_content(request.name, staged.sha256)
            if existing is not None:
                return self._same_content(existing, pool)
            stored = await asyncio.to_thread(store.commit, staged, self.config.store_dir)
            new = NewVersion(
                name=request.name,
                sha256=staged.sha256,
                pool=pool.name,
                base_model=pool.base_model,
                rank=checked.rank,
                alpha=checked.alpha,
                target_modules=checked.target_modules,
                size_bytes=staged.size_bytes,
                store_path=stored,
                created_by=request.created_by,
                created_at=self.clock(),
                data_snapshot_id=request.data_snapshot_id,
                changelog=request.changelog,
            )
            try:
                inserted = await self.versions.insert_next(new, request.audit)
                return Registration(inserted, created=True)
            except VersionConflict as exc:
                conflict = exc
        raise AdapterRegistrationConflict(
            f"Concurrent registrations of {request.name!r} kept taking the same version number; "
            "try again."
        ) from conflict


def _base_model(pool: PoolSpec) -> BaseModel:
    assert pool.model_dir is not None
    try:
        weights = model_weight_shapes(pool.model_dir)
    except (OSError, ValueError) as exc:  # SafetensorsError is a ValueError
        raise AdapterPoolNotConfigured(
            f"The model_dir configured for pool {pool.name!r} has no readable safetensors "
            f"weights ({type(exc).__name__}); adapters cannot be validated against it."
        ) from exc
    return BaseModel.of(pool, pool.model_dir, weights)
