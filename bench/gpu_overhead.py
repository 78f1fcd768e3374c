"""What a CUDA process holds beyond MLX's own count: nvidia-smi's figure for this process against MLX's
active + cache memory, stage by stage.

    python bench/gpu_overhead.py FOLDER [--budget 24GB] [--json OUT]

The memory plans' nvidia-smi figures ran 3-5 GB above MLX's active + cache memory (bench/RESULTS.md,
"Memory plans on a GPU"), while PyTorch's process ran 0.7 GB above its reserved memory. This splits
that gap: the CUDA context alone, one large buffer, many small ones, the kernels a generation uses
(matmul, attention, convolution, quantized matmul), then a full-size Z-Image pipeline loaded and
generating 1024x1024 under the budget's plan, and the same after `mx.clear_cache()`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

GB = 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--budget", default="24GB")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--threads", type=int, help="OLLAMA_IMG_LOAD_THREADS for the pipeline's load")
    ap.add_argument("--trim", action="store_true", help="trim the driver's pool after each stage")
    args = ap.parse_args()
    if args.budget != "unlimited":
        os.environ["OLLAMA_IMG_GPU_MEMORY"] = args.budget
    if args.threads:
        os.environ["OLLAMA_IMG_LOAD_THREADS"] = str(args.threads)

    import mlx.core as mx

    from bench.gpu_memory_plan import smi_process_used
    from ollama_img.memory import cuda_pool

    rows = []

    def stage(what: str, trim: bool = False):
        mx.synchronize()
        time.sleep(0.3)  # nvidia-smi's per-process figure lags a little
        smi = smi_process_used(os.getpid())
        mlx = (mx.get_active_memory() + mx.get_cache_memory()) / GB
        pool = cuda_pool.usage()
        row = {
            "stage": what,
            "smi_gb": smi,
            "mlx_gb": mlx,
            "mlx_peak_gb": mx.get_peak_memory() / GB,
            "gap_gb": None if smi is None else smi - mlx,
            "pool_reserved_gb": pool and pool.reserved / GB,
            "pool_used_gb": pool and pool.used / GB,
            "pool_high_gb": pool and pool.reserved_high / GB,
            "pool_used_high_gb": pool and pool.used_high / GB,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        if trim or args.trim:
            released = cuda_pool.trim()
            print(f"trimmed the pool: {released and released / GB:.3f} GB released", flush=True)
            stage(f"{what}, pool trimmed")

    mx.eval(mx.zeros(1))
    stage("context (one tiny array)")
    big = mx.zeros((4, 2**30), dtype=mx.bfloat16)
    mx.eval(big)
    stage("one 8.6 GB buffer")
    del big
    mx.clear_cache()
    stage("freed, cache cleared")
    small = [mx.full((256,), i, dtype=mx.float32) for i in range(20000)]
    mx.eval(small)
    stage("20000 buffers of 1 KB")
    del small
    mx.clear_cache()
    a = mx.random.normal((4096, 3840)).astype(mx.bfloat16)
    w = mx.random.normal((10240, 3840)).astype(mx.bfloat16)
    mx.eval(a @ w.T)
    q = mx.random.normal((1, 30, 4096, 128)).astype(mx.bfloat16)
    mx.eval(mx.fast.scaled_dot_product_attention(q, q, q, scale=0.088))
    x = mx.random.normal((1, 256, 256, 256)).astype(mx.bfloat16)
    k = mx.random.normal((256, 3, 3, 256)).astype(mx.bfloat16)
    mx.eval(mx.conv2d(x, k, padding=1))
    wq, scales, *rest = mx.quantize(w, group_size=32, bits=8, mode="mxfp8")
    mx.eval(mx.quantized_matmul(a, wq, scales, *rest, transpose=True, group_size=32, bits=8, mode="mxfp8"))
    del a, w, q, x, k, wq, scales, rest
    mx.clear_cache()
    stage("kernels used (matmul, attention, conv, mxfp8), buffers freed")

    from ollama_img import load_pipeline

    cuda_pool.reset_high()
    mx.reset_peak_memory()
    pipe = load_pipeline(args.folder)
    stage(f"pipeline loaded ({args.threads or 'default'} load threads), plan for {args.budget}", trim=True)
    cuda_pool.reset_high()
    mx.reset_peak_memory()
    pipe.generate("a red fox in the snow", width=1024, height=1024, seed=1)
    stage("after a 1024x1024 image")
    cuda_pool.reset_high()
    mx.reset_peak_memory()
    pipe.generate("a red fox in the snow", width=1024, height=1024, seed=2)
    stage("after a second image", trim=True)
    cuda_pool.reset_high()
    mx.reset_peak_memory()
    pipe.generate("a red fox in the snow", width=1024, height=1024, seed=3)
    stage("after a third image (pool trimmed before it)")
    mx.clear_cache()
    stage("cache cleared")
    del pipe
    mx.clear_cache()
    stage("pipeline dropped, cache cleared")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
