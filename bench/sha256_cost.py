"""What checking blobs against their digests costs: hashing everything vs the stamp check loads do.

The store names each blob by the SHA-256 of its bytes. Hashing a whole model at every load would catch
any damage; this measures what that costs for a model folder's files (in the page cache, as a model
loaded before is): SHA-256 on one thread and on the threads `store.verify` uses, the time that gives
for Z-Image-Turbo's 20.5 GB, and the stat-only check a load does instead for files hashed before.

On the GPU machine (the full-size folder in /dev/shm is 20.5 GB), about 1 minute:

    python bench/sha256_cost.py /dev/shm/zimage-full --write

Here: `python bench/sha256_cost.py --make 4` writes 4 GB of random files into a temporary folder first.
"""

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

ZIMAGE_TURBO_BYTES = 20.5e9
ZIMAGE_TURBO_BLOBS = 1175  # its 1163 tensors and a dozen config and tokenizer files: what `create` stores


def hash_file(path: Path) -> int:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return path.stat().st_size


def throughput(files: list[Path], threads: int) -> tuple[float, float]:
    """(seconds, GB/s) to hash every file with `threads` threads."""
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(hash_file, files))
    took = time.perf_counter() - started
    return took, total / took / 1e9


def memory_rate() -> float:
    """GB/s of SHA-256 itself, on bytes already in memory (no reading)."""
    block = os.urandom(64 << 20)
    digest = hashlib.sha256()
    started = time.perf_counter()
    for _ in range(16):
        digest.update(block)
    return 16 * len(block) / (time.perf_counter() - started) / 1e9


def stat_check(files: list[Path], rounds: int = 20) -> float:
    """Seconds per file for what a load does for blobs hashed before: one stat, one comparison."""
    started = time.perf_counter()
    for _ in range(rounds):
        for f in files:
            info = f.stat()
            _ = [info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns]
    return (time.perf_counter() - started) / (rounds * len(files))


def make_files(folder: Path, gigabytes: float) -> None:
    block = os.urandom(64 << 20)
    for i in range(int(gigabytes * 1e9 // (256 << 20)) or 1):
        with open(folder / f"blob-{i:03d}", "wb") as f:
            for _ in range(4):
                f.write(block)


def main():
    from ollama_img.store.verify import HASH_THREADS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?", help="a folder of large files (a model folder)")
    ap.add_argument("--make", type=float, metavar="GB", help="write GB of random files to hash first")
    ap.add_argument("--write", action="store_true", help="write the table into bench/RESULTS.md")
    args = ap.parse_args()
    if args.make:
        args.folder = tempfile.mkdtemp(prefix="oi-sha-")
        make_files(Path(args.folder), args.make)
    if not args.folder:
        ap.error("give a folder, or --make GB")
    files = sorted(p for p in Path(args.folder).rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in files)
    throughput(files, HASH_THREADS)  # read once, so every run below hashes from the page cache
    one_s, one_rate = throughput(files, 1)
    many_s, many_rate = throughput(files, HASH_THREADS)
    per_stat = stat_check(files)
    if args.make:
        shutil.rmtree(args.folder)
    rows = [
        ("SHA-256 of bytes in memory, 1 thread", f"{memory_rate():.2f} GB/s"),
        ("files hashed", f"{len(files)} files, {total / 1e9:.2f} GB (page cache)"),
        ("SHA-256, 1 thread", f"{one_s:.2f} s, {one_rate:.2f} GB/s"),
        (f"SHA-256, {HASH_THREADS} threads", f"{many_s:.2f} s, {many_rate:.2f} GB/s"),
        ("hashing Z-Image-Turbo (20.5 GB), 1 thread", f"{ZIMAGE_TURBO_BYTES / one_rate / 1e9:.1f} s"),
        (f"hashing Z-Image-Turbo, {HASH_THREADS} threads", f"{ZIMAGE_TURBO_BYTES / many_rate / 1e9:.1f} s"),
        (
            f"stamp check instead ({ZIMAGE_TURBO_BLOBS} blobs: stat and compare)",
            f"{per_stat * ZIMAGE_TURBO_BLOBS * 1e3:.2f} ms",
        ),
    ]
    text = "| what | figure |\n| --- | --- |\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    print(text)
    if args.write:
        from bench.results import cpu_model, replace_section

        body = (
            f"Measured {time.strftime('%Y-%m-%d')} on {cpu_model()} ({os.cpu_count()} cores), Python "
            f"{sys.version.split()[0]}, hashlib (OpenSSL). Files: {args.folder}.\n\n{text}\n"
        )
        replace_section(f"SHA-256 of blobs, {cpu_model()} (bench/sha256_cost.py)", body)


if __name__ == "__main__":
    main()
