"""Checks on an adapter directory that need no torch: where it is, what files it holds, whether
its weights are whole.

``scan_source`` runs on the caller's directory before anything is copied: the path must be a
local directory under the import root, reached without ``..`` and without any symlink that
leaves the root; it must hold ``adapter_config.json`` and ``adapter_model.safetensors``, no pickle
weights anywhere, and at most the configured number of bytes. ``read_adapter`` then parses the
config and every safetensors header of the staged copy (the bytes that will be stored), and
notes which LoRA tensors are all zeros.

Error messages name the path as the caller gave it and file names inside the adapter, never the
server's own directories.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from adapters.errors import (
    AdapterConfigInvalid,
    AdapterConfigMissing,
    AdapterCorruptWeights,
    AdapterPathNotFound,
    AdapterPathNotLocal,
    AdapterPathOutsideRoot,
    AdapterPathTraversal,
    AdapterPickleWeights,
    AdapterSymlinkEscape,
    AdapterTooLarge,
    AdapterUnsupportedFile,
    AdapterWeightsMissing,
)
from adapters.tensors import SafetensorsError, TensorInfo, read_header, zero_tensors

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"})
MAX_FILES = 10_000
URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


@dataclass(frozen=True, slots=True)
class SourceFile:
    relative: str  # POSIX path inside the adapter directory
    real: Path  # the resolved file, checked to lie under the import root
    size: int


@dataclass(frozen=True, slots=True)
class ScannedSource:
    shown_as: str  # the path as the caller gave it
    files: tuple[SourceFile, ...]  # sorted by relative name
    size_bytes: int


@dataclass(frozen=True, slots=True)
class AdapterContents:
    config: dict[str, Any]
    tensors: dict[str, TensorInfo]  # those of adapter_model.safetensors
    zero_tensors: frozenset[str]  # those of its tensors whose every element is zero


def scan_source(raw: str, import_root: Path, max_bytes: int) -> ScannedSource:
    """Resolve ``raw`` (absolute, or relative to the import root) and check the tree under it."""
    root = Path(os.path.realpath(import_root))
    directory = _resolve(raw, root)
    files: list[SourceFile] = []
    total = 0
    for relative, real in _walk(directory, root, raw):
        info = os.stat(real)
        if not stat.S_ISREG(info.st_mode):
            raise AdapterUnsupportedFile(f"{relative!r} in {raw!r} is not a regular file.")
        if PurePosixPath(relative).suffix.lower() in PICKLE_SUFFIXES:
            raise AdapterPickleWeights(
                f"{relative!r} in {raw!r} is a pickle file; pickles can run code when loaded. "
                f"Save the adapter with safetensors ({WEIGHTS_FILE})."
            )
        total += info.st_size
        if total > max_bytes or len(files) >= MAX_FILES:
            raise AdapterTooLarge(
                f"{raw!r} holds more than {max_bytes} bytes or {MAX_FILES} files."
            )
        files.append(SourceFile(relative, real, info.st_size))
    names = {f.relative for f in files}
    if CONFIG_FILE not in names:
        raise AdapterConfigMissing(f"{raw!r} has no {CONFIG_FILE}.")
    if WEIGHTS_FILE not in names:
        raise AdapterWeightsMissing(f"{raw!r} has no {WEIGHTS_FILE} (safetensors weights).")
    return ScannedSource(raw, tuple(sorted(files, key=lambda f: f.relative)), total)


def _resolve(raw: str, root: Path) -> Path:
    if "\0" in raw or URL.match(raw):
        raise AdapterPathNotLocal(
            f"{raw!r} is not a local directory path; URLs and hub ids are not accepted."
        )
    if ".." in re.split(r"[/\\]", raw):
        raise AdapterPathTraversal(f"{raw!r} contains '..'; give the directory's own path.")
    try:
        directory = Path(os.path.realpath(root / raw))
        is_dir = directory.is_dir()
    except OSError as exc:  # e.g. a name longer than the filesystem allows
        raise AdapterPathNotFound(f"{raw!r} cannot be a directory here: {exc.strerror}.") from exc
    if not _within(directory, root):
        raise AdapterPathOutsideRoot(f"{raw!r} is not under the adapter import root.")
    if not is_dir:
        raise AdapterPathNotFound(
            f"{raw!r} is not an existing directory under the adapter import root "
            "(hub ids and URLs are not accepted)."
        )
    return directory


def _walk(directory: Path, root: Path, raw: str) -> list[tuple[str, Path]]:
    """Every file under ``directory`` as (relative name, resolved path), following symlinks
    only while they stay under the root; each directory is visited once."""
    found: list[tuple[str, Path]] = []
    seen: set[Path] = set()
    pending: list[tuple[str, Path]] = [("", directory)]
    while pending:
        prefix, current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        with os.scandir(current) as entries:
            for entry in entries:
                relative = f"{prefix}{entry.name}"
                real = Path(os.path.realpath(entry.path))
                if not _within(real, root):
                    raise AdapterSymlinkEscape(
                        f"{relative!r} in {raw!r} is a link to outside the adapter import root."
                    )
                if not real.exists():
                    raise AdapterUnsupportedFile(f"{relative!r} in {raw!r} is a broken link.")
                if real.is_dir():
                    pending.append((f"{relative}/", real))
                else:
                    found.append((relative, real))
    return found


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def read_adapter(directory: Path) -> AdapterContents:
    """Parse the config and check every safetensors file of an adapter directory."""
    try:
        config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise AdapterConfigInvalid(f"{CONFIG_FILE} is not valid JSON.") from exc
    if not isinstance(config, dict):
        raise AdapterConfigInvalid(f"{CONFIG_FILE} is not a JSON object.")
    tensors: dict[str, TensorInfo] = {}
    zero: frozenset[str] = frozenset()
    for path in sorted(directory.rglob("*.safetensors")):
        relative = path.relative_to(directory).as_posix()
        try:
            header = read_header(path)
            if relative == WEIGHTS_FILE:
                tensors, zero = header, zero_tensors(path)
        except SafetensorsError as exc:
            raise AdapterCorruptWeights(
                f"{relative} is not a valid safetensors file: {exc}."
            ) from exc
    return AdapterContents(config, tensors, zero)
