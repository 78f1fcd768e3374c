"""Import throughput of `ollama-img create` against `cp -r` of the same folder on the same disk.

    python bench/import_speed.py [--workdir DIR] [--size medium|tiny] [--runs 2] [--results bench/RESULTS.md]

Builds a Z-Image folder of a few GB in the real diffusers layout (real tensor shapes, fewer layers than
the release), then alternates, with the page cache emptied before each run (drop_caches when allowed,
else fadvise DONTNEED on every file):

- `cp -r` followed by `sync` (the same durability `create` gives: its blobs are fsynced), and plain `cp -r`;
- `create` into an empty store, with hashing in a helper thread (the default) and inline;
- `create` of the same folder under a second name (every blob already stored);

and reports each run, the import/copy ratios and the peak RSS of the import (from wait4). Appends a
section to the results file.
"""

import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fixtures.zimage_folder import (  # noqa: E402
    FULL,
    TINY,
    Sizes,
    TextEncoderSize,
    TransformerSize,
    build_zimage_folder,
)

from bench.results import cpu_model, replace_section  # noqa: E402

# The release's shapes (dim 3840, Qwen3-4B widths, the Flux VAE) with fewer layers: about 4.7 GB in bf16.
MEDIUM = Sizes(
    transformer=TransformerSize(
        dim=3840, n_layers=6, n_refiner_layers=1, n_heads=30, cap_feat_dim=2560, axes_dims=(32, 48, 48)
    ),
    text_encoder=TextEncoderSize(
        hidden_size=2560,
        num_hidden_layers=4,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=9728,
        vocab_size=151936,
    ),
    vae=FULL.vae,
)
SIZES = {"medium": MEDIUM, "tiny": TINY}

# The child reports its own peak RSS: VmHWM counts only its own process image (ru_maxrss from wait4
# would also count the parent's memory the child inherited between fork and exec).
CHILD = """
import resource, sys
from ollama_img.store import Store, import_folder, inspect_folder
store, folder, name, threaded = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
result = import_folder(Store(store), name, inspect_folder(folder), hash_in_thread=threaded)
try:
    peak = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) * 1024
except OSError:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(result.new_blobs, result.reused_blobs, peak)
"""


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def empty_page_cache(*trees: Path) -> str:
    """Evict file data from the page cache so that every run reads from disk; returns how."""
    subprocess.run(["sync"], check=True)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "drop_caches"
    except OSError:
        pass
    if not hasattr(os, "posix_fadvise"):
        return "none (warm cache)"
    for tree in trees:
        for path in (p for p in tree.rglob("*") if p.is_file()) if tree.exists() else ():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return "fadvise DONTNEED"


def timed(command: list[str], env=None) -> tuple[float, str]:
    """Run a command; return its wall time and its stdout."""
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{command[:3]} failed: {result.stderr}")
    return elapsed, result.stdout


