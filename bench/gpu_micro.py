"""Micro-benchmarks that decide how the Z-Image hot paths are written in MLX (run on the GPU machine).

    python bench/gpu_micro.py [--json OUT]

Each entry times one formulation of one part at Z-Image-Turbo's 1024x1024 shapes (4096 image + 32
caption tokens, dim 3840, 30 heads of 128; VAE at 128..1024 pixels, 128..512 channels).
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

N, DIM, HEADS, HD, FFN = 4128, 3840, 30, 128, 10240
if "--tiny" in sys.argv:  # a quick CPU check of the script itself
    N, DIM, HEADS, HD, FFN = 64, 64, 2, 32, 96
    sys.argv.remove("--tiny")
BF = mx.bfloat16


def timed(fn, runs=10) -> float:
    mx.eval(fn())
    out = []
    for _ in range(runs):
        mx.synchronize()
        t0 = time.perf_counter()
        mx.eval(fn())
        mx.synchronize()
        out.append(time.perf_counter() - t0)
    return 1000 * statistics.median(out)


def rope_variants(res):
    from ollama_img.models.zimage.attention_prep import rope as apply_rope

    x = mx.random.normal((1, N, HEADS, HD)).astype(BF)
    cos = mx.random.uniform(shape=(N, HD // 2))
    sin = mx.random.uniform(shape=(N, HD // 2))
    cos2 = mx.repeat(cos, 2, axis=-1)[:, None, :]
    sin2 = mx.stack([-sin, sin], axis=-1).reshape(N, HD)[:, None, :]
    cos_h = mx.concatenate([cos, cos], -1)[:, None, :]
    sin_h = mx.concatenate([-sin, sin], -1)[:, None, :]

    def interleaved_swap(x):
        xf = x.astype(mx.float32)
        swapped = xf.reshape(1, N, HEADS, HD // 2, 2)[..., ::-1].reshape(1, N, HEADS, HD)
        return (xf * cos2 + swapped * sin2).astype(x.dtype)

    def half_layout(x):
        xf = x.astype(mx.float32)
        rot = mx.concatenate([xf[..., HD // 2 :], xf[..., : HD // 2]], axis=-1)
        return (xf * cos_h + rot * sin_h).astype(x.dtype)

    res["rope current"] = timed(lambda: apply_rope(x, cos, sin))
    compiled = mx.compile(apply_rope)
    res["rope current compiled"] = timed(lambda: compiled(x, cos, sin))
    res["rope interleaved swap"] = timed(lambda: interleaved_swap(x))
    compiled_swap = mx.compile(interleaved_swap)
    res["rope interleaved swap compiled"] = timed(lambda: compiled_swap(x))
    res["rope half layout"] = timed(lambda: half_layout(x))
    compiled_half = mx.compile(half_layout)
    res["rope half layout compiled"] = timed(lambda: compiled_half(x))
    res["copy of q (bandwidth floor x2)"] = timed(lambda: x * 2)


def norm_variants(res):
    x = mx.random.normal((1, N, DIM)).astype(BF)
    w = mx.ones((DIM,), dtype=BF)
    s = mx.random.normal((1, 1, DIM)).astype(BF)
    res["rms_norm fast"] = timed(lambda: mx.fast.rms_norm(x, w, 1e-5))
    res["rms_norm * (1+s) compiled"] = timed(
        lambda: mx.compile(lambda a: mx.fast.rms_norm(a, w, 1e-5) * (1 + s))(x)
    )
    qk = mx.random.normal((1, N, HEADS, HD)).astype(BF)
    res["rms_norm head dim 128"] = timed(lambda: mx.fast.rms_norm(qk, mx.ones((HD,), dtype=BF), 1e-5))


def gemm_variants(res):
    x = mx.random.normal((1, N, DIM)).astype(BF)
    wq = mx.random.normal((DIM, DIM)).astype(BF)
    wqkv = mx.random.normal((3 * DIM, DIM)).astype(BF)
    w1 = mx.random.normal((FFN, DIM)).astype(BF)
    w13 = mx.random.normal((2 * FFN, DIM)).astype(BF)
    w2 = mx.random.normal((DIM, FFN)).astype(BF)
    h = mx.random.normal((1, N, FFN)).astype(BF)
    res["gemm q (x3)"] = 3 * timed(lambda: x @ wq.T)
    res["gemm fused qkv"] = timed(lambda: x @ wqkv.T)
    res["gemm w1 (x2)"] = 2 * timed(lambda: x @ w1.T)
    res["gemm fused w13"] = timed(lambda: x @ w13.T)
    res["gemm w2"] = timed(lambda: h @ w2.T)
    q = mx.random.normal((1, HEADS, N, HD)).astype(BF)
    res["sdpa"] = timed(lambda: mx.fast.scaled_dot_product_attention(q, q, q, scale=HD**-0.5))
    m = mx.random.normal((8192, 8192)).astype(BF)
    ms = timed(lambda: m @ m)
    res["gemm 8192^3 TFLOP/s"] = 2 * 8192**3 / ms / 1e9


def _gn_stats(x, groups):
    b, h, w, c = x.shape
    xf = x.astype(mx.float32).reshape(b, h * w, groups, c // groups)
    s1 = xf.sum(axis=-1).sum(axis=1)
    s2 = mx.square(xf).sum(axis=-1).sum(axis=1)
    return s1, s2


def _gn_two_stage(x, groups):
    b, h, w, c = x.shape
    n = h * w * (c // groups)
    s1, s2 = _gn_stats(x, groups)
    mean = s1 / n
    var = s2 / n - mean * mean
    scale = mx.repeat(mx.rsqrt(var + 1e-6), c // groups, axis=-1)[:, None, None, :]
    shift = mx.repeat(-mean, c // groups, axis=-1)[:, None, None, :]
    return ((x.astype(mx.float32) + shift) * scale).astype(x.dtype)


def vae_variants(res):
    from ollama_img.models.autoencoder_kl import GroupNorm

    for hw, c in ((128, 512), (256, 512), (512, 512), (1024, 256), (1024, 128)):
        x = mx.random.normal((1, hw, hw, c)).astype(BF)
        gn = GroupNorm(32, c)
        gn.update({"weight": gn.weight.astype(BF), "bias": gn.bias.astype(BF)})
        ref = nn.GroupNorm(32, c, eps=1e-6, pytorch_compatible=True)
        ref.update({"weight": ref.weight.astype(BF), "bias": ref.bias.astype(BF)})
        conv = nn.Conv2d(c, c, 3, padding=1)
        conv.update({"weight": conv.weight.astype(BF), "bias": conv.bias.astype(BF)})
        res[f"groupnorm ours {hw}x{c}"] = timed(lambda gn=gn, x=x: gn(x), 5)
        res[f"groupnorm nn {hw}x{c}"] = timed(lambda ref=ref, x=x: ref(x), 5)
        res[f"groupnorm two-stage {hw}x{c}"] = timed(lambda x=x: _gn_two_stage(x, 32), 5)
        res[f"groupnorm stats only {hw}x{c}"] = timed(lambda x=x: _gn_stats(x, 32), 5)
        res[f"conv1x1 {hw}x{c}"] = timed(lambda x=x, w=conv.weight[:, 1:2, 1:2, :]: mx.conv2d(x, w), 5)
        res[f"conv3x3 {hw}x{c}"] = timed(lambda conv=conv, x=x: conv(x), 5)
        res[f"silu {hw}x{c}"] = timed(lambda x=x: nn.silu(x), 5)
    q = mx.random.normal((1, 1, 16384, 512)).astype(BF)
    res["vae attention sdpa 16384x512"] = timed(
        lambda: mx.fast.scaled_dot_product_attention(q, q, q, scale=0.04), 3
    )
    x = mx.random.normal((1, 512, 512, 256)).astype(BF)
    res["upsample broadcast 512->1024 x256"] = timed(
        lambda: mx.broadcast_to(x[:, :, None, :, None, :], (1, 512, 2, 512, 2, 256)).reshape(
            1, 1024, 1024, 256
        ),
        5,
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--only", nargs="*", default=["rope", "norm", "gemm", "vae"])
    args = ap.parse_args()
    res = {"device": str(mx.default_device()), "mlx": mx.__version__}
    for name in args.only:
        {"rope": rope_variants, "norm": norm_variants, "gemm": gemm_variants, "vae": vae_variants}[name](res)
        print(json.dumps(res, indent=1), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
