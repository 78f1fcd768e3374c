"""How fast a model loads, by phase, against the raw read speed of the same bytes.

    python bench/load_speed.py [--rounds 3] [--threads 1 4] [--baseline SRC] [--write]
    python bench/load_speed.py --tiny --rounds 1        # the tiny model: a quick check of the script

The model has random weights at the release's widths with few layers (3.2 GB in bf16: the real text
encoder's embedding, 2 of its layers, 5 transformer blocks, the real VAE), built with
tests/fixtures/zimage_folder.py into /dev/shm/ollama-img-load/ and imported into a store beside it; both
are kept for the next run. Every figure comes from a fresh process; rounds are interleaved and the best
kept (other work on a shared machine only ever makes a run slower), the median beside it:

- the model's weight files read into a reused buffer, by one thread and by several: the page cache's speed;
- `mx.load` + `mx.eval` of the same files, and of the store's blobs: MLX reading them into fresh memory;
- `load_pipeline` from the folder and from the store, by phase, for each `--threads` (OLLAMA_IMG_LOAD_THREADS)
  and, with `--baseline SRC` (a source tree, e.g. `git archive main src | tar -x -C /tmp/main`), that code.

With --write, the table replaces the "Load speed" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import cpu_model, replace_section  # noqa: E402

WORK = Path("/dev/shm/ollama-img-load") if Path("/dev/shm").is_dir() else Path("/tmp/ollama-img-load")
NAME = "load-bench"
CHUNK = 16 << 20


def mid_sizes():
    """import_speed.py's medium model (the release's widths) with fewer layers: 3.2 GB."""
    from dataclasses import replace

    from bench.import_speed import MEDIUM

    return replace(
        MEDIUM,
        transformer=replace(MEDIUM.transformer, n_layers=3),
        text_encoder=replace(MEDIUM.text_encoder, num_hidden_layers=2),
    )


# -- what is read ------------------------------------------------------------------------------


def folder_files(folder: Path) -> list[Path]:
    """The weight files a load of the folder reads (those the importer stores), component by component."""
    from ollama_img.store import inspect_folder

    return [shard.path for c in inspect_folder(folder).components for shard in c.shards]


def store_blobs(store_root: Path, name: str) -> list[Path]:
    """The tensor blobs of a stored model, in manifest order."""
    from ollama_img.store import Store

    store = Store(store_root)
    return [store.blob_path(layer.digest) for layer in store.manifest(name).layers if layer.is_tensor]


def raw_read(paths: list[Path], threads: int) -> float:
    """Seconds to read every byte of `paths` into reused buffers, `threads` threads taking 16 MiB pieces
    in order (os.preadv releases the GIL)."""
    import numpy as np

    pieces = [
        (path, offset, min(CHUNK, size - offset))
        for path in paths
        for size in [path.stat().st_size]
        for offset in range(0, size, CHUNK)
    ]
    pending = iter(pieces)
    lock = threading.Lock()
    fds = {path: os.open(path, os.O_RDONLY) for path in paths}

    def work():
        buffer = np.empty(CHUNK, dtype=np.uint8)
        while True:
            with lock:
                piece = next(pending, None)
            if piece is None:
                return
            path, offset, size = piece
            done = 0
            while done < size:
                done += os.preadv(fds[path], [buffer[done:size]], offset + done)

    started = time.perf_counter()
    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    seconds = time.perf_counter() - started
    for fd in fds.values():
        os.close(fd)
    return seconds


# -- children (one fresh process per figure) ----------------------------------------------------


def child_raw(listing: str, threads: str) -> dict:
    paths = [Path(p) for p in Path(listing).read_text().split("\n") if p]
    return {"seconds": raw_read(paths, int(threads))}


def fresh_gb(before: int) -> float:
    """Memory touched for the first time since `before` (page faults x page size): on a shared VM the
    slowest part of reading, and a count that other work does not disturb."""
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) * os.sysconf("SC_PAGE_SIZE") / 1e9


def child_mx_load(listing: str) -> dict:
    """`mx.load` + one `mx.eval` of every file: MLX's own reading, nothing converted."""
    import mlx.core as mx

    paths = [p for p in Path(listing).read_text().split("\n") if p]
    mx.eval(mx.zeros((1,)))  # the device's start-up is not the read
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    started = time.perf_counter()
    arrays = [mx.load(p, format="safetensors") for p in paths]
    mx.eval(arrays)
    mx.synchronize()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "fresh_gb": fresh_gb(faults), "peak_gb": mx.get_peak_memory() / 1e9}


def timed_load(source: str, store_root: str):
    """`load_pipeline` as the engine calls it, its phases recorded: (the figures, the pipeline)."""
    import mlx.core as mx

    from ollama_img import load_pipeline
    from ollama_img.phases import recording

    store = None
    if store_root != "-":
        from ollama_img.store import Store

        store = Store(store_root)
    mx.eval(mx.zeros((1,)))
    cpu = time.process_time()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    started = time.perf_counter()
    with recording() as timer:
        pipe = load_pipeline(source, store=store)
    mx.synchronize()
    seconds = time.perf_counter() - started
    figures = {
        "seconds": seconds,
        "cpu_s": time.process_time() - cpu,
        "fresh_gb": fresh_gb(faults),
        "phases": timer.phases,
        "resident_gb": pipe.resident_bytes / 1e9,
        "peak_gb": mx.get_peak_memory() / 1e9,
    }
    return figures, pipe


def child_pipeline(source: str, store_root: str) -> dict:
    return timed_load(source, store_root)[0]


CHILDREN = {"raw": child_raw, "mx-load": child_mx_load, "pipeline": child_pipeline}


