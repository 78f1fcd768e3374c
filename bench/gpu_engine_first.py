"""Where the engine's first image after a restart spends its time: its worker's Python stacks, sampled.

    python bench/gpu_engine_first.py --out DIR [--folder DIR] [--samples-every 0.25]

The cold `run` after an engine restart spent 9.8 s in its text phase with warm compile caches, where the
Python API in a fresh process encodes the same prompt in 0.15 s (bench/RESULTS.md, "GPU cold start").
This makes a private world (as bench/gpu_cold_start.py does), creates the model, runs once to fill the
compile caches, stops the engine, and runs again while sending the engine SIGUSR1 every few tenths of a
second (the engine then writes every thread's stack to its log). It counts, over the samples taken
while the first image was being made, the innermost frame of the engine's device worker, and the
innermost ollama_img frame: what the worker was doing, and from where. Then the Python API from the
same store, in a fresh process of the same world (bench/gpu_first_call.py --model), part by part.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from bench.gpu_cold_start import PROMPT, SHM, Profile, build_folder  # noqa: E402

FRAME = re.compile(r'^\s+File "(?P<file>[^"]+)", line (?P<line>\d+),? in (?P<fn>\S+)')


def stacks(text: str) -> list[list[list[str]]]:
    """The dumps in a log: each a list of threads, each thread its frames, most recent first."""
    dumps: list[list[list[str]]] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("--- thread stacks"):
            dumps.append([])
            current = None
        elif line.startswith("Thread ") and dumps:
            current = []
            dumps[-1].append(current)
        elif current is not None and (match := FRAME.match(line)):
            current.insert(
                0, f"{Path(match['file']).name}:{match['line']} {match['fn']}"
            )  # most recent first
    return dumps


def worker_stack(dump: list[list[str]]) -> list[str] | None:
    """The device worker's frames in one dump: the thread that runs the scheduler's worker calls."""
    for frames in dump:
        if any(f.startswith("thread.py") for f in frames) and any(
            f.startswith(("pipeline.py", "scheduler.py", "loader.py", "loading.py")) for f in frames
        ):
            return frames
    return None


def summarize(text: str) -> dict:
    inner, own = collections.Counter(), collections.Counter()
    samples = 0
    for dump in stacks(text):
        frames = worker_stack(dump)
        if not frames:
            continue
        samples += 1
        inner[frames[0]] += 1
        ours = [f for f in frames if not f.startswith(("thread.py", "threading.py"))]
        own[" < ".join(ours[:4])] += 1
    return {"samples": samples, "innermost": inner.most_common(12), "stacks": own.most_common(12)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--folder", type=Path)
    ap.add_argument("--samples-every", type=float, default=0.25)
    args = ap.parse_args()
    from tests.fixtures.engine_env import EngineEnv

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    folder = (args.folder or SHM / "zimage-full").resolve()
    if not (folder / "model_index.json").exists():
        print(f"build folder: {build_folder(folder, Profile(False)):.1f} s", flush=True)
    world_root = SHM / f"world-first-{os.getpid()}"
    shutil.rmtree(world_root, ignore_errors=True)
    world = EngineEnv(
        world_root, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    )
    report: dict = {}
    try:
        created = world.cli("create", "z-image", "-f", str(folder), timeout=600)
        assert created.returncode == 0, created.stderr
        for label in ("first run, empty caches", "after a restart, sampled"):
            world.shutdown()
            before = len(world.log_text())
            started = time.perf_counter()
            run = world.popen(
                "run", "z-image", PROMPT, "--seed", "7", "--format", "json", "-o", "/tmp/ollama-img-first.png"
            )
            sampled = 0
            while run.poll() is None:
                time.sleep(args.samples_every)
                pid = world.engine_pid()
                if pid and label.endswith("sampled"):
                    try:
                        os.kill(pid, signal.SIGUSR1)
                        sampled += 1
                    except ProcessLookupError:
                        pass
            stdout, stderr = run.communicate()
            wall = time.perf_counter() - started
            log = world.log_text()[before:]
            entry = {"wall_s": wall, "ok": run.returncode == 0, "signals": sampled}
            if run.returncode == 0:
                entry["durations"] = json.loads(stdout)["durations"]
            else:
                entry["error"] = stderr.decode()[-2000:]
            done = re.search(r"job \d+ done: .*", log)
            entry["job_line"] = done.group(0) if done else None
            if label.endswith("sampled"):
                entry["profile"] = summarize(log)
                (out / "engine_sampled.log").write_text(log[-150_000:])
            report[label] = entry
            print(label, json.dumps(entry, indent=1), flush=True)
        world.shutdown()
        command = [sys.executable, str(ROOT / "bench" / "gpu_first_call.py"), "--model", "z-image"]
        command += ["--json", str(out / "api_from_store.json")]
        try:
            child = subprocess.run(command, env=world.env, capture_output=True, text=True, timeout=300)
            report["api_from_store"] = child.stdout[-6000:] + child.stderr[-2000:]
        except subprocess.TimeoutExpired:
            report["api_from_store"] = "timed out after 300 s"
        print(report["api_from_store"], flush=True)
    finally:
        world.close()
        shutil.rmtree(world_root, ignore_errors=True)
    (out / "engine_first.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
