"""Where a full-size load's seconds go on a GPU: the page cache, MLX's reads, the weights' first use, phases.

    python bench/gpu_load_profile.py [--folder DIR] [--store DIR] [--out DIR] [--write]  # GPU: about 2 min
    python bench/gpu_load_profile.py --tiny                                             # CPU: a check

The folder is bench/gpu_cold_start.py's (/dev/shm/ollama-img-cold/zimage-full, built when missing, as
there). Every figure comes from a fresh process:

1. the transformer's files read into reused buffers by 1 and by N threads: the page cache's speed;
2. `mx.load` + `mx.eval` of the same files on 1 thread, and on N threads each evaluating its own groups
   (`models.reading`): MLX reading to the device, on its own;
3. the transformer loaded as the loader did before this bench was written (every tensor evaluated, then
   q/k/v and w1/w3 fused and evaluated again), and as it loads now with 1 and N threads;
4. `load_pipeline` from the folder (and, with --store, from a store holding it, imported when missing)
   with 1 and N threads, by phase; then a sum over every weight, twice: if the first pass is much
   slower than the second, the weights were not on the device yet (managed memory migrating on first
   use), which the first image would pay.

Figures are printed on their own lines; OUT gets load_profile.json and load_profile.md; --write puts the
table into bench/RESULTS.md.
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

from bench.load_speed import folder_files, raw_read, timed_load  # noqa: E402

SHM = Path("/dev/shm/ollama-img-cold") if Path("/dev/shm").is_dir() else Path("/tmp/ollama-img-cold")
NAME = "z-image-load"


def say(label: str, value: float, unit: str = "s"):
    print(f"FIGURE {label}: {value:.3f} {unit}", flush=True)


# -- children ----------------------------------------------------------------------------------


def child_raw(folder: str, threads: str) -> dict:
    files = transformer_files(Path(folder))
    return {"seconds": raw_read(files, int(threads)), "bytes": sum(p.stat().st_size for p in files)}


def child_mx_load(folder: str, threads: str) -> dict:
    import mlx.core as mx

    from ollama_img.models.reading import read_in_threads, tensor_groups

    files = [str(p) for p in transformer_files(Path(folder))]
    mx.eval(mx.zeros((1,)))
    started = time.perf_counter()
    if int(threads) == 1:
        arrays = [mx.load(f) for f in files]
        mx.eval(arrays)
    else:
        sizes = [(f, name, value.nbytes) for f in files for name, value in mx.load(f).items()]
        where = {f"{f}:{name}": (f, name) for f, name, _ in sizes}

        def read(keys: list[str]) -> dict:
            loaded = {f: mx.load(f) for f in {where[k][0] for k in keys}}
            return {k: loaded[where[k][0]][where[k][1]] for k in keys}

        groups = tensor_groups(([f"{f}:{name}"], n) for f, name, n in sizes)
        arrays = read_in_threads(groups, read, int(threads))
    mx.synchronize()
    return {"seconds": time.perf_counter() - started, "peak_gb": mx.get_peak_memory() / 1e9}


def child_transformer(folder: str, way: str) -> dict:
    """The transformer alone: `before` (evaluate, then fuse and evaluate again) or `now`."""
    import mlx.core as mx

    from ollama_img.models.loading import ComponentLoader
    from ollama_img.models.zimage.config import ZImageConfig
    from ollama_img.models.zimage.transformer import ZImageTransformer
    from ollama_img.weights import FolderSource

    source = FolderSource(folder)
    config = ComponentLoader(source).config(ZImageConfig.from_dict, "transformer/config.json")
    mx.eval(mx.zeros((1,)))
    started = time.perf_counter()
    if way == "before":
        model = ComponentLoader(source).load("transformer", ZImageTransformer(config))
        mx.synchronize()
        read = time.perf_counter() - started
        model.fuse_projections()
        mx.eval(model.parameters())
    else:
        ComponentLoader(source).load(
            "transformer", ZImageTransformer(config), fuse=ZImageTransformer.fuse_units
        )
        read = None
    mx.synchronize()
    out = {"seconds": time.perf_counter() - started, "peak_gb": mx.get_peak_memory() / 1e9}
    if read is not None:
        out["evaluated_before_fusing_s"] = read
    return out


def child_pipeline(source: str, store_root: str) -> dict:
    import mlx.core as mx
    from mlx.utils import tree_flatten

    out, pipe = timed_load(source, store_root)
    loaded = [name for name in ("text_encoder", "transformer", "vae") if pipe.parts.is_loaded(name)]
    out["loaded"] = loaded  # what the memory plan kept: only those are touched (the others would load)
    weights = [v for name in loaded for _, v in tree_flatten(pipe.parts.get(name).parameters())]
    for dtype in {w.dtype for w in weights}:  # the reduction kernels are compiled before the timed passes
        mx.eval(mx.sum(mx.ones((4, 4), dtype=dtype)))
    for turn in ("first", "second"):
        mx.synchronize()
        t0 = time.perf_counter()
        mx.eval([mx.sum(w) for w in weights])
        mx.synchronize()
        out[f"touch_{turn}_s"] = time.perf_counter() - t0
    out["weights_gb"] = sum(w.nbytes for w in weights) / 1e9
    return out


CHILDREN = {
    "raw": child_raw,
    "mx-load": child_mx_load,
    "transformer": child_transformer,
    "pipeline": child_pipeline,
}


def transformer_files(folder: Path) -> list[Path]:
    return [p for p in folder_files(folder) if p.parent.name == "transformer"]


def run_child(out: Path, label: str, what: str, *args: str, threads: int | None = None) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    if threads is not None:
        env["OLLAMA_IMG_LOAD_THREADS"] = str(threads)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "--child", what, *args], env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        print(f"FAILED {label}: {done.stderr[-3000:]}", flush=True)
        return {"label": label, "ok": False, "error": done.stderr[-3000:]}
    result = {
        "label": label,
        "ok": True,
        "process_s": wall,
        **json.loads(done.stdout.strip().splitlines()[-1]),
    }
    say(label, result["seconds"])
    for key, value in result.items():
        if key.endswith("_s") and key != "process_s" and isinstance(value, float):
            say(f"{label} {key[:-2]}", value)
    for name, seconds in result.get("phases", {}).items():
        say(f"{label} phase {name}", seconds)
    with open(out / "load_profile.partial.jsonl", "a") as f:  # what a cut-off run leaves
        f.write(json.dumps(result) + "\n")
    return result


# -- the report --------------------------------------------------------------------------------


def table(report: dict) -> str:
    lines = [
        f"Measured {report['date']} ({report['machine']}; {report['what']}, files in {report['folder']}: "
        f"transformer {report['transformer_gb']:.2f} GB, model {report['model_gb']:.2f} GB). Each row a fresh process.",
        "",
        "| what | s | GB/s | resolve | read | build | eval | first touch s | second touch s | peak GB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["rows"]:
        if not r.get("ok"):
            lines.append(f"| {r['label']} | failed | | | | | | | | |")
            continue
        size = report["model_gb"] if r["label"].startswith("load_pipeline") else report["transformer_gb"]
        phases = r.get("phases", {})
        cells = [f"{phases[p]:.2f}" if p in phases else "" for p in ("resolve", "read", "build", "eval")]
        touch = [f"{r[k]:.3f}" if k in r else "" for k in ("touch_first_s", "touch_second_s")]
        peak = f"{r['peak_gb']:.1f}" if "peak_gb" in r else ""
        lines.append(
            f"| {r['label']} | {r['seconds']:.2f} | {size / r['seconds']:.2f} | {' | '.join(cells)} "
            f"| {' | '.join(touch)} | {peak} |"
        )
    before = next((r for r in report["rows"] if r.get("evaluated_before_fusing_s")), None)
    if before:
        lines += [
            "",
            f"The transformer as loaded before: {before['evaluated_before_fusing_s']:.2f} s to evaluate "
            f"every tensor, {before['seconds'] - before['evaluated_before_fusing_s']:.2f} s to fuse after.",
        ]
    return "\n".join(lines)


def machine() -> str:
    from bench.gpu_cold_start import gpu_name

    return f"{gpu_name()}, {os.cpu_count()} cores"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--folder", type=Path, help="the model folder (default: gpu_cold_start.py's, built when missing)"
    )
    ap.add_argument(
        "--store", type=Path, help="also load from a store here (the folder imported when missing)"
    )
    ap.add_argument("--threads", type=int, default=8, help="the thread count compared with 1")
    ap.add_argument("--out", type=Path, default=Path("load-profile"))
    ap.add_argument("--tiny", action="store_true", help="the tiny model on the CPU: a check of this script")
    ap.add_argument("--write", action="store_true", help="put the table into bench/RESULTS.md")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        what, *rest = args.child
        print(json.dumps(CHILDREN[what](*rest)))
        return

    from bench.gpu_cold_start import Profile, build_folder

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    folder = (args.folder or SHM / ("zimage-tiny" if args.tiny else "zimage-full")).resolve()
    if not (folder / "model_index.json").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        say("build folder", build_folder(folder, Profile(args.tiny)))
    files = folder_files(folder)
    report = {
        "date": str(date.today()),
        "machine": machine(),
        "what": "tiny model" if args.tiny else "full-size random-weight Z-Image-Turbo, bf16, page cache",
        "folder": str(folder),
        "transformer_gb": sum(p.stat().st_size for p in transformer_files(folder)) / 1e9,
        "model_gb": sum(p.stat().st_size for p in files) / 1e9,
        "rows": [],
    }
    n = args.threads
    rows = report["rows"]
    rows.append(run_child(out, "raw read, transformer, 1 thread", "raw", str(folder), "1"))
    rows.append(run_child(out, f"raw read, transformer, {n} threads", "raw", str(folder), str(n)))
    rows.append(run_child(out, "mx.load + eval, transformer, 1 thread", "mx-load", str(folder), "1"))
    rows.append(run_child(out, f"mx.load + eval, transformer, {n} threads", "mx-load", str(folder), str(n)))
    rows.append(
        run_child(
            out, "transformer as before (eval, fuse, eval)", "transformer", str(folder), "before", threads=1
        )
    )
    rows.append(run_child(out, "transformer now, 1 thread", "transformer", str(folder), "now", threads=1))
    rows.append(run_child(out, f"transformer now, {n} threads", "transformer", str(folder), "now", threads=n))
    for threads in (1, n):
        rows.append(
            run_child(
                out,
                f"load_pipeline, folder, {threads} thread(s)",
                "pipeline",
                str(folder),
                "-",
                threads=threads,
            )
        )
    if args.store:
        from ollama_img.store import Store, import_folder, inspect_folder

        store = Store(args.store)
        if not store.manifest_path(NAME).exists():
            started = time.perf_counter()
            import_folder(store, NAME, inspect_folder(folder))
            say("import into the store", time.perf_counter() - started)
        for threads in (1, n):
            label = f"load_pipeline, store, {threads} thread(s)"
            rows.append(run_child(out, label, "pipeline", NAME, str(args.store), threads=threads))
    (out / "load_profile.json").write_text(json.dumps(report, indent=2))
    text = table(report)
    (out / "load_profile.md").write_text(text + "\n")
    print(text, flush=True)
    if args.write and not args.tiny:
        from bench.results import replace_section

        replace_section("GPU load profile (bench/gpu_load_profile.py)", text)


if __name__ == "__main__":
    main()
