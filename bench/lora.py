"""LoRA adapters, two ways of computing them: a low-rank side path per Linear (y = W x + (x down) up) and
merged into the weights at load (W + up down; on a quantized base: dequantized, merged, quantized again).

    python bench/lora.py --out OUT [--model mid|full] [--size 256] [--steps 3] [--ranks 16,64]
                         [--bases bf16,fp8,int4] [--write]
    python bench/lora.py --tiny --out /tmp/lora-bench        # the tiny model: a quick check of the script
    python bench/lora.py layers [--tokens 1024] --out OUT    # one Linear, with and without its side path

It builds its model folder (tests/fixtures/zimage_folder.py; `mid`: the release's widths with few
layers, 3.2 GB, the default on the CPU; `full`: Z-Image-Turbo's size, 20.5 GB, the default on a GPU) in
/dev/shm unless present, makes the quantized bases with `create --quantize` into a store beside it, and
writes PEFT-format adapters (float16, as trainers ship them) for every attention and feed-forward
Linear of the transformer's blocks, at each rank. Each configuration (base x strategy x rank) runs in
its own process: loaded without the adapter, then the adapter and no adapter in turns, each switch timed
(side paths swapped in; merged: the transformer loaded again, merged) with what applying took, seconds
per denoising step at --size with and without the adapter (the best of the turns: both sides of the
ratio come from one process, whatever else the machine runs), MLX's peak memory over the adapter's
steps, and what the pipeline holds with and without it. Its final latents are compared with the side
path's on the same base and rank (merging rounds W + B A into the weight's own type) and with the
base's (the adapter's effect, for scale). `merge-error` children measure, layer by layer, how much of
each adapter's change (B A) the merge loses to rounding into each base's type. Results: OUT/results.json
and OUT/table.md; --write puts the table into bench/RESULTS.md's "LoRA" section.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

PROMPT = "a watercolour of a fishing village at dawn, soft light"
WORK = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("/tmp")
BLOCK_LINEARS = ("attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0",
                 "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")  # fmt: skip
STRATEGIES = ("side-path", "merged")
CHANGE = 0.05  # |B A| / |W| of the adapters written
ROUNDS = 2  # turns of (no adapter, adapter) per configuration


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command")
    ap.add_argument("--out", type=Path, default=WORK / "oi-lora-bench")
    ap.add_argument("--model", choices=["mid", "full"], help="default: full on a GPU, mid on the CPU")
    ap.add_argument("--size", type=int, help="image side (default: 1024 on a GPU, 256 on the CPU)")
    ap.add_argument("--steps", type=int, default=2, help="timed denoising steps per turn")
    ap.add_argument("--ranks", default="16,64", help="adapter ranks on the bf16 base")
    ap.add_argument("--quantized-ranks", default="16", help="adapter ranks on the quantized bases")
    ap.add_argument("--bases", default="bf16,fp8,int4")
    ap.add_argument("--tiny", action="store_true", help="the tiny test model (a check of this script)")
    ap.add_argument("--write", action="store_true", help="put the table into bench/RESULTS.md")
    child = sub.add_parser("child")
    child.add_argument("--model", required=True)
    child.add_argument("--store", type=Path)
    child.add_argument("--adapter", type=Path)
    child.add_argument("--strategy")
    child.add_argument("--size", type=int, required=True)
    child.add_argument("--steps", type=int, required=True)
    child.add_argument("--latents", type=Path, required=True)
    layers = sub.add_parser("layers", help="one Linear with and without its side path, in turns")
    layers.add_argument("--tokens", type=int, default=1024)
    layers.add_argument("--pairs", type=int, default=15)
    layers.add_argument("--out", type=Path)
    merge = sub.add_parser("merge-error")
    merge.add_argument("--model", required=True)
    merge.add_argument("--store", type=Path)
    merge.add_argument("--adapter", type=Path, required=True)
    args = ap.parse_args()
    if args.command == "child":
        emit(child_run(args))
    elif args.command == "merge-error":
        emit(child_merge_error(args))
    elif args.command == "layers":
        layer_overhead(args)
    else:
        orchestrate(args)


def emit(result: dict) -> None:
    print("RESULT " + json.dumps(result), flush=True)


# -- the parent ----------------------------------------------------------------------------------------


def on_gpu() -> bool:
    try:
        import mlx.core as mx

        return mx.default_device() == mx.gpu
    except ImportError:
        return False


def sizes_of(model: str, tiny: bool):
    from tests.fixtures.zimage_folder import FULL, TINY

    if tiny:
        return TINY
    if model == "full":
        return FULL
    from bench.load_speed import mid_sizes

    return mid_sizes()


def orchestrate(args):
    gpu = on_gpu()
    model = "tiny" if args.tiny else (args.model or ("full" if gpu else "mid"))
    size = args.size or (64 if args.tiny else 1024 if gpu else 256)
    steps = 2 if args.tiny else args.steps
    ranks = [int(r) for r in args.ranks.split(",")] if not args.tiny else [4]
    quantized_ranks = [int(r) for r in args.quantized_ranks.split(",")] if not args.tiny else [4]
    bases = args.bases.split(",")
    folder = WORK / f"oi-lora-{model}" / "Z-Image"
    store = WORK / f"oi-lora-{model}" / "store"
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "date": date.today().isoformat(),
        "machine": machine(gpu),
        "model": model,
        "size": size,
        "steps": steps,
        "setup": {},
        "runs": [],
        "merge_error": [],
    }

    def save():
        (out / "results.json").write_text(json.dumps(report, indent=1))
        (out / "table.md").write_text(markdown(report))

    if not (folder / "model_index.json").is_file():
        from tests.fixtures.zimage_folder import build_zimage_folder

        t0 = time.perf_counter()
        build_zimage_folder(folder, sizes_of(model, args.tiny), transformer_shards=1 if args.tiny else 3)
        report["setup"]["build_s"] = round(time.perf_counter() - t0, 1)
        print(f"built {folder} in {report['setup']['build_s']} s", flush=True)
    for base in bases:
        if base == "bf16" or (store / "manifests/registry.ollama.ai/library/z" / base).is_file():
            continue
        t0 = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "ollama_img", "create", f"z:{base}", "-f", str(folder), "--quantize", base],
            env=child_env(store), capture_output=True, text=True,
        )  # fmt: skip
        report["setup"][f"create_{base}_s"] = round(time.perf_counter() - t0, 1)
        print(f"create --quantize {base}: {report['setup'][f'create_{base}_s']} s (exit {done.returncode})")
        if done.returncode:
            print(done.stderr[-2000:])
    adapters = {}
    for rank in sorted({*ranks, *quantized_ranks}):
        adapters[rank] = write_adapter(folder, out / f"adapter-r{rank}.safetensors", rank)
    save()

    def model_of(base: str) -> str:
        return str(folder) if base == "bf16" else f"z:{base}"

    latents = out / "latents"
    latents.mkdir(exist_ok=True)

    def ranks_of(base):
        return ranks if base == "bf16" else quantized_ranks

    configs = [(base, strategy, rank) for base in bases for rank in ranks_of(base) for strategy in STRATEGIES]
    for base, strategy, rank in configs:
        name = f"{base} {strategy} r{rank}"
        saved = latents / (name.replace(" ", "_") + ".npy")
        command = [sys.executable, __file__, "child", "--model", model_of(base), "--store", str(store),
                   "--size", str(size), "--steps", str(steps), "--latents", str(saved),
                   "--adapter", str(adapters[rank]), "--strategy", strategy]  # fmt: skip
        result = run_child(command, store, name)
        result.update(base=base, strategy=strategy, rank=rank, latents=str(saved))
        report["runs"].append(result)
        compare(report["runs"])
        print(summary(result), flush=True)
        save()
    for base in bases:
        for rank in ranks_of(base):
            command = [sys.executable, __file__, "merge-error", "--model", model_of(base), "--store", str(store),
                       "--adapter", str(adapters[rank])]  # fmt: skip
            result = run_child(command, store, f"merge error {base} r{rank}")
            result.update(base=base, rank=rank)
            report["merge_error"].append(result)
            print(f"merge error {base} r{rank}: {result}", flush=True)
            save()
    print(markdown(report))
    if args.write:
        from bench.results import replace_section

        replace_section(section_title(report), markdown(report))


def child_env(store: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_IMG_")}
    env["OLLAMA_IMG_MODELS"] = str(store)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")])
    return env


def run_child(command: list[str], store: Path, name: str) -> dict:
    done = subprocess.run(command, env=child_env(store), capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": f"exit {done.returncode}: {done.stderr[-1500:]}", "name": name}


def write_adapter(folder: Path, path: Path, rank: int) -> Path:
    """A PEFT-format adapter (float16) on every block Linear of the transformer: random pairs whose
    change B A is `CHANGE` times each weight's size (Frobenius norm; the folder's weights have variance
    1 / inputs), alpha = rank (scale 1)."""
    import numpy as np
    from safetensors.numpy import save_file

    from ollama_img.adapters import component_shapes
    from ollama_img.weights import FolderSource

    shapes = component_shapes(FolderSource(folder), "transformer")
    rng = np.random.default_rng(rank)
    tensors = {}
    for name, shape in shapes.items():
        module = name.removesuffix(".weight")
        if not (name.endswith(".weight") and module.endswith(BLOCK_LINEARS)):
            continue
        rows, cols = shape
        a = rng.standard_normal((rank, cols), dtype=np.float32) / math.sqrt(cols)
        b = rng.standard_normal((rows, rank), dtype=np.float32) * (CHANGE / math.sqrt(rank))
        tensors[f"transformer.{module}.lora_A.weight"] = a.astype(np.float16)
        tensors[f"transformer.{module}.lora_B.weight"] = b.astype(np.float16)
    meta = {"lora_adapter_metadata": json.dumps({"transformer.r": rank, "transformer.lora_alpha": rank})}
    save_file(tensors, str(path), metadata=meta)
    return path


def compare(runs: list[dict]) -> None:
    """The last run's adapted latents against the side path's on its base and rank."""
    import numpy as np

    run = runs[-1]
    side = [
        r for r in runs if (r["base"], r["strategy"], r["rank"]) == (run["base"], "side-path", run["rank"])
    ]
    if "error" in run or not side or "error" in side[0]:
        return
    ours, theirs = np.load(run["latents"]).astype(np.float64), np.load(side[0]["latents"]).astype(np.float64)
    run["vs_side_path"] = float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def machine(gpu: bool) -> str:
    import mlx.core as mx

    if gpu:
        try:
            name = subprocess.run(
                ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "--id=0"],
                capture_output=True, text=True,
            ).stdout.strip()  # fmt: skip
        except OSError:
            name = "GPU"
        return f"{name}, MLX {mx.__version__}"
    from bench.results import cpu_model

    return f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()}, MLX {mx.__version__} (cpu)"


# -- a configuration, in its own process ----------------------------------------------------------------


def peak_rss() -> int:
    try:
        return int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0]) * 1024
    except (OSError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child_run(args) -> dict:
    """One base and strategy: loaded without adapters, then the adapter and no adapter in turns (each
    switch timed: side paths swapped, or the transformer loaded again merged), `ROUNDS` times, the best
    time of each kept: both sides of the comparison from one process, whatever else the machine runs."""
    import mlx.core as mx
    import numpy as np

    from ollama_img import load_pipeline
    from ollama_img.phases import recording
    from ollama_img.store import Store

    store = Store(args.store) if args.store else None
    t0 = time.perf_counter()
    pipe = load_pipeline(args.model, store=store, lora_strategy=args.strategy)
    load_s = time.perf_counter() - t0
    kwargs = dict(width=args.size, height=args.size, seed=0)
    pipe.denoise(PROMPT, steps=1, **kwargs)  # encodes the prompt, warms the step up
    adapter = [(str(args.adapter), 1.0)]
    best: dict[str, float] = {}
    out: dict[str, object] = {}

    def better(key, value):
        best[key] = min(best.get(key, math.inf), value)

    for _ in range(ROUNDS):
        for name, loras in (("base", None), ("adapter", adapter)):
            with recording() as timer:
                t0 = time.perf_counter()
                pipe.use_loras(loras)
                pipe.parts.get("transformer")  # merged: loads it again now
                better(f"switch_{name}_s", time.perf_counter() - t0)
            if loras:
                better("lora_s", timer.phases.get("lora", 0.0))
            mx.reset_peak_memory()
            t0 = time.perf_counter()
            latents = pipe.denoise(PROMPT, steps=args.steps, loras=loras, **kwargs)
            # the whole run per step: with the stack evaluated in chunks (the memory plan's), most of a
            # step is computed while its graph is built, so the times between on_step calls are not steps
            better(f"step_{name}_s", (time.perf_counter() - t0) / args.steps)
            out[name] = np.array(latents)
            if loras:
                out["peak"] = mx.get_peak_memory()
                out["holds"] = pipe.resident_bytes
            else:
                out["holds_base"] = pipe.resident_bytes
    np.save(args.latents, out["adapter"])
    effect = float(np.abs(out["adapter"] - out["base"]).max() / np.abs(out["base"]).max())
    return {
        "load_s": round(load_s, 3),
        **{key: round(value, 4) for key, value in best.items()},
        "step_peak_gb": round(out["peak"] / 1e9, 3),
        "rss_peak_gb": round(peak_rss() / 1e9, 3),
        "holds_gb": round(out["holds"] / 1e9, 4),
        "holds_base_gb": round(out["holds_base"] / 1e9, 4),
        "effect": effect,
    }


def child_merge_error(args) -> dict:
    """For each adapted layer: the weight the merge leaves, against the base's weight (as it computes)
    plus the adapter's change exactly; the error relative to the change itself."""
    import mlx.core as mx
    import mlx.nn as nn

    from ollama_img.adapters import resolve
    from ollama_img.models.lora_layers import factors, merge
    from ollama_img.models.zimage import ARCHITECTURE
    from ollama_img.store import Store
    from ollama_img.weights import open_source

    source = open_source(args.model, Store(args.store) if args.store else None)
    from ollama_img.models.loading import ComponentLoader
    from ollama_img.models.zimage.config import ZImageConfig
    from ollama_img.models.zimage.transformer import ZImageTransformer

    loader = ComponentLoader(source, quantized="quantized-matmul")
    config = loader.config(ZImageConfig.from_dict, "transformer/config.json")
    module = loader.load("transformer", ZImageTransformer(config), fuse=ZImageTransformer.fuse_units)
    adapters = resolve([(str(args.adapter), 1.0)], source, ARCHITECTURE)
    layers = dict(module.named_modules())
    errors = []
    for path, (down, up) in factors(module, ARCHITECTURE.lora, adapters, mx.float32).items():
        layer = layers[path]
        change = (down @ up).T
        exact = weight_of(layer) + change
        merge(layer, down, up)
        errors.append(float(mx.linalg.norm(weight_of(layer) - exact) / mx.linalg.norm(change)))
        del exact, change
        if isinstance(layer, nn.Linear):
            mx.eval(layer.weight)
    return {
        "layers": len(errors),
        "median": round(statistics.median(errors), 4),
        "max": round(max(errors), 4),
    }


