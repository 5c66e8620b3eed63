"""A crash-safe local spool: append-only segment files of framed, checksummed records.

The request path appends each finished record here (a write to the OS, never a wait on the
database) before the last byte of its answer goes out; the shipper thread moves sealed segments
into the database and deletes a segment only after its rows are committed.

On disk, under one directory owned by one process (an exclusive lock file says so):

- ``<seq>.open``: the segment being appended to (at most one while running);
- ``<seq>.ready``: sealed segments, shipped in ``seq`` order.

A frame is ``length (u32) | crc32 (u32) | payload``, little-endian. A segment left ``.open`` by
a crash is sealed at start; a torn last frame (the process died inside a write) is cut at the
last whole frame and counted.

``fsync``: ``always`` syncs each append before it returns; ``interval`` syncs the open segment
from the shipper thread every ``fsync_interval_s``; ``never`` leaves it to the OS. A SIGKILL
loses nothing under any of them (the data is in the page cache); the policy bounds what a power
loss can take.
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from service.settings import Fsync

HEADER = struct.Struct("<II")
MAX_FRAME = 64 * 1024 * 1024  # a length above this is corruption, not a record
OPEN, READY = ".open", ".ready"
FILE_MODE = 0o600  # bodies may be in here: readable by the service user only


class SpoolLocked(RuntimeError):
    """Another process holds this spool directory."""


@dataclass(frozen=True, slots=True)
class Segment:
    seq: int
    path: Path
    size: int


@dataclass(frozen=True, slots=True)
class Frames:
    payloads: list[bytes]
    torn_bytes: int  # bytes after the last whole frame (0 for a cleanly written segment)


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def read_frames(data: bytes) -> Frames:
    """Whole frames from the start of ``data``; reading stops at the first torn or bad frame."""
    payloads: list[bytes] = []
    at = 0
    while at + HEADER.size <= len(data):
        length, crc = HEADER.unpack_from(data, at)
        end = at + HEADER.size + length
        if length > MAX_FRAME or end > len(data):
            break
        payload = data[at + HEADER.size : end]
        if zlib.crc32(payload) != crc:
            break
        payloads.append(payload)
        at = end
    return Frames(payloads, len(data) - at)


def _seq(path: Path) -> int:
    return int(path.stem)


class Spool:
    def __init__(self, directory: Path, *, max_bytes: int, fsync: Fsync = Fsync.INTERVAL) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.fsync = fsync
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._open_seq = 0
        self._next_seq = 1
        self._bytes = 0
        self._open_bytes = 0
        self._unsynced = False  # appended to since the open segment's last fsync
        self._named_durably = 0  # the newest segment whose directory entry was fsynced
        # Sealed segments, oldest first: only this process seals, so no directory listing.
        self._ready: list[Segment] = []
        # Wall-clock time of the first record in each segment not yet shipped.
        self._first_at: dict[int, float] = {}
        self._lock_fd: int | None = None
        self.torn_bytes_cut = 0
        self.torn_segments = 0
        # Called (outside the lock) when an append opens a segment: the shipper sleeps
        # without a timer while the spool holds nothing, and this wakes it.
        self.on_new_segment: Callable[[], None] | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def open(self) -> None:
        """Take the directory, seal what a previous process left open, and count what is there."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock_fd = os.open(self.directory / "spool.lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(lock_fd)
            raise SpoolLocked(
                f"the record spool {self.directory} is in use by another process; give each "
                "gateway its own data directory"
            ) from exc
        self._lock_fd = lock_fd
        for path in sorted(self.directory.glob(f"*{OPEN}"), key=_seq):
            self._recover(path)
        found = []
        for path in self.directory.glob(f"*{READY}"):
            found.append(Segment(_seq(path), path, path.stat().st_size))
        self._ready = sorted(found, key=lambda s: s.seq)
        for segment in self._ready:
            self._bytes += segment.size
            self._first_at[segment.seq] = segment.path.stat().st_mtime
            self._next_seq = max(self._next_seq, segment.seq + 1)

    def _recover(self, path: Path) -> None:
        data = path.read_bytes()
        frames = read_frames(data)
        if frames.torn_bytes:
            self.torn_segments += 1
            self.torn_bytes_cut += frames.torn_bytes
            with open(path, "r+b") as handle:
                handle.truncate(len(data) - frames.torn_bytes)
                os.fsync(handle.fileno())
        if frames.payloads:
            path.rename(path.with_suffix(READY))
        else:
            path.unlink()

    def close(self) -> None:
        """Seal the open segment (it is shipped at the next start if not before) and unlock."""
        self.seal()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- the request path ---------------------------------------------------------------------

    @property
    def full(self) -> bool:
        return self._bytes >= self.max_bytes

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def append(self, payload: bytes) -> None:
        """Append one record; raises ``OSError`` when the OS refuses the write."""
        data = frame(payload)
        with self._lock:
            starting = self._fd is None
            if starting:
                self._start_segment()
            fd = self._fd
            assert fd is not None
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            except OSError:
                self._undo_partial_write(fd)
                raise
            self._bytes += len(data)
            self._open_bytes += len(data)
            self._unsynced = True
            if self.fsync is Fsync.ALWAYS:
                os.fsync(fd)
        if starting and self.on_new_segment is not None:
            self.on_new_segment()

    def _undo_partial_write(self, fd: int) -> None:
        """Cut a half-written frame, so the frames after it stay readable (caller holds the lock).

        If even that fails, the segment is closed where it is: a reader stops at the torn frame,
        which is the last one in that segment.
        """
        try:
            os.ftruncate(fd, self._open_bytes)
        except OSError:
            os.close(fd)
            self._fd = None
            path = self.directory / f"{self._open_seq:012d}{OPEN}"
            try:
                size = path.stat().st_size
                path.rename(path.with_suffix(READY))
            except OSError:
                return  # left .open: it is sealed (and its torn tail cut) at the next start
            self._bytes += size - self._open_bytes
            self._ready.append(Segment(self._open_seq, path.with_suffix(READY), size))

    def _start_segment(self) -> None:
        seq = self._next_seq
        path = self.directory / f"{seq:012d}{OPEN}"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, FILE_MODE)
        self._open_seq, self._next_seq, self._open_bytes = seq, seq + 1, 0
        self._first_at[seq] = time.time()
        if self.fsync is Fsync.ALWAYS:
            self._sync_directory()  # an fsynced record in a file whose name could be lost
            self._named_durably = seq

    # -- the shipper's side -------------------------------------------------------------------

    def seal(self) -> None:
        """Close the open segment and make it shippable; appends go on into a new one.

        The rename needs no directory fsync of its own: a segment whose rename a power loss
        undid is found ``.open`` at the next start and sealed then. Only a name never made
        durable (a segment created since the last sync) is synced here."""
        with self._lock:
            fd, seq, size, unsynced = self._fd, self._open_seq, self._open_bytes, self._unsynced
            self._fd, self._unsynced = None, False
        if fd is None:
            return
        try:
            if unsynced and self.fsync is not Fsync.NEVER:
                os.fsync(fd)  # it may wait long for its shipping: the database may be away
        finally:
            os.close(fd)
        path = self.directory / f"{seq:012d}{OPEN}"
        path.rename(path.with_suffix(READY))
        if seq > self._named_durably and self.fsync is not Fsync.NEVER:
            self._sync_directory()
            self._named_durably = seq
        with self._lock:
            self._ready.append(Segment(seq, path.with_suffix(READY), size))

    def sync(self) -> None:
        """fsync the open segment without holding appends back (the ``interval`` policy)."""
        with self._lock:
            fd = os.dup(self._fd) if self._fd is not None and self._unsynced else None
            seq = self._open_seq
            self._unsynced = False
        if fd is None:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if seq > self._named_durably:
            self._sync_directory()
            self._named_durably = seq

    def empty(self) -> bool:
        """Nothing to seal, sync or ship."""
        with self._lock:
            return (self._fd is None or not self._open_bytes) and not self._ready

    def has_open_records(self) -> bool:
        with self._lock:
            return self._fd is not None and self._open_bytes > 0

    def open_age_s(self) -> float:
        """How long the open segment's first record has waited (0 when it holds none)."""
        with self._lock:
            if self._fd is None or not self._open_bytes:
                return 0.0
            return max(0.0, time.time() - self._first_at[self._open_seq])

    def ready(self) -> list[Segment]:
        """Sealed segments, oldest first."""
        with self._lock:
            return list(self._ready)

    def read(self, segment: Segment) -> Frames:
        return read_frames(segment.path.read_bytes())

    def shipped(self, segments: list[Segment]) -> None:
        """Delete segments whose rows are committed. No directory fsync: a deletion a power
        loss undid ships the segment again, which inserts nothing twice."""
        for segment in segments:
            segment.path.unlink()
            with self._lock:
                self._bytes -= segment.size
                self._first_at.pop(segment.seq, None)
                self._ready = [s for s in self._ready if s.seq != segment.seq]

    def oldest_unshipped_s(self) -> float:
        """Age of the oldest record not yet in the database (0 when none waits)."""
        with self._lock:
            oldest = min(self._first_at.values(), default=None)
        return max(0.0, time.time() - oldest) if oldest is not None else 0.0

    def _sync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
