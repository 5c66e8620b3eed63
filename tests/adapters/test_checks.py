"""The pure parts of adapter registration: safetensors headers, the store's hash, path and
file checks, the base-model rule, the inspection worker's protocol and per-name locks."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest

from adapters import store
from adapters.compat import BaseModel, PoolSpec, check_adapter
from adapters.errors import (
    AdapterBaseModelMismatch,
    AdapterChangesNothing,
    AdapterConfigInvalid,
    AdapterInspectionFailed,
    AdapterNotLora,
    AdapterPathOutsideRoot,
    AdapterRankTooHigh,
    AdapterRejected,
    AdapterTooLarge,
    AdapterUnknownTargetModules,
    AdapterUnsupportedFile,
)
from adapters.inspect import LoraSummary, SubprocessInspector
from adapters.locks import KeyedLocks
from adapters.tensors import (
    SafetensorsError,
    TensorInfo,
    model_weight_shapes,
    read_header,
    zero_tensors,
)
from adapters.validation import read_adapter, scan_source
from tests.adapter_factory import (
    llama_shapes,
    lora_shapes,
    peft_config,
    write_adapter,
    write_base_model,
    write_safetensors,
)

# -- safetensors headers ----------------------------------------------------------------------


def raw_file(path: Path, header: Any, data: bytes = b"", length: int | None = None) -> Path:
    encoded = json.dumps(header).encode()
    size = len(encoded) if length is None else length
    path.write_bytes(struct.pack("<Q", size) + encoded + data)
    return path


def test_reads_names_dtypes_and_shapes(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "a.safetensors", {"x": (2, 3), "y": (4,), "empty": (0, 5)}, 1)
    assert read_header(tmp_path / "a.safetensors") == {
        "x": TensorInfo("F32", (2, 3)),
        "y": TensorInfo("F32", (4,)),
        "empty": TensorInfo("F32", (0, 5)),
    }


def entry(begin: int, end: int, shape: list[int], dtype: str = "F32") -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


@pytest.mark.parametrize(
    ("header", "data", "length", "reason"),
    [
        ({}, b"", 10**9, "header length"),
        ("not an object", b"", None, "not a JSON object"),
        ({"x": entry(0, 8, [2])}, b"\0" * 4, None, "outside the file"),
        ({"x": entry(0, 4, [2])}, b"\0" * 4, None, "does not match its shape"),
        ({"x": entry(0, 8, [2], "Q7")}, b"\0" * 8, None, "unknown dtype"),
        ({"x": entry(0, 8, [-2])}, b"\0" * 8, None, "invalid shape"),
        ({"x": entry(0, 4, [1]), "y": entry(8, 12, [1])}, b"\0" * 12, None, "gaps"),
        ({"x": entry(0, 8, [2]), "y": entry(4, 8, [1])}, b"\0" * 8, None, "overlaps"),
        ({"x": entry(0, 4, [1])}, b"\0" * 8, None, "longer or shorter"),
        ({"x": [0, 4]}, b"\0" * 4, None, "not an object"),
    ],
)
def test_refuses_broken_files(
    tmp_path: Path, header: Any, data: bytes, length: int | None, reason: str
) -> None:
    path = raw_file(tmp_path / "b.safetensors", header, data, length)
    with pytest.raises(SafetensorsError, match=reason):
        read_header(path)


def test_refuses_short_and_non_json_files(tmp_path: Path) -> None:
    (tmp_path / "short").write_bytes(b"\x01\x00")
    with pytest.raises(SafetensorsError, match="8-byte"):
        read_header(tmp_path / "short")
    (tmp_path / "junk").write_bytes(struct.pack("<Q", 4) + b"\xff\xfe{[")
    with pytest.raises(SafetensorsError, match="not valid JSON"):
        read_header(tmp_path / "junk")


def test_model_weights_of_a_sharded_model(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "model-00001.safetensors", {"a.weight": (2, 2)})
    write_safetensors(tmp_path / "model-00002.safetensors", {"b.weight": (3, 2)})
    weight_map = {"a.weight": "model-00001.safetensors", "b.weight": "model-00002.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert model_weight_shapes(tmp_path) == {"a.weight": (2, 2), "b.weight": (3, 2)}
    weight_map["c.weight"] = "../elsewhere.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(SafetensorsError, match="outside"):
        model_weight_shapes(tmp_path)


def test_a_model_directory_without_weights(tmp_path: Path) -> None:
    with pytest.raises(SafetensorsError, match="no safetensors"):
        model_weight_shapes(tmp_path)


# -- the store --------------------------------------------------------------------------------


def stage_dir(root: Path, relative: str, store_dir: Path, max_bytes: int = 10**8) -> Any:
    return store.stage(scan_source(relative, root, max_bytes), store_dir, max_bytes)


def test_hash_covers_names_and_contents_only(tmp_path: Path) -> None:
    root = tmp_path / "imports"
    write_adapter(root / "a", seed=3)
    write_adapter(root / "b", seed=3)
    os.utime(root / "b" / "README.md", (0, 0))
    a = stage_dir(root, "a", tmp_path / "store")
    b = stage_dir(root, "b", tmp_path / "store")
    assert a.sha256 == b.sha256
    expected = hashlib.sha256()
    for name in sorted(p.name for p in (root / "a").iterdir()):
        content = (root / "a" / name).read_bytes()
        expected.update(name.encode() + b"\0" + hashlib.sha256(content).digest())
    assert a.sha256 == expected.hexdigest()

    (root / "b" / "README.md").rename(root / "b" / "NOTES.md")
    assert stage_dir(root, "b", tmp_path / "store").sha256 != a.sha256
    (root / "a" / "README.md").write_text("changed")
    assert stage_dir(root, "a", tmp_path / "store").sha256 != a.sha256


def test_commit_is_atomic_and_reuses_stored_content(tmp_path: Path) -> None:
    root, store_dir = tmp_path / "imports", tmp_path / "store"
    write_adapter(root / "a")
    first = stage_dir(root, "a", store_dir)
    second = stage_dir(root, "a", store_dir)
    assert store.commit(first, store_dir) == store_dir / first.sha256
    assert store.commit(second, store_dir) == store_dir / first.sha256
    store.discard(first)  # nothing happens after a commit
    assert sorted(p.name for p in store_dir.iterdir()) == [first.sha256]
    assert (store_dir / first.sha256 / "adapter_config.json").is_file()


def test_a_file_that_grows_after_the_scan_is_refused(tmp_path: Path) -> None:
    root, store_dir = tmp_path / "imports", tmp_path / "store"
    write_adapter(root / "a")
    scanned = scan_source("a", root, 100_000)
    with (root / "a" / "README.md").open("ab") as grow:
        grow.write(b"x" * 200_000)
    with pytest.raises(AdapterTooLarge):
        store.stage(scanned, store_dir, 100_000)
    assert list(store_dir.iterdir()) == []


# -- path and file checks ---------------------------------------------------------------------


def test_links_inside_the_root_are_followed_and_stored_as_files(tmp_path: Path) -> None:
    root = tmp_path / "imports"
    write_adapter(root / "blobs")
    (root / "a").mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (root / "a" / name).symlink_to(root / "blobs" / name)
    (root / "a" / "loop").symlink_to(root / "a")  # a directory cycle is walked once
    scanned = scan_source("a", root, 10**8)
    assert [f.relative for f in scanned.files] == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    staged = store.stage(scanned, tmp_path / "store", 10**8)
    assert not (staged.path / "adapter_config.json").is_symlink()
    assert read_adapter(staged.path).config["r"] == 8


def test_a_fifo_or_a_broken_link_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "imports"
    write_adapter(root / "a")
    (root / "a" / "gone").symlink_to(root / "a" / "missing")
    with pytest.raises(AdapterUnsupportedFile, match="broken link"):
        scan_source("a", root, 10**8)
    (root / "a" / "gone").unlink()
    os.mkfifo(root / "a" / "pipe")
    with pytest.raises(AdapterUnsupportedFile, match="not a regular file"):
        scan_source("a", root, 10**8)


def test_the_import_root_itself_may_be_a_link(tmp_path: Path) -> None:
    write_adapter(tmp_path / "real" / "a")
    (tmp_path / "imports").symlink_to(tmp_path / "real")
    assert len(scan_source("a", tmp_path / "imports", 10**8).files) == 3
    with pytest.raises(AdapterPathOutsideRoot):
        scan_source(str(tmp_path), tmp_path / "imports", 10**8)


def test_messages_name_only_what_the_caller_gave(tmp_path: Path) -> None:
    root = tmp_path / "imports"
    write_adapter(root / "a")
    (root / "a" / "weights.pkl").write_bytes(b"")
    with pytest.raises(AdapterRejected) as refused:
        scan_source("a", root, 10**8)
    assert refused.value.message.startswith("'weights.pkl' in 'a' is a pickle file")
    assert str(tmp_path) not in refused.value.message


# -- the base-model rule and the LoRA config ---------------------------------------------------

BASE = BaseModel(frozenset({"fake-base", "smollm2-135m-instruct"}), llama_shapes())


def summary(**overrides: Any) -> LoraSummary:
    return LoraSummary.from_config({**peft_config(8, None, ("q_proj", "v_proj")), **overrides})


def tensors_for(
    targets: tuple[str, ...] = ("q_proj", "v_proj"), r: int = 8, hidden: int = 64
) -> dict[str, TensorInfo]:
    return {
        k: TensorInfo("F32", v) for k, v in lora_shapes(llama_shapes(hidden), targets, r).items()
    }


@pytest.mark.parametrize(
    "declared",
    [
        None,
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "/data/models/smollm2-135m-instruct/",
        "fake-base",
    ],
)
def test_base_model_names_that_match(declared: str | None) -> None:
    checked = check_adapter(summary(base_model_name_or_path=declared), tensors_for(), BASE, 16)
    assert (checked.rank, checked.alpha, checked.target_modules) == (8, 16.0, ("q_proj", "v_proj"))


def test_another_base_model_name_is_refused_even_when_shapes_fit() -> None:
    with pytest.raises(AdapterBaseModelMismatch, match="smollm2-135m'"):
        named = summary(base_model_name_or_path="HuggingFaceTB/SmolLM2-135M")
        check_adapter(named, tensors_for(), BASE, 16)


def test_shapes_of_another_model_are_refused_without_a_name() -> None:
    with pytest.raises(AdapterBaseModelMismatch, match="different base model"):
        check_adapter(summary(), tensors_for(hidden=32), BASE, 16)


def test_a_module_the_base_model_lacks_is_refused() -> None:
    tensors = tensors_for()
    tensors["base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight"] = TensorInfo(
        "F32", (8, 64)
    )
    with pytest.raises(AdapterBaseModelMismatch, match=r"layers\.7"):
        check_adapter(summary(), tensors, BASE, 16)


def test_rank_counts_rank_pattern_and_the_tensors() -> None:
    with pytest.raises(AdapterRankTooHigh, match="rank 32"):
        check_adapter(summary(rank_pattern={"q_proj": 32}), tensors_for(), BASE, 16)
    with pytest.raises(AdapterRankTooHigh, match="rank 24"):
        check_adapter(summary(), tensors_for(r=24), BASE, 16)
    assert check_adapter(summary(r=16), tensors_for(r=16), BASE, 16).rank == 16


def test_regex_and_all_linear_targets() -> None:
    regex = r".*\.(q_proj|v_proj)"
    checked = check_adapter(summary(target_modules=regex), tensors_for(), BASE, 16)
    assert checked.target_modules == ("q_proj", "v_proj")
    assert check_adapter(summary(target_modules="all-linear"), tensors_for(), BASE, 16)
    with pytest.raises(AdapterUnknownTargetModules):
        check_adapter(summary(target_modules=r".*\.qkv"), tensors_for(), BASE, 16)
    with pytest.raises(AdapterConfigInvalid):
        check_adapter(summary(target_modules="(["), tensors_for(), BASE, 16)


def test_weights_that_adapt_nothing_are_refused() -> None:
    with pytest.raises(AdapterUnknownTargetModules, match="no module"):
        check_adapter(summary(), {}, BASE, 16)


def test_zero_tensors_reads_the_data_and_counts_minus_zero_as_zero(tmp_path: Path) -> None:
    minus_zero_bf16 = b"\x00\x80" * 4
    one_bf16 = b"\x80\x3f"  # 1.0
    tiny_f32 = struct.pack("<f", 1e-30)
    header = {
        "zero": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]},
        "minus_zero": {"dtype": "BF16", "shape": [4], "data_offsets": [8, 16]},
        "one_at_the_end": {"dtype": "BF16", "shape": [4], "data_offsets": [16, 24]},
        "tiny": {"dtype": "F32", "shape": [1], "data_offsets": [24, 28]},
        "int_128": {"dtype": "U8", "shape": [1], "data_offsets": [28, 29]},
        "empty": {"dtype": "F32", "shape": [0], "data_offsets": [29, 29]},
    }
    data = bytes(8) + minus_zero_bf16 + bytes(6) + one_bf16 + tiny_f32 + b"\x80"
    path = raw_file(tmp_path / "z.safetensors", header, data)
    assert read_header(path).keys() == header.keys()
    assert zero_tensors(path) == {"zero", "minus_zero", "empty"}


def test_an_adapter_whose_updates_are_all_zero_changes_nothing() -> None:
    tensors = tensors_for()
    lora_b = frozenset(n for n in tensors if ".lora_B." in n)
    lora_a = frozenset(n for n in tensors if ".lora_A." in n)
    for zero in (lora_b, lora_a, lora_a | lora_b):
        with pytest.raises(AdapterChangesNothing, match="changes nothing"):
            check_adapter(summary(), tensors, BASE, 16, zero)
    with pytest.raises(AdapterChangesNothing, match="lora_alpha"):
        check_adapter(summary(lora_alpha=0), tensors, BASE, 16)
    # One module with both matrices non-zero is enough to change the model.
    one_module = next(n for n in lora_b if "layers.0.self_attn.q_proj" in n)
    assert check_adapter(summary(), tensors, BASE, 16, lora_b - {one_module})
    # A replaced base weight (modules_to_save) changes the model by itself.
    tensors["base_model.model.model.norm.weight"] = TensorInfo("F32", (64,))
    assert check_adapter(summary(), tensors, BASE, 16, lora_b)


def test_modules_to_save_must_have_the_base_shape() -> None:
    tensors = tensors_for()
    tensors["base_model.model.model.norm.weight"] = TensorInfo("F32", (64,))
    check_adapter(summary(), tensors, BASE, 16)
    tensors["base_model.model.model.norm.weight"] = TensorInfo("F32", (32,))
    with pytest.raises(AdapterBaseModelMismatch):
        check_adapter(summary(), tensors, BASE, 16)


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"peft_type": "IA3"}, AdapterNotLora),
        ({"use_dora": True}, AdapterNotLora),
        ({"r": 0}, AdapterConfigInvalid),
        ({"r": "8"}, AdapterConfigInvalid),
        ({"lora_alpha": None}, AdapterConfigInvalid),
        ({"target_modules": []}, AdapterConfigInvalid),
        ({"base_model_name_or_path": 3}, AdapterConfigInvalid),
        ({"rank_pattern": {"q_proj": "x"}}, AdapterConfigInvalid),
    ],
)
def test_lora_config_fields_are_checked(overrides: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        summary(**overrides)


def test_pool_spec_names_for_the_base_model(tmp_path: Path) -> None:
    model_dir = write_base_model(tmp_path / "Tiny-Base")
    pool = PoolSpec("p", "org/Served-Name", 16, model_dir)
    base = BaseModel.of(pool, model_dir, model_weight_shapes(model_dir))
    assert base.names == {"served-name", "tiny-base"}


# -- the inspection worker's protocol (with stand-in workers: no peft needed) -----------------


def fake_python(tmp_path: Path, script: str) -> str:
    path = tmp_path / "fake-python"
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)
    return str(path)


async def test_worker_answers_are_read(tmp_path: Path) -> None:
    config = json.dumps({"config": peft_config(4, "x", ("q_proj",))})
    inspector = SubprocessInspector(fake_python(tmp_path, f"echo 'noise'\necho '{config}'"), 5, 1)
    assert (await inspector(tmp_path)).r == 4


@pytest.mark.parametrize(
    ("script", "error", "message"),
    [
        ("""echo '{"refused": "bad field"}'""", AdapterConfigInvalid, "bad field"),
        (
            """echo '{"unavailable": "peft is not installed"}'; exit 3""",
            AdapterInspectionFailed,
            "peft is not installed",
        ),
        ("echo Traceback >&2; exit 1", AdapterInspectionFailed, "gateway log"),
        ("echo not json", AdapterInspectionFailed, "gateway log"),
        ("exec sleep 30", AdapterInspectionFailed, "longer than"),
    ],
)
async def test_worker_failures(
    tmp_path: Path, script: str, error: type[Exception], message: str
) -> None:
    inspector = SubprocessInspector(fake_python(tmp_path, script), 0.5, 1)
    with pytest.raises(error, match=message):
        await inspector(tmp_path)


# -- per-name locks ---------------------------------------------------------------------------


async def test_keyed_locks_serialize_one_key_only() -> None:
    locks = KeyedLocks()
    order: list[str] = []

    async def hold(key: str, tag: str) -> None:
        async with locks.hold(key):
            order.append(f"{tag}+")
            await asyncio.sleep(0.01)
            order.append(f"{tag}-")

    await asyncio.gather(hold("a", "1"), hold("a", "2"), hold("b", "3"))
    assert order.index("1-") < order.index("2+")
    assert order.index("3+") < order.index("1-")
    assert len(locks._locks) == 0
