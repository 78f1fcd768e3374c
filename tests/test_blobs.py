"""Blob files: minimal safetensors that safetensors and MLX read, named by the SHA-256 of their bytes."""

import json
import struct
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from ollama_img.store.blobs import (
    BlobWriter,
    blob_file_name,
    digest_of_file_name,
    write_bytes_blob,
    write_tensor_blob,
)
from ollama_img.store.safetensors_format import TensorEntry, encode_header
from tests.conftest import file_sha256


def _chunks(data: bytes, size: int):
    for i in range(0, len(data), size):
        yield memoryview(data)[i : i + size]


@pytest.mark.parametrize("use_thread", [False, True])
def test_plain_tensor_blob_is_minimal_safetensors_named_by_its_hash(tmp_path, use_thread):
    values = np.arange(3 * 5, dtype=np.float32).reshape(3, 5) / 7
    raw = values.tobytes()
    with ThreadPoolExecutor(1) as executor:
        blob = write_tensor_blob(
            tmp_path,
            [(TensorEntry("data", "F32", (3, 5)), _chunks(raw, 16))],
            executor=executor if use_thread else None,
        )
    path = tmp_path / blob_file_name(blob.digest)
    assert blob.new and path.stat().st_size == blob.size
    assert file_sha256(path) == blob.digest.removeprefix("sha256:") == path.name.removeprefix("sha256-")
    head = path.read_bytes()
    (n,) = struct.unpack("<Q", head[:8])
    assert n % 8 == 0
    header = json.loads(head[8 : 8 + n])
    assert header == {"data": {"dtype": "F32", "shape": [3, 5], "data_offsets": [0, len(raw)]}}
    assert head[8 + n :] == raw
    np.testing.assert_array_equal(load_file(path)["data"], values)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_mlx_and_torch_read_a_bf16_blob(tmp_path):
    torch = pytest.importorskip("torch")
    mx = pytest.importorskip("mlx.core")
    values = torch.randn(4, 8).to(torch.bfloat16)
    raw = values.view(torch.int16).numpy().tobytes()
    blob = write_tensor_blob(tmp_path, [(TensorEntry("data", "BF16", (4, 8)), [raw])])
    path = tmp_path / blob_file_name(blob.digest)
    loaded = mx.load(str(path), format="safetensors")["data"]
    assert loaded.dtype == mx.bfloat16 and loaded.shape == (4, 8)
    np.testing.assert_array_equal(np.array(loaded.astype(mx.float32)), values.float().numpy())
    with safe_open(path, framework="pt") as f:
        assert torch.equal(f.get_tensor("data"), values)


def test_blob_with_several_tensors_and_metadata(tmp_path):
    """The layout quantized weights will use: weight, scales, biases and string metadata in one blob."""
    mx = pytest.importorskip("mlx.core")
    weight = np.arange(32, dtype=np.uint32).reshape(4, 8)
    scales = np.ones((4, 2), dtype=np.float16)
    biases = np.zeros((4, 2), dtype=np.float16)
    parts = [
        (TensorEntry("weight", "U32", (4, 8)), [weight.tobytes()]),
        (TensorEntry("scales", "F16", (4, 2)), [scales.tobytes()]),
        (TensorEntry("biases", "F16", (4, 2)), [biases.tobytes()]),
    ]
    metadata = {"quantization": "affine", "bits": "4", "group_size": "64"}
    blob = write_tensor_blob(tmp_path, parts, metadata=metadata)
    path = tmp_path / blob_file_name(blob.digest)
    arrays, meta = mx.load(str(path), format="safetensors", return_metadata=True)
    assert meta == metadata
    np.testing.assert_array_equal(np.array(arrays["weight"]), weight)
    np.testing.assert_array_equal(np.array(arrays["scales"]), scales)
    with safe_open(path, framework="numpy") as f:
        assert f.metadata() == metadata
        assert sorted(f.keys()) == ["biases", "scales", "weight"]


def test_an_existing_blob_is_reused_not_rewritten(tmp_path):
    first = write_bytes_blob(tmp_path, b'{"a": 1}')
    path = tmp_path / blob_file_name(first.digest)
    before = path.stat()
    second = write_bytes_blob(tmp_path, b'{"a": 1}')
    assert first.new and not second.new and second.digest == first.digest
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert len(list(tmp_path.iterdir())) == 1


def test_a_damaged_file_under_a_blob_name_is_replaced(tmp_path):
    blob = write_bytes_blob(tmp_path, b"hello world")
    path = tmp_path / blob_file_name(blob.digest)
    path.write_bytes(b"hello")  # truncated by something outside the store
    again = write_bytes_blob(tmp_path, b"hello world")
    assert again.new and path.read_bytes() == b"hello world"


def test_a_failed_write_leaves_no_file(tmp_path):
    def failing():
        yield b"\0" * 64
        raise RuntimeError("source went away")

    with pytest.raises(RuntimeError):
        write_tensor_blob(tmp_path, [(TensorEntry("data", "F32", (32,)), failing())])
    assert list(tmp_path.iterdir()) == []


def test_a_short_tensor_is_a_bug_not_a_blob(tmp_path):
    with pytest.raises(ValueError, match="expected 128"):
        write_tensor_blob(tmp_path, [(TensorEntry("data", "F32", (32,)), [b"\0" * 64])])
    assert list(tmp_path.iterdir()) == []


def test_abandoned_writer_removes_its_temporary_file(tmp_path):
    with BlobWriter(tmp_path) as writer:
        writer.write(b"partial")
    assert list(tmp_path.iterdir()) == []


def test_header_encoding_is_deterministic_and_aligned():
    def build():
        entries = [TensorEntry("weight", "U32", (4, 2)), TensorEntry("scales", "BF16", (4, 1))]
        return entries, {"quantization": "int4", "bits": "4"}

    first, second = build(), build()
    assert first[0][0] is not second[0][0]
    assert encode_header(*first) == encode_header(*second)
    body = b'{"data":{"dtype":"BF16","shape":[3],"data_offsets":[0,6]}}'
    assert encode_header([TensorEntry("data", "BF16", (3,))]) == struct.pack("<Q", 64) + body + b" " * 6
    for k in range(1, 20):
        encoded = encode_header([TensorEntry("x" * k, "F32", (k,))])
        assert len(encoded) % 8 == 0 and struct.unpack("<Q", encoded[:8])[0] == len(encoded) - 8


def test_digest_names_round_trip():
    digest = "sha256:" + "ab" * 32
    assert digest_of_file_name(blob_file_name(digest)) == digest
    assert digest_of_file_name(".tmp-123") is None and digest_of_file_name("sha256-xyz") is None
    with pytest.raises(ValueError):
        blob_file_name("sha256:../../etc/passwd")
