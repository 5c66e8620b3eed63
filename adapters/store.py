"""The content-addressed adapter store: one read-only directory per sha256, never changed.

The hash covers every file, in order of relative POSIX name: for each, the name as UTF-8, a NUL
byte, then the 32-byte sha256 of the content (so files are hashed as they stream). Two
directories with the same files (names and bytes) have the same hash whatever their timestamps
or permissions.

A registration first *stages* the caller's files: it copies them once into a private directory
inside the store, hashing as it copies, so the bytes checked, inspected and hashed are the bytes
that get stored even if the source changes meanwhile. ``commit`` renames the staged directory to
its hash (atomic on one filesystem) or, when that hash is stored already, drops the staged copy
and reuses the stored one. ``discard`` removes a staged copy that was not committed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from adapters.errors import AdapterTooLarge, AdapterUnsupportedFile
from adapters.validation import ScannedSource

CHUNK_BYTES = 1 << 20
STAGING_PREFIX = ".staging-"
READ_ONLY = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH


@dataclass(frozen=True, slots=True)
class StagedAdapter:
    path: Path
    sha256: str
    size_bytes: int


def stage(source: ScannedSource, store_dir: Path, max_bytes: int) -> StagedAdapter:
    """Copy the scanned files into a new staging directory inside ``store_dir`` and hash them."""
    store_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=store_dir))
    digest = hashlib.sha256()
    total = 0
    try:
        for file in source.files:
            target = staging / file.relative
            target.parent.mkdir(parents=True, exist_ok=True)
            size, content_digest = _copy(file.real, target, file.relative, max_bytes - total)
            total += size
            if total > max_bytes:
                raise AdapterTooLarge(f"{source.shown_as!r} holds more than {max_bytes} bytes.")
            digest.update(file.relative.encode() + b"\0" + content_digest)
    except BaseException:
        shutil.rmtree(staging)
        raise
    return StagedAdapter(staging, digest.hexdigest(), total)


def _copy(source: Path, target: Path, relative: str, budget: int) -> tuple[int, bytes]:
    """Copy one file, returning its size and content sha256; stops early past ``budget``."""
    # O_NOFOLLOW and the fstat check refuse a file swapped for a link or a fifo since the scan.
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise AdapterUnsupportedFile(f"{relative!r} changed while it was being read.") from exc
    digest = hashlib.sha256()
    size = 0
    with os.fdopen(fd, "rb") as src, target.open("xb") as dst:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise AdapterUnsupportedFile(f"{relative!r} is not a regular file.")
        while size <= budget and (chunk := src.read(CHUNK_BYTES)):
            digest.update(chunk)
            dst.write(chunk)
            size += len(chunk)
    return size, digest.digest()


def commit(staged: StagedAdapter, store_dir: Path) -> Path:
    """The stored directory for the staged content, created read-only or reused."""
    final = store_dir / staged.sha256
    if final.is_dir():
        discard(staged)
        return final
    for path in staged.path.rglob("*"):
        if path.is_file():
            path.chmod(READ_ONLY)
    try:
        staged.path.rename(final)
    except OSError:
        # Someone stored the same content between the check and the rename: theirs is as good.
        if not final.is_dir():
            raise
        discard(staged)
    return final


def discard(staged: StagedAdapter) -> None:
    """Remove a staged copy that was not committed (nothing happens after a commit)."""
    if staged.path.exists():
        shutil.rmtree(staged.path)
