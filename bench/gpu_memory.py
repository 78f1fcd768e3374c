"""Where generation's peak memory comes from: each phase alone, after a reset of MLX's peak counter.

python bench/gpu_memory.py FOLDER [--size 1024]
"""

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--json")
    ap.add_argument("--parts", action="store_true", help="also the parts of one transformer step")
    args = ap.parse_args()
    import mlx.core as mx

    from ollama_img import load_pipeline
    from ollama_img.models import autoencoder_kl as vae_module

    pipe = load_pipeline(args.folder)
    res = {"weights_gb": pipe.resident_bytes / 1e9}

    def phase(name, fn):
        mx.synchronize()
        mx.reset_peak_memory()
        base = mx.get_active_memory()
        t0 = time.perf_counter()
        out = fn()
        mx.eval(out)
        mx.synchronize()
        res[name] = {"peak_over_base_gb": (mx.get_peak_memory() - base) / 1e9, "s": time.perf_counter() - t0}
        print(name, res[name], flush=True)
        return out

    s = args.size
    emb = phase("text encoding", lambda: pipe.encode_prompt("a red fox in the snow"))
    phase(
        "one denoising step",
        lambda: pipe.denoise("a red fox in the snow", width=s, height=s, steps=1, seed=1),
    )
    lat = mx.random.normal((1, 16, s // 8, s // 8)).astype(pipe.dtype)
    phase("vae decode", lambda: pipe.vae.decode(lat))
    for scratch in (256 << 20, 64 << 20):
        vae_module.Conv2d.SCRATCH_BYTES = scratch
        phase(f"vae decode, conv strips of {scratch >> 20} MB", lambda: pipe.vae.decode(lat))
    if args.parts:
        _parts(pipe, emb, s, phase)
    res["emb_tokens"] = emb.shape[1]
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


def _parts(pipe, emb, s, phase):
    import mlx.core as mx

    tr = pipe.transformer
    caption = tr.encode_caption(emb, [emb.shape[1]])
    mod = tr.modulations(mx.array([0.5]), pipe.dtype)[0]
    lat = mx.random.normal((1, 16, s // 8, s // 8)).astype(pipe.dtype)
    mx.eval(caption.tokens, mod.layers, lat)
    x, cos, sin = phase("embed_image (patchify + noise refiner)", lambda: tr.embed_image(lat, caption, mod))
    block = tr.layers[0]
    h = mx.fast.rms_norm(x, mod.layers[0][0], block.eps)
    mx.eval(h)
    phase("one main block", lambda: block.forward(x, h, cos, sin, mod.layers[0], mod.layers[1][0])[0])
    phase("attention of one block", lambda: block.attention(h, cos, sin))
    qkv = block.attention.to_qkv(h)
    mx.eval(qkv)
    from ollama_img.models.zimage.attention_prep import qk_norm_rope

    a = block.attention
    q, k, v = qk_norm_rope(qkv, a.norm_q.weight, a.norm_k.weight, cos, sin, a.n_heads, 1e-5)
    mx.eval(q, k, v)
    phase("sdpa alone", lambda: mx.fast.scaled_dot_product_attention(q, k, v, scale=a.scale))
    phase("feed forward of one block", lambda: block.feed_forward(h))
    phase("main stack (30 blocks)", lambda: tr.main_stack(x, cos, sin, mod))


if __name__ == "__main__":
    main()
