"""Full-size Z-Image-Turbo on one GPU: ollama-img (MLX) against diffusers (PyTorch), same folder, same run.

Steps, each its own process so the two frameworks never share GPU memory:

    python bench/gpu_zimage.py build DIR                 # full-size random-weight folder, real layout (bf16)
    python bench/gpu_zimage.py mlx DIR --json OUT        # ollama-img: load, text, step, VAE, end to end, memory
    python bench/gpu_zimage.py diffusers DIR --json OUT  # diffusers eager (add --compile for torch.compile)
    python bench/gpu_zimage.py report OUT...  [--write] # table (and bench/RESULTS.md section)
    python bench/gpu_zimage.py all DIR --out DIR         # all of the above in sequence

Times are medians of warm runs with a device synchronisation around each measured call.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

PROMPT = "a photograph of a red fox in the snow, golden hour, detailed fur, shallow depth of field"
SIZES = [(1024, 1024), (512, 512)]
STEPS = 9


def median_time(fn, runs: int, sync) -> float:
    times = []
    for _ in range(runs):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def drop_page_cache():
    try:
        subprocess.run(["sync"], check=False)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------------------------


def cmd_build(args):
    from tests.fixtures.zimage_folder import FULL, build_zimage_folder

    t0 = time.perf_counter()
    build_zimage_folder(args.dir, FULL, transformer_shards=3, text_encoder_shards=3)
    print(f"built {args.dir} in {time.perf_counter() - t0:.1f} s")


def cmd_mlx(args):
    import mlx.core as mx

    from ollama_img import load_pipeline

    res = {"framework": "ollama-img (MLX)", "mlx": mx.__version__, "device": str(mx.default_device())}
    sync = mx.synchronize
    cold = drop_page_cache()
    mx.reset_peak_memory()
    t0 = time.perf_counter()
    pipe = load_pipeline(args.dir)
    res["load_s"] = time.perf_counter() - t0
    res["load_cold"] = cold
    res["weights_gb"] = pipe.resident_bytes / 1e9

    emb = None

    def text():
        nonlocal emb
        emb = pipe.encode_prompt(PROMPT)
        mx.eval(emb)

    res["text_s"] = median_time(text, 5, sync)
    caption = pipe.transformer.encode_caption(emb, [emb.shape[1]])
    mx.eval(caption.tokens)
    for w, h in SIZES:
        res.update(_mlx_size(pipe, caption, w, h, sync))
    if args.profile:
        res["profile_ms"] = _mlx_profile(pipe, caption, sync)
    _dump(res, args.json)


def _mlx_size(pipe, caption, w: int, h: int, sync) -> dict:
    import mlx.core as mx

    key, res = f"{w}x{h}", {}
    x = mx.random.normal((1, 16, h // 8, w // 8)).astype(pipe.dtype)
    t = mx.array([0.5])

    def step():
        mx.eval(pipe.transformer(x, t, caption))

    step()
    res[f"step_s_{key}"] = median_time(step, 5, sync)
    lat = mx.random.normal((1, 16, h // 8, w // 8))

    def decode():
        mx.eval(pipe.vae.decode(lat.astype(pipe.dtype)))

    decode()
    res[f"vae_s_{key}"] = median_time(decode, 3, sync)

    def generate():
        pipe.generate(PROMPT, width=w, height=h, steps=STEPS, seed=1)

    generate()
    mx.reset_peak_memory()
    res[f"e2e_s_{key}"] = median_time(generate, 3, sync)
    res[f"peak_gb_{key}"] = mx.get_peak_memory() / 1e9
    return res


def _mlx_profile(pipe, caption, sync) -> dict:
    """Where a 1024x1024 step's time goes: the parts of one main block, each timed alone (amortised over
    10 calls per evaluation, so launch latency is not counted), then the block and the step."""
    import mlx.core as mx

    from ollama_img.models.zimage.attention_prep import qk_norm_rope
    from ollama_img.models.zimage.fused_ops import add_norm, swiglu
    from ollama_img.models.zimage.transformer import image_rope

    tr = pipe.transformer
    block = tr.layers[0]
    n = 4096 + caption.padded_len
    dim, heads = tr.config.dim, tr.config.n_heads
    dt = pipe.dtype
    x = mx.random.normal((1, n, dim)).astype(dt)
    cos, sin = image_rope(64, 64, caption.padded_len, tr.config)
    cos, sin = mx.concatenate([cos, caption.cos]), mx.concatenate([sin, caption.sin])
    mod = tr.modulations(mx.array([0.5]), dt)[0]
    w = mod.layers[0]
    a, ff = block.attention, block.feed_forward
    qkv = a.to_qkv(x)
    q, k, v = qk_norm_rope(qkv, a.norm_q.weight, a.norm_k.weight, cos, sin, heads, 1e-5)
    o = mx.fast.scaled_dot_product_attention(q, k, v, scale=a.scale)
    gu = ff.w13(x)
    hidden = mx.random.normal((1, n, ff.hidden)).astype(dt)
    compiled_block = mx.compile(lambda x: block(x, cos, sin, w))
    latents = mx.random.normal((1, 16, 128, 128)).astype(dt)
    parts = {
        "rms_norm (first block only)": lambda: mx.fast.rms_norm(x, w[0], 1e-5),
        "residual + norm, fused (x2 per block)": lambda: add_norm(x, x, w[1], w[2], 1e-5),
        "qkv matmul": lambda: a.to_qkv(x),
        "q/k norm + rope + layout": lambda: qk_norm_rope(
            qkv, a.norm_q.weight, a.norm_k.weight, cos, sin, heads, 1e-5
        ),
        "sdpa": lambda: mx.fast.scaled_dot_product_attention(q, k, v, scale=a.scale),
        "out transpose": lambda: o.transpose(0, 2, 1, 3).reshape(1, n, dim),
        "out matmul": lambda: a.to_out[0](x),
        "w13 matmul": lambda: ff.w13(x),
        "swiglu": lambda: swiglu(gu, ff.hidden),
        "w2 matmul": lambda: ff.w2(hidden),
        "block, eager": lambda: block(x, cos, sin, w),
        "block, compiled": lambda: compiled_block(x),
        "step, compiled": lambda: tr.compiled.step(latents, caption, mod),
        "step, eager": lambda: tr.step(latents, caption, mod),
    }
    out = {}
    for name, fn in parts.items():
        reps = 1 if name.startswith("step") else 10

        def run(fn=fn, reps=reps):
            mx.eval([fn() for _ in range(reps)])

        run()
        out[name] = 1000 * median_time(run, 5, sync) / reps
    print(json.dumps(out, indent=2))
    return out


def cmd_diffusers(args):
    import torch
    from diffusers import ZImagePipeline

    dev = "cuda"
    res = {
        "framework": "diffusers" + (" + torch.compile" if args.compile else " (eager)"),
        "torch": torch.__version__,
    }
    res["device"] = torch.cuda.get_device_name(0)
    sync = torch.cuda.synchronize
    cold = drop_page_cache()
    t0 = time.perf_counter()
    pipe = ZImagePipeline.from_pretrained(args.dir, dtype=torch.bfloat16).to(dev)
    sync()
    res["load_s"] = time.perf_counter() - t0
    res["load_cold"] = cold
    pipe.set_progress_bar_config(disable=True)
    if args.compile:
        pipe.transformer = torch.compile(pipe.transformer)

    emb = None

    @torch.no_grad()
    def text():
        nonlocal emb
        emb = pipe.encode_prompt(PROMPT, device=dev, do_classifier_free_guidance=False)[0]

    res["text_s"] = median_time(text, 5, sync)
    for w, h in SIZES:
        res.update(_diffusers_size(pipe, emb, w, h, sync))
    _dump(res, args.json)


def _diffusers_size(pipe, emb, w: int, h: int, sync) -> dict:
    import torch

    key, res, dev = f"{w}x{h}", {}, "cuda"
    x = [torch.randn(16, 1, h // 8, w // 8, device=dev, dtype=torch.bfloat16)]
    t = torch.tensor([0.5], device=dev)
    lat = torch.randn(1, 16, h // 8, w // 8, device=dev, dtype=torch.bfloat16)
    cfg = pipe.vae.config

    @torch.no_grad()
    def step():
        pipe.transformer(x, t, emb, return_dict=False)

    @torch.no_grad()
    def decode():
        pipe.vae.decode(lat / cfg.scaling_factor + cfg.shift_factor)

    def generate():
        pipe(PROMPT, width=w, height=h, num_inference_steps=STEPS, guidance_scale=0.0)

    t0 = time.perf_counter()
    step()
    sync()
    res[f"first_step_s_{key}"] = time.perf_counter() - t0  # includes compilation when compiling
    res[f"step_s_{key}"] = median_time(step, 5, sync)
    decode()
    res[f"vae_s_{key}"] = median_time(decode, 3, sync)
    generate()
    torch.cuda.reset_peak_memory_stats()
    res[f"e2e_s_{key}"] = median_time(generate, 3, sync)
    res[f"peak_gb_{key}"] = torch.cuda.max_memory_allocated() / 1e9
    return res


def _dump(res: dict, path: str | None):
    text = json.dumps(res, indent=2)
    print(text)
    if path:
        Path(path).write_text(text)


# ----------------------------------------------------------------------------------------------


def cmd_report(args):
    runs = [json.loads(Path(p).read_text()) for p in args.results if Path(p).exists()]
    if not runs:
        sys.exit("no results to report")
    ours = next((r for r in runs if r["framework"].startswith("ollama-img")), None)
    gpu = next((r["device"] for r in runs if "torch" in r), "GPU")
    lines = [
        f"Measured {date.today()} on {gpu}, bf16, random weights at Z-Image-Turbo's full size "
        f"(transformer 6.15 B parameters, Qwen3-4B text encoder, Flux VAE), {STEPS} steps, guidance 0. "
        "Medians of warm runs; step = one transformer forward; e2e = prompt to PIL image.",
        "",
        "| | " + " | ".join(r["framework"] for r in runs) + " |",
        "| --- | " + " | ".join("---" for _ in runs) + " |",
    ]

    def row(label, key, fmt, scale=1.0):
        cells = [fmt.format(r[key] * scale) if key in r else "n/a" for r in runs]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row("load (s)", "load_s", "{:.1f}")
    row("text encoding (ms)", "text_s", "{:.1f}", 1000)
    for w, h in SIZES:
        key = f"{w}x{h}"
        row(f"{key} transformer step (ms)", f"step_s_{key}", "{:.1f}", 1000)
        row(f"{key} first step incl. compile (s)", f"first_step_s_{key}", "{:.1f}")
        row(f"{key} VAE decode (ms)", f"vae_s_{key}", "{:.1f}", 1000)
        row(f"{key} end to end, {STEPS} steps (s)", f"e2e_s_{key}", "{:.3f}")
        row(f"{key} peak GPU memory (GB)", f"peak_gb_{key}", "{:.1f}")
    if ours:
        lines += ["", "Ratios (diffusers time / ollama-img time, > 1 means ollama-img is faster):", ""]
        for r in runs:
            if r is ours:
                continue
            parts = []
            for w, h in SIZES:
                key = f"{w}x{h}"
                for what in ("step", "e2e"):
                    k = f"{what}_s_{key}"
                    if k in r and k in ours:
                        parts.append(f"{key} {what} {r[k] / ours[k]:.2f}x")
            lines.append(f"- vs {r['framework']}: " + ", ".join(parts))
    text = "\n".join(lines)
    print(text)
    if args.write:
        from bench.results import replace_section

        replace_section("GPU, full-size Z-Image-Turbo (bench/gpu_zimage.py)", text)


def cmd_all(args):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    me = [sys.executable, str(Path(__file__).resolve())]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if not (Path(args.dir) / "model_index.json").exists():
        subprocess.run([*me, "build", args.dir], check=True, env=env)
    results = []
    for name, extra in (("mlx", []), ("diffusers", []), ("compiled", ["--compile"])):
        if name in args.skip:
            continue
        sub = "mlx" if name == "mlx" else "diffusers"
        path = out / f"{name}.json"
        subprocess.run([*me, sub, args.dir, "--json", str(path), *extra], check=False, env=env)
        results.append(str(path))
    subprocess.run([*me, "report", *results, *(["--write"] if args.write else [])], check=False, env=env)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("build")
    p.add_argument("dir")
    p = sub.add_parser("mlx")
    p.add_argument("dir")
    p.add_argument("--json")
    p.add_argument("--profile", action="store_true", help="also time the parts of one block")
    p = sub.add_parser("diffusers")
    p.add_argument("dir")
    p.add_argument("--json")
    p.add_argument("--compile", action="store_true")
    p = sub.add_parser("report")
    p.add_argument("results", nargs="+")
    p.add_argument("--write", action="store_true")
    p = sub.add_parser("all")
    p.add_argument("dir")
    p.add_argument("--out", required=True)
    p.add_argument("--skip", nargs="*", default=[])
    p.add_argument("--write", action="store_true")
    args = ap.parse_args()
    {"build": cmd_build, "mlx": cmd_mlx, "diffusers": cmd_diffusers, "report": cmd_report, "all": cmd_all}[
        args.cmd
    ](args)


if __name__ == "__main__":
    main()
