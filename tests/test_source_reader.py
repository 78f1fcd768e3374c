"""Reading source safetensors files: exact bytes in bounded chunks; every kind of damage is a clear UserError."""

import json
import struct

import numpy as np
import pytest
from safetensors.numpy import save_file

from ollama_img.errors import UserError
from ollama_img.store.source import SafetensorsReader, read_header


def _write_raw(path, header: dict, data: bytes, pad: bool = True):
    raw = json.dumps(header).encode()
    if pad:
        raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def test_streams_every_tensor_exactly_in_small_chunks(tmp_path):
    tensors = {
        "b.weight": np.random.default_rng(0).standard_normal((33, 17)).astype(np.float32),
        "a.bias": np.arange(5, dtype=np.int64),
        "empty": np.zeros((0, 3), dtype=np.float16),
    }
    path = tmp_path / "m.safetensors"
    save_file(tensors, path, metadata={"format": "pt"})
    header = read_header(path)
    assert header.metadata == {"format": "pt"}
    assert [t.begin for t in header.tensors] == sorted(t.begin for t in header.tensors)
    with SafetensorsReader(path, header, chunk_size=100) as reader:
        for info in header.tensors:
            chunks = [bytes(c) for c in reader.chunks(info)]
            assert all(len(c) <= 100 for c in chunks)
            assert b"".join(chunks) == tensors[info.name].tobytes()
            assert info.shape == tensors[info.name].shape


def test_truncated_data_names_the_file(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"w": np.ones((64, 64), dtype=np.float32)}, path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError, match=r"model\.safetensors.*truncated"):
        read_header(path, "text_encoder/model.safetensors")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "too short"),
        (b"\x01\x02\x03", "too short"),
        (struct.pack("<Q", 4096) + b"{}", "truncated"),
        (struct.pack("<Q", 1 << 40), "implausible"),
        (struct.pack("<Q", 8) + b"not json", "not valid JSON"),
        (struct.pack("<Q", 8) + b"[1, 2]  ", "not a JSON object"),
        (struct.pack("<Q", 4) + b"\xff\xfe{}", "not valid JSON"),
    ],
)
def test_corrupt_headers(tmp_path, content, problem):
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    with pytest.raises(UserError, match=problem) as info:
        read_header(path, "vae/x.safetensors")
    assert "vae/x.safetensors" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}, "unsupported dtype"),
        ({"dtype": "F32", "shape": [2, -1], "data_offsets": [0, 8]}, "invalid shape"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}, "invalid data_offsets"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [0]}, "invalid data_offsets"),
        ({"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}, "needs 12"),
        ("nope", "not a JSON object"),
    ],
)
def test_invalid_tensor_entries(tmp_path, entry, problem):
    path = _write_raw(tmp_path / "x.safetensors", {"t": entry}, b"\0" * 16)
    with pytest.raises(UserError, match=problem):
        read_header(path)


def test_overlapping_tensors(tmp_path):
    header = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    }
    with pytest.raises(UserError, match="overlaps"):
        read_header(_write_raw(tmp_path / "x.safetensors", header, b"\0" * 16))


def test_offsets_past_the_end(tmp_path):
    header = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
    with pytest.raises(UserError, match="holds 8"):
        read_header(_write_raw(tmp_path / "x.safetensors", header, b"\0" * 8))


def test_a_file_that_shrinks_while_reading_is_a_clear_error(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"w": np.ones(1024, dtype=np.float32)}, path)
    header = read_header(path)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 10)
    with (
        SafetensorsReader(path, header, "vae/m.safetensors") as reader,
        pytest.raises(UserError, match="ended"),
    ):
        list(reader.chunks(header.tensors[0]))


def test_unreadable_file(tmp_path):
    with pytest.raises(UserError, match="cannot read"):
        read_header(tmp_path / "missing.safetensors")