def run_import(store: Path, folder: Path, name: str, threaded: bool) -> tuple[float, int, int, int]:
    """Import in a fresh process; return the wall time, new blobs, reused blobs and peak RSS."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    elapsed, out = timed(
        [sys.executable, "-c", CHILD, str(store), str(folder), name, "1" if threaded else "0"], env
    )
    new, reused, peak = map(int, out.split())
    return elapsed, new, reused, peak


def sync_time() -> float:
    started = time.perf_counter()
    subprocess.run(["sync"], check=True)
    return time.perf_counter() - started


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=ROOT / ".bench")
    ap.add_argument("--size", choices=sorted(SIZES), default="medium")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--results", type=Path, default=ROOT / "bench/RESULTS.md")
    ap.add_argument(
        "--keep-folder", action="store_true", help="keep the generated model folder for next time"
    )
    args = ap.parse_args(argv)

    args.workdir.mkdir(parents=True, exist_ok=True)
    folder = args.workdir / f"Z-Image-{args.size}"
    if not (folder / "model_index.json").exists():
        print(f"building {folder} ...", flush=True)
        build_zimage_folder(folder, SIZES[args.size], transformer_shards=2, text_encoder_shards=2)
    size = folder_bytes(folder)
    print(f"folder: {size / 1e9:.2f} GB in {sum(1 for p in folder.rglob('*') if p.is_file())} files")

    scratch = Path(tempfile.mkdtemp(dir=args.workdir, prefix="run-"))
    copy_dir, store_dir = scratch / "copy", scratch / "store"
    rows: dict[str, list[float]] = {k: [] for k in ("cp", "cp+sync", "import", "import inline", "reimport")}
    peaks: dict[str, list[int]] = {k: [] for k in ("import", "import inline", "reimport")}
    cache = ""
    try:
        for run in range(args.runs):
            cache = empty_page_cache(folder)
            elapsed, _ = timed(["cp", "-r", str(folder), str(copy_dir)])
            flushed = sync_time()
            rows["cp"].append(elapsed)
            rows["cp+sync"].append(elapsed + flushed)
            shutil.rmtree(copy_dir)

            for key, threaded in (("import", True), ("import inline", False)):
                empty_page_cache(folder)
                elapsed, _, reused, peak = run_import(store_dir, folder, "m", threaded)
                assert reused == 0, "expected an empty store"
                rows[key].append(elapsed)
                peaks[key].append(peak)
                if key == "import":
                    empty_page_cache(folder)
                    elapsed, new, _, peak = run_import(store_dir, folder, "again", True)
                    assert new == 0, "expected every blob to be reused"
                    rows["reimport"].append(elapsed)
                    peaks["reimport"].append(peak)
                shutil.rmtree(store_dir)
                subprocess.run(["sync"], check=True)
            print(f"run {run + 1}: " + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in rows.items()), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if not args.keep_folder:
            shutil.rmtree(folder, ignore_errors=True)

    report = render(args, size, rows, peaks, cache)
    print(report)
    heading, _, body = report.lstrip().partition("\n")
    replace_section("Import speed (bench/import_speed.py)", body, args.results)


def render(args, size, rows, peaks, cache) -> str:
    median = {k: statistics.median(v) for k, v in rows.items()}

    def gbps(seconds: float) -> str:
        return f"{size / seconds / 1e9:.2f} GB/s"

    machine = (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({cpu_model()}), "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 1e9:.0f} GB RAM, "
        f"Python {platform.python_version()}"
    )
    lines = [
        f"\n## Import speed ({args.size} folder, {datetime.date.today().isoformat()})\n",
        f"Measured {datetime.date.today().isoformat()}, {args.size} folder. Machine: {machine}; disk: the one holding `{args.workdir}`. "
        f"Folder: {size / 1e9:.2f} GB (Z-Image layout, bf16). Page cache emptied before each run ({cache}). "
        f"{args.runs} runs each, alternating; times are per run, the ratio uses the medians.\n",
        "| what | runs (s) | median | throughput | peak RSS |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, label in (
        ("cp", "`cp -r`"),
        ("cp+sync", "`cp -r` + `sync`"),
        ("import", "`create` (hash in a thread)"),
        ("import inline", "`create` (hash inline)"),
        ("reimport", "`create` again, all blobs stored"),
    ):
        peak = f"{max(peaks[key]) / 2**20:.0f} MiB" if key in peaks else ""
        runs = ", ".join(f"{t:.1f}" for t in rows[key])
        lines.append(f"| {label} | {runs} | {median[key]:.1f} s | {gbps(median[key])} | {peak} |")
    lines += [
        "",
        f"Import throughput / `cp -r` + `sync`: **{median['cp+sync'] / median['import']:.2f}** "
        f"(/ plain `cp -r`: {median['cp'] / median['import']:.2f}; inline hashing: "
        f"{median['cp+sync'] / median['import inline']:.2f}). Peak RSS of the import: "
        f"**{max(peaks['import']) / 2**20:.0f} MiB** for a {size / 1e9:.1f} GB folder.",
        "",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