def weight_of(layer):
    import mlx.core as mx
    import mlx.nn as nn

    if isinstance(layer, nn.QuantizedLinear):
        return mx.dequantize(
            layer.weight, layer.scales, layer.get("biases"), group_size=layer.group_size,
            bits=layer.bits, mode=layer.mode, dtype=mx.float32,
        )  # fmt: skip
    return layer.weight.astype(mx.float32)


def layer_overhead(args) -> None:
    """The side path's cost on the transformer's own Linear shapes (dim 3840: fused q|k|v, w1|w3, w2) at
    `--tokens` tokens, plain (the checkpoint's bf16) and quantized as the back end computes them: each
    pair of calls (without, with) back to back, the median of the pairs' ratios (robust to a machine
    that other work slows now and then)."""
    from ollama_img.backend import require_mlx

    mx = require_mlx()  # with OpenBLAS under MLX's CPU products, as the pipelines run
    import mlx.nn as nn

    from ollama_img.models.loading import DequantizingLinear
    from ollama_img.models.lora_layers import LoraLinear
    from ollama_img.quantization import DEQUANTIZE_PER_CALL, TYPES, loading_strategy

    backend = "cuda" if on_gpu() else "cpu"
    dtype = mx.bfloat16 if on_gpu() else mx.float32
    rows = []
    for label, (out_dims, in_dims) in {
        "q|k|v": (11520, 3840),
        "w1|w3": (20480, 3840),
        "w2": (3840, 10240),
    }.items():
        plain = nn.Linear(in_dims, out_dims, bias=False)
        plain.weight = (mx.random.normal((out_dims, in_dims)) / math.sqrt(in_dims)).astype(mx.bfloat16)
        x = mx.random.normal((1, args.tokens, in_dims)).astype(dtype)
        for base_name in ("bf16", "fp8", "int4"):
            if base_name == "bf16":
                base = plain
            else:
                quant = TYPES[base_name]
                base = nn.QuantizedLinear.from_linear(plain, quant.group_size, quant.bits, quant.mode)
                if loading_strategy(backend, quant.mode) == DEQUANTIZE_PER_CALL:
                    base = DequantizingLinear.from_quantized(base, mx.bfloat16)
            mx.eval(base.parameters())
            for rank in (16, 64):
                down = (mx.random.normal((in_dims, rank)) / math.sqrt(in_dims)).astype(dtype)
                up = (mx.random.normal((rank, out_dims)) * 0.01).astype(dtype)
                side = LoraLinear(base, down, up)
                ratios, plain_s = [], []
                for i in range(args.pairs + 2):
                    timed = []
                    for layer in (base, side):
                        t0 = time.perf_counter()
                        mx.eval(layer(x))
                        timed.append(time.perf_counter() - t0)
                    if i >= 2:  # the first pairs warm up
                        ratios.append(timed[1] / timed[0])
                        plain_s.append(timed[0])
                row = {"layer": label, "base": base_name, "rank": rank, "tokens": args.tokens,
                       "base_s": round(statistics.median(plain_s), 5),
                       "ratio": round(statistics.median(ratios), 4)}  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
    table = [
        f"{date.today().isoformat()}, {machine(on_gpu())}: one Linear at {args.tokens} tokens, "
        f"{'bf16' if on_gpu() else 'float32'} activations; median over {args.pairs} back-to-back pairs.",
        "",
        "| layer (out x in) | base | base s | + side path r16 | + side path r64 |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for label in dict.fromkeys(r["layer"] for r in rows):
        for base_name in ("bf16", "fp8", "int4"):
            cells = {r["rank"]: r for r in rows if r["layer"] == label and r["base"] == base_name}
            table.append(
                f"| {label} | {base_name} | {cells[16]['base_s']:.4f} | {cells[16]['ratio']:.3f}x | "
                f"{cells[64]['ratio']:.3f}x |"
            )
    text = "\n".join(table) + "\n"
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "layers.json").write_text(json.dumps(rows, indent=1))
        (args.out / "layers.md").write_text(text)


