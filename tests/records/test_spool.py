"""The record spool on a real directory: frames, sealing, recovery after a crash, size, locking."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from service.records.spool import HEADER, Spool, SpoolLocked, frame, read_frames
from service.settings import Fsync


def _spool(tmp_path: Path, max_bytes: int = 10**9, fsync: Fsync = Fsync.INTERVAL) -> Spool:
    spool = Spool(tmp_path / "spool", max_bytes=max_bytes, fsync=fsync)
    spool.open()
    return spool


def _all_payloads(spool: Spool) -> list[bytes]:
    return [p for segment in spool.ready() for p in spool.read(segment).payloads]


@pytest.mark.parametrize("fsync", list(Fsync))
def test_appended_records_come_back_in_order_once_sealed(tmp_path: Path, fsync: Fsync) -> None:
    spool = _spool(tmp_path, fsync=fsync)
    payloads = [f"record {i}".encode() * (i + 1) for i in range(50)]
    for payload in payloads[:20]:
        spool.append(payload)
    assert spool.ready() == []  # nothing is shippable before it is sealed
    spool.seal()
    for payload in payloads[20:]:
        spool.append(payload)
    spool.seal()
    assert len(spool.ready()) == 2
    assert _all_payloads(spool) == payloads
    assert spool.size_bytes == sum(len(frame(p)) for p in payloads)
    spool.close()


def test_shipped_segments_are_deleted_and_uncounted(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    spool.append(b"a")
    spool.seal()
    spool.append(b"b")
    spool.seal()
    first, second = spool.ready()
    spool.shipped([first])
    assert not first.path.exists() and spool.ready() == [second]
    assert spool.size_bytes == len(frame(b"b"))
    spool.shipped([second])
    assert spool.size_bytes == 0 and spool.oldest_unshipped_s() == 0.0


def test_files_are_private_to_the_service_user(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    spool.append(b"secret body")
    spool.seal()
    (segment,) = spool.ready()
    assert stat.S_IMODE(segment.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(spool.directory.stat().st_mode) == 0o700


def test_full_is_reached_at_max_bytes(tmp_path: Path) -> None:
    one = len(frame(b"x" * 100))
    spool = _spool(tmp_path, max_bytes=3 * one)
    spool.append(b"x" * 100)
    spool.append(b"x" * 100)
    assert not spool.full
    spool.append(b"x" * 100)
    assert spool.full
    spool.seal()
    spool.shipped(spool.ready())
    assert not spool.full


def test_a_crash_leaves_an_open_segment_that_the_next_start_ships(tmp_path: Path) -> None:
    crashed = _spool(tmp_path)
    crashed.append(b"one")
    crashed.append(b"two")
    # The process dies: no seal, no close; the lock goes with the process (here: closed by hand).
    assert crashed._lock_fd is not None
    os.close(crashed._lock_fd)

    restarted = _spool(tmp_path)
    assert _all_payloads(restarted) == [b"one", b"two"]
    assert restarted.torn_segments == 0
    assert restarted.size_bytes == len(frame(b"one")) + len(frame(b"two"))
    restarted.append(b"three")  # a new segment after the recovered one
    restarted.seal()
    assert _all_payloads(restarted) == [b"one", b"two", b"three"]


def test_a_torn_last_frame_is_cut_at_the_last_whole_frame_and_counted(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    directory.mkdir()
    whole = frame(b"kept 1") + frame(b"kept 2")
    torn = frame(b"the process died inside this write")[:-5]
    (directory / f"{7:012d}.open").write_bytes(whole + torn)

    spool = Spool(directory, max_bytes=10**9)
    spool.open()
    assert _all_payloads(spool) == [b"kept 1", b"kept 2"]
    assert (spool.torn_segments, spool.torn_bytes_cut) == (1, len(torn))
    (segment,) = spool.ready()
    assert segment.size == len(whole) and segment.seq == 7
    spool.append(b"after")
    spool.seal()
    assert [s.seq for s in spool.ready()] == [7, 8]  # numbering goes on after what was found


def test_a_corrupt_frame_stops_reading_where_it_starts() -> None:
    good = frame(b"good")
    bad = bytearray(frame(b"flipped"))
    bad[-1] ^= 0xFF  # checksum no longer matches
    frames = read_frames(good + bytes(bad) + frame(b"unreachable"))
    assert frames.payloads == [b"good"]
    assert frames.torn_bytes == len(bad) + len(frame(b"unreachable"))
    header_only = HEADER.pack(5, 0)
    assert read_frames(header_only).payloads == []


def test_an_empty_open_segment_is_removed_at_start(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    directory.mkdir()
    (directory / f"{1:012d}.open").write_bytes(b"")
    spool = Spool(directory, max_bytes=10**9)
    spool.open()
    assert spool.ready() == [] and not list(directory.glob("*.open"))


def test_one_spool_per_process(tmp_path: Path) -> None:
    first = _spool(tmp_path)
    second = Spool(tmp_path / "spool", max_bytes=10**9)
    with pytest.raises(SpoolLocked, match="own data directory"):
        second.open()
    first.close()
    second.open()  # free again once the first let go
    second.close()


def test_a_failed_write_leaves_the_segment_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = _spool(tmp_path)
    spool.append(b"before")
    real_write = os.write

    def half_then_enospc(fd: int, data: bytes | memoryview) -> int:
        # The OS takes part of the frame, then refuses the rest (a full disk).
        if len(data) > 7:
            return real_write(fd, bytes(data[:7]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_enospc)
    with pytest.raises(OSError, match="No space"):
        spool.append(b"x" * 64)
    monkeypatch.setattr(os, "write", real_write)
    spool.append(b"after")
    spool.seal()
    assert _all_payloads(spool) == [b"before", b"after"]
    assert spool.size_bytes == len(frame(b"before")) + len(frame(b"after"))


def test_the_open_segment_is_synced_only_when_something_was_appended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = _spool(tmp_path)
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    spool.append(b"one")
    spool.sync()
    assert len(synced) == 2  # the segment, and the directory holding its new name
    spool.sync()  # nothing new: no fsync at all
    spool.sync()
    assert len(synced) == 2
    spool.append(b"two")
    spool.sync()
    assert len(synced) == 3  # the segment only: its name is durable already
    spool.seal()
    assert len(synced) == 3  # synced and named already: the rename needs nothing
    spool.shipped(spool.ready())
    assert len(synced) == 3  # a deletion undone by a power loss only ships it again


def test_ready_segments_are_known_without_listing_and_survive_a_restart(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    spool.append(b"a")
    spool.seal()
    spool.append(b"b")
    spool.seal()
    first, second = spool.ready()
    assert first.seq < second.seq
    spool.shipped([first])
    assert spool.ready() == [second]
    spool.close()
    again = _spool(tmp_path)  # a new process finds the same ready segment on disk
    assert [s.seq for s in again.ready()] == [second.seq]
    assert _all_payloads(again) == [b"b"]
