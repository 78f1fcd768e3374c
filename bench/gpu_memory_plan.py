"""Memory plans on one GPU: Z-Image-Turbo at its full size (random weights) in bf16, fp8 and int4 under
budgets (OLLAMA_IMG_GPU_MEMORY), against diffusers eager and with model CPU offload, in one run.

    PYTHONUNBUFFERED=1 python bench/gpu_memory_plan.py --out OUT [--time-budget 480]
    python bench/gpu_memory_plan.py --tiny --out /tmp/plan-bench      # the same on the CPU, tiny model
    python bench/gpu_memory_plan.py --write-results OUT/results.json  # its section of bench/RESULTS.md

It builds the full-size folder in /dev/shm (tests/fixtures/zimage_folder.py FULL) unless present, makes
the fp8 and int4 models with `create --quantize` into a store in /dev/shm (bf16 loads from the folder,
so its bytes are not stored twice), then runs each configuration in its own process (a budget never
leaks into the next): the issue's targets first (bf16 unlimited and 24 GB, fp8 12 GB, int4 8 GB),
diffusers eager and offloaded, then other budgets while `--time-budget` seconds allow. Per process:
load, first image (cold = process start to first 1024x1024 image), warm seconds per image (same
prompt, new seeds), a new prompt (the text encoder reloads when the plan has it on demand), MLX's peak
per phase against the plan's estimate, nvidia-smi (the process, and the device less its baseline,
sampled every ~0.1 s), what it holds after generating, and PSNR against the bf16 unlimited image of
the same seed (PSNR of quantized models measures quantization, as in bench/RESULTS.md). Results are
written after every configuration: OUT/results.json and OUT/table.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

PROMPT = "a photograph of a red fox in the snow, golden hour, detailed fur, shallow depth of field"
NEW_PROMPTS = ("an old lighthouse on a cliff at night, storm clouds", "a bowl of ramen, studio lighting")
GB = 1e9

# (model, budget, sizes): the target table first, then what time allows.
FULL_TARGETS = [("bf16", None), ("bf16", "24GB"), ("fp8", "12GB"), ("int4", "8GB")]
FULL_EXTRAS = [
    ("bf16", None, "legacy"),  # the evaluation before plans: stack synced every 6 blocks, VAE one graph
    ("bf16", "12GB"),  # refused: the one clear error
    ("bf16", "16GB"),
    ("fp8", "16GB"),
    ("int4", "12GB"),
    ("fp8", "24GB"),
    ("fp8", None),
    ("int4", None),
    ("bf16", "8GB"),
    ("fp8", "8GB"),
]
TINY_TARGETS = [("bf16", None), ("bf16", "12.7MB"), ("fp8", "12.5MB"), ("int4", "12.4MB")]
TINY_EXTRAS = [("bf16", None, "legacy"), ("bf16", "10MB"), ("fp8", "30MB")]
TARGETS = {
    ("bf16", "24GB"): (24, 1.15),
    ("fp8", "12GB"): (12, 1.3),
    ("int4", "8GB"): (8, 1.4),
    ("bf16", None): (24, 1.0),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command")
    ap.add_argument("--out", type=Path, default=Path("/dev/shm/oi-plan-bench"))
    ap.add_argument("--folder", type=Path, default=Path("/dev/shm/zfull"))
    ap.add_argument("--store", type=Path, default=Path("/dev/shm/oi-plan-store"))
    ap.add_argument(
        "--time-budget", type=float, default=480.0, help="seconds for the whole run (default 480)"
    )
    ap.add_argument("--tiny", action="store_true", help="the tiny model on the CPU (a check of this script)")
    ap.add_argument(
        "--only", help="only these configurations, e.g. fp8:12GB,bf16:unlimited (no diffusers, no extras)"
    )
    ap.add_argument("--write-results", type=Path, metavar="RESULTS_JSON", help="write RESULTS.md's section")
    child = sub.add_parser("mlx")
    child.add_argument("--model", required=True)
    child.add_argument("--store", type=Path)
    child.add_argument("--sizes", default="1024,512")
    child.add_argument("--steps", type=int, default=9)
    child.add_argument("--out", type=Path, required=True)
    child.add_argument("--name", required=True)
    child.add_argument("--legacy", action="store_true")
    child.add_argument("--save-latents", action="store_true")
    diff = sub.add_parser("diffusers")
    diff.add_argument("--folder", type=Path, required=True)
    diff.add_argument("--mode", choices=["eager", "offload"], required=True)
    diff.add_argument("--size", type=int, default=1024)
    diff.add_argument("--steps", type=int, default=9)
    diff.add_argument("--out", type=Path, required=True)
    diff.add_argument("--name", required=True)
    args = ap.parse_args()
    if args.command == "mlx":
        child_mlx(args)
    elif args.command == "diffusers":
        child_diffusers(args)
    elif args.write_results:
        write_results(json.loads(args.write_results.read_text()))
    else:
        orchestrate(args)


# -- the parent: build, create, run each configuration in its own process -----------------------------


def orchestrate(args):
    started = time.monotonic()
    tiny = args.tiny
    scratch = Path(tempfile.mkdtemp(prefix="oi-plan-")) if tiny else None
    folder = scratch / "tiny" if tiny else args.folder
    store = scratch / "store" if tiny else args.store
    out = args.out
    (out / "images").mkdir(parents=True, exist_ok=True)
    sizes = "64,32" if tiny else "1024,512"
    steps = 2 if tiny else 9
    report = {
        "tiny": tiny,
        "started": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "setup": {},
        "runs": [],
    }

    def save():
        (out / "results.json").write_text(json.dumps(report, indent=1))
        (out / "table.md").write_text(markdown(report))

    if not (folder / "model_index.json").is_file():
        from tests.fixtures.zimage_folder import FULL, TINY, build_zimage_folder

        t0 = time.perf_counter()
        build_zimage_folder(folder, TINY if tiny else FULL, transformer_shards=1 if tiny else 3)
        report["setup"]["build_s"] = time.perf_counter() - t0
        print(f"built {folder} in {report['setup']['build_s']:.1f} s")
    for quant in ("fp8", "int4"):
        if has_model(store, f"z:{quant}"):
            print(f"z:{quant} is in {store} already")
            continue
        t0 = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "ollama_img",
                "create",
                f"z:{quant}",
                "-f",
                str(folder),
                "--quantize",
                quant,
            ],
            env=child_env(store, None),
            capture_output=True,
            text=True,
        )
        report["setup"][f"create_{quant}_s"] = time.perf_counter() - t0
        print(
            f"create --quantize {quant}: {report['setup'][f'create_{quant}_s']:.1f} s (exit {done.returncode})"
        )
        if done.returncode:
            print(done.stderr[-2000:])
    save()

    def model_arg(quant):
        return str(folder) if quant == "bf16" else f"z:{quant}"

    def run_mlx(config, required):
        quant, budget, *flags = config
        name = f"{quant} {budget or 'unlimited'}" + (" legacy" if flags else "")
        estimate = 25 if tiny else (60 if not report["runs"] else 40)
        if not required and time.monotonic() - started + estimate > args.time_budget:
            print(f"skipped {name}: the time budget is spent")
            return
        command = [
            sys.executable, __file__, "mlx", "--model", model_arg(quant), "--store", str(store),
            "--sizes", sizes, "--steps", str(steps), "--out", str(out), "--name", name,
        ]  # fmt: skip
        if flags:
            command.append("--legacy")
        if config == (TINY_TARGETS if tiny else FULL_TARGETS)[0]:
            command.append("--save-latents")
        result = run_child(command, child_env(store, budget), name, timeout=100 if tiny else 240)
        result.update(model=quant, budget=budget, legacy=bool(flags))
        add_psnr(result, out)
        report["runs"].append(result)
        print(summary_line(result, report["runs"]))
        save()

    def run_diffusers(mode):
        name = f"diffusers {mode}"
        if tiny and mode == "offload":
            report["runs"].append(
                {
                    "name": name,
                    "model": "diffusers",
                    "budget": mode,
                    "skipped": "model CPU offload needs a GPU",
                }
            )
            return
        command = [
            sys.executable, __file__, "diffusers", "--folder", str(folder), "--mode", mode,
            "--size", sizes.split(",")[0], "--steps", str(steps), "--out", str(out), "--name", name,
        ]  # fmt: skip
        result = run_child(command, child_env(store, None), name, timeout=100 if tiny else 150)
        result.update(model="diffusers", budget=mode)
        add_psnr(result, out)
        report["runs"].append(result)
        print(summary_line(result, report["runs"]))
        save()

    if args.only:
        for wanted in args.only.split(","):
            quant, budget = wanted.split(":")
            run_mlx((quant, None if budget == "unlimited" else budget), required=True)
    else:
        for config in TINY_TARGETS if tiny else FULL_TARGETS:
            run_mlx(config, required=True)
        for mode in ("eager", "offload"):
            run_diffusers(mode)
        for config in TINY_EXTRAS if tiny else FULL_EXTRAS:
            run_mlx(config, required=False)
    report["elapsed_s"] = time.monotonic() - started
    save()
    print(f"done in {report['elapsed_s']:.0f} s; results in {out}/results.json and {out}/table.md")
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)


def has_model(store: Path, name: str) -> bool:
    from ollama_img.errors import UserError
    from ollama_img.store import Store

    try:
        Store(store).manifest(name)
    except UserError:
        return False
    return True


def child_env(store: Path, budget: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OLLAMA_IMG_GPU_MEMORY"}
    env.update(OLLAMA_IMG_MODELS=str(store), PYTHONUNBUFFERED="1", BENCH_T0=str(time.time()))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")])
    if budget:
        env["OLLAMA_IMG_GPU_MEMORY"] = budget
    return env


def run_child(command: list[str], env: dict, name: str, timeout: float) -> dict:
    """Run one configuration, sampling nvidia-smi meanwhile; its RESULT line, or why there is none."""
    baseline = nvml_device_used() or smi_device_used()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = Sampler(process.pid)
    sampler.start()
    watchdog = threading.Timer(timeout, process.kill)  # a hung child ends, and the run goes on
    watchdog.start()
    result = None
    lines = []
    try:
        for line in process.stdout:
            line = line.rstrip("\n")
            if line.startswith("RESULT "):
                result = json.loads(line[7:])
            elif line.startswith("PHASE "):
                sampler.phase = line[6:]
            else:
                lines.append(line)
                print(f"  [{name}] {line}")
        process.wait(timeout=30)
    finally:
        watchdog.cancel()
        sampler.stop()
    result = result or {"error": f"exit {process.returncode}: " + " | ".join(lines[-5:])}
    result["name"] = name
    # The peaks of the plan's own runs; the calibration probes' apart (they evaluate beyond the plan)
    result["smi_process_peak_gb"] = sampler.process_peaks.get(Sampler.PLAN)
    result["smi_process_peak_probes_gb"] = sampler.process_peaks.get("probes")
    for key, phase in (("smi_device_peak_gb", Sampler.PLAN), ("smi_device_peak_probes_gb", "probes")):
        device_peak = sampler.device_peaks.get(phase)
        result[key] = None if device_peak is None or baseline is None else device_peak - baseline
    return result


class Sampler(threading.Thread):
    """Samples the device's used memory (NVML, every 10 ms; nvidia-smi's figure) and the process's
    (nvidia-smi, every ~0.2 s: each call takes tens of ms), in GB, while a configuration runs: the peaks
    of each phase the child names (`PHASE name` lines; PLAN until the first)."""

    PLAN = "plan"

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.phase = pid, self.PLAN
        self.process_peaks: dict[str, float] = {}
        self.device_peaks: dict[str, float] = {}
        self._done = threading.Event()

    @staticmethod
    def _top(peaks: dict[str, float], phase: str, value: float):
        peaks[phase] = max(peaks.get(phase, 0.0), value)

    def run(self):
        last_smi = 0.0
        while not self._done.is_set():
            phase = self.phase
            device = nvml_device_used()
            if device is None and time.monotonic() - last_smi > 0.2:
                device = smi_device_used()
            if device is not None:
                self._top(self.device_peaks, phase, device)
            if time.monotonic() - last_smi > 0.2:
                last_smi = time.monotonic()
                used = smi_process_used(self.pid)
                if used is not None:
                    self._top(self.process_peaks, phase, used)
            self._done.wait(0.01)

    def stop(self):
        self._done.set()
        self.join(timeout=5)


def _smi(*query: str) -> list[str] | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        done = subprocess.run(
            ["nvidia-smi", *query, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip().splitlines() if done.returncode == 0 else None


def smi_process_used(pid: int) -> float | None:
    for line in _smi("--query-compute-apps=pid,used_memory") or []:
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid) and parts[1].isdigit():
            return int(parts[1]) * 2**20 / GB
    return None


def nvml_device_used() -> float | None:
    from ollama_img.memory.device import nvml_memory  # ctypes on the driver's library; no MLX

    memory = nvml_memory(0)
    return None if memory is None else (memory[0] - memory[1]) / GB


def smi_device_used() -> float | None:
    lines = _smi("--query-gpu=memory.used", "--id=0")
    return int(lines[0]) * 2**20 / GB if lines and lines[0].strip().isdigit() else None


def add_psnr(result: dict, out: Path):
    """PSNR of each image against the bf16 unlimited image of the same size and seed."""
    import numpy as np
    from PIL import Image

    for size, entry in result.get("sizes", {}).items():
        mine, reference = (
            out / "images" / entry.get("image", ""),
            out / "images" / f"bf16-unlimited-{size}.png",
        )
        if not entry.get("image") or not reference.is_file() or not mine.is_file():
            continue
        a = np.asarray(Image.open(mine).convert("RGB"), dtype=np.float64)
        b = np.asarray(Image.open(reference).convert("RGB"), dtype=np.float64)
        if a.shape != b.shape:
            continue
        mse = float(np.mean((a - b) ** 2))
        entry["psnr_db"] = math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def machine() -> dict:
    gpu = _smi("--query-gpu=name,memory.total", "--id=0")
    return {"gpu": gpu[0] if gpu else None, "host": os.uname().nodename, "cpus": os.cpu_count()}


# -- a configuration of ours, in its own process ----------------------------------------------------------


def emit(result: dict):
    print("RESULT " + json.dumps(result), flush=True)


def child_mlx(args):
    process_start = float(os.environ.get("BENCH_T0", time.time()))
    import dataclasses

    import mlx.core as mx
    import numpy as np

    from ollama_img import load_pipeline
    from ollama_img.memory.device import give_back
    from ollama_img.memory.plan import Evaluation, MemoryPlanError
    from ollama_img.store import Store

    store = Store(args.store) if args.store else None
    res = {"mlx": mx.__version__, "device": str(mx.default_device()), "sizes": {}}
    t0 = time.perf_counter()
    try:
        pipe = load_pipeline(args.model, store=store)
    except MemoryPlanError as exc:
        res["refused"] = str(exc)
        res["refused_after_s"] = time.perf_counter() - t0
        print(f"refused: {exc}")
        emit(res)
        return
    mx.synchronize()
    res["load_s"] = time.perf_counter() - t0
    res["load_peak_gb"] = mx.get_peak_memory() / GB
    res["load_plan"] = pipe.memory_plan.to_json()
    res["mlx_memory_limit_gb"] = mx.get_memory_limit() / GB
    print(
        f"load {res['load_s']:.1f} s, weights {pipe.resident_bytes / GB:.2f} GB; plan: {'; '.join(pipe.memory_plan.summary())}"
    )
    planner = pipe.planner

    def peak_of(fn):
        mx.synchronize()
        mx.reset_peak_memory()
        t = time.perf_counter()
        value = fn()
        mx.synchronize()
        return value, time.perf_counter() - t, mx.get_peak_memory() / GB

    for index, size in enumerate(int(s) for s in args.sizes.split(",")):
        entry = {}
        kw = dict(width=size, height=size, steps=args.steps)
        if args.legacy:  # the evaluation before memory plans, for comparison
            pipe.planner = planner
            plan = planner.plan(size, size, prompts=(PROMPT,))
            pipe.planner = None
            long = (size // 16) ** 2 >= 4096
            pipe.memory_plan = dataclasses.replace(
                plan,
                encoder=Evaluation(None),
                denoiser=Evaluation(6, pipelined=False) if long else Evaluation(None),
                decoder="whole",
            )
        image, first_s, first_peak = peak_of(lambda kw=kw: pipe.generate(PROMPT, seed=1, **kw))
        entry.update(first_s=first_s, first_peak_gb=first_peak)
        if index == 0:
            res["cold_s"] = time.time() - process_start
        name = f"{args.name.replace(' ', '-')}-{size}.png"
        image.save(args.out / "images" / name)
        entry["image"] = name
        if args.save_latents and index == 0:
            np.save(args.out / f"latents-{size}.npy", np.array(pipe.initial_latents(size, size, 1)))
        warm = [
            peak_of(lambda s=seed, kw=kw: pipe.generate(PROMPT, seed=s, **kw))
            for seed in (2, 3, 4)[: 3 - index]
        ]
        entry["warm_s"] = statistics.median(w[1] for w in warm)
        entry["warm_all_s"] = [w[1] for w in warm]
        entry["mlx_peak_gb"] = max(w[2] for w in warm)
        # where the peak is: each phase alone (the prompt's embedding is cached by now)
        latents, entry["denoise_s"], entry["denoise_peak_gb"] = peak_of(
            lambda kw=kw: pipe.denoise(PROMPT, seed=5, **kw)
        )
        _, entry["decode_s"], entry["decode_peak_gb"] = peak_of(lambda lat=latents: pipe.decode(lat))
        _, entry["new_prompt_s"], entry["new_prompt_peak_gb"] = peak_of(
            lambda i=index, kw=kw: pipe.generate(NEW_PROMPTS[i], seed=6, **kw)
        )
        _, entry["encode_s"], entry["encode_peak_gb"] = peak_of(
            lambda i=index: pipe.encode_prompt(NEW_PROMPTS[i] + "!")
        )
        pipe.generate(PROMPT, seed=7, **kw)  # back to a generation's end state before measuring what is held
        plan = pipe.memory_plan
        entry["plan"] = plan.to_json()
        mx.synchronize()
        entry["held_mlx_gb"] = (mx.get_active_memory() + mx.get_cache_memory()) / GB
        entry["held_smi_gb"] = smi_process_used(os.getpid())
        # What the engine holds once idle: its scheduler calls give_back 2 s after a job (IDLE_GIVE_BACK_S).
        give_back()
        time.sleep(0.3)  # nvidia-smi's per-process figure lags a little
        entry["held_idle_mlx_gb"] = (mx.get_active_memory() + mx.get_cache_memory()) / GB
        entry["held_idle_smi_gb"] = smi_process_used(os.getpid())
        entry["reloads"] = pipe.parts.loads
        res["sizes"][str(size)] = entry
        print(
            f"{size}: first {first_s:.2f} s, warm {entry['warm_s']:.3f} s/image, new prompt {entry['new_prompt_s']:.3f} s; "
            f"MLX peak {entry['mlx_peak_gb']:.2f} GB (plan {plan.peak / GB:.2f} with {plan.overhead / GB:.2f} overhead); "
            f"phases encode/denoise/decode {entry['encode_peak_gb']:.2f}/{entry['denoise_peak_gb']:.2f}/{entry['decode_peak_gb']:.2f} GB "
            f"(plan {plan.phases['encode'] / GB:.2f}/{plan.phases['denoise'] / GB:.2f}/{plan.phases['decode'] / GB:.2f}); "
            f"held {entry['held_mlx_gb']:.2f} GB, idle {entry['held_idle_mlx_gb']:.2f} GB"
        )
    if not args.legacy:  # the denoise phase under each stack evaluation, for calibration: last, and
        # sampled apart (PHASE lines), so that its evaluations beyond the plan count in no plan's peak
        size = int(args.sizes.split(",")[0])
        kw = dict(width=size, height=size, steps=args.steps)
        print("PHASE probes", flush=True)
        plan = pipe.memory_plan = planner.plan(size, size, prompts=(PROMPT,))
        pipe.planner = None
        probes = {}
        for evaluation in (Evaluation(1), Evaluation(1, pipelined=False), Evaluation(2), Evaluation(3)):
            pipe.memory_plan = dataclasses.replace(plan, denoiser=evaluation)
            _, seconds, peak = peak_of(lambda kw=kw: pipe.denoise(PROMPT, seed=5, **kw))
            probes[evaluation.describe()] = {"s": seconds, "peak_gb": peak}
        pipe.planner, pipe.memory_plan = planner, plan
        res["sizes"][str(size)]["denoise_by_evaluation"] = probes
        res["sizes"][str(size)]["held_before_denoise_gb"] = pipe.resident_bytes / GB
        print(f"{size}: denoise by evaluation {probes}")
    emit(res)


# -- diffusers, on the same folder -----------------------------------------------------------------------


def child_diffusers(args):
    import numpy as np
    import torch
    from diffusers import ZImagePipeline

    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda else torch.float32
    res = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "sizes": {},
    }
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t0 = time.perf_counter()
    pipe = ZImagePipeline.from_pretrained(args.folder, dtype=dtype)
    if args.mode == "offload":
        pipe.enable_model_cpu_offload()
    else:
        pipe.to(dev)
    pipe.set_progress_bar_config(disable=True)
    sync()
    res["load_s"] = time.perf_counter() - t0
    size = args.size
    path = args.out / f"latents-{size}.npy"
    latents = torch.from_numpy(np.load(path)) if path.is_file() else None

    def image(seed: int):
        kwargs = {"latents": latents} if seed == 1 and latents is not None else {
            "generator": torch.Generator("cpu").manual_seed(seed)
        }  # fmt: skip
        with torch.no_grad():
            out = pipe(
                PROMPT, width=size, height=size, num_inference_steps=args.steps, guidance_scale=0.0, **kwargs
            )
        sync()
        return out.images[0]

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    first = image(1)
    entry = {"first_s": time.perf_counter() - t}
    res["cold_s"] = res["load_s"] + entry["first_s"]
    name = f"{args.name.replace(' ', '-')}-{size}.png"
    first.save(args.out / "images" / name)
    entry["image"] = name
    times = []
    for seed in (2,) if args.mode == "offload" else (2, 3):  # offloaded images take ~17 s each
        t = time.perf_counter()
        image(seed)
        times.append(time.perf_counter() - t)
    entry["warm_s"] = statistics.median(times)
    if cuda:
        entry["torch_peak_gb"] = torch.cuda.max_memory_allocated() / GB
        entry["held_torch_gb"] = torch.cuda.memory_reserved() / GB
    entry["held_smi_gb"] = smi_process_used(os.getpid())
    res["sizes"][str(size)] = entry
    print(
        f"{size}: load {res['load_s']:.1f} s, first {entry['first_s']:.2f} s, warm {entry['warm_s']:.3f} s/image, peak {entry.get('torch_peak_gb', 0):.2f} GB"
    )
    emit(res)


# -- reporting --------------------------------------------------------------------------------------------


def _g(value, digits=2):
    return "-" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))


def reference_warm(runs: list[dict]) -> float | None:
    for run in runs:
        if run.get("model") == "bf16" and run.get("budget") is None and not run.get("legacy"):
            return run.get("sizes", {}).get("1024", run.get("sizes", {}).get("64", {})).get("warm_s")
    return None


def summary_line(run: dict, runs: list[dict]) -> str:
    if "refused" in run:
        return f"{run['name']}: refused in {run.get('refused_after_s', 0):.1f} s: {run['refused']}"
    if "error" in run or "skipped" in run:
        return f"{run['name']}: {run.get('error') or run.get('skipped')}"
    size, entry = next(iter(run["sizes"].items()))
    ref = reference_warm(runs)
    ratio = f" ({entry['warm_s'] / ref:.2f}x bf16 unlimited)" if ref else ""
    peak = entry.get("mlx_peak_gb", entry.get("torch_peak_gb"))
    return (
        f"{run['name']} {size}: warm {entry['warm_s']:.3f} s/image{ratio}, cold {_g(run.get('cold_s'), 1)} s, "
        f"peak {_g(peak)} GB, nvidia-smi process {_g(run.get('smi_process_peak_gb'))} / device {_g(run.get('smi_device_peak_gb'))} GB, "
        f"PSNR {_g(entry.get('psnr_db'), 1)} dB"
    )


def markdown(report: dict) -> str:
    runs = report["runs"]
    ref = reference_warm(runs)
    unit = "MB" if report["tiny"] else "GB"
    scale = 1000 if report["tiny"] else 1
    lines = [
        "| model | budget | plan | warm s/image | vs bf16 unlimited | new prompt s | cold s | MLX peak (plan) | "
        "nvidia-smi process / device | held MLX / smi (idle) | PSNR dB | target |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in runs:
        label = f"{run.get('budget') or 'unlimited'}" + (
            " (evaluation before plans)" if run.get("legacy") else ""
        )
        if "sizes" not in run or not run["sizes"]:
            why = run.get("refused") or run.get("error") or run.get("skipped")
            lines.append(f"| {run.get('model')} | {label} | {why} | | | | | | | | | |")
            continue
        for size, e in run["sizes"].items():
            plan = e.get("plan")
            plan_text = "; ".join(plan["summary"]) if plan else "-"
            peak = e.get("mlx_peak_gb", e.get("torch_peak_gb"))
            est = f" ({plan['peak'] / GB * scale:.2f})" if plan else ""
            ratio = _g(e["warm_s"] / ref) + "x" if ref and size in ("1024", "64") else "-"
            target = TARGETS.get((run.get("model"), run.get("budget")))
            verdict = "-"
            if target and size in ("1024", "64") and not run.get("legacy") and not report["tiny"]:
                smi = max(
                    x
                    for x in (peak, run.get("smi_process_peak_gb"), run.get("smi_device_peak_gb"))
                    if x is not None
                )
                ok = smi <= target[0] and (ref is None or e["warm_s"] / ref <= target[1])
                verdict = f"≤ {target[0]} GB, ≤ {target[1]}x: {'met' if ok else 'missed'}"
            lines.append(
                f"| {run.get('model')} | {label} {size}² | {plan_text} | {_g(e['warm_s'], 3)} | {ratio} | "
                f"{_g(e.get('new_prompt_s'), 3)} | {_g(run.get('cold_s'), 1) if size in ('1024', '64') else '-'} | "
                f"{_g(peak * scale if peak else None)}{est} {unit} | {_g(run.get('smi_process_peak_gb'))} / "
                f"{_g(run.get('smi_device_peak_gb'))} GB | {_g(e.get('held_mlx_gb', e.get('held_torch_gb')))} / "
                f"{_g(e.get('held_smi_gb'))} ({_g(e.get('held_idle_smi_gb'))}) GB | {_g(e.get('psnr_db'), 1)} | "
                f"{verdict} |"
            )
    lines += [
        "",
        f"Peak by phase, measured (MLX) against the plan's estimate (weights held + working set), {unit}:",
    ]
    lines += [
        "",
        "| run | size | encode | denoise | decode | load |",
        "| --- | --- | --- | --- | --- | --- |",
    ]

    def pair(measured, estimate):
        return f"{_g(None if measured is None else measured * scale)} ({estimate / GB * scale:.2f})"

    for run in runs:
        for size, e in run.get("sizes", {}).items():
            plan = e.get("plan")
            if not plan:
                continue
            ph = plan["phases"]
            load = (
                pair(run.get("load_peak_gb"), run["load_plan"]["phases"]["load"])
                if "load_plan" in run
                else "-"
            )
            lines.append(
                f"| {run['name']} | {size}² | {pair(e.get('encode_peak_gb'), ph['encode'])} | "
                f"{pair(e.get('denoise_peak_gb'), ph['denoise'])} | {pair(e.get('decode_peak_gb'), ph['decode'])} | {load} |"
            )
    setup = report.get("setup", {})
    lines += [
        "",
        "Setup: "
        + ", ".join(f"{k} {v:.1f}" for k, v in setup.items())
        + f"; total {_g(report.get('elapsed_s'), 0)} s",
    ]
    return "\n".join(lines) + "\n"


def write_results(report: dict):
    from bench.results import replace_section

    machine = report.get("machine", {})
    tiny = report["tiny"]
    model = (
        "the tiny random-weight model, 2 steps" if tiny else "full-size random-weight Z-Image-Turbo, 9 steps"
    )
    body = (
        f"Measured {report['started']} on {machine.get('gpu') or 'the CPU (' + str(machine.get('cpus')) + ' cores)'} "
        f"(`bench/gpu_memory_plan.py{' --tiny' if tiny else ''}`): {model}, guidance 0; each row its own "
        "process under `OLLAMA_IMG_GPU_MEMORY`; warm = same prompt, new seeds; new prompt = a prompt not seen "
        "before (the text encoder reloads when the plan has it on demand); PSNR against the bf16 unlimited "
        "image of the same seed (diffusers: from the same initial latents).\n\n" + markdown(report)
    )
    title = "Memory plans, tiny model on the CPU" if tiny else "Memory plans on a GPU"
    replace_section(f"{title} (bench/gpu_memory_plan.py)", body)
    print("wrote the section of bench/RESULTS.md")


if __name__ == "__main__":
    main()
