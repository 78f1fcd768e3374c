"""What a first image compiles on CUDA when the caches are empty, stage by stage, and which cache keeps it.

    PYTHONUNBUFFERED=1 python bench/gpu_jit_profile.py --folder /dev/shm/zfull --out OUT

On a machine whose caches never saw Z-Image, the first `run` spent 11 s in its text encoding and 25 s in
its first VAE decode that a restart pays in 0.7 and 0.4 s (bench/RESULTS.md, "Issues 10 and 11 after
the fixes"). MLX compiles its JIT kernels with NVRTC (compiled graphs, gathers, quantized matmuls) and
keeps each module in MLX_PTX_CACHE_DIR; the CUDA driver keeps what it compiles from PTX in
CUDA_CACHE_PATH. Each configuration runs in its own process with its own cache folders:

- `empty`: both caches empty (a machine's first run);
- `mlx-warm`: MLX's cache from `empty`, the driver's empty;
- `driver-warm`: the driver's cache from `empty`, MLX's empty;
- `warm`: both from `empty` (a restart);
- `small-first`: both empty, the VAE decoded at 256x256 before 1024x1024 (are the modules shape-free?);
- `primed`: both empty, the load priming them in helper processes (what is left for the stages?).

The other configurations turn priming off, to measure the JIT itself.

Per stage: seconds, the MLX modules it wrote (count, bytes, and the seconds between consecutive
writes, which is about each module's compile) and the bytes the driver's cache grew by.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from ollama_img.priming import MARKERS  # noqa: E402  (no MLX: safe before the caches are set)

PROMPT = "a photograph of a red fox in the snow, golden hour, detailed fur, shallow depth of field"
FULL_STAGES = os.environ.get(
    "JIT_STAGES", "context,load,encode,step:1024,vae:1024:layers,vae:512:whole,generate:1024,quant"
)
SMALL_FIRST = "context,load,vae:256:layers,vae:1024:layers,encode,step:512,step:1024"


def files(folder: Path) -> dict[str, tuple[int, float]]:
    if not folder.is_dir():
        return {}
    out = {}
    for path in folder.rglob("*"):
        if path.is_file() and MARKERS not in path.parts:  # priming's marker: not a module
            st = path.stat()
            out[str(path.relative_to(folder))] = (st.st_size, st.st_mtime)
    return out


def child(args):
    mlx_dir, cuda_dir = Path(os.environ["MLX_PTX_CACHE_DIR"]), Path(os.environ["CUDA_CACHE_PATH"])
    started = time.time()
    import mlx.core as mx

    res = {"import_s": time.time() - started, "stages": []}
    state = {"pipe": None}

    def run_stage(stage: str):
        parts = stage.split(":")
        pipe = state["pipe"]
        if parts[0] == "context":
            mx.eval(mx.zeros((4,)) + 1)
        elif parts[0] == "load":
            from ollama_img import load_pipeline

            state["pipe"] = load_pipeline(args.folder)
        elif parts[0] == "encode":
            mx.eval(pipe.encode_prompt(PROMPT + f" {len(res['stages'])}"))
        elif parts[0] == "step":
            size = int(parts[1])
            mx.eval(pipe.denoise(PROMPT, width=size, height=size, steps=1, seed=0))
        elif parts[0] == "vae":
            size, mode = int(parts[1]), parts[2]
            lat = mx.random.normal((1, 16, size // 8, size // 8), key=mx.random.key(0)).astype(pipe.dtype)
            mx.eval(pipe.vae.decode(lat, mode))
        elif parts[0] == "generate":
            size = int(parts[1])
            pipe.generate(PROMPT, width=size, height=size, seed=1)
        elif parts[0] == "quant":
            quantized_first_calls(mx, res)
        else:
            raise SystemExit(f"unknown stage {stage}")

    for stage in args.stages.split(","):
        before_mlx, before_cuda = files(mlx_dir), files(cuda_dir)
        mx.synchronize()
        t0 = time.time()
        run_stage(stage)
        mx.synchronize()
        seconds = time.time() - t0
        after_mlx, after_cuda = files(mlx_dir), files(cuda_dir)
        new = sorted(
            ((n, s, m) for n, (s, m) in after_mlx.items() if n not in before_mlx), key=lambda x: x[2]
        )
        gaps, last = [], t0
        for name, size, mtime in new:
            gaps.append({"module": name[:90], "bytes": size, "gap_s": round(mtime - last, 3)})
            last = mtime
        entry = {
            "stage": stage,
            "seconds": round(seconds, 3),
            "mlx_modules": len(new),
            "mlx_bytes": sum(s for _, s, _ in new),
            "mlx_compile_s": round(sum(g["gap_s"] for g in gaps), 3),
            "cuda_cache_bytes": sum(s for s, _ in after_cuda.values())
            - sum(s for s, _ in before_cuda.values()),
            "slowest": sorted(gaps, key=lambda g: -g["gap_s"])[:8],
        }
        res["stages"].append(entry)
        print(
            f"  {stage}: {seconds:.2f} s, {len(new)} MLX modules ({entry['mlx_compile_s']:.2f} s between writes), "
            f"driver cache +{entry['cuda_cache_bytes'] / 1e6:.1f} MB",
            flush=True,
        )
    res["mlx_files"] = len(files(mlx_dir))
    res["peak_gb"] = mx.get_peak_memory() / 1e9
    args.json.write_text(json.dumps(res, indent=1))


def quantized_first_calls(mx, res):
    """First and second call of what quantized models run on CUDA: MLX's quantized matmul (text encoder
    shapes, fp8 and int4) and a per-call dequantization (the transformer's)."""
    out = {}
    bf = mx.bfloat16
    w = (mx.random.normal((9728, 2560)) * 0.02).astype(bf)
    x = mx.random.normal((1, 40, 2560)).astype(bf)
    for label, mode, bits, group in (("fp8", "mxfp8", 8, 32), ("int4", "affine", 4, 64)):
        packed = mx.quantize(w, group_size=group, bits=bits, mode=mode)
        mx.eval(packed)
        wq, scales, *biases = packed
        bias = biases[0] if biases else None
        for call in ("first", "second"):
            mx.synchronize()
            t0 = time.time()
            mx.eval(
                mx.quantized_matmul(
                    x, wq, scales, bias, transpose=True, group_size=group, bits=bits, mode=mode
                )
            )
            mx.synchronize()
            out[f"qmm_{label}_{call}_s"] = round(time.time() - t0, 3)
            t0 = time.time()
            mx.eval(mx.dequantize(wq, scales, bias, group_size=group, bits=bits, mode=mode, dtype=bf))
            mx.synchronize()
            out[f"dequant_{label}_{call}_s"] = round(time.time() - t0, 3)
    res["quant"] = out
    print("  quant:", out, flush=True)


CONFIGS = [
    # name, MLX cache from, driver cache from, stages, OLLAMA_IMG_PRIME
    ("empty", "a", "a", FULL_STAGES, "0"),
    ("mlx-warm", "a", "b", FULL_STAGES, "0"),
    ("driver-warm", "c", "a", FULL_STAGES, "0"),
    ("warm", "a", "a", FULL_STAGES, "0"),
    ("small-first", "d", "d", SMALL_FIRST, "0"),
    # Both caches empty, and the load primes them in helper processes (`ollama_img.priming`): the
    # stages after it should compile nothing, and `load` shows what priming cost.
    ("primed", "e", "e", FULL_STAGES, "1"),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path, default=Path("/dev/shm/zfull"))
    ap.add_argument("--out", type=Path)
    ap.add_argument("--only", help="comma-separated configuration names")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--stages", help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if args.out is None:
        ap.error("--out is required")
    if not (args.folder / "model_index.json").is_file():
        from tests.fixtures.zimage_folder import FULL, build_zimage_folder

        build_zimage_folder(args.folder, FULL, transformer_shards=3)
    args.out.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="oi-jit-"))
    wanted = set(args.only.split(",")) if args.only else None
    report = {"started": time.strftime("%Y-%m-%d %H:%M"), "runs": []}
    for name, mlx_from, cuda_from, stages, prime in CONFIGS:
        if wanted and name not in wanted:
            continue
        env = dict(
            os.environ,
            MLX_PTX_CACHE_DIR=str(base / mlx_from / "mlx"),
            CUDA_CACHE_PATH=str(base / cuda_from / "cuda"),
            CUDA_CACHE_MAXSIZE=str(1 << 30),
            OLLAMA_IMG_CACHE_DIR=str(base / "ours"),  # our own kernels: compiled in `empty`, kept after
            OLLAMA_IMG_WARMUP="0",
            OLLAMA_IMG_PRIME=prime,
        )
        print(f"{name}:", flush=True)
        out = args.out / f"{name}.json"
        t0 = time.time()
        cmd = [
            sys.executable,
            __file__,
            "--child",
            "--folder",
            str(args.folder),
            "--stages",
            stages,
            "--json",
            str(out),
        ]
        done = subprocess.run(cmd, env=env, timeout=400)
        run = json.loads(out.read_text()) if out.is_file() else {"error": f"exit {done.returncode}"}
        run.update(name=name, wall_s=round(time.time() - t0, 2))
        report["runs"].append(run)
        (args.out / "jit_profile.json").write_text(json.dumps(report, indent=1))
    print(f"results in {args.out}/jit_profile.json")


if __name__ == "__main__":
    main()
