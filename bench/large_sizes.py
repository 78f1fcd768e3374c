"""Large images: does each size up to the engine's pixel limit work, how long does it take, at what peak?

2048x2048 used to kill the process (SIGFPE in MLX's matrix product: the VAE's attention formed a
65,536^2 score matrix, 2^32 entries, on the CPU and on CUDA alike); the attention now runs in chunks of
queries. Each size runs in a process of its own, so a crash is reported as one (with its signal) and the
next size still runs. `--unchunked` adds a run per size with the attention in one piece, as before.

On the GPU machine (full-size random-weight folder, see shared/gpu/README.md), about 3-5 minutes:

    python bench/large_sizes.py /dev/shm/zimage-full --sizes 1024 1536 2048 --unchunked --write

Here, on the CPU with the tiny model (`--tiny` builds it in a temporary folder):

    python bench/large_sizes.py --tiny --sizes 1536 2048 --steps 1 --runs 1 --unchunked --write
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))


def measure(folder: str, size: int, steps: int, unchunked: bool, runs: int) -> dict:
    """In the child: load, generate at `size` `runs` times (on a GPU the first compiles kernels)."""
    import mlx.core as mx

    from ollama_img import load_pipeline
    from ollama_img.models.autoencoder_kl import AttentionBlock

    if unchunked:
        AttentionBlock.MAX_SCORES = AttentionBlock.CPU_SCORES = 2**62  # one piece, as before the fix
    started = time.perf_counter()
    pipe = load_pipeline(folder)
    out = {"load_s": time.perf_counter() - started, "device": str(mx.default_device())}
    prompt = "a lighthouse on a cliff at dawn, waves below"
    for run in ("first", "warm")[:runs]:
        mx.synchronize()
        mx.clear_cache()
        mx.reset_peak_memory()
        t0 = time.perf_counter()
        latents = pipe.denoise(prompt, width=size, height=size, steps=steps, seed=1)
        mx.eval(latents)
        t1 = time.perf_counter()
        image = pipe.decode(latents)
        mx.synchronize()
        t2 = time.perf_counter()
        out[run] = {
            "denoise_s": t1 - t0,
            "decode_s": t2 - t1,
            "peak_gb": mx.get_peak_memory() / 1e9,
        }
        assert image.size == (size, size)
    return out


def run_child(folder: str, size: int, steps: int, unchunked: bool, runs: int, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--child", folder, "--sizes", str(size), "--steps", str(steps)]
    cmd += ["--runs", str(runs)]
    if unchunked:
        cmd.append("--unchunked")
    started = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"no answer within {timeout:g} s"}
    if done.returncode != 0:
        code = done.returncode
        what = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
        tail = (done.stderr.strip().splitlines() or [""])[-1][:200]
        return {"error": f"{what} after {time.perf_counter() - started:.0f} s {tail}".strip()}
    return json.loads(done.stdout.strip().splitlines()[-1])


def blas_in_use() -> str:
    """Which BLAS MLX's CPU products run on (OpenBLAS when the `cpu` extra could bind it)."""
    from ollama_img import cpu_blas
    from ollama_img.backend import require_mlx

    require_mlx()
    return f"CPU BLAS {cpu_blas.install() or 'bundled with MLX'}"


def table(rows: list[tuple[int, bool, dict]], steps: int) -> str:
    warm_runs = any("warm" in r for _, _, r in rows)
    head = "first: denoise + decode (s) | warm: " if warm_runs else ""
    lines = [
        f"| size | VAE attention | {head}denoise ({steps} steps, s) | decode (s) | peak memory |",
        "| --- | --- | " + ("--- | " if warm_runs else "") + "--- | --- | --- |",
    ]
    for size, unchunked, r in rows:
        how = "one piece (before)" if unchunked else "query chunks"
        if "error" in r:
            lines.append(f"| {size}x{size} | {how} | {r['error']} |" + (" |" if warm_runs else "") + " | |")
            continue
        first = r["first"]
        warm = r.get("warm", first)
        cells = [f"{first['denoise_s']:.2f} + {first['decode_s']:.2f}"] if warm_runs else []
        cells += [f"{warm['denoise_s']:.2f}", f"{warm['decode_s']:.2f}", f"{warm['peak_gb']:.1f} GB"]
        lines.append(f"| {size}x{size} | {how} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?", help="a Z-Image model folder (diffusers layout)")
    ap.add_argument("--tiny", action="store_true", help="build and use the tiny test model")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 1536, 2048])
    ap.add_argument("--steps", type=int, default=9)
    ap.add_argument("--unchunked", action="store_true", help="also run with the attention in one piece")
    ap.add_argument("--runs", type=int, choices=(1, 2), default=2, help="2: a first and a warm run")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per size and variant")
    ap.add_argument("--write", action="store_true", help="write the table into bench/RESULTS.md")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.folder, args.sizes[0], args.steps, args.unchunked, args.runs)))
        return
    if args.tiny:
        from tests.fixtures.zimage_folder import TINY, build_zimage_folder

        args.folder = str(build_zimage_folder(Path(tempfile.mkdtemp(prefix="oi-large-")) / "tiny", TINY))
    if not args.folder:
        ap.error("give a model folder, or --tiny")
    rows = []
    for size in args.sizes:
        for unchunked in (False, True) if args.unchunked else (False,):
            result = run_child(args.folder, size, args.steps, unchunked, args.runs, args.timeout)
            rows.append((size, unchunked, result))
            print(json.dumps({"size": size, "unchunked": unchunked, **result}), flush=True)
    text = table(rows, args.steps)
    print(text)
    if args.write:
        from bench.results import cpu_model, replace_section

        device = next((r["device"] for _, _, r in rows if "device" in r), "?")
        model = "tiny test model" if args.tiny else f"folder {os.path.basename(args.folder.rstrip('/'))}"
        body = (
            f"Measured {time.strftime('%Y-%m-%d')} on {cpu_model()} ({os.cpu_count()} cores, load average "
            f"{os.getloadavg()[0]:.1f} at the end), MLX device {device}, {blas_in_use()}, {model}, "
            f"{args.steps} steps, one process per row.\n\n{text}\n"
        )
        replace_section(f"Large sizes, {model} (bench/large_sizes.py)", body)


if __name__ == "__main__":
    main()
