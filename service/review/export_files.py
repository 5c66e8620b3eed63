"""Writing an export's JSONL files to disk in bounded memory.

Lines are added one at a time as rows are read. Each goes to one of ``BUCKETS`` spill files by
its split hash (``hash_fraction``), so the buckets, taken in order, hold ranges of hash values
that follow each other. ``finish`` then reads one bucket at a time, removes its duplicates (a
line always lands in the same bucket as its copies), sorts it by (hash, line) and writes the
lines to ``validation.jsonl`` (hash below ``val_fraction``) or ``train.jsonl``, then
``all.jsonl`` (train, then validation), each file's sha256 computed as it is written. The
result is byte for byte what sorting every line in memory gives (``export.split_lines``),
while memory holds one bucket, not the export.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

BUCKETS = 256
SPILL_BYTES = 4 * 1024 * 1024  # buffered lines are appended to their buckets beyond this
COPY_BYTES = 1024 * 1024
FILES = {"train": "train.jsonl", "validation": "validation.jsonl", "all": "all.jsonl"}


def hash_fraction(line: str, seed: int) -> float:
    """The first 8 bytes of ``sha256(f"{seed}\\n{line}")`` as a fraction of 2**64."""
    digest = hashlib.sha256(f"{seed}\n{line}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True, slots=True)
class WrittenFiles:
    """What ``SpillWriter.finish`` wrote: counts of unique lines and each file's sha256."""

    train: int
    validation: int
    duplicates: int
    sha256: dict[str, str]  # train, validation, all


class _HashedFile:
    """A file written line by line, its sha256 and line count kept on the way."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.digest = hashlib.sha256()
        self.lines = 0
        self._file: BinaryIO = path.open("wb")

    def write(self, line: bytes) -> None:
        data = line + b"\n"
        self._file.write(data)
        self.digest.update(data)
        self.lines += 1

    def close(self) -> None:
        self._file.close()


class SpillWriter:
    """Collects lines into hash-range spill files under ``work`` (a directory it owns)."""

    def __init__(self, work: Path, seed: int) -> None:
        self._work = work
        self._seed = seed
        self._buffers: dict[int, list[bytes]] = {}
        self._buffered = 0
        self._added = 0
        work.mkdir(parents=True, exist_ok=True)

    def add(self, line: str) -> None:
        """One line (no newline inside: ``export.example_line`` escapes them)."""
        bucket = min(int(hash_fraction(line, self._seed) * BUCKETS), BUCKETS - 1)
        data = line.encode()
        self._buffers.setdefault(bucket, []).append(data)
        self._buffered += len(data) + 1
        self._added += 1
        if self._buffered >= SPILL_BYTES:
            self._spill()

    def _bucket_path(self, bucket: int) -> Path:
        return self._work / f"bucket-{bucket:03d}"

    def _spill(self) -> None:
        for bucket, lines in self._buffers.items():
            with self._bucket_path(bucket).open("ab") as file:
                file.writelines(line + b"\n" for line in lines)
        self._buffers.clear()
        self._buffered = 0

    def _sorted_buckets(self) -> Iterator[list[tuple[float, bytes]]]:
        """Each non-empty bucket in order: its unique lines with their hash, sorted."""
        for bucket in range(BUCKETS):
            path = self._bucket_path(bucket)
            if not path.exists():
                continue
            unique = set(path.read_bytes().split(b"\n"))
            unique.discard(b"")
            path.unlink()
            yield sorted((hash_fraction(line.decode(), self._seed), line) for line in unique)

    def finish(self, out: Path, val_fraction: float) -> WrittenFiles:
        """Write train.jsonl, validation.jsonl and all.jsonl into ``out``; see the module
        docstring. A side left empty (with two or more lines in all) gets the lowest (or
        highest) line of the other, as ``export.split_lines`` does."""
        if not 0 <= val_fraction < 1:
            raise ValueError("val_fraction must be at least 0 and below 1")
        self._spill()
        # A first pass counts the unique lines on each side (and leaves each bucket sorted).
        unique = below = 0
        for number, bucket in enumerate(self._sorted_buckets()):
            unique += len(bucket)
            below += sum(1 for value, _ in bucket if value < val_fraction)
            with (self._work / f"sorted-{number:03d}").open("wb") as file:
                file.writelines(line + b"\n" for _, line in bucket)
        first_to_val = unique >= 2 and val_fraction > 0 and below == 0
        last_to_train = not first_to_val and unique >= 2 and below == unique
        out.mkdir(parents=True, exist_ok=True)
        train, val = _HashedFile(out / FILES["train"]), _HashedFile(out / FILES["validation"])
        try:
            index = 0
            for path in sorted(self._work.glob("sorted-*")):
                with path.open("rb") as file:
                    for raw in file:
                        line = raw.rstrip(b"\n")
                        to_val = index < below
                        if (first_to_val and index == 0) or (last_to_train and index == unique - 1):
                            to_val = not to_val
                        (val if to_val else train).write(line)
                        index += 1
                path.unlink()
        finally:
            train.close()
            val.close()
        whole = hashlib.sha256()
        with (out / FILES["all"]).open("wb") as target:
            for part in (train.path, val.path):
                with part.open("rb") as source:
                    while chunk := source.read(COPY_BYTES):
                        target.write(chunk)
                        whole.update(chunk)
        sha = {"train": train.digest.hexdigest(), "validation": val.digest.hexdigest(),
               "all": whole.hexdigest()}  # fmt: skip
        return WrittenFiles(train.lines, val.lines, self._added - unique, sha)

    def discard(self) -> None:
        """Remove the spill files (``finish`` leaves none; this is for a failed export)."""
        shutil.rmtree(self._work, ignore_errors=True)
