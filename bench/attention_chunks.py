"""The VAE attention's chunk size: time and peak memory of one attention block per bound on its scores.

The mid block's attention spans every latent position; it runs in chunks of queries whose score
matrices hold at most `AttentionBlock.MAX_SCORES` (GPU) or `CPU_SCORES` (CPU) entries. This runs the
same block with several bounds, in turn and in rounds within one process (a shared machine's load drifts
between processes), and reports the median time and the peak memory of each.

    python bench/attention_chunks.py --side 192 --write        # 1536x1536 images, CPU: ~10 minutes
    python bench/attention_chunks.py --side 256 --channels 512 # 2048x2048, the Flux VAE's width (GPU)
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=192, help="latent side (image side / 8)")
    ap.add_argument("--channels", type=int, default=32, help="32: the tiny test VAE; 512: Flux's")
    ap.add_argument("--bounds", type=int, nargs="+", default=[28, 24, 22, 20], help="log2 of the scores")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--write", action="store_true", help="write the table into bench/RESULTS.md")
    args = ap.parse_args()
    from bench.large_sizes import blas_in_use
    from ollama_img.backend import require_mlx
    from ollama_img.models.autoencoder_kl import AttentionBlock

    mx = require_mlx()
    block = AttentionBlock(args.channels, 32 if args.channels % 32 == 0 else 8)
    x = mx.random.normal((1, args.side, args.side, args.channels), key=mx.random.key(0))
    mx.eval(x, block.parameters())
    n = args.side**2
    times: dict[int, list[float]] = {b: [] for b in args.bounds}
    peaks: dict[int, float] = {}
    for _ in range(args.rounds):
        for bound in args.bounds:
            AttentionBlock.MAX_SCORES = AttentionBlock.CPU_SCORES = 2**bound
            mx.synchronize()
            mx.clear_cache()
            mx.reset_peak_memory()
            started = time.perf_counter()
            mx.eval(block(x))
            mx.synchronize()
            times[bound].append(time.perf_counter() - started)
            peaks[bound] = mx.get_peak_memory() / 1e9
            print(f"2^{bound} scores: {times[bound][-1]:.2f} s, peak {peaks[bound]:.2f} GB", flush=True)
    rows = "\n".join(
        f"| 2^{b} | {max(1, min(n, 2**b // n))} | {statistics.median(times[b]):.2f} "
        f"({', '.join(f'{t:.1f}' for t in times[b])}) | {peaks[b]:.2f} GB |"
        for b in args.bounds
    )
    text = (
        "| scores per chunk | queries per chunk | median seconds (runs) | peak memory |\n"
        f"| --- | --- | --- | --- |\n{rows}"
    )
    print(text)
    if args.write:
        from bench.results import cpu_model, replace_section

        body = (
            f"Measured {time.strftime('%Y-%m-%d')} on {cpu_model()} ({os.cpu_count()} cores, load average "
            f"{os.getloadavg()[0]:.1f} at the end), MLX device {mx.default_device()}, {blas_in_use()}: one "
            f"attention block over {n} positions ({args.side}x{args.side} latents, {args.channels} "
            f"channels), bounds in turn, {args.rounds} rounds.\n\n{text}\n"
        )
        title = f"VAE attention chunks, {n} positions x {args.channels} channels (bench/attention_chunks.py)"
        replace_section(title, body)


if __name__ == "__main__":
    main()
