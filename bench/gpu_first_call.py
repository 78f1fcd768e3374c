"""Where a fresh process's first image spends its time on CUDA, part by part, with warm compile caches.

    python bench/gpu_first_call.py FOLDER [--json OUT]

The cold `run` after an engine restart spent 9.8 s in its first text encoding with MLX's and the
driver's compile caches warm (bench/RESULTS.md, "GPU cold start"), where the second encoding takes
milliseconds. This times, synchronised, the first and second call of each library MLX reaches (the
context, cuBLAS through a matmul, cuDNN through attention and a convolution), then the loaded
pipeline's text encoder layer by layer, a transformer step and a VAE decode: what is paid once per
process, what once per shape, and what once per weight.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

PROMPT = "a lighthouse on a cliff at dusk, oil painting"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", nargs="?", help="a model folder")
    ap.add_argument("--model", help="a store model's name instead of a folder")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    started = time.perf_counter()
    import mlx.core as mx

    res: dict = {"import_s": time.perf_counter() - started}

    def timed(label: str, fn) -> float:
        mx.synchronize()
        t0 = time.perf_counter()
        mx.eval(fn())
        mx.synchronize()
        res[label] = time.perf_counter() - t0
        print(f"{label}: {res[label]:.3f}", flush=True)
        return res[label]

    bf = mx.bfloat16
    timed("context_s", lambda: mx.zeros((4,)) + 1)
    a = mx.random.normal((64, 2560)).astype(bf)
    w = mx.random.normal((9728, 2560)).astype(bf)
    mx.eval(a, w)
    timed("matmul_first_s", lambda: a @ w.T)
    timed("matmul_second_s", lambda: a @ w.T)
    b = mx.random.normal((77, 2560)).astype(bf)
    timed("matmul_new_shape_s", lambda: b @ w.T)
    q = mx.random.normal((1, 30, 4128, 128)).astype(bf)
    timed("sdpa_first_s", lambda: mx.fast.scaled_dot_product_attention(q, q, q, scale=0.088))
    timed("sdpa_second_s", lambda: mx.fast.scaled_dot_product_attention(q, q, q, scale=0.088))
    q2 = mx.random.normal((1, 30, 1056, 128)).astype(bf)
    timed("sdpa_new_shape_s", lambda: mx.fast.scaled_dot_product_attention(q2, q2, q2, scale=0.088))
    qc = mx.random.normal((1, 32, 19, 128)).astype(bf)
    kc = mx.random.normal((1, 8, 19, 128)).astype(bf)
    timed(
        "sdpa_causal_gqa_s",
        lambda: mx.fast.scaled_dot_product_attention(qc, kc, kc, scale=0.088, mask="causal"),
    )
    x = mx.random.normal((1, 128, 128, 512)).astype(bf)
    k = mx.random.normal((512, 3, 3, 512)).astype(bf)
    timed("conv_first_s", lambda: mx.conv2d(x, k, padding=1))
    timed("conv_second_s", lambda: mx.conv2d(x, k, padding=1))
    x2 = mx.random.normal((1, 96, 168, 512)).astype(bf)
    timed("conv_new_shape_s", lambda: mx.conv2d(x2, k, padding=1))

    from ollama_img import load_pipeline

    t0 = time.perf_counter()
    pipe = load_pipeline(args.model or args.folder)
    mx.synchronize()
    res["load_s"] = time.perf_counter() - t0
    print(f"load_s: {res['load_s']:.3f}", flush=True)
    encoder = pipe.text_encoder
    t0 = time.perf_counter()
    ids = mx.array([pipe.tokenizer.encode(PROMPT)])
    res["tokenize_first_s"] = time.perf_counter() - t0
    for call in ("first", "second"):
        layers = []
        h = encoder.embed_tokens(ids)
        timed(f"text_embed_{call}_s", lambda h=h: h)
        for layer in encoder.layers:
            mx.synchronize()
            t0 = time.perf_counter()
            h = layer(h, "causal", None)
            mx.eval(h)
            mx.synchronize()
            layers.append(time.perf_counter() - t0)
        res[f"text_layers_{call}_s"] = layers
        print(f"text layers {call}: {sum(layers):.3f} s: " + " ".join(f"{t:.3f}" for t in layers), flush=True)
    timed("encode_prompt_first_s", lambda: pipe.encode_prompt(PROMPT + ", again"))
    timed("encode_prompt_second_s", lambda: pipe.encode_prompt(PROMPT + ", and again"))
    emb = pipe.encode_prompt(PROMPT)
    for call in ("first", "second"):
        timed(f"caption_{call}_s", lambda: pipe.transformer.encode_caption(emb, [emb.shape[1]]).tokens)
    caption = pipe.transformer.encode_caption(emb, [emb.shape[1]])
    mx.eval(caption.tokens)
    t = mx.array([0.5])
    lat = mx.random.normal((1, 16, 128, 128), key=mx.random.key(0)).astype(pipe.dtype)
    for call in ("first", "second"):
        timed(f"step_{call}_s", lambda: pipe.transformer(lat, t, caption))
    for call in ("first", "second"):
        timed(f"vae_{call}_s", lambda: pipe.vae.decode(lat))
    for call in ("first", "second"):
        t0 = time.perf_counter()
        pipe.generate(PROMPT, width=1024, height=1024, seed=1)
        res[f"generate_{call}_s"] = time.perf_counter() - t0
        print(f"generate_{call}_s: {res[f'generate_{call}_s']:.3f}", flush=True)
    res["peak_gb"] = mx.get_peak_memory() / 1e9
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
