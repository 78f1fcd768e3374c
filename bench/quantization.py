"""What each `--quantize` type costs in error and saves in bytes and time, on the back end it runs on.

    python bench/quantization.py cpu [--write]
        This machine: tiny and small random-weight models (error per tensor family, the rule end to end
        through the store, generation time), stored bytes at full size (from tensor shapes), matmul.
    python bench/quantization.py device DIR --json OUT [--markdown OUT.md] [--types fp8,int4] [--skip ...]
        One model folder (the full-size one on a GPU: `python bench/gpu_zimage.py build DIR`):
        matmul at the FFN shape (bf16 vs quantized_matmul vs qqmm vs dequantize), error per tensor
        family, then per type: create through the store, stored bytes, load each way (quantized matmul, dequantize per call, at load),
        forward error, image PSNR, step and generation time, resident and peak memory.
    python bench/quantization.py report OUT.json... [--write]
        The device figures (several runs merged) as a bench/RESULTS.md section.

Errors compare against the unquantized model from the same folder, same prompt, seed and latents:
relative error = ||q - ref|| / ||ref|| of one transformer forward (model time 0.5) and of the prompt
embedding, PSNR of the final 8-bit image. Family errors quantize one family in memory
(dequantize(quantize(w)), exactly what dequantizing at load gives) and leave the rest unquantized.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.fixtures.zimage_folder import (  # noqa: E402
    FULL,
    TINY,
    Sizes,
    TextEncoderSize,
    TransformerSize,
    build_zimage_folder,
    text_encoder_tensors,
    transformer_tensors,
    vae_tensors,
)

from bench.results import cpu_model, replace_section  # noqa: E402
from ollama_img.models.zimage import QUANTIZATION  # noqa: E402
from ollama_img.quantization import (  # noqa: E402
    DEQUANTIZE_AT_LOAD,
    QUANTIZED_MATMUL,
    STRATEGIES,
    TYPES,
    loading_strategy,
)

PROMPT = "a photograph of a red fox in the snow, golden hour, detailed fur, shallow depth of field"
FFN_SHAPE = (4128, 3840, 10240)  # 1024x1024 image tokens + caption, dim, FFN hidden
CPU_SHAPE = (256, 1024, 2048)

# Every dimension a multiple of 64, so that all types quantize every candidate family (TINY's FFN
# hidden size, 170, and text-encoder width, 32, leave some of them unquantized at group 64).
SMALL = Sizes(
    transformer=TransformerSize(
        dim=192, n_layers=4, n_refiner_layers=2, n_heads=2, cap_feat_dim=128, axes_dims=(32, 32, 32)
    ),
    text_encoder=TextEncoderSize(
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        intermediate_size=384,
    ),
    vae=TINY.vae,
)

# Tensor families, as module paths of the loaded model (after q/k/v and w1/w3 are fused).
_BLOCKS = r"(layers|noise_refiner|context_refiner)\.\d+"
FAMILIES = {
    "transformer attention (q, k, v, out)": (
        "transformer",
        rf"{_BLOCKS}\.attention\.(to_qkv|to_[qkv]|to_out\.0)",
    ),
    "transformer feed-forward (w1, w2, w3)": ("transformer", rf"{_BLOCKS}\.feed_forward\.(w13|w[123])"),
    "transformer adaLN": ("transformer", r"(layers|noise_refiner)\.\d+\.adaLN_modulation\.0"),
    "transformer embedders + final layer": (
        "transformer",
        r"all_x_embedder\..*|cap_embedder\.1|t_embedder\.mlp\.[02]|all_final_layer\..*",
    ),
    "text encoder attention (q, k, v, o)": ("text_encoder", r"layers\.\d+\.self_attn\.[qkvo]_proj"),
    "text encoder MLP (gate, up, down)": ("text_encoder", r"layers\.\d+\.mlp\.(gate|up|down)_proj"),
}


# ----------------------------------------------------------------------------------------------
# Helpers


def _mx():
    import mlx.core as mx

    return mx


def median_time(fn, runs: int) -> float:
    mx = _mx()
    times = []
    for _ in range(runs):
        mx.synchronize()
        t0 = time.perf_counter()
        fn()
        mx.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def rel_error(a, ref) -> float:
    import numpy as np

    a, ref = np.asarray(a, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return float(np.linalg.norm(a - ref) / max(np.linalg.norm(ref), 1e-30))


def psnr(image, ref) -> float:
    import numpy as np

    mse = float(np.mean((np.asarray(image, dtype=np.float64) - np.asarray(ref, dtype=np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def device_name() -> str:
    mx = _mx()
    if mx.default_device() != mx.gpu:
        return f"CPU ({cpu_model()}, {_cores()} cores)"
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "GPU (Metal)" if sys.platform == "darwin" else "GPU"


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _np(a):
    import numpy as np

    mx = _mx()
    return np.array(a.astype(mx.float32))


# ----------------------------------------------------------------------------------------------
# Matmul at one shape: bf16 vs quantized_matmul vs qqmm vs dequantize (once, and per call)


def matmul_figures(shape: tuple[int, int, int], runs: int) -> dict:
    mx = _mx()
    m, k, n = shape
    x = mx.random.normal((m, k), key=mx.random.key(0)).astype(mx.bfloat16)
    w = (mx.random.normal((n, k), key=mx.random.key(1)) * k**-0.5).astype(mx.bfloat16)
    if mx.default_device() != mx.gpu:
        x = x.astype(mx.float32)  # the CPU computes in float32 against bf16 weights (compute_dtype)
    mx.eval(x, w)
    ref = x @ w.T
    mx.eval(ref)
    out = {"shape": list(shape), "bf16_ms": 1000 * median_time(lambda: mx.eval(x @ w.T), runs), "types": {}}
    for q in TYPES.values():
        wq, scales, *rest = mx.quantize(w, group_size=q.group_size, bits=q.bits, mode=q.mode)
        biases = rest[0] if rest else None
        mx.eval(wq, scales, biases) if biases is not None else mx.eval(wq, scales)
        kw = {"group_size": q.group_size, "bits": q.bits, "mode": q.mode}

        def qmm(wq=wq, scales=scales, biases=biases, kw=kw):
            return mx.quantized_matmul(x, wq, scales, biases, transpose=True, **kw)

        def deq(wq=wq, scales=scales, biases=biases, kw=kw):
            return mx.dequantize(wq, scales, biases, dtype=w.dtype, **kw)

        r = {
            "quantized_matmul_ms": 1000 * median_time(lambda qmm=qmm: mx.eval(qmm()), runs),
            "dequantize_once_ms": 1000 * median_time(lambda deq=deq: mx.eval(deq()), runs),
            "dequantize_per_call_ms": 1000 * median_time(lambda deq=deq: mx.eval(x @ deq().T), runs),
            "weight_error": rel_error(_np(deq()), _np(w)),
            "output_error": rel_error(_np(qmm()), _np(ref)),
        }
        if q.mode in ("mxfp8", "nvfp4"):
            try:

                def qq(wq=wq, scales=scales, kw=kw):
                    return mx.qqmm(x, wq, scales, **kw)

                mx.eval(qq())
                r["qqmm_ms"] = 1000 * median_time(lambda qq=qq: mx.eval(qq()), runs)
                r["qqmm_output_error"] = rel_error(_np(qq()), _np(ref))
            except Exception as exc:  # not every back end has it
                r["qqmm_ms"] = None
                r["qqmm_unavailable"] = str(exc).splitlines()[0][:120]
        out["types"][q.name] = r
        print(f"matmul {shape} {q.name}: {json.dumps(r)}", flush=True)
    return out


# ----------------------------------------------------------------------------------------------
# Stored bytes, computed from tensor shapes (no folder needed)


def blob_bytes(name: str, dtype: str, shape: tuple[int, ...], quant) -> int:
    """Exact size of the blob the importer writes for one tensor (header included)."""
    from ollama_img.store.safetensors_format import DTYPE_SIZES, TensorEntry, encode_header

    if quant is None or not QUANTIZATION.selects(name, dtype, shape, quant):
        entries, metadata = [TensorEntry("data", dtype, shape)], None
    else:
        out_dims, in_dims = shape
        groups = in_dims // quant.group_size
        scale_dtype = dtype if quant.mode == "affine" else "U8"
        entries = [
            TensorEntry("weight", "U32", (out_dims, in_dims * quant.bits // 32)),
            TensorEntry("scales", scale_dtype, (out_dims, groups)),
        ]
        if quant.mode == "affine":
            entries.append(TensorEntry("biases", scale_dtype, (out_dims, groups)))
        metadata = quant.metadata()
    header = encode_header(entries, metadata)
    return len(header) + sum(math.prod(e.shape) * DTYPE_SIZES[e.dtype] for e in entries)


def model_tensors(sizes: Sizes) -> list[tuple[str, tuple[int, ...]]]:
    te = sizes.text_encoder
    vocab = te.vocab_size or (sizes.tokenizer_vocab + 63) // 64 * 64
    return (
        [(f"transformer/{s.name}", s.shape) for s in transformer_tensors(sizes.transformer)]
        + [(f"text_encoder/{s.name}", s.shape) for s in text_encoder_tensors(te, vocab)]
        + [(f"vae/{s.name}", s.shape) for s in vae_tensors(sizes.vae)]
    )


def size_figures(sizes: Sizes, dtype: str = "BF16") -> dict:
    tensors = model_tensors(sizes)
    plain = {name: blob_bytes(name, dtype, shape, None) for name, shape in tensors}
    out = {"bf16_total": sum(plain.values()), "types": {}}
    for q in TYPES.values():
        chosen = [(n, s) for n, s in tensors if QUANTIZATION.selects(n, dtype, s, q)]
        quantized = sum(blob_bytes(n, dtype, s, q) for n, s in chosen)
        before = sum(plain[n] for n, _ in chosen)
        out["types"][q.name] = {
            "tensors": len(chosen),
            "quantized_bytes": quantized,
            "quantized_bf16_bytes": before,
            "total": out["bf16_total"] - before + quantized,
        }
    return out


# ----------------------------------------------------------------------------------------------
# One model folder: family errors, then each type through the store


class Reference:
    """The unquantized model's outputs for fixed inputs, kept as numpy so the model itself can go."""

    def __init__(self, pipe, width: int, height: int, steps: int):
        mx = _mx()
        self.width, self.height, self.steps = width, height, steps
        emb = pipe.encode_prompt(PROMPT)
        mx.eval(emb)
        self.embedding = _np(emb)
        self.latents = mx.random.normal((1, 16, height // 8, width // 8), key=mx.random.key(7))
        self.forward = _np(forward(pipe, emb, self.latents))
        self.image = generate(pipe, width, height, steps)


def forward(pipe, embedding, latents):
    """One transformer forward at model time 0.5 (uncompiled, so in-place weight changes count)."""
    mx = _mx()
    emb = embedding if isinstance(embedding, mx.array) else mx.array(embedding)
    caption = pipe.transformer.encode_caption(emb.astype(pipe.dtype), [emb.shape[1]])
    out = pipe.transformer(latents.astype(pipe.dtype), mx.array([0.5]), caption)
    mx.eval(out)
    return out


def generate(pipe, width: int, height: int, steps: int):
    import numpy as np

    return np.asarray(pipe.generate(PROMPT, width=width, height=height, steps=steps, seed=1))


def errors(pipe, ref: Reference, image: bool = True) -> dict:
    mx = _mx()
    emb = pipe.encode_prompt(PROMPT)
    mx.eval(emb)
    out = {
        "text_error": rel_error(_np(emb), ref.embedding),
        "forward_error": rel_error(_np(forward(pipe, mx.array(ref.embedding), ref.latents)), ref.forward),
        "forward_error_with_own_text": rel_error(_np(forward(pipe, emb, ref.latents)), ref.forward),
    }
    if image:
        out["image_psnr"] = psnr(generate(pipe, ref.width, ref.height, ref.steps), ref.image)
    return out


def _forget_compiled(pipe):
    if hasattr(pipe.transformer, "_compiled"):
        pipe.transformer._compiled = None


def family_errors(pipe, ref: Reference, images: bool) -> dict:
    """Quantize one family at a time in memory (dequantize(quantize(w))) and measure the damage."""
    import mlx.nn as nn

    mx = _mx()
    out = {}
    for family, (component, pattern) in FAMILIES.items():
        module = getattr(pipe, component)
        linears = [
            (path, m)
            for path, m in module.named_modules()
            if isinstance(m, nn.Linear) and re.fullmatch(pattern, path)
        ]
        row = {"parameters": sum(m.weight.size for _, m in linears)}
        for q in TYPES.values():
            chosen = [(p, m) for p, m in linears if m.weight.shape[-1] % q.group_size == 0]
            saved = {p: m.weight for p, m in chosen}
            for _, m in chosen:
                parts = mx.quantize(m.weight, group_size=q.group_size, bits=q.bits, mode=q.mode)
                m.weight = mx.dequantize(
                    parts[0],
                    parts[1],
                    parts[2] if len(parts) > 2 else None,
                    group_size=q.group_size,
                    bits=q.bits,
                    mode=q.mode,
                    dtype=m.weight.dtype,
                )
            mx.eval([m.weight for _, m in chosen])
            _forget_compiled(pipe)
            result = errors(pipe, ref, image=images) if chosen else {}
            result["quantized"] = f"{len(chosen)}/{len(linears)}"
            row[q.name] = result
            for p, m in chosen:
                m.weight = saved[p]
            _forget_compiled(pipe)
            print(f"family {family} {q.name}: {json.dumps(result)}", flush=True)
        out[family] = row
    return out


def use_qqmm(pipe) -> int:
    """Replace the mxfp8/nvfp4 QuantizedLinear layers of a packed pipeline by qqmm layers (bench only)."""
    import mlx.nn as nn
    from mlx.utils import tree_unflatten

    mx = _mx()

    class QQ(nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.weight, self.scales = layer.weight, layer.scales
            self.group_size, self.bits, self.mode = layer.group_size, layer.bits, layer.mode

        def __call__(self, x):
            return mx.qqmm(
                x, self.weight, self.scales, group_size=self.group_size, bits=self.bits, mode=self.mode
            )

    swapped = 0
    for module in (pipe.text_encoder, pipe.transformer):
        swaps = [
            (path, QQ(m))
            for path, m in module.named_modules()
            if isinstance(m, nn.QuantizedLinear) and m.mode in ("mxfp8", "nvfp4") and "bias" not in m
        ]
        module.update_modules(tree_unflatten(swaps))
        swapped += len(swaps)
    _forget_compiled(pipe)
    return swapped


def timing(pipe, ref: Reference, runs: int) -> dict:
    mx = _mx()
    caption = pipe.transformer.encode_caption(
        mx.array(ref.embedding).astype(pipe.dtype), [ref.embedding.shape[1]]
    )
    latents = ref.latents.astype(pipe.dtype)
    t = mx.array([0.5])

    def step():
        mx.eval(pipe.transformer(latents, t, caption))

    def gen():
        pipe.generate(PROMPT, width=ref.width, height=ref.height, steps=ref.steps, seed=1)

    step()
    gen()
    mx.reset_peak_memory()
    out = {
        "step_s": median_time(step, max(runs, 3)),
        "generation_s": median_time(gen, runs),
    }
    out["generation_peak_bytes"] = mx.get_peak_memory()
    return out


def model_figures(folder: Path, store_root: Path, types: list[str], args, save=lambda res: None) -> dict:
    """The model part of `device`; `save(res)` is called after each part, so a run cut short keeps them."""
    from ollama_img import load_pipeline
    from ollama_img.models.zimage.loader import load
    from ollama_img.store import Store, import_folder, inspect_folder
    from ollama_img.store.safetensors_format import DTYPE_SIZES, TensorEntry, encode_header
    from ollama_img.weights import StoreSource

    mx = _mx()
    width, height, steps, runs = args.width, args.height, args.steps, args.runs
    res = {"folder": str(folder), "width": width, "height": height, "steps": steps}
    t0 = time.perf_counter()
    base = load_pipeline(folder)
    res["bf16"] = {"load_s": time.perf_counter() - t0, "resident_bytes": base.resident_bytes}
    ref = Reference(base, width, height, steps)
    if "timing" not in args.skip:
        res["bf16"].update(timing(base, ref, runs))
    print(f"bf16: {json.dumps(res['bf16'])}", flush=True)
    save(res)
    if "families" not in args.skip:
        res["families"] = family_errors(base, ref, images=args.family_images)
        save(res)
    del base
    mx.clear_cache()

    store = Store(store_root)
    res["types"] = {}
    for name in types:
        q = TYPES[name]
        row = {}
        t0 = time.perf_counter()
        try:
            result = import_folder(store, name, inspect_folder(folder), quantize=q)
        except Exception as exc:
            traceback.print_exc()
            res["types"][name] = {"unavailable": str(exc).splitlines()[0][:160]}
            save(res)
            continue
        row["import_s"] = time.perf_counter() - t0
        manifest = result.manifest
        quantized = [
            layer
            for layer in manifest.layers
            if layer.is_tensor and QUANTIZATION.selects(layer.name, layer.dtype, layer.shape, q)
        ]
        plain = sum(
            len(encode_header([TensorEntry("data", layer.dtype, layer.shape)]))
            + math.prod(layer.shape) * DTYPE_SIZES[layer.dtype]
            for layer in quantized
        )
        row["stored_bytes"] = manifest.total_size
        row["quantized_tensors"] = len(quantized)
        row["quantized_bytes"] = sum(layer.size for layer in quantized)
        row["quantized_unquantized_bytes"] = plain
        row["unquantized_total"] = manifest.total_size - row["quantized_bytes"] + plain
        for variant in STRATEGIES:
            if variant in args.skip:
                continue
            mx.clear_cache()
            mx.reset_peak_memory()
            try:
                t0 = time.perf_counter()
                pipe = load(StoreSource(store, name), quantized=variant)
                v = {"load_s": time.perf_counter() - t0, "load_peak_bytes": mx.get_peak_memory()}
                v["resident_bytes"] = pipe.resident_bytes
                v.update(errors(pipe, ref))
                if "timing" not in args.skip:
                    v.update(timing(pipe, ref, runs))
            except Exception as exc:  # a way this back end cannot run: record it, measure the others
                traceback.print_exc()
                row[variant] = {"unavailable": str(exc).splitlines()[0][:160]}
                pipe = None
                continue
            row[variant] = v
            print(f"{name} {variant}: {json.dumps(v)}", flush=True)
            on_gpu = mx.default_device() == mx.gpu
            if (
                variant == QUANTIZED_MATMUL
                and on_gpu
                and q.mode in ("mxfp8", "nvfp4")
                and "qqmm" not in args.skip
            ):
                try:
                    v = {"layers": use_qqmm(pipe), **errors(pipe, ref)}
                    if "timing" not in args.skip:
                        v.update(timing(pipe, ref, runs))
                except Exception as exc:
                    v = {"unavailable": str(exc).splitlines()[0][:160]}
                row["qqmm"] = v
                print(f"{name} qqmm: {json.dumps(v)}", flush=True)
            del pipe
        store.remove([name])
        res["types"][name] = row
        save(res)
    return res


# ----------------------------------------------------------------------------------------------
# Commands


def environment() -> dict:
    mx = _mx()
    return {
        "date": str(date.today()),
        "device": device_name(),
        "mlx": mx.__version__,
        "backend": "cpu"
        if mx.default_device() != mx.gpu
        else ("metal" if sys.platform == "darwin" else "cuda"),
    }


def cmd_device(args):
    mx = _mx()
    res = environment()
    types = [] if args.types == "none" else (args.types.split(",") if args.types else list(TYPES))
    on_gpu = mx.default_device() == mx.gpu

    def save(model=None):
        if model is not None:
            res["model"] = model
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2))

    if "matmul" not in args.skip:
        res["matmul"] = matmul_figures(FFN_SHAPE if on_gpu else CPU_SHAPE, 10 if on_gpu else 3)
        save()
    store_root = Path(args.store) if args.store else Path(tempfile.mkdtemp(prefix="quant-store-"))
    try:
        if "model" not in args.skip:
            model_figures(Path(args.dir), store_root, types, args, save)
    finally:
        if not args.store:
            shutil.rmtree(store_root, ignore_errors=True)
    markdown = device_markdown(res)
    print(markdown)
    if args.markdown:
        Path(args.markdown).write_text(markdown + "\n")


def merge(results: list[dict]) -> dict:
    """Several `device` runs (e.g. split by --types to stay within a time limit) as one."""
    merged: dict = {}
    for res in results:
        for key, value in res.items():
            if key == "model" and "model" in merged:
                model = merged["model"]
                model.setdefault("types", {}).update(value.get("types", {}))
                for part in ("families", "bf16"):
                    if part in value and part not in model:
                        model[part] = value[part]
            elif key not in merged:
                merged[key] = value
    return merged


def cmd_cpu(args):
    """Everything this CPU can measure: tiny and small models, full-size bytes, matmul."""
    res = json.loads(Path(args.render).read_text()) if args.render else cpu_figures(args)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    text = cpu_markdown(res)
    print(text)
    if args.write:
        replace_section("Quantization, CPU (bench/quantization.py cpu)", text)


def cpu_figures(args) -> dict:
    mx = _mx()
    res = environment()
    res["matmul"] = matmul_figures(CPU_SHAPE, 3)
    args.family_images = True
    with tempfile.TemporaryDirectory() as tmp:
        for label, sizes, (w, h) in (("tiny", TINY, (64, 64)), ("small", SMALL, (128, 128))):
            folder = build_zimage_folder(Path(tmp) / label, sizes)
            args.width, args.height = w, h
            res[label] = model_figures(folder, Path(tmp) / f"{label}-store", list(TYPES), args)
            mx.clear_cache()
    res["full_size_bytes"] = size_figures(FULL)
    res["tiny_size_bytes"] = size_figures(TINY)
    return res


def cmd_report(args):
    res = merge([json.loads(Path(p).read_text()) for p in args.results])
    text = device_markdown(res)
    print(text)
    if args.write:
        replace_section(f"Quantization, {res['backend'].upper()} (bench/quantization.py device)", text)


# ----------------------------------------------------------------------------------------------
# Markdown


def _gb(n) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB"


def _f(value, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)


def matmul_table(m: dict) -> list[str]:
    shape = "x".join(str(d) for d in m["shape"])
    lines = [
        f"Matmul (M x K x N = {shape}); plain bf16-weight matmul: {m['bf16_ms']:.2f} ms. Times in ms, "
        "ratio to the plain matmul in brackets; errors relative to the plain matmul's output.",
        "",
        "| type | quantized_matmul | qqmm | dequantize once | dequantize + matmul per call | weight error | output error |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    base = m["bf16_ms"]
    for name, r in m["types"].items():
        qq = r.get("qqmm_ms")
        qq_text = (
            "n/a" if "qqmm_ms" not in r else ("unavailable" if qq is None else f"{qq:.2f} ({qq / base:.2f}x)")
        )
        lines.append(
            f"| {name} | {r['quantized_matmul_ms']:.2f} ({r['quantized_matmul_ms'] / base:.2f}x) | {qq_text} | "
            f"{r['dequantize_once_ms']:.2f} | {r['dequantize_per_call_ms']:.2f} "
            f"({r['dequantize_per_call_ms'] / base:.2f}x) | {r['weight_error']:.4f} | {r['output_error']:.4f} |"
        )
    return lines


def family_table(families: dict) -> list[str]:
    names = list(TYPES)
    lines = [
        "| family (parameters) | " + " | ".join(names) + " |",
        "| --- | " + " | ".join("---" for _ in names) + " |",
    ]
    for family, row in families.items():
        cells = []
        for name in names:
            r = row.get(name, {})
            if "forward_error" not in r:
                cells.append(f"not divisible ({r.get('quantized', '0')})")
                continue
            err = r["text_error"] if family.startswith("text") else r["forward_error"]
            cell = f"{err:.4f}"
            if "image_psnr" in r:
                cell += f" / {r['image_psnr']:.1f} dB"
            cells.append(cell)
        lines.append(f"| {family} ({row['parameters']:,}) | " + " | ".join(cells) + " |")
    return lines


def types_table(model: dict) -> list[str]:
    """Bytes and errors per type (errors from the dequantized-at-load model: every way computes the same
    weights, see the strategy table)."""
    lines = [
        "| type | stored (vs bf16) | quantized tensors: bytes vs bf16 | text rel. error | forward rel. error | "
        "image PSNR | import s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    first = next((r for r in model["types"].values() if "unquantized_total" in r), None)
    if first:
        lines.append(f"| bf16 | {_gb(first['unquantized_total'])} | - | 0 | 0 | inf | - |")
    for name, r in model["types"].items():
        if "unavailable" in r:
            lines.append(f"| {name} | unavailable: {r['unavailable']} | | | | | |")
            continue
        v = next((r[k] for k in (DEQUANTIZE_AT_LOAD, *STRATEGIES) if k in r), {})
        ratio = r["quantized_bytes"] / max(r["quantized_unquantized_bytes"], 1)
        lines.append(
            f"| {name} | {_gb(r['stored_bytes'])} ({r['stored_bytes'] / r['unquantized_total']:.2f}x) | "
            f"{r['quantized_tensors']} tensors: {_gb(r['quantized_bytes'])} vs "
            f"{_gb(r['quantized_unquantized_bytes'])} ({ratio:.3f}x) | {_f(v.get('text_error'), '{:.4f}')} | "
            f"{_f(v.get('forward_error'), '{:.4f}')} | {_f(v.get('image_psnr'), '{:.1f}')} dB | {r['import_s']:.1f} |"
        )
    return lines


def strategy_table(model: dict, backend: str) -> list[str]:
    bf16 = model["bf16"]
    if "step_s" not in bf16:
        return []
    lines = [
        f"Each way to run the quantized weights (**bold**: what the loader picks on {backend}): transformer "
        f"step at {model['width']}x{model['height']}, generation ({model['steps']} steps, median of warm runs), "
        "resident weights (what `ps` shows), MLX peak memory while generating (while loading).",
        "",
        "| type | way | step s | generation s | resident | peak (load peak) | forward rel. error | image PSNR |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| bf16 | - | {bf16['step_s']:.4f} | {bf16['generation_s']:.3f} | {_gb(bf16['resident_bytes'])} | "
        f"{_gb(bf16['generation_peak_bytes'])} | 0 | inf |",
    ]
    for name, r in model["types"].items():
        chosen = loading_strategy(backend, TYPES[name].mode)
        for variant in (*STRATEGIES, "qqmm"):
            v = r.get(variant)
            if not v:
                continue
            way = f"**{variant}**" if variant == chosen else variant
            if "unavailable" in v:
                lines.append(f"| {name} | {way} | unavailable: {v['unavailable']} | | | | | |")
                continue
            peak = _gb(v["generation_peak_bytes"]) if "generation_peak_bytes" in v else "n/a"
            if "load_peak_bytes" in v:
                peak += f" ({_gb(v['load_peak_bytes'])})"
            resident = _gb(v["resident_bytes"]) if "resident_bytes" in v else "-"
            lines.append(
                f"| {name} | {way} | {_f(v.get('step_s'), '{:.4f}')} | {_f(v.get('generation_s'), '{:.3f}')} | "
                f"{resident} | {peak} | {v['forward_error']:.4f} | {v['image_psnr']:.1f} dB |"
            )
    return lines


def device_markdown(res: dict) -> str:
    lines = [f"Measured {res['date']} on {res['device']}, MLX {res['mlx']} ({res['backend']})."]
    if "matmul" in res:
        lines += ["", *matmul_table(res["matmul"])]
    model = res.get("model")
    if model:
        lines += [
            "",
            f"Model folder {model['folder']} (random weights), {model['width']}x{model['height']}, {model['steps']} steps.",
        ]
        if "families" in model:
            lines += [
                "",
                "Error per tensor family, one family quantized at a time: forward relative error (text "
                "families: prompt-embedding relative error)"
                + (" / image PSNR" if _has_images(model) else "")
                + ".",
                "",
                *family_table(model["families"]),
            ]
        lines += [
            "",
            "The rule end to end (create --quantize, then load from the store):",
            "",
            *types_table(model),
        ]
        ways = strategy_table(model, res["backend"])
        if ways:
            lines += ["", *ways]
    return "\n".join(lines)


def _has_images(model: dict) -> bool:
    return any(
        "image_psnr" in r
        for row in model.get("families", {}).values()
        for r in row.values()
        if isinstance(r, dict)
    )


def cpu_markdown(res: dict) -> str:
    lines = [
        f"Measured {res['date']} on {res['device']}, MLX {res['mlx']}; compute in float32 against bf16 "
        "weights (the CPU's compute dtype). Random weights, so errors show how quantization noise propagates "
        "through the network, not how a trained model's outliers fare.",
        "",
        "What these figures decided (`ollama_img/quantization.py`):",
        "",
        "- The rule: quantize the attention and feed-forward Linear weights of the transformer's blocks and "
        "the text encoder's decoder layers (94% of the full model's bytes). Keep the embedders and final layer "
        "(the largest error of any family, for well under 1% of the full model's bytes) and adaLN (per "
        "parameter about 2.5x the error of the feed-forward, and it runs once per generation, so quantizing it "
        "saves 0.13 GB at fp8 and no time).",
        "- Loading on the CPU: MLX's quantized matmul is ~2.2x slower than a plain matmul for mxfp8 and ~5-15% "
        "slower for affine, ~2x faster for nvfp4 and mxfp4; dequantizing in each call costs 0-5% over a plain "
        "matmul and keeps the quantized memory. So fp8, int8 and int4 dequantize per call and the fp4 types "
        "use the quantized matmul; dequantizing at load is never more than ~5% faster and holds the bf16 "
        "memory. CPU timings on this 2-core VM vary by ~10% between runs.",
        "- A quantized blob is exactly the packed values plus one scale (and for affine one bf16 offset) per "
        "group plus a ~150-byte header: 0.516x (fp8), 0.531x (int8), 0.281x (int4, nvfp4), 0.266x (mxfp4) "
        "of the bf16 bytes at full size.",
        "- Quantizing on this CPU runs at ~0.4 GB/s for fp8 and the affine types but ~0.03 GB/s for nvfp4 and "
        "mxfp4 (MLX's CPU fp4 quantizer), so a full-size fp4 import takes ~10 minutes here; on a GPU "
        "(CUDA, Metal) the quantizer runs on the GPU.",
        "",
        "### Stored bytes at full size (from tensor shapes)",
        "",
        "Z-Image-Turbo's full size, bf16, tensor blobs only (configs and tokenizer add ~15 MB):",
        "",
        "| type | quantized tensors | their bytes (bf16) | their bytes (quantized) | ratio | model total | vs bf16 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    full = res["full_size_bytes"]
    lines.append(f"| bf16 | - | - | - | - | {_gb(full['bf16_total'])} | 1.00x |")
    for name, r in full["types"].items():
        lines.append(
            f"| {name} | {r['tensors']} | {_gb(r['quantized_bf16_bytes'])} | {_gb(r['quantized_bytes'])} | "
            f"{r['quantized_bytes'] / r['quantized_bf16_bytes']:.3f}x | {_gb(r['total'])} | "
            f"{r['total'] / full['bf16_total']:.2f}x |"
        )
    lines += ["", "### CPU matmul", "", *matmul_table(res["matmul"])]
    for label, title in (
        ("tiny", "tiny model (tests' TINY)"),
        ("small", "small model (every family divisible by 64)"),
    ):
        model = res[label]
        lines += [
            "",
            f"### {title.capitalize()}, {model['width']}x{model['height']}, {model['steps']} steps",
            "",
            "Error per tensor family, one family quantized at a time: forward relative error (text families: "
            "prompt-embedding relative error) / image PSNR vs bf16. 'not divisible': the family's input sizes "
            "are not multiples of the group size, so the rule leaves it unquantized.",
            "",
            *family_table(model["families"]),
            "",
            "The rule end to end (create --quantize from the folder, load from the store):",
            "",
            *types_table(model),
            "",
            *strategy_table(model, res["backend"]),
        ]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("cpu")
    p.add_argument("--write", action="store_true", help="write the section into bench/RESULTS.md")
    p.add_argument("--json")
    p.add_argument("--render", metavar="JSON", help="only turn an earlier run's JSON into the section")
    p = sub.add_parser("device")
    p.add_argument("dir")
    p.add_argument("--json")
    p.add_argument("--markdown")
    p.add_argument("--store", help="store directory to use (default: a temporary one, removed after)")
    p.add_argument("--types", help="comma-separated subset of " + ",".join(TYPES) + ", or none")
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--steps", type=int, default=9)
    p.add_argument("--runs", type=int, default=2, help="warm runs per generation time")
    p.add_argument("--family-images", action="store_true", help="also generate an image per family and type")
    p.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["matmul", "model", "families", "timing", *STRATEGIES, "qqmm"],
    )
    p = sub.add_parser("report")
    p.add_argument("results", nargs="+", help="JSON files of `device` runs on one machine")
    p.add_argument("--write", action="store_true")
    args = ap.parse_args()
    if args.cmd == "cpu":
        args.steps, args.runs, args.skip = 4, 5, []
    {"cpu": cmd_cpu, "device": cmd_device, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
