"""What compiling ollama-img's fused CUDA kernels costs, with the NVRTC that pip's CUDA packages install.

    python bench/kernel_compile.py [--write]

NVRTC needs no GPU: this compiles each kernel a full-size Z-Image-Turbo block launches, for Hopper
(sm_90a), in bf16 and float32, three times each, and prints the best wall time and the cubin's size.
This is what an engine pays once per GPU architecture, on a machine whose compile cache is empty
(`ollama_img/cuda_kernels.py`); every later process reads the cubins from the cache. `--write` puts the
table into bench/RESULTS.md.
"""

import argparse
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.fixtures.full_size import zimage_kernels  # noqa: E402

from ollama_img.cuda_kernels import find_toolchain, kernel_source  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", action="store_true", help="write the section of bench/RESULTS.md")
    args = ap.parse_args()
    toolchain = find_toolchain((9, 0), Path())
    if toolchain is None:
        sys.exit(
            "NVRTC or the CUDA headers are missing: pip install nvidia-cuda-nvrtc-cu12 nvidia-cuda-runtime-cu12"
        )
    rows = ["| kernel | dtype | compile s (best of 3) | cubin KB |", "| --- | --- | ---: | ---: |"]
    total = 0.0
    for spec, constants in zimage_kernels():
        for dtype in ("bfloat16", "float32"):
            entry, source = kernel_source(spec, dtype, constants)
            times = []
            for _ in range(3):
                started = time.perf_counter()
                cubin = toolchain.compile(entry, source)
                times.append(time.perf_counter() - started)
            total += min(times) if dtype == "bfloat16" else 0.0
            rows.append(f"| {spec.name} {constants} | {dtype} | {min(times):.3f} | {len(cubin) / 1024:.1f} |")
    table = "\n".join(rows)
    print(table)
    print(f"bf16 kernels of a Z-Image block, all four: {total:.2f} s")
    if args.write:
        from bench.results import replace_section

        intro = (
            f"Measured {date.today()} on {platform.machine()} ({os.cpu_count()} cores), NVRTC "
            "{}.{} from pip, for sm_90a (`bench/kernel_compile.py`). The four bf16 kernels of a Z-Image block "
            "compile in {:.2f} s in all, once per GPU architecture. MLX's `mx.fast.cuda_kernel` route, which "
            "includes all of MLX's device headers, spent about 10 s on them in every process on an H200.\n\n"
        ).format(*toolchain.nvrtc_version, total)
        replace_section("Compiling the fused CUDA kernels (bench/kernel_compile.py)", intro + table)


if __name__ == "__main__":
    main()
