"""Read safetensors headers without torch: tensor names, dtypes and shapes, and a check that the
file is whole.

A safetensors file is an 8-byte little-endian header length, a JSON header mapping each tensor
name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the data that
follows the header), then the data. The checks here are the ones the safetensors loader makes
itself: the offsets tile the data exactly, and each span is as long as its dtype and shape say.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeGuard

# Same bound as the safetensors library: a longer header is refused before it is read.
MAX_HEADER_BYTES = 100_000_000
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
METADATA_KEY = "__metadata__"
MODEL_INDEX = "model.safetensors.index.json"
MODEL_FILE = "model.safetensors"
FLOAT_DTYPES = frozenset({"F8_E5M2", "F8_E4M3", "F16", "BF16", "F32", "F64"})
CHUNK_ELEMENTS = 1 << 18
# Clears the sign bit of a float's most significant byte: -0.0 counts as zero.
_CLEAR_SIGN = bytes(0 if b == 0x80 else b for b in range(256))

Shape = tuple[int, ...]


class SafetensorsError(ValueError):
    """The file is not a whole safetensors file; the message says why."""


@dataclass(frozen=True, slots=True)
class TensorInfo:
    dtype: str
    shape: Shape


def read_header(path: Path) -> dict[str, TensorInfo]:
    """The tensors a safetensors file declares, after checking that the file holds them all."""
    with path.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size < 8:
            raise SafetensorsError("shorter than the 8-byte header length")
        (header_len,) = struct.unpack("<Q", handle.read(8))
        if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
            raise SafetensorsError("header length does not fit the file")
        raw = handle.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise SafetensorsError("header is not valid JSON") from exc
    if not isinstance(header, dict):
        raise SafetensorsError("header is not a JSON object")
    return _tensors(header, size - 8 - header_len)


def _tensors(header: dict[str, object], data_len: int) -> dict[str, TensorInfo]:
    tensors: dict[str, TensorInfo] = {}
    spans: list[tuple[int, int]] = []
    for name, entry in header.items():
        if name == METADATA_KEY:
            continue
        if not isinstance(entry, dict):
            raise SafetensorsError(f"tensor {name!r}: entry is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
            raise SafetensorsError(f"tensor {name!r}: unknown dtype {dtype!r}")
        if not _int_list(shape) or any(dim < 0 for dim in shape):
            raise SafetensorsError(f"tensor {name!r}: invalid shape")
        if not _int_list(offsets) or len(offsets) != 2:
            raise SafetensorsError(f"tensor {name!r}: invalid data_offsets")
        begin, end = offsets
        if not 0 <= begin <= end <= data_len:
            raise SafetensorsError(f"tensor {name!r}: data lies outside the file")
        if end - begin != math.prod(shape) * DTYPE_BYTES[dtype]:
            raise SafetensorsError(f"tensor {name!r}: data length does not match its shape")
        spans.append((begin, end))
        tensors[name] = TensorInfo(dtype, tuple(shape))
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            raise SafetensorsError("tensor data overlaps or leaves gaps")
        position = end
    if position != data_len:
        raise SafetensorsError("the file is longer or shorter than its tensors")
    return tensors


def zero_tensors(path: Path) -> frozenset[str]:
    """Names of the tensors whose every element is zero (+0 or -0), read in chunks.

    For a file ``read_header`` accepted: the offsets are trusted here.
    """
    zero: set[str] = set()
    with path.open("rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(header_len))
        for name, entry in header.items():
            if name == METADATA_KEY:
                continue
            begin, end = entry["data_offsets"]
            handle.seek(8 + header_len + begin)
            if _all_zero(handle, end - begin, entry["dtype"]):
                zero.add(name)
    return frozenset(zero)


def _all_zero(handle: BinaryIO, length: int, dtype: str) -> bool:
    width = DTYPE_BYTES[dtype]
    chunk_bytes = CHUNK_ELEMENTS * width
    while length > 0:
        chunk = bytearray(handle.read(min(chunk_bytes, length)))
        if not chunk:
            raise SafetensorsError("the file ends before its tensor data")
        length -= len(chunk)
        if dtype in FLOAT_DTYPES:  # little-endian: the sign bit is in each element's last byte
            chunk[width - 1 :: width] = chunk[width - 1 :: width].translate(_CLEAR_SIGN)
        if chunk.count(0) != len(chunk):
            return False
    return True


def _int_list(value: object) -> TypeGuard[list[int]]:
    return isinstance(value, list) and all(
        isinstance(item, int) and not isinstance(item, bool) for item in value
    )


def model_weight_shapes(model_dir: Path) -> dict[str, Shape]:
    """Every weight of a Hugging Face model directory (sharded or not) with its shape."""
    index = model_dir / MODEL_INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise SafetensorsError(f"{MODEL_INDEX} has no weight_map")
        files = sorted({str(name) for name in weight_map.values()})
    elif (model_dir / MODEL_FILE).is_file():
        files = [MODEL_FILE]
    else:
        files = sorted(p.name for p in model_dir.glob("*.safetensors"))
    if not files:
        raise SafetensorsError("no safetensors weights found")
    shapes: dict[str, Shape] = {}
    for name in files:
        if Path(name).name != name:
            raise SafetensorsError(f"{MODEL_INDEX} names a file outside the model directory")
        shapes.update((k, v.shape) for k, v in read_header(model_dir / name).items())
    return shapes
