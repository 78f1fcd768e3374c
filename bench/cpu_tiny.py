"""Warm generation time of the tiny Z-Image model on this machine's CPU (64x64, 4 steps).

    python bench/cpu_tiny.py [--runs 10] [--write]

With --write, the figures replace the "CPU, tiny model" section of bench/RESULTS.md.
"""

import argparse
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fixtures.zimage_folder import TINY, build_zimage_folder  # noqa: E402

from bench.results import cpu_model, replace_section  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--write", action="store_true", help="write the figures into bench/RESULTS.md")
    args = ap.parse_args()

    import mlx.core as mx

    from ollama_img import load_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        folder = build_zimage_folder(Path(tmp) / "tiny", TINY)
        t0 = time.perf_counter()
        pipe = load_pipeline(folder)
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        pipe.generate("a cat playing piano", width=64, height=64, steps=4, seed=0)
        first_s = time.perf_counter() - t0
        times = []
        for i in range(args.runs):
            t0 = time.perf_counter()
            pipe.generate("a cat playing piano", width=64, height=64, steps=4, seed=i)
            times.append(time.perf_counter() - t0)

    med = statistics.median(times)
    rows = [
        f"Measured {date.today()} on {platform.machine()} "
        f"({cpu_model()}, {_cores()} cores), MLX {mx.__version__}, device {mx.default_device()}, "
        f"compute dtype {pipe.dtype}.",
        "",
        "| what | seconds |",
        "| --- | --- |",
        f"| load (tiny folder, bf16) | {load_s:.3f} |",
        f"| first generation (64x64, 4 steps) | {first_s:.3f} |",
        f"| warm generation, median of {args.runs} | {med:.3f} |",
        f"| warm generation, min / max | {min(times):.3f} / {max(times):.3f} |",
        "",
        f"Target: warm generation under 1 s: {'met' if med < 1 else 'NOT met'}.",
    ]
    print("\n".join(rows))
    if args.write:
        replace_section("CPU, tiny model (bench/cpu_tiny.py)", "\n".join(rows))


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


if __name__ == "__main__":
    main()
