"""Import memory stays flat: a 384 MB tensor costs no more resident memory than a tiny model."""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIG = 384 * 1024 * 1024

# The child reports its own high-water mark: VmHWM counts only this process image, whereas ru_maxrss
# also counts the parent's memory that the child inherited between fork and exec.
MEASURE = """
import resource, sys
from ollama_img.cli.app import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    assert not exc.code, exc.code
try:
    status = open("/proc/self/status").read()
    peak = int(status.split("VmHWM:")[1].split()[0]) * 1024
except OSError:  # macOS: no /proc, and ru_maxrss is in bytes there
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(peak, file=sys.stderr)
"""


def _add_big_tensor(folder: Path):
    """Replace the VAE weights by a file whose one tensor is BIG bytes of zeros (sparse: no disk, no time)."""
    header = json.dumps({"big.weight": {"dtype": "BF16", "shape": [BIG // 2], "data_offsets": [0, BIG]}})
    raw = header.encode() + b" " * (-len(header) % 8)
    path = folder / "vae/diffusion_pytorch_model.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + BIG)


def _peak_rss_of_create(store: Path, folder: Path) -> int:
    env = dict(os.environ, OLLAMA_IMG_MODELS=str(store), PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, "create", "m", "-f", str(folder)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return int(result.stderr.splitlines()[-1])


def test_peak_rss_does_not_grow_with_the_tensor(tmp_path, tiny_folder, folder_copy):
    baseline = _peak_rss_of_create(tmp_path / "s1", tiny_folder)
    _add_big_tensor(folder_copy)
    peak = _peak_rss_of_create(tmp_path / "s2", folder_copy)
    blob = next(p for p in (tmp_path / "s2/blobs").iterdir() if p.stat().st_size > BIG)
    assert blob.stat().st_size < BIG + 4096
    # Two 8 MiB copy buffers are the design; allow slack for the allocator, far below the tensor's size.
    print(f"peak RSS {peak / 2**20:.0f} MiB, baseline {baseline / 2**20:.0f} MiB")
    assert peak - baseline < 48 * 1024 * 1024, (peak, baseline)
