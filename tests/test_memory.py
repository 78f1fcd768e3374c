"""Import memory stays flat: a 384 MB tensor costs no more resident memory than a tiny model."""

from pathlib import Path

from ollama_img.store.safetensors_format import TensorEntry
from tests.fixtures.memory import peak_rss_of, write_zero_safetensors

BIG = 384 * 1024 * 1024


def _add_big_tensor(folder: Path):
    """Replace the VAE weights by a file whose one tensor is BIG bytes of zeros."""
    entries = [TensorEntry("big.weight", "BF16", (BIG // 2,))]
    write_zero_safetensors(folder / "vae/diffusion_pytorch_model.safetensors", entries)


def test_peak_rss_does_not_grow_with_the_tensor(tmp_path, tiny_folder, folder_copy):
    baseline = peak_rss_of(tmp_path / "s1", "create", "m", "-f", str(tiny_folder))
    _add_big_tensor(folder_copy)
    peak = peak_rss_of(tmp_path / "s2", "create", "m", "-f", str(folder_copy))
    blob = next(p for p in (tmp_path / "s2/blobs").iterdir() if p.stat().st_size > BIG)
    assert blob.stat().st_size < BIG + 4096
    # Two 8 MiB copy buffers are the design; allow slack for the allocator, far below the tensor's size.
    print(f"peak RSS {peak / 2**20:.0f} MiB, baseline {baseline / 2**20:.0f} MiB")
    assert peak - baseline < 48 * 1024 * 1024, (peak, baseline)
