"""The first image as a person gets it: create, cold and warm `run`s, a new size, against diffusers' first image.

    python bench/gpu_cold_start.py --out DIR [--folder DIR] [--write]   # GPU: full-size model, about 7 min
    python bench/gpu_cold_start.py --out DIR --tiny                     # CPU: the tiny model, a check of the script
    python bench/gpu_cold_start.py --from-json DIR/cold_start.json --write  # the table into bench/RESULTS.md

Every step is its own process, timed by the wall clock around it, in a private world (HOME, store,
caches, runtime dir) made fresh for this run, so the first `run` meets empty compile caches:

1. `create` from the model folder (built first with tests/fixtures/zimage_folder.py FULL in /dev/shm
   when --folder is not given or does not exist yet);
2. `run` with no engine and empty caches (the first ever on the machine);
3. `run` after the engine was stopped (caches warm);
4. warm `run`s; a new size, twice;
5. the engine restarted, a load-only request (what `run MODEL` without a prompt sends), the warm-up
   it triggers, then `run`;
6. the Python API in a fresh process with warm caches: the first and second call of each part (text
   encoder, one transformer step at each size, VAE decode), with mx.synchronize around each: where
   the first image's extra seconds go;
7. diffusers (eager) loading the same folder and making its first and second image.

Each `run` is split into spawn (start to the engine's "listening" log line), queue, load, text,
denoise, decode (the engine log's phases), encode (PNG) and CLI + transfer (the rest of the wall
time). Figures are printed on their own lines; DIR gets cold_start.json and cold_start.md; --write
puts the table into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from datetime import date, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import cli_timeline  # noqa: E402

PROMPT = "a photograph of a red fox in the snow, golden hour, detailed fur, shallow depth of field"
SHM = Path("/dev/shm/ollama-img-cold")


class Profile:
    """What differs between the full-size GPU run and the tiny CPU check."""

    def __init__(self, tiny: bool):
        self.tiny = tiny
        self.size = (64, 64) if tiny else None  # None: the model's default (1024x1024)
        self.new_size = (96, 64) if tiny else (1344, 768)
        self.steps = 2 if tiny else None  # None: the model's default (9)
        self.profile_sizes = [(64, 64), (32, 32)] if tiny else [(1024, 1024), (512, 512)]
        self.diffusers_size = (64, 64) if tiny else (1024, 1024)
        self.diffusers_steps = 2 if tiny else 9
        # The CPU pipeline asks for no warm-up (nothing to compile): ask for one, small.
        self.engine_env = {"OLLAMA_IMG_WARMUP": "64x64"} if tiny else {}

    def run_flags(self, size=None) -> list[str]:
        size = size or self.size
        flags = [] if size is None else ["--size", f"{size[0]}x{size[1]}"]
        return flags + ([] if self.steps is None else ["--steps", str(self.steps)])


def say(label: str, value, unit: str = "s"):
    """A figure on a line of its own (the GPU machine's log tail is read by a person)."""
    text = f"{value:.3f} {unit}" if isinstance(value, float) else str(value)
    print(f"FIGURE {label}: {text}", flush=True)


# -- the world the commands run in -------------------------------------------------------------


def log_time(line: str) -> float | None:
    match = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ", line)
    if not match:
        return None
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def phases_in(text: str) -> dict[str, float]:
    return {name: float(seconds) for name, seconds in re.findall(r"(\w+) ([\d.]+) s\b", text)}


class Runs:
    """Runs CLI commands in the world and reads what the engine logged about each."""

    def __init__(self, world, profile: Profile, out: Path):
        self.world = world
        self.profile = profile
        self.out = out
        self.records: list[dict] = []

    def cli(self, *args: str, timeout: float = 900) -> tuple[float, subprocess.CompletedProcess]:
        started = time.perf_counter()
        done = self.world.cli(*args, timeout=timeout)
        return time.perf_counter() - started, done

    def traced_cli(self, *args: str, timeout: float = 900) -> tuple[float, subprocess.CompletedProcess, dict]:
        """The command run through bench/cli_timeline.py: its wall time, result and the CLI's marks."""
        marks_file = self.out / "cli_marks.json"
        argv = [sys.executable, str(ROOT / "bench" / "cli_timeline.py"), str(marks_file), *args]
        started, clock = time.time(), time.perf_counter()
        done = subprocess.run(
            argv, env=self.world.env, cwd=self.world.work, capture_output=True, text=True, timeout=timeout
        )
        wall = time.perf_counter() - clock
        marks = json.loads(marks_file.read_text()) if marks_file.exists() else {}
        return wall, done, {"started": started, "ended": started + wall, **marks}

    def run(self, label: str, *flags: str, engine_running: bool, traced: bool = False) -> dict:
        log_before = len(self.world.log_text())
        started_at = time.time()
        png = self.out / f"{re.sub(r'[^a-z0-9]+', '-', label.lower()).strip('-')}.png"
        args = ("run", "z-image", PROMPT, *flags, "--seed", "7", "--format", "json", "-o", str(png))
        marks = None
        if traced:
            wall, done, marks = self.traced_cli(*args)
        else:
            wall, done = self.cli(*args)
        record = {"label": label, "wall_s": wall, "ok": done.returncode == 0}
        if done.returncode != 0:
            record["error"] = done.stderr.strip()[-2000:]
            print(f"FAILED {label}: {record['error']}", flush=True)
            self.records.append(record)
            return record
        durations = json.loads(done.stdout)["durations"]
        new_log = self.world.log_text()[log_before:]
        record.update(
            queue_s=durations["queue"],
            load_s=durations["load"],
            generate_s=durations["generate"],
            encode_s=durations["encode"],
            engine_total_s=durations["total"],
            spawn_s=0.0,
        )
        if not engine_running:
            listening = next((log_time(x) for x in new_log.splitlines() if "listening on" in x), None)
            record["spawn_s"] = max(0.0, listening - started_at) if listening else None
        loaded = re.search(r"loaded \S+ \(\d+ bytes\) in [\d.]+s \((.*)\)", new_log)
        if loaded:
            record["load_phases"] = phases_in(loaded.group(1))
        finished = re.search(r"job \d+ done: .* in [\d.]+s \((.*); \+[\d.]+s encoding\)", new_log)
        if finished:
            record["generate_phases"] = phases_in(finished.group(1))
        record["compile_note"] = "kernel cache" in new_log and "is empty" in new_log
        if record["compile_note"]:
            say(f"{label} engine log", "says the GPU kernels are compiled once now")
        record["cli_transfer_s"] = wall - (record["spawn_s"] or 0.0) - durations["total"]
        if marks and "request sent" in marks:
            record["cli_phases"] = cli_timeline.phases(
                marks, marks["started"], marks["ended"], durations["total"]
            )
            for name, seconds in record["cli_phases"].items():
                say(f"{label} CLI {name}", seconds)
        for key in ("wall_s", "spawn_s", "load_s", "generate_s", "encode_s", "cli_transfer_s"):
            if isinstance(record.get(key), float):
                say(f"{label} {key[:-2]}", record[key])
        for name, seconds in {**record.get("load_phases", {}), **record.get("generate_phases", {})}.items():
            say(f"{label} phase {name}", seconds)
        self.records.append(record)
        return record

    def load_then_warm_up(self) -> dict:
        """Restart the engine, send a load-only request, wait for the warm-up it triggers."""
        self.world.shutdown()
        log_before = len(self.world.log_text())
        started = time.perf_counter()
        self.world.start_engine()
        spawned = time.perf_counter()
        with self.world.http() as http:
            http.timeout = 900
            answer = http.post("/api/generate", json={"model": "z-image", "stream": False})
        answered = time.perf_counter()
        record = {"label": "load-only request, then warm-up", "ok": answer.status_code == 200}
        deadline = time.monotonic() + 600
        warmed = None
        while time.monotonic() < deadline and record["ok"]:
            warmed = re.search(r"warmed up \S+(?: at \S+)? in ([\d.]+)s", self.world.log_text()[log_before:])
            if warmed:
                break
            time.sleep(0.1)
        record.update(
            spawn_s=spawned - started,
            answered_s=answered - spawned,
            warm_up_s=float(warmed.group(1)) if warmed else None,
            until_warm_s=time.perf_counter() - spawned,
        )
        for key in ("spawn_s", "answered_s", "warm_up_s"):
            if record[key] is not None:
                say(f"load-only {key[:-2]}", record[key])
        self.records.append(record)
        return record


def gpu_name() -> str:
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return "no GPU"
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else "no GPU"


def folder_size(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []
    return len(files), sum(p.stat().st_size for p in files)


def child(world, mode: str, folder: Path, profile: Profile, out: Path) -> dict:
    """Run this script's `--child MODE` in the world's environment; its JSON answer."""
    result = out / f"{mode}.json"
    args = [sys.executable, __file__, "--child", mode, "--folder", str(folder), "--json", str(result)]
    if profile.tiny:
        args.append("--tiny")
    started = time.perf_counter()
    done = subprocess.run(args, env=world.env, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - started
    if done.returncode != 0 or not result.exists():
        print(f"FAILED {mode}: {done.stderr[-3000:]}", flush=True)
        return {"ok": False, "error": done.stderr[-3000:], "wall_s": wall}
    answer = json.loads(result.read_text())
    answer["wall_s"] = wall
    for key, value in answer.items():
        if isinstance(value, float):
            say(
                f"{mode} {key.removesuffix('_s').removesuffix('_gb')}",
                value,
                "GB" if key.endswith("_gb") else "s",
            )
    return answer


# -- children: the Python API's parts, and diffusers -------------------------------------------


def child_profile(folder: str, profile: Profile) -> dict:
    """First and second call of each part, synchronised, in a process whose compile caches are warm."""
    started = time.perf_counter()
    from ollama_img.backend import require_mlx

    mx = require_mlx()
    res = {"import_s": time.perf_counter() - started}

    def timed(fn) -> float:
        mx.synchronize()
        t0 = time.perf_counter()
        mx.eval(fn())
        mx.synchronize()
        return time.perf_counter() - t0

    res["first_op_s"] = timed(lambda: mx.zeros((4,)) + 1)  # the device's context and first kernel
    from ollama_img import load_pipeline

    t0 = time.perf_counter()
    pipe = load_pipeline(folder)
    mx.synchronize()
    res["load_s"] = time.perf_counter() - t0
    for call in ("first", "second"):
        res[f"text_{call}_s"] = timed(lambda: pipe.encode_prompt(PROMPT))
    emb = pipe.encode_prompt(PROMPT)
    caption = pipe.transformer.encode_caption(emb, [emb.shape[1]])
    mx.eval(caption.tokens)
    t = mx.array([0.5])
    for w, h in profile.profile_sizes:
        x = mx.random.normal((1, 16, h // 8, w // 8), key=mx.random.key(0)).astype(pipe.dtype)
        for call in ("first", "second"):
            res[f"step_{w}x{h}_{call}_s"] = timed(lambda x=x: pipe.transformer(x, t, caption))
        for call in ("first", "second"):
            res[f"vae_{w}x{h}_{call}_s"] = timed(lambda x=x: pipe.vae.decode(x))
    w, h = profile.profile_sizes[0]
    for call in ("first", "second"):
        t0 = time.perf_counter()
        pipe.generate(PROMPT, width=w, height=h, steps=profile.diffusers_steps, seed=1)
        res[f"generate_{w}x{h}_{call}_s"] = time.perf_counter() - t0
    res["peak_gb"] = mx.get_peak_memory() / 1e9
    return res


def child_diffusers(folder: str, profile: Profile) -> dict:
    started = time.perf_counter()
    import torch
    from diffusers import ZImagePipeline

    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    res = {
        "import_s": time.perf_counter() - started,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
    }
    t0 = time.perf_counter()
    pipe = ZImagePipeline.from_pretrained(folder, dtype=dtype).to(device)
    sync()
    res["load_s"] = time.perf_counter() - t0
    pipe.set_progress_bar_config(disable=True)
    w, h = profile.diffusers_size
    for call in ("first", "second"):
        sync()
        t0 = time.perf_counter()
        pipe(PROMPT, width=w, height=h, num_inference_steps=profile.diffusers_steps, guidance_scale=0.0)
        sync()
        res[f"image_{call}_s"] = time.perf_counter() - t0
    if cuda:
        res["peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return res


# -- the report --------------------------------------------------------------------------------


def table(report: dict) -> str:
    def cell(value, digits=2):
        return "" if value is None else f"{value:.{digits}f}"

    lines = [
        "| what | wall | spawn | load | text | denoise | decode | PNG | CLI + transfer |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["runs"]:
        if "wall_s" not in r or not r.get("ok"):
            if r.get("label", "").startswith("load-only"):
                continue
            lines.append(f"| {r.get('label')} | failed | | | | | | | |")
            continue
        phases = r.get("generate_phases", {})
        lines.append(
            f"| {r['label']} | {cell(r['wall_s'])} | {cell(r.get('spawn_s'))} | {cell(r.get('load_s'))} "
            f"| {cell(phases.get('text'))} | {cell(phases.get('denoise'))} | {cell(phases.get('decode'))} "
            f"| {cell(r.get('encode_s'))} | {cell(r.get('cli_transfer_s'))} |"
        )
    for r in report["runs"]:
        if r.get("cli_phases"):
            lines += ["", f"Inside the CLI, {r['label']} (bench/cli_timeline.py), seconds:", ""]
            lines.append(", ".join(f"{name} {seconds:.3f}" for name, seconds in r["cli_phases"].items()))
    loaded = [r for r in report["runs"] if r.get("load_phases")]
    lines += ["", "Load phases (engine log), seconds:", ""]
    for r in loaded:
        lines.append(f"- {r['label']}: " + ", ".join(f"{k} {v:.2f}" for k, v in r["load_phases"].items()))
    warm = next((r for r in report["runs"] if r.get("label", "").startswith("load-only")), None)
    if warm and warm.get("ok"):
        lines.append(
            f"- load-only request: engine start {cell(warm['spawn_s'])}, answered after "
            f"{cell(warm['answered_s'])}, then warm-up {cell(warm.get('warm_up_s'))}"
        )
    p = report.get("profile", {})
    if p.get("load_s") is not None:
        lines += ["", "Python API, fresh process, caches warm: first / second call, seconds:", ""]
        lines.append(f"- import {cell(p.get('import_s'))}, first device op {cell(p.get('first_op_s'), 3)}")
        lines.append(f"- text encoder {cell(p.get('text_first_s'), 3)} / {cell(p.get('text_second_s'), 3)}")
        for key in sorted(k for k in p if k.endswith("_first_s") and not k.startswith("text")):
            base = key.removesuffix("_first_s")
            lines.append(f"- {base} {cell(p[key], 3)} / {cell(p.get(base + '_second_s'), 3)}")
    d = report.get("diffusers", {})
    if d.get("load_s") is not None:
        lines += [
            "",
            f"diffusers eager ({d.get('device')}): import {cell(d['import_s'])}, load {cell(d['load_s'])}, "
            f"first image {cell(d['image_first_s'])}, second {cell(d['image_second_s'])} "
            f"(at {report['diffusers_size']}).",
        ]
    c = report.get("caches", {})
    if c:
        lines += [
            "",
            "Compile caches after the run: "
            + ", ".join(f"{name} {files} files, {size / 1e6:.1f} MB" for name, (files, size) in c.items()),
        ]
    return "\n".join(lines)


def build_folder(folder: Path, profile: Profile) -> float:
    from tests.fixtures.zimage_folder import FULL, TINY, build_zimage_folder

    started = time.perf_counter()
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    if profile.tiny:
        build_zimage_folder(partial, TINY)
    else:
        build_zimage_folder(partial, FULL, transformer_shards=3, text_encoder_shards=3)
    partial.rename(folder)
    return time.perf_counter() - started


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="where the JSON, the table and the PNGs go")
    ap.add_argument("--folder", type=Path, help="the model folder (built when missing)")
    ap.add_argument("--tiny", action="store_true", help="the tiny model on the CPU: a check of this script")
    ap.add_argument("--skip", nargs="*", default=[], choices=["profile", "diffusers", "new-size", "warm-up"])
    ap.add_argument("--write", action="store_true", help="put the table into bench/RESULTS.md")
    ap.add_argument("--from-json", type=Path, help="only rebuild the table from a run's cold_start.json")
    ap.add_argument("--child", choices=["profile", "diffusers"], help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    profile = Profile(args.tiny)
    if args.child:
        fn = child_profile if args.child == "profile" else child_diffusers
        args.json.write_text(json.dumps(fn(str(args.folder), profile), indent=2))
        return
    if args.from_json:
        report = json.loads(args.from_json.read_text())
        publish(report, None, args.write)
        return
    if args.out is None:
        ap.error("--out is required")

    from tests.fixtures.engine_env import EngineEnv

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = SHM if Path("/dev/shm").is_dir() else Path(os.environ.get("TMPDIR", "/tmp")) / "ollama-img-cold"
    folder = (args.folder or base / ("zimage-tiny" if args.tiny else "zimage-full")).resolve()
    report = {
        "date": str(date.today()),
        "machine": f"{gpu_name()}, {platform.machine()}, {os.cpu_count()} cores",
        "tiny": args.tiny,
        "folder": str(folder),
        "diffusers_size": "x".join(map(str, profile.diffusers_size)),
    }
    if not (folder / "model_index.json").exists():
        report["build_s"] = build_folder(folder, profile)
        say("build folder", report["build_s"])
    world_root = base / f"world-{os.getpid()}"
    shutil.rmtree(world_root, ignore_errors=True)
    world = EngineEnv(
        world_root, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    )
    world.env.update(profile.engine_env)
    runs = Runs(world, profile, out)
    try:
        wall, done = runs.cli("create", "z-image", "-f", str(folder))
        report["create_s"] = wall
        say("create", wall)
        if done.returncode != 0:
            raise SystemExit(f"create failed: {done.stderr}")
        flags = profile.run_flags()
        runs.run("run, no engine, empty caches (first ever)", *flags, engine_running=False)
        world.shutdown()
        runs.run("run after the engine stopped (caches warm)", *flags, engine_running=False)
        for i in range(3):
            runs.run(f"warm run {i + 1}", *flags, engine_running=True)
        runs.run("warm run, timed inside the CLI", *flags, engine_running=True, traced=True)
        if "new-size" not in args.skip:
            new = profile.run_flags(profile.new_size)
            size = "x".join(map(str, profile.new_size))
            runs.run(f"new size {size}, first", *new, engine_running=True)
            runs.run(f"new size {size}, second", *new, engine_running=True)
        if "warm-up" not in args.skip:
            runs.load_then_warm_up()
            runs.run("run after load-only + warm-up", *flags, engine_running=True)
        world.shutdown()  # the GPU to the next process alone
        cache_root = world.home / "cache" / "ollama-img"
        report["caches"] = {name: folder_size(cache_root / name) for name in ("mlx", "cuda")}
        for name, (files, size) in report["caches"].items():
            say(f"cache {name}", f"{files} files, {size / 1e6:.1f} MB")
        if "profile" not in args.skip:
            report["profile"] = child(world, "profile", folder, profile, out)
        if "diffusers" not in args.skip:
            report["diffusers"] = child(world, "diffusers", folder, profile, out)
    finally:
        report["runs"] = runs.records
        (out / "engine.log").write_text(world.log_text())  # the world goes; its engine's account stays
        world.close()
        shutil.rmtree(world_root, ignore_errors=True)
    report["store_dir"] = str(base)
    (out / "cold_start.json").write_text(json.dumps(report, indent=2))
    publish(report, out, args.write)


def publish(report: dict, out: Path | None, write: bool):
    """The table on stdout, in OUT/cold_start.md, and (--write, full size only) in bench/RESULTS.md."""
    what = "tiny model, CPU" if report["tiny"] else "full-size random-weight Z-Image-Turbo"
    header = (
        f"Measured {report['date']} ({report['machine']}; {what}, folder {report['folder']}, store in {report['store_dir']}), "
        f"each step its own process, wall clock; create took {report.get('create_s', float('nan')):.1f} s."
    )
    text = header + "\n\n" + table(report)
    if out is not None:
        (out / "cold_start.md").write_text(text + "\n")
    print(text, flush=True)
    if write and not report["tiny"]:
        from bench.results import replace_section

        replace_section("GPU cold start (bench/gpu_cold_start.py)", text)


if __name__ == "__main__":
    main()