def run_child(what: str, *args: str, src: Path | None = None, env: dict | None = None) -> dict:
    """One figure from a fresh process (sources from `src`, else this tree's)."""
    path = [str(src or ROOT / "src"), str(ROOT)]
    child_env = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join(path)}
    done = subprocess.run(
        [sys.executable, __file__, "--child", what, *args], env=child_env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"{what} {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- the run -----------------------------------------------------------------------------------


def prepare(work: Path, tiny: bool) -> tuple[Path, Path]:
    """The model folder and a store holding it as NAME, built when missing."""
    from tests.fixtures.zimage_folder import TINY, build_zimage_folder

    from ollama_img.store import Store, import_folder, inspect_folder

    folder, store_root = work / ("tiny" if tiny else "folder"), work / ("tiny-store" if tiny else "store")
    if not (folder / "model_index.json").exists():
        partial = folder.with_name(folder.name + ".partial")
        build_zimage_folder(partial, TINY if tiny else mid_sizes())
        partial.rename(folder)
    store = Store(store_root)
    if not store.manifest_path(NAME).exists():
        import_folder(store, NAME, inspect_folder(folder))
    return folder, store_root


class Figures:
    """Every round's result of each measurement, in the order first measured."""

    def __init__(self):
        self.runs: dict[str, list[dict]] = {}

    def add(self, label: str, result: dict):
        self.runs.setdefault(label, []).append(result)
        print(f"{label}: {json.dumps(result)}", flush=True)

    def best(self, label: str) -> dict:
        return min(self.runs[label], key=lambda r: r["seconds"])

    def median(self, label: str) -> float:
        return statistics.median(r["seconds"] for r in self.runs[label])


def table(figures: Figures, nbytes: int, store_bytes: int, header: str) -> str:
    lines = [
        header,
        "",
        "| what | best s | median s | GB/s (best) | resolve | read | build | eval | CPU s | fresh GB | peak GB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label in figures.runs:
        best = figures.best(label)
        size = store_bytes if "store" in label else nbytes
        phases = best.get("phases", {})
        cells = [f"{phases[p]:.2f}" if p in phases else "" for p in ("resolve", "read", "build", "eval")]
        extra = [
            f"{min(r[key] for r in figures.runs[label]):.2f}" if key in best else ""
            for key in ("cpu_s", "fresh_gb", "peak_gb")
        ]
        lines.append(
            f"| {label} | {best['seconds']:.2f} | {figures.median(label):.2f} | {size / best['seconds'] / 1e9:.2f} "
            f"| {' | '.join(cells + extra)} |"
        )
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 4], help="OLLAMA_IMG_LOAD_THREADS values")
    ap.add_argument("--read-threads", type=int, default=4, help="threads of the second raw read")
    ap.add_argument("--baseline", type=Path, help="a source tree (its src/ollama_img) to compare against")
    ap.add_argument("--tiny", action="store_true", help="the tiny model: a check of this script")
    ap.add_argument("--work", type=Path, default=WORK, help="where the folder and the store are kept")
    ap.add_argument("--write", action="store_true", help="put the table into bench/RESULTS.md")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        what, *rest = args.child
        print(json.dumps(CHILDREN[what](*rest)))
        return

    args.work.mkdir(parents=True, exist_ok=True)
    folder, store_root = prepare(args.work, args.tiny)
    files, blobs = folder_files(folder), store_blobs(store_root, NAME)
    listing, blob_listing = args.work / "files.txt", args.work / "blobs.txt"
    listing.write_text("\n".join(map(str, files)))
    blob_listing.write_text("\n".join(map(str, blobs)))
    nbytes = sum(p.stat().st_size for p in files)
    store_bytes = sum(p.stat().st_size for p in blobs)
    variants = [(f"threads={n}", None, {"OLLAMA_IMG_LOAD_THREADS": str(n)}) for n in args.threads]
    if args.baseline:
        base = args.baseline.resolve()
        variants.append((f"baseline ({base})", base / "src" if (base / "src").is_dir() else base, {}))
    figures = Figures()
    for round_ in range(args.rounds):
        print(f"-- round {round_ + 1} of {args.rounds}", flush=True)
        figures.add("raw read, 1 thread", run_child("raw", str(listing), "1"))
        figures.add(
            f"raw read, {args.read_threads} threads", run_child("raw", str(listing), str(args.read_threads))
        )
        figures.add("mx.load + mx.eval, folder files", run_child("mx-load", str(listing)))
        figures.add("mx.load + mx.eval, store blobs", run_child("mx-load", str(blob_listing)))
        for label, src, env in variants:
            figures.add(
                f"load_pipeline, folder, {label}", run_child("pipeline", str(folder), "-", src=src, env=env)
            )
            figures.add(
                f"load_pipeline, store, {label}",
                run_child("pipeline", NAME, str(store_root), src=src, env=env),
            )
    import mlx.core as mx

    header = (
        f"Measured {date.today()} on {platform.machine()} ({cpu_model()}, {os.cpu_count()} cores, shared with "
        f"other work), MLX {mx.__version__}, device {mx.default_device()}: "
        f"{'tiny' if args.tiny else 'mid-size'} random-weight Z-Image, {nbytes / 1e9:.2f} GB of weights in "
        f"{len(files)} files (store: {len(blobs)} blobs, {store_bytes / 1e9:.2f} GB) in {args.work} (tmpfs: "
        f"the page cache). Best of {args.rounds} interleaved rounds, each a fresh process; GB/s counts the "
        "stored bytes."
    )
    text = table(figures, nbytes, store_bytes, header)
    print(text)
    (args.work / "load_speed.json").write_text(json.dumps(figures.runs, indent=2))
    if args.write and not args.tiny:
        replace_section("Load speed (bench/load_speed.py)", text)


if __name__ == "__main__":
    main()
