"""MLX's CPU matrix products with its bundled reference BLAS and with OpenBLAS (ollama_img.cpu_blas).

    python bench/cpu_blas.py [--rounds 3] [--write]

Each figure comes from a fresh process (OLLAMA_IMG_CPU_BLAS=bundled keeps MLX's own BLAS), rounds
interleaved and the best kept, since other work on a shared machine only ever makes a run slower:
a float32 256x1024 @ 1024x2048 product (numpy's OpenBLAS on the same shape for comparison), and a
mid-size random Z-Image (about 0.1 B parameters; the VAE at half the release's width) generating at 256x256.
With --write, the table replaces the "CPU BLAS" section of bench/RESULTS.md.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import cpu_model, replace_section  # noqa: E402

M, K, N = 256, 1024, 2048
MODEL_SIZE, MODEL_STEPS = 256, 4


def mid_sizes():
    from tests.fixtures.zimage_folder import Sizes, TextEncoderSize, TransformerSize, VaeSize

    return Sizes(
        transformer=TransformerSize(
            dim=768, n_layers=6, n_refiner_layers=2, n_heads=12, cap_feat_dim=512, axes_dims=(16, 24, 24)
        ),
        text_encoder=TextEncoderSize(
            hidden_size=512,
            num_hidden_layers=6,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=64,
            intermediate_size=1536,
        ),
        vae=VaeSize(block_out_channels=(64, 128, 256, 256), layers_per_block=2, norm_num_groups=32),
        tokenizer_vocab=2048,
    )


def child_matmul(repeats: int = 10) -> dict:
    import numpy as np

    from ollama_img.backend import require_mlx
    from ollama_img.cpu_blas import install

    mx = require_mlx()
    rng = np.random.default_rng(0)
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((K, N)).astype(np.float32)
    ma, mb = mx.array(a), mx.array(b)

    def best(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    flops = 2 * M * K * N
    return {
        "blas": install() or "bundled",
        "mlx_gflops": flops / best(lambda: mx.eval(ma @ mb)) / 1e9,
        "numpy_gflops": flops / best(lambda: a @ b) / 1e9,
    }


def child_model(folder: str, size: str = str(MODEL_SIZE), steps: str = str(MODEL_STEPS)) -> dict:
    """Load, one small image to get every first-time cost out of the way, then the timed one."""
    size, steps = int(size), int(steps)
    from ollama_img import load_pipeline
    from ollama_img.cpu_blas import install

    t0 = time.perf_counter()
    pipe = load_pipeline(folder)
    load_s = time.perf_counter() - t0
    pipe.generate("a lighthouse at dawn", width=64, height=64, steps=1, seed=0)
    import mlx.core as mx

    t0 = time.perf_counter()
    latents = pipe.denoise("a lighthouse at dawn", width=size, height=size, steps=steps, seed=1)
    mx.eval(latents)
    denoise_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pipe.decode(latents)
    decode_s = time.perf_counter() - t0
    return {"blas": install() or "bundled", "load_s": load_s, "denoise_s": denoise_s, "decode_s": decode_s}


def run_child(mode: str, bundled: bool, *extra: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    env.pop("OLLAMA_IMG_CPU_BLAS", None)
    if bundled:
        env["OLLAMA_IMG_CPU_BLAS"] = "bundled"
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, *extra],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def best_of(results: list[dict], key: str, larger: bool) -> float:
    values = [r[key] for r in results]
    return max(values) if larger else min(values)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="rounds of the matrix product")
    ap.add_argument("--model-rounds", type=int, default=1, help="rounds of the model (bundled: minutes each)")
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, *rest = args.child
        print(json.dumps(child_matmul() if mode == "matmul" else child_model(*rest)))
        return

    matmul = {True: [], False: []}
    model = {True: [], False: []}
    tiny = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        from tests.fixtures.zimage_folder import TINY, build_zimage_folder

        folder = str(build_zimage_folder(Path(tmp) / "mid", mid_sizes()))
        tiny_folder = str(build_zimage_folder(Path(tmp) / "tiny", TINY))
        for round_ in range(max(args.rounds, args.model_rounds)):
            for bundled in (True, False):
                if round_ < args.rounds:
                    matmul[bundled].append(run_child("matmul", bundled))
                    print(f"round {round_ + 1}, bundled={bundled}: {matmul[bundled][-1]}", flush=True)
                    tiny[bundled].append(run_child("model", bundled, tiny_folder, "64", "4"))
                    print(f"round {round_ + 1}, bundled={bundled}: tiny {tiny[bundled][-1]}", flush=True)
                if round_ < args.model_rounds:
                    model[bundled].append(run_child("model", bundled, folder))
                    print(f"round {round_ + 1}, bundled={bundled}: {model[bundled][-1]}", flush=True)

    numpy_gflops = best_of(matmul[True] + matmul[False], "numpy_gflops", True)
    ref, fast = (best_of(matmul[b], "mlx_gflops", True) for b in (True, False))
    blas = matmul[False][0]["blas"]
    rows = [
        f"Measured {date.today()} on {platform.machine()} ({cpu_model()}, {os.cpu_count()} cores, shared with "
        f"other work: best of {args.rounds} interleaved rounds for the product, {args.model_rounds} for the model, "
        f"each a fresh process). OpenBLAS: {blas}.",
        "",
        f"| what | MLX, bundled BLAS | MLX, OpenBLAS | numpy ({M}x{K} @ {K}x{N} only) |",
        "| --- | --- | --- | --- |",
        f"| float32 {M}x{K} @ {K}x{N}, GFLOP/s | {ref:.1f} | {fast:.1f} | {numpy_gflops:.1f} |",
        f"| tiny Z-Image (bench/cpu_tiny.py's) 64x64, 4 steps + decode, s "
        f"| {best_of(tiny[True], 'denoise_s', False) + best_of(tiny[True], 'decode_s', False):.3f} "
        f"| {best_of(tiny[False], 'denoise_s', False) + best_of(tiny[False], 'decode_s', False):.3f} | |",
        f"| mid-size Z-Image load, s | {best_of(model[True], 'load_s', False):.2f} "
        f"| {best_of(model[False], 'load_s', False):.2f} | |",
        f"| mid-size Z-Image {MODEL_SIZE}x{MODEL_SIZE}, {MODEL_STEPS} denoising steps, s "
        f"| {best_of(model[True], 'denoise_s', False):.2f} | {best_of(model[False], 'denoise_s', False):.2f} | |",
        f"| mid-size Z-Image {MODEL_SIZE}x{MODEL_SIZE}, VAE decode, s "
        f"| {best_of(model[True], 'decode_s', False):.2f} | {best_of(model[False], 'decode_s', False):.2f} | |",
        "",
        f"MLX with OpenBLAS reaches {100 * fast / numpy_gflops:.0f}% of numpy's speed on the same product "
        f"(target 50%: {'met' if fast >= numpy_gflops / 2 else 'NOT met'}); {fast / ref:.1f}x the bundled BLAS.",
    ]
    print("\n".join(rows))
    if args.write:
        replace_section("CPU BLAS (bench/cpu_blas.py)", "\n".join(rows))


if __name__ == "__main__":
    main()
