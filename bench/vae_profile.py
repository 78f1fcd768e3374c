"""Where a large VAE decode spends its time: each block of the decoder alone, evaluated in turn.

Written for "1536x1536 takes 166 s of VAE decode on the CPU (tiny model)": the answer was the mid
block's attention over all 36,864 latent positions (quadratic in the area), the rest being the
full-resolution convolutions; both run at the speed of the CPU back end's BLAS.

    python bench/vae_profile.py --tiny --size 1536 --write      # here, about 2-4 minutes
    python bench/vae_profile.py /dev/shm/zimage-full --size 2048  # on the GPU machine, seconds
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?")
    ap.add_argument("--tiny", action="store_true", help="build and use the tiny test model")
    ap.add_argument("--size", type=int, default=1536)
    ap.add_argument("--unchunked", action="store_true", help="the attention in one piece, as before")
    ap.add_argument("--write", action="store_true", help="write the table into bench/RESULTS.md")
    args = ap.parse_args()
    import mlx.core as mx
    import mlx.nn as nn

    from ollama_img import load_pipeline
    from ollama_img.models.autoencoder_kl import AttentionBlock

    if args.tiny:
        from tests.fixtures.zimage_folder import TINY, build_zimage_folder

        args.folder = str(build_zimage_folder(Path(tempfile.mkdtemp(prefix="oi-vae-")) / "tiny", TINY))
    if not args.folder:
        ap.error("give a model folder, or --tiny")
    if args.unchunked:
        AttentionBlock.MAX_SCORES = AttentionBlock.CPU_SCORES = 2**62
    vae = load_pipeline(args.folder).vae
    config = vae.config
    decoder = vae.decoder
    latent = args.size // config.scale_factor
    x = mx.random.normal((1, latent, latent, config.latent_channels), key=mx.random.key(0))
    x = (x / config.scaling_factor + vae.shift).astype(decoder.conv_in.weight.dtype)
    mx.eval(x)

    timings = []

    def timed(name, fn, value):
        started = time.perf_counter()
        out = fn(value)
        mx.eval(out)
        timings.append((name, time.perf_counter() - started, out.shape))
        print(f"{name:24s} {timings[-1][1]:8.2f} s  {tuple(out.shape)}", flush=True)
        return out

    x = timed("conv_in", decoder.conv_in, x)
    x = timed("mid resnet 0", decoder.mid_block.resnets[0], x)
    if decoder.mid_block.attentions:
        x = timed("mid attention", decoder.mid_block.attentions[0], x)
    x = timed("mid resnet 1", decoder.mid_block.resnets[1], x)
    for i, block in enumerate(decoder.up_blocks):
        for j, resnet in enumerate(block.resnets):
            x = timed(f"up {i} resnet {j}", resnet, x)
        if "upsamplers" in block:
            x = timed(f"up {i} upsample", block.upsamplers[0], x)
    x = timed("norm + conv_out", lambda v: decoder.conv_out(nn.silu(decoder.conv_norm_out(v))), x)
    total = sum(t for _, t, _ in timings)
    rows = "\n".join(
        f"| {name} | {'x'.join(map(str, shape[1:3]))}x{shape[3]} | {t:.2f} | {100 * t / total:.0f} % |"
        for name, t, shape in timings
    )
    text = f"| block | output (HxWxC) | seconds | share |\n| --- | --- | --- | --- |\n{rows}\n| total | | {total:.2f} | |"
    print(text)
    if args.write:
        from bench.results import cpu_model, replace_section

        model = "tiny test model" if args.tiny else Path(args.folder).name
        how = "in one piece" if args.unchunked else "in query chunks"
        from bench.large_sizes import blas_in_use

        body = (
            f"Measured {time.strftime('%Y-%m-%d')} on {cpu_model()} ({os.cpu_count()} cores, load average "
            f"{os.getloadavg()[0]:.1f} at the end), MLX device {mx.default_device()}, {blas_in_use()}, "
            f"{model}, decode of one {args.size}x{args.size} image, attention {how}, each block evaluated "
            f"alone.\n\n{text}\n"
        )
        title = (
            f"VAE decode profile, {model}, {args.size}x{args.size}, attention {how} (bench/vae_profile.py)"
        )
        replace_section(title, body)


if __name__ == "__main__":
    main()
