"""The safetensors file format, as much of it as the store needs: parse and validate a header, write one.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON, then the tensor bytes.
The JSON maps each tensor name to its `dtype`, `shape` and `data_offsets` (relative to the end of the
header), plus an optional `__metadata__` of string to string. Validation here is what lets `create`
reject a truncated or corrupt file with one clear line before it writes anything.
"""

import json
import math
import struct
from dataclasses import dataclass

from ollama_img.errors import UserError

# Bytes per element, as safetensors spells the dtypes. Sub-byte types (F4, ...) are not supported.
DTYPE_SIZES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "F8_E8M0": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}

METADATA_KEY = "__metadata__"
HEADER_LENGTH_SIZE = 8
MAX_HEADER_SIZE = 100 * 1024 * 1024  # what the safetensors library itself accepts


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a safetensors file; `begin`/`end` are absolute byte offsets in the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class Header:
    """A parsed and validated header: the tensors in file order and the metadata."""

    tensors: tuple[TensorInfo, ...]
    metadata: dict[str, str]


def parse_header(raw_length: bytes, read_json, file_size: int, where: str) -> Header:
    """Parse and validate a header; every problem is a UserError naming `where` (the file).

    `read_json(n)` returns the n header bytes that follow the length. The file must be long enough for
    every tensor it declares, tensors must not overlap, and each tensor's byte count must match its
    dtype and shape, so that copying can trust the offsets.
    """

    def bad(problem: str) -> UserError:
        return UserError(f"corrupt safetensors file {where}: {problem}")

    if len(raw_length) < HEADER_LENGTH_SIZE:
        raise bad(f"only {file_size} bytes, too short for a header (truncated?)")
    (n,) = struct.unpack("<Q", raw_length)
    if n > MAX_HEADER_SIZE:
        raise bad(f"header length {n} is implausible")
    data_start = HEADER_LENGTH_SIZE + n
    if data_start > file_size:
        raise bad(f"header of {n} bytes but the file has {file_size} bytes (truncated?)")
    try:
        header = json.loads(read_json(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"header is not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    metadata = header.pop(METADATA_KEY, None) or {}
    if not isinstance(metadata, dict):
        raise bad("__metadata__ is not a JSON object")
    data_size = file_size - data_start
    tensors = [_tensor_info(name, entry, data_start, bad) for name, entry in header.items()]
    tensors.sort(key=lambda t: (t.begin, t.end))
    previous_end = data_start
    for t in tensors:
        if t.begin < previous_end:
            raise bad(f"tensor {t.name!r} overlaps the tensor before it")
        previous_end = t.end
    if previous_end > file_size:
        needed = previous_end - data_start
        raise bad(f"data needs {needed} bytes but the file holds {data_size} (truncated?)")
    return Header(tuple(tensors), {str(k): str(v) for k, v in metadata.items()})


def _tensor_info(name: str, entry, data_start: int, bad) -> TensorInfo:
    if not isinstance(entry, dict):
        raise bad(f"entry for {name!r} is not a JSON object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        raise bad(f"tensor {name!r} has unsupported dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise bad(f"tensor {name!r} has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise bad(f"tensor {name!r} has invalid data_offsets {offsets!r}")
    expected = math.prod(shape) * DTYPE_SIZES[dtype]
    if offsets[1] - offsets[0] != expected:
        raise bad(
            f"tensor {name!r} spans {offsets[1] - offsets[0]} bytes but {dtype} {shape} needs {expected}"
        )
    return TensorInfo(name, dtype, tuple(shape), data_start + offsets[0], data_start + offsets[1])


@dataclass(frozen=True)
class TensorEntry:
    """A tensor to be written: its name in the file, dtype, shape (the bytes come separately)."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_SIZES[self.dtype]


def encode_header(entries: list[TensorEntry], metadata: dict[str, str] | None = None) -> bytes:
    """The length prefix and JSON header for `entries` laid out back to back, in the given order.

    The encoding is deterministic (fixed key order, no spaces, padded with spaces to a multiple of 8),
    so equal tensors always make equal bytes, which is what lets the store deduplicate them.
    """
    header: dict = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("safetensors metadata maps strings to strings")
        header[METADATA_KEY] = dict(metadata)
    offset = 0
    for e in entries:
        if e.dtype not in DTYPE_SIZES:
            raise ValueError(f"unsupported dtype {e.dtype!r}")
        if e.name == METADATA_KEY or e.name in header:
            raise ValueError(f"duplicate or reserved tensor name {e.name!r}")
        header[e.name] = {
            "dtype": e.dtype,
            "shape": list(e.shape),
            "data_offsets": [offset, offset + e.nbytes],
        }
        offset += e.nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw
