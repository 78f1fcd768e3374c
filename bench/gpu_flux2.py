"""FLUX.2 [klein] 4B on one GPU: ollama-img (MLX) against diffusers' Flux2KleinPipeline (eager), same
random-weight folder in the real layout, same run.

    python bench/gpu_flux2.py all --dir /dev/shm/klein-4b --out /tmp/flux2-bench [--write]

builds the full-size folder if it is missing (bf16, about 16 GB, written in seconds), then runs each
framework in its own process (so that they never share GPU memory) and writes `report.md` and
`results.json` into --out (and, with --write, the section of bench/RESULTS.md). The parts run alone:

    python bench/gpu_flux2.py build DIR [--size tiny|full]
    python bench/gpu_flux2.py mlx DIR --json OUT [--side 1024]
    python bench/gpu_flux2.py diffusers DIR --json OUT [--side 1024]
    python bench/gpu_flux2.py report OUT... [--md FILE] [--write]

At 1024x1024, 4 steps (klein's default): text encoding, one transformer step (also with one 1024x1024
reference image, and for MLX compiled as well as eager), VAE decode, prompt to PIL image, the same
with a reference image, and peak memory. Times are medians of warm runs, each between device
synchronisations. `--size tiny` runs the same at 64x64 on a tiny model (any machine: it checks the
script, not the speed). Every figure is also printed on its own line as `FIGURE framework key value`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from bench.gpu_zimage import drop_page_cache, median_time  # noqa: E402

PROMPT = "a photograph of a red fox in the snow, golden hour, detailed fur, shallow depth of field"
STEPS = 4
SIDE = {"full": 1024, "tiny": 64}  # image side per folder size


def reference_picture(side: int):
    """A deterministic, structured RGB picture of side x side for the reference-image runs."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:side, 0:side] / side
    pixels = np.stack([np.sin(9 * x + 3 * y), np.cos(7 * y - 2 * x), np.sin(5 * (x + y))], -1) * 100 + 128
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB")


def figure(res: dict, key: str, value):
    res[key] = value
    print(f"FIGURE {res['framework'].split()[0]} {key} {value:.6g}", flush=True)


# ----------------------------------------------------------------------------------------------


def cmd_build(args):
    from tests.fixtures.flux2_folder import SIZES, build_flux2_folder

    t0 = time.perf_counter()
    full = args.size == "full"
    build_flux2_folder(
        args.dir,
        SIZES[args.size],
        dtype="bfloat16" if full else "float32",
        text_encoder_shards=2 if full else 1,
        transformer_shards=2 if full else 1,
    )
    print(f"built {args.dir} ({args.size}) in {time.perf_counter() - t0:.1f} s", flush=True)


def cmd_mlx(args):
    import mlx.core as mx

    from ollama_img import load_pipeline

    side = args.side
    res = {"framework": "ollama-img (MLX)", "mlx": mx.__version__, "device": str(mx.default_device())}
    sync = mx.synchronize
    res["load_cold"] = drop_page_cache()
    t0 = time.perf_counter()
    pipe = load_pipeline(args.dir)
    figure(res, "load_s", time.perf_counter() - t0)
    figure(res, "weights_gb", pipe.resident_bytes / 1e9)

    emb = None

    def text():
        nonlocal emb
        emb = pipe.encode_prompt(PROMPT)

    text()
    figure(res, "text_s", median_time(text, 5, sync))

    rows = cols = side // pipe.size_unit
    tr = pipe.transformer
    x = mx.random.normal((1, rows * cols, tr.config.in_channels)).astype(pipe.dtype)
    mod = tr.modulations(mx.array([500.0]), pipe.dtype)[0]
    refs = pipe.encode_references([reference_picture(side)])
    for label, cond in (("", tr.condition(emb, rows, cols)), ("_ref", tr.condition(emb, rows, cols, refs))):
        for compiled in (False, True):
            if compiled and mx.default_device() != mx.gpu:
                continue  # on the CPU MLX compiles with the C++ compiler: minutes, and never used there
            pipe.compile = compiled

            def step(cond=cond):
                mx.eval(pipe._step(x, cond, mod))

            t0 = time.perf_counter()
            step()
            sync()
            suffix = label + ("_compiled" if compiled else "")
            figure(res, f"first_step_s{suffix}", time.perf_counter() - t0)
            figure(res, f"step_s{suffix}", median_time(step, 5, sync))
    pipe.compile = False  # what ships on CUDA and the CPU (see Flux2KleinPipeline.__init__)

    tokens = mx.random.normal((1, rows * cols, tr.config.in_channels))

    def decode():
        mx.eval(pipe.vae.decode_tokens(tokens, rows, cols))

    decode()
    figure(res, "vae_s", median_time(decode, 3, sync))

    picture = reference_picture(side)
    for compiled in (True, False):
        pipe.vae.compile_encoder = compiled

        def encode():
            mx.eval(pipe.encode_references([picture])[0][0])

        encode()
        figure(res, "ref_encode_s" + ("" if compiled else "_eager"), median_time(encode, 3, sync))
    pipe.vae.compile_encoder = True

    for label, kwargs in (("", {}), ("_ref", {"reference_images": [picture]})):

        def generate(kwargs=kwargs):
            pipe.generate(PROMPT, width=side, height=side, steps=STEPS, seed=1, **kwargs)

        generate()
        mx.reset_peak_memory()
        figure(res, f"e2e_s{label}", median_time(generate, 3, sync))
        figure(res, f"peak_gb{label}", mx.get_peak_memory() / 1e9)
    _dump(res, args.json)


def cmd_diffusers(args):
    import torch
    from diffusers import Flux2KleinPipeline

    side = args.side
    cuda = torch.cuda.is_available()
    dev, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    if not cuda:  # the tiny check on a shared CPU: PyTorch's thread pool only waits there
        torch.set_num_threads(1)
    res = {"framework": "diffusers (eager)", "torch": torch.__version__}
    res["device"] = torch.cuda.get_device_name(0) if cuda else "cpu"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    res["load_cold"] = drop_page_cache()
    t0 = time.perf_counter()
    pipe = Flux2KleinPipeline.from_pretrained(args.dir, dtype=dtype).to(dev)
    sync()
    figure(res, "load_s", time.perf_counter() - t0)
    pipe.set_progress_bar_config(disable=True)

    emb = None

    @torch.no_grad()
    def text():
        nonlocal emb
        emb = pipe.encode_prompt(PROMPT, device=dev)

    text()
    figure(res, "text_s", median_time(text, 5, sync))

    prompt_embeds, text_ids = emb
    rows = cols = side // (pipe.vae_scale_factor * 2)
    channels = pipe.transformer.config.in_channels
    x = torch.randn(1, rows * cols, channels, device=dev, dtype=dtype)
    ids = pipe._prepare_latent_ids(torch.zeros(1, channels, rows, cols)).to(dev)
    t = torch.tensor([0.5], device=dev, dtype=dtype)
    ref_image = pipe.image_processor.preprocess(
        reference_picture(side), height=side, width=side, resize_mode="crop"
    )
    ref_latents, ref_ids = pipe.prepare_image_latents([ref_image], 1, None, dev, dtype)
    for label, hidden, img_ids in (
        ("", x, ids),
        ("_ref", torch.cat([x, ref_latents], 1), torch.cat([ids, ref_ids], 1)),
    ):

        @torch.no_grad()
        def step(hidden=hidden, img_ids=img_ids):
            pipe.transformer(
                hidden_states=hidden,
                timestep=t,
                guidance=None,
                encoder_hidden_states=prompt_embeds,
                txt_ids=text_ids,
                img_ids=img_ids,
                return_dict=False,
            )

        t0 = time.perf_counter()
        step()
        sync()
        figure(res, f"first_step_s{label}", time.perf_counter() - t0)
        figure(res, f"step_s{label}", median_time(step, 5, sync))

    latents = torch.randn(1, pipe.vae.config.latent_channels, 2 * rows, 2 * cols, device=dev, dtype=dtype)

    @torch.no_grad()
    def decode():
        pipe.vae.decode(latents, return_dict=False)

    decode()
    figure(res, "vae_s", median_time(decode, 3, sync))

    picture = reference_picture(side)

    @torch.no_grad()
    def encode():
        image = pipe.image_processor.preprocess(picture, height=side, width=side, resize_mode="crop")
        pipe.prepare_image_latents([image], 1, None, dev, dtype)

    encode()
    figure(res, "ref_encode_s", median_time(encode, 3, sync))

    for label, kwargs in (("", {}), ("_ref", {"image": [picture]})):

        def generate(kwargs=kwargs):
            g = torch.Generator(dev).manual_seed(1)
            pipe(
                prompt=PROMPT,
                width=side,
                height=side,
                num_inference_steps=STEPS,
                guidance_scale=1.0,
                generator=g,
                **kwargs,
            )

        generate()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        figure(res, f"e2e_s{label}", median_time(generate, 3, sync))
        if cuda:
            figure(res, f"peak_gb{label}", torch.cuda.max_memory_allocated() / 1e9)
    _dump(res, args.json)


def _dump(res: dict, path: str | None):
    text = json.dumps(res, indent=2)
    print(text, flush=True)
    if path:
        Path(path).write_text(text)


# ----------------------------------------------------------------------------------------------

ROWS = [
    ("load (s)", "load_s", "{:.1f}", 1),
    ("weights held (GB)", "weights_gb", "{:.1f}", 1),
    ("text encoding, 512 tokens (ms)", "text_s", "{:.1f}", 1000),
    ("transformer step (ms)", "step_s", "{:.1f}", 1000),
    ("transformer step, compiled (ms)", "step_s_compiled", "{:.1f}", 1000),
    ("first step (s)", "first_step_s", "{:.2f}", 1),
    ("transformer step, 1 reference image (ms)", "step_s_ref", "{:.1f}", 1000),
    ("transformer step, 1 reference image, compiled (ms)", "step_s_ref_compiled", "{:.1f}", 1000),
    ("VAE decode (ms)", "vae_s", "{:.1f}", 1000),
    ("reference image: preparation + VAE encode (ms)", "ref_encode_s", "{:.1f}", 1000),
    ("reference image: the same, encoder eager (ms)", "ref_encode_s_eager", "{:.1f}", 1000),
    (f"end to end, {STEPS} steps (s)", "e2e_s", "{:.3f}", 1),
    (f"end to end, {STEPS} steps, 1 reference image (s)", "e2e_s_ref", "{:.3f}", 1),
    ("peak GPU memory (GB)", "peak_gb", "{:.1f}", 1),
    ("peak GPU memory, 1 reference image (GB)", "peak_gb_ref", "{:.1f}", 1),
]


def report_text(runs: list[dict], side: int) -> str:
    device = next((r["device"] for r in runs if "torch" in r), "GPU")
    model = (
        "random weights at FLUX.2 [klein] 4B's full size (transformer 3.9 B parameters: 5 double + 20 single "
        "blocks of width 3072; Qwen3-4B text encoder; FLUX.2 VAE), bf16"
        if side >= SIDE["full"]
        else "the tiny random-weight model, float32 (a check of the script, not a speed figure)"
    )
    lines = [
        f"Measured {date.today()} on {device}, {model}, {side}x{side}, {STEPS} steps (klein's default), "
        "prompt padded to 512 tokens as Flux2KleinPipeline pads it. Medians of warm runs; step = one "
        f"transformer forward; end to end = prompt to PIL image; the reference image is {side}x{side} "
        f"({(side // 16) ** 2} more tokens per step).",
        "",
        "| | " + " | ".join(r["framework"] for r in runs) + " |",
        "| --- | " + " | ".join("---" for _ in runs) + " |",
    ]
    for label, key, fmt, scale in ROWS:
        if any(key in r for r in runs):
            cells = [fmt.format(r[key] * scale) if key in r else "n/a" for r in runs]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    ours = next((r for r in runs if r["framework"].startswith("ollama-img")), None)
    theirs = [r for r in runs if r is not ours]
    if ours and theirs:
        lines += ["", "Ratios (diffusers time / ollama-img time, > 1 means ollama-img is faster):", ""]
        for r in theirs:
            parts = [
                f"{key} {r[key] / ours[key]:.2f}x"
                for key in ("step_s", "step_s_ref", "vae_s", "ref_encode_s", "e2e_s", "e2e_s_ref")
                if key in r and key in ours
            ]
            lines.append(f"- vs {r['framework']}: " + ", ".join(parts))
    return "\n".join(lines)


def cmd_report(args):
    runs = [json.loads(Path(p).read_text()) for p in args.results if Path(p).exists()]
    if not runs:
        sys.exit("no results to report")
    text = report_text(runs, args.side)
    print(text, flush=True)
    if args.md:
        Path(args.md).write_text(text + "\n")
    if args.write:
        from bench.results import replace_section

        replace_section("GPU, full-size FLUX.2 [klein] 4B (bench/gpu_flux2.py)", text)


def cmd_all(args):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    me = [sys.executable, str(Path(__file__).resolve())]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    if not (Path(args.dir) / "model_index.json").exists():
        subprocess.run([*me, "build", args.dir, "--size", args.size], check=True, env=env)
    results = []
    for name in ("mlx", "diffusers"):
        if name in args.skip:
            continue
        path = out / f"{name}.json"
        command = [*me, name, args.dir, "--json", str(path), "--side", str(SIDE[args.size])]
        code = subprocess.run(command, check=False, env=env).returncode
        if code:
            print(f"{name} run failed with exit status {code}", flush=True)
        results.append(str(path))
    merged = [json.loads(Path(p).read_text()) for p in results if Path(p).exists()]
    (out / "results.json").write_text(json.dumps(merged, indent=2))
    report = [*me, "report", *results, "--side", str(SIDE[args.size]), "--md", str(out / "report.md")]
    subprocess.run(report + (["--write"] if args.write else []), check=False, env=env)
    print(f"FIGURE bench_total_s {time.perf_counter() - t0:.1f}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("build")
    p.add_argument("dir")
    p.add_argument("--size", choices=sorted(SIDE), default="full")
    for name in ("mlx", "diffusers"):
        p = sub.add_parser(name)
        p.add_argument("dir")
        p.add_argument("--json")
        p.add_argument("--side", type=int, default=SIDE["full"], help="image side in pixels")
    p = sub.add_parser("report")
    p.add_argument("results", nargs="+")
    p.add_argument("--side", type=int, default=1024)
    p.add_argument("--md")
    p.add_argument("--write", action="store_true")
    p = sub.add_parser("all")
    p.add_argument("--dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument(
        "--size", choices=sorted(SIDE), default="full", help="the folder's size (built if --dir is empty)"
    )
    p.add_argument("--skip", nargs="*", default=[], choices=["mlx", "diffusers"])
    p.add_argument("--write", action="store_true", help="replace the section of bench/RESULTS.md")
    args = ap.parse_args()
    commands = {"build": cmd_build, "mlx": cmd_mlx, "diffusers": cmd_diffusers, "report": cmd_report}
    commands.get(args.cmd, cmd_all)(args)


if __name__ == "__main__":
    main()
