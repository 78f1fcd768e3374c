"""A quantizing import holds at most one tensor at a time: memory follows the largest tensor, not the model."""

from pathlib import Path

from ollama_img.store.safetensors_format import TensorEntry
from tests.fixtures.memory import peak_rss_of, write_zero_safetensors

TENSORS = 8
ROWS = 256 * 1024  # one tensor: ROWS x 64 bf16 = 32 MiB; all of them: 256 MiB
TENSOR_BYTES = ROWS * 64 * 2


def _replace_transformer_weights(folder: Path):
    """One transformer file of TENSORS quantizable weights of zeros."""
    weights = folder / "transformer"
    for path in weights.glob("diffusion_pytorch_model*"):
        path.unlink()
    entries = [TensorEntry(f"layers.{i}.feed_forward.w1.weight", "BF16", (ROWS, 64)) for i in range(TENSORS)]
    write_zero_safetensors(weights / "diffusion_pytorch_model.safetensors", entries)


def _peak_rss_of_quantized_create(store: Path, folder: Path) -> int:
    return peak_rss_of(store, "create", "m", "-f", str(folder), "--quantize", "fp8", timeout=300)


def test_quantizing_holds_one_tensor_not_the_model(tmp_path, tiny_folder, folder_copy):
    baseline = _peak_rss_of_quantized_create(tmp_path / "s1", tiny_folder)
    _replace_transformer_weights(folder_copy)
    peak = _peak_rss_of_quantized_create(tmp_path / "s2", folder_copy)
    blobs = [p for p in (tmp_path / "s2/blobs").iterdir() if p.stat().st_size > TENSOR_BYTES // 2]
    assert len(blobs) == 1  # eight identical all-zero weights: one quantized blob, about half their size
    assert blobs[0].stat().st_size < TENSOR_BYTES * 0.52
    grown = peak - baseline
    print(f"peak RSS {peak / 2**20:.0f} MiB, baseline {baseline / 2**20:.0f} MiB")
    # Quantizing streams blocks of rows: what grows is the two 8 MiB read buffers, one block in flight
    # (its bytes, MLX's copy and temporaries) and one tensor's quantized output (half of it for fp8):
    # measured 82 MiB, ~2.6 tensors. Holding the model would take all TENSORS of them (8 tensors).
    assert grown < 4 * TENSOR_BYTES, (grown, TENSOR_BYTES)
