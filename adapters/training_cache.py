"""Training runs, content-addressed: the same inputs give back the adapter an earlier run wrote.

A run is deterministic in its inputs (data, base model, hyperparameters, seed, the versions of
torch, transformers and peft, and :data:`RECIPE`), so its key is the sha256 of those inputs and
the cached directory is what that run wrote: adapter files and manifest. An entry is complete
when its directory exists (written beside its final name, then renamed). The cache is bounded:
after each store the least recently used entries go until it fits ``max_bytes``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

# Raise when the training code changes what a run writes for the same inputs.
RECIPE = 1
LIBRARIES = ("torch", "transformers", "peft")
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class CacheEntry:
    key: str
    path: Path
    size_bytes: int
    last_used: datetime
    run_id: str
    data_sha256: str


def library_versions() -> dict[str, str]:
    """The installed versions of what a run's result depends on ("missing" where absent)."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def directory_sha256(root: Path) -> str:
    """One digest of every file under ``root``: relative paths and contents, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        with path.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def run_key(inputs: Mapping[str, object]) -> str:
    """The cache key of a run: sha256 of its inputs as canonical JSON."""
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class TrainingCache:
    """Cached runs under ``root``, one directory per key, at most ``max_bytes`` in all."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        """One run of ``key`` at a time on this machine: a second waits here, then finds the
        first one's result instead of training again."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / f".{key}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def find(self, key: str) -> Path | None:
        """The cached run of ``key``, marked as just used; None when there is none."""
        path = self.root / key
        if not (path / MANIFEST).is_file():
            return None
        os.utime(path)  # the least recently used entries are pruned first
        return path

    def put(self, key: str, run_dir: Path) -> None:
        """Keep a copy of ``run_dir`` under ``key``, then prune to the bound."""
        if (self.root / key).exists():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        partial = self.root / f".{key}.{uuid.uuid4().hex[:8]}.partial"
        shutil.copytree(run_dir, partial)
        try:
            partial.rename(self.root / key)
        except OSError:
            shutil.rmtree(partial)  # another run stored the same key first: same content
            if not (self.root / key).exists():
                raise
        self.prune(self.max_bytes)

    def entries(self) -> list[CacheEntry]:
        """Every complete entry, most recently used first."""
        if not self.root.is_dir():
            return []
        found = []
        for path in self.root.iterdir():
            manifest = path / MANIFEST
            if path.name.startswith(".") or not manifest.is_file():  # partial copies, locks
                continue
            data = json.loads(manifest.read_text())
            found.append(
                CacheEntry(
                    key=path.name,
                    path=path,
                    size_bytes=_size(path),
                    last_used=datetime.fromtimestamp(path.stat().st_mtime, UTC),
                    run_id=str(data.get("run_id", "")),
                    data_sha256=str(data.get("data_sha256", "")),
                )
            )
        return sorted(found, key=lambda e: e.last_used, reverse=True)

    def prune(self, max_bytes: int) -> list[CacheEntry]:
        """Remove the least recently used entries until the rest fit ``max_bytes``; the removed."""
        kept, removed, total = self.entries(), [], 0
        for entry in kept:
            total += entry.size_bytes
            if total > max_bytes:
                shutil.rmtree(entry.path)
                removed.append(entry)
        return removed
