"""The training cache on real directories: keys, lookups, the bound and the CLI (no torch)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adapters.training_cache import TrainingCache, directory_sha256, run_key
from service.cli.app import app

runner = CliRunner()


def run_dir(tmp_path: Path, name: str, size: int) -> Path:
    """A finished run as training writes it: weights and a manifest."""
    path = tmp_path / "runs" / name
    path.mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(os.urandom(size))
    (path / "manifest.json").write_text(json.dumps({"run_id": name, "data_sha256": "d" * 64}))
    return path


def age(cache: TrainingCache, key: str, seconds_ago: float) -> None:
    when = (cache.root / key).stat().st_mtime - seconds_ago
    os.utime(cache.root / key, (when, when))


def test_a_key_changes_with_every_input_and_not_with_their_order() -> None:
    inputs = {"data_sha256": "a", "seed": 0, "hyperparameters": {"epochs": 1, "lr": 0.001}}
    same = {"hyperparameters": {"lr": 0.001, "epochs": 1}, "seed": 0, "data_sha256": "a"}
    assert run_key(inputs) == run_key(same)
    for changed in ({"seed": 1}, {"data_sha256": "b"}, {"hyperparameters": {"epochs": 2}}):
        assert run_key({**inputs, **changed}) != run_key(inputs)


def test_a_base_model_digest_sees_contents_and_names(tmp_path: Path) -> None:
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "sub" / "weights").write_bytes(b"\x00" * 10)
    first = directory_sha256(model)
    (model / "sub" / "weights").write_bytes(b"\x00" * 9 + b"\x01")
    second = directory_sha256(model)
    (model / "sub" / "weights").rename(model / "sub" / "weights2")
    assert len({first, second, directory_sha256(model)}) == 3


def test_a_stored_run_is_found_as_it_was_and_a_missing_one_is_not(tmp_path: Path) -> None:
    cache = TrainingCache(tmp_path / "cache", max_bytes=10**6)
    original = run_dir(tmp_path, "r1", 100)
    assert cache.find("k1") is None
    cache.put("k1", original)
    hit = cache.find("k1")
    assert hit is not None
    for name in ("adapter_model.safetensors", "manifest.json"):
        assert (hit / name).read_bytes() == (original / name).read_bytes()
    cache.put("k1", run_dir(tmp_path, "r2", 100))  # the same key again keeps the first
    assert json.loads((hit / "manifest.json").read_text())["run_id"] == "r1"
    assert [e.run_id for e in cache.entries()] == ["r1"]


def test_a_half_written_entry_is_not_a_hit(tmp_path: Path) -> None:
    cache = TrainingCache(tmp_path / "cache", max_bytes=10**6)
    (cache.root / "k1").mkdir(parents=True)  # a copy cut off before its manifest
    (cache.root / ".k2.abc.partial").mkdir()
    assert cache.find("k1") is None and cache.entries() == []


def test_the_bound_removes_the_least_recently_used_first(tmp_path: Path) -> None:
    cache = TrainingCache(tmp_path / "cache", max_bytes=2500)
    for i, seconds_ago in ((1, 300), (2, 200)):
        cache.put(f"k{i}", run_dir(tmp_path, f"r{i}", 1000))
        age(cache, f"k{i}", seconds_ago)
    assert cache.find("k1") is not None  # used now: k2 is the least recently used
    cache.put("k3", run_dir(tmp_path, "r3", 1000))
    assert next(e.key for e in cache.entries()) == "k3"
    assert {e.key for e in cache.entries()} == {"k1", "k3"}
    assert cache.find("k2") is None
    assert sum(e.size_bytes for e in cache.entries()) <= 2500


def test_cli_lists_and_prunes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAGATE_DATA_DIR", str(tmp_path))
    cache = TrainingCache(tmp_path / "training-cache", max_bytes=10**6)
    for i in (1, 2, 3):
        cache.put(f"{i}" * 64, run_dir(tmp_path, f"run{i}", 1000))
        age(cache, f"{i}" * 64, 100 * (4 - i))
    listed = runner.invoke(app, ["adapters", "cache", "list"])
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert [line.split()[1] for line in lines[:3]] == ["run=run3", "run=run2", "run=run1"]
    assert lines[3].startswith("3 runs, ") and str(tmp_path / "training-cache") in lines[3]
    pruned = runner.invoke(app, ["adapters", "cache", "prune", "--max-bytes", "2500"])
    assert pruned.exit_code == 0, pruned.output
    assert "removed 1 runs" in pruned.output and [e.run_id for e in cache.entries()] == [
        "run3",
        "run2",
    ]
    emptied = runner.invoke(app, ["adapters", "cache", "prune", "--all"])
    assert "removed 2 runs" in emptied.output and cache.entries() == []


def test_one_run_of_a_key_at_a_time_and_other_keys_meanwhile(tmp_path: Path) -> None:
    cache = TrainingCache(tmp_path / "cache", max_bytes=10**6)
    order: list[str] = []

    def second(key: str) -> None:
        with cache.hold(key):
            order.append(f"second {key}")

    with cache.hold("k1"):
        same, other = (threading.Thread(target=second, args=(k,)) for k in ("k1", "k2"))
        same.start()
        other.start()
        other.join(30)
        assert order == ["second k2"]  # another key does not wait
        same.join(0.2)
        assert same.is_alive()  # the same key waits for the first run
        order.append("first k1")
    same.join(30)
    assert order == ["second k2", "first k1", "second k1"]