# -- report ------------------------------------------------------------------------------------------------


def summary(run: dict) -> str:
    if "error" in run:
        return f"{run.get('name')}: {run['error']}"
    return (
        f"{run['base']} {run['strategy']} r{run['rank']}: load {run['load_s']} s, switch to it "
        f"{run['switch_adapter_s']} s (applying {run['lora_s']} s), step {run['step_base_s']} -> "
        f"{run['step_adapter_s']} s, peak {run['step_peak_gb']} GB"
    )


def section_title(report: dict) -> str:
    where = "GPU" if "(cpu)" not in report["machine"] else "CPU"
    return f"LoRA, {report['model']} model, {where} (bench/lora.py)"


def markdown(report: dict) -> str:
    lines = [
        f"{report['date']}, {report['machine']}; {report['model']} model, {report['size']}x{report['size']}. "
        "Adapter: PEFT format, float16, on every attention and feed-forward Linear of the transformer's "
        f"blocks, each change |B A| = {CHANGE:.0%} of its weight's |W|. Each configuration is one process: "
        f"loaded without the adapter, then the adapter and no adapter in turns ({ROUNDS} times), each "
        f"denoising {report['steps']} steps; a step's time is the best turn's seconds per step. `switch`: making the adapter the "
        "transformer's (side path: swapping it in; merged: loading the transformer again, merged), of it "
        "`applying` (reading the adapter and computing its factors, and for merged the merge itself). "
        "`vs side path`: the final latents' largest difference from the side path's on the same base and "
        "rank, relative to their largest value; `effect`: the same between the adapter's and the base's.",
        "",
        "| base | adapter | load s | switch s | of it applying | step s, none | step s, adapter | ratio | "
        "peak GB, steps | holds GB, none / adapter | vs side path | effect |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["runs"]:
        adapter = f"{r['strategy']} r{r['rank']}"
        if "error" in r:
            lines.append(f"| {r['base']} | {adapter} | {r['error'][:80]} |" + " |" * 9)
            continue
        vs = f"{r['vs_side_path']:.1e}" if "vs_side_path" in r and r["strategy"] == "merged" else ""
        lines.append(
            f"| {r['base']} | {adapter} | {r['load_s']:.2f} | {r['switch_adapter_s']:.2f} | {r['lora_s']:.2f} | "
            f"{r['step_base_s']:.3f} | {r['step_adapter_s']:.3f} | "
            f"{r['step_adapter_s'] / r['step_base_s']:.3f}x | {r['step_peak_gb']:.2f} | "
            f"{r['holds_base_gb']:.3f} / {r['holds_gb']:.3f} | {vs} | {r['effect']:.3f} |"
        )
    if report["merge_error"]:
        lines += [
            "",
            "Merging, layer by layer: how far the merged weight is from the base's weight plus the adapter's "
            "change, relative to the change (|merged - (W + B A)| / |B A|, Frobenius norms):",
            "",
            "| base | rank | layers | median | max |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for m in report["merge_error"]:
            if "error" in m:
                lines.append(f"| {m['base']} | {m['rank']} | {m['error'][:80]} | | |")
            else:
                lines.append(
                    f"| {m['base']} | {m['rank']} | {m['layers']} | {m['median']:.2%} | {m['max']:.2%} |"
                )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
