"""Compiling a model's GPU kernels before its first image, in helper processes that run side by side.

On CUDA, MLX compiles each of its JIT kernels (compiled graphs, gathers) with NVRTC the first time a
process needs it, under one lock: on empty caches Z-Image's first image spent about 50 s compiling ten
modules one after another (bench/RESULTS.md, "What a first image compiles"). The modules land in MLX's
cache folder, where every later process finds them. So the first load of a model starts helpers
(`python -m ollama_img.priming`), each of which loads a skeleton of the model (its family's
`priming` module: the real configs and tensors, one block per stack) and runs some of the parts a
first image runs. Their compiles overlap, and the main process finds them cached.

- When: `OLLAMA_IMG_PRIME` is `auto` (default: on CUDA, the first time this model's parts are loaded
  with this MLX on this GPU, as a marker in MLX's cache folder records), `1` (always, on any back end),
  or `0` (never).
- Memory: the helpers run beside the load when the device has room for both (its free memory less
  the load plan's peak), else before it. Each holds the device's own overhead (a CUDA context) and
  its skeleton. There are never more helpers than CPU cores, since each compile takes one.
- Failures: a helper that fails or runs out of time costs only its share of the head start. The
  first image compiles whatever is missing, as it would without priming. Nothing is marked as done.
  A helper whose engine died finishes the task it is in (stopping in the middle of a compile could
  leave a half-written module in the cache) and runs no more.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ollama_img.errors import UserError

log = logging.getLogger("ollama_img.engine")

PRIME_ENV = "OLLAMA_IMG_PRIME"
MARKERS = "ollama-img-primed"  # under MLX's kernel cache folder: it goes when that folder goes
VERSION = 1  # what the tasks compile: raised when that changes, so that models prime again
TIMEOUT_S = 120.0  # helpers that take longer are stopped: the first image compiles what they left
RECENT_S = 2.0  # a killed helper's cache writes within this many seconds are not trusted
WORKING_BYTES = 512 * 2**20  # a helper's working set at the skeleton's small size, with margin


def policy() -> str:
    """`auto`, `on` or `off`, from `OLLAMA_IMG_PRIME`; a UserError naming the variable otherwise."""
    raw = os.environ.get(PRIME_ENV, "").strip().lower()
    if raw in ("", "auto"):
        return "auto"
    if raw in ("1", "on"):
        return "on"
    if raw in ("0", "off"):
        return "off"
    raise UserError(f"{PRIME_ENV} must be auto, 1 or 0, got {raw!r}")


@dataclass
class Job:
    """What to prime for one load: the helpers' task lists, and whether they must finish before it."""

    family: str
    spec: dict  # the helper's arguments, less its tasks
    groups: list[list[dict]]  # one list of tasks per helper
    before_load: bool  # no room on the device beside the load
    marker: Path | None  # written once every helper succeeded

    @property
    def parts(self) -> int:
        return sum(len(g) for g in self.groups)


@dataclass
class Helpers:
    """Running helpers: `finish()` waits for them (killing the late ones) and says how it went."""

    job: Job
    processes: list[subprocess.Popen]
    logs: list[Path]
    started: float = field(default_factory=time.monotonic)

    def finish(self, timeout: float = TIMEOUT_S) -> bool:
        deadline = self.started + timeout
        failed = []
        try:
            for process, errors in zip(self.processes, self.logs, strict=True):
                try:
                    code = process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self._kill(process)
                    code = "timed out"
                if code != 0:
                    failed.append(f"{code}: {_last_line(errors)}")
                errors.unlink(missing_ok=True)
        except BaseException:  # interrupted while waiting: no helper outlives the load
            self.stop()
            raise
        seconds = time.monotonic() - self.started
        job = self.job
        if failed:
            log.warning(
                "priming %s: %d of %d helpers failed (%s); the first image compiles the rest",
                job.family,
                len(failed),
                len(self.processes),
                failed[0],
            )
            return False
        if job.marker is not None:
            try:
                job.marker.parent.mkdir(parents=True, exist_ok=True)
                job.marker.write_text(json.dumps({"family": job.family, "seconds": round(seconds, 2)}))
            except OSError as exc:  # the kernels are cached all the same; the next load primes again
                log.warning("priming %s: cannot write %s (%s)", job.family, job.marker, exc)
        log.info(
            "compiled %s's GPU kernels in %.2fs (%d parts in %d processes)",
            job.family,
            seconds,
            job.parts,
            len(self.processes),
        )
        return True

    def stop(self) -> None:
        """Kill the helpers still running (the load they were priming for failed), and remove their logs."""
        for process in self.processes:
            if process.poll() is None:
                self._kill(process)
        for errors in self.logs:
            errors.unlink(missing_ok=True)

    def _kill(self, process: subprocess.Popen) -> None:
        """Kill a helper, and forget what MLX's cache gained in its last seconds: MLX writes a module's
        files in place, so a helper killed mid-write could leave a truncated one that every later process
        would read (a module forgotten is only compiled again)."""
        process.kill()
        process.wait()
        _forget_recent(time.time() - RECENT_S)


def _forget_recent(since: float) -> None:
    """Remove the files of MLX's kernel cache written after `since` (a Unix time)."""
    from ollama_img import caches

    folder = caches.configure().mlx_dir
    if folder is None or not folder.is_dir():
        return
    for path in folder.rglob("*"):
        try:
            if path.is_file() and MARKERS not in path.parts and path.stat().st_mtime >= since:
                path.unlink()
        except OSError:
            pass


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no output"
    return lines[-1][-300:] if lines else "no output"


# -- deciding ------------------------------------------------------------------------------------------


def plan_job(arch, source, planner, plan, dtype=None, *, free: int | None = None) -> Job | None:
    """The priming this load needs, or None: the family cannot prime, the policy says no, or the
    marker says it was done. `free`: the device's free bytes now (default: asked)."""
    mode = policy()
    if mode == "off" or arch.priming is None:
        return None
    from ollama_img.backend import platform_backend

    if mode == "auto" and platform_backend() != "cuda":
        return None
    where = source_spec(source)
    if where is None:  # a source a helper cannot open again
        return None
    family = importlib.import_module(arch.priming)
    tasks = family.tasks(source, planner)
    marker = _marker(arch.family, tasks, plan, stored_dtypes(source), dtype)
    if mode == "auto" and (marker is None or marker.exists()):
        return None
    if free is None:
        free = _device_free()
    free = min(free, plan.budget.bytes)  # the helpers are the engine's too: within its budget
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    grouping = _grouping(tasks, cores, _helper_bytes(family, planner, plan), free, plan.peak)
    if grouping is None:
        log.info("no room on the device to compile %s's GPU kernels ahead of its first image", arch.family)
        return None
    groups, before_load = grouping
    spec = {
        "source": where,
        "budget": plan.budget.bytes,
        "budget_source": plan.budget.source,
        "dtype": str(dtype).removeprefix("mlx.core.") if dtype is not None else None,
        "priming": arch.priming,
    }
    return Job(arch.family, spec, groups, before_load, marker)


def _grouping(tasks: list[dict], cores: int, need, free: int, peak: int):
    """(task lists, one per helper; whether they run before the load) or None when not one helper fits.

    As many helpers as tasks and cores, beside the load when they all fit beside its `peak`: fewer
    helpers there would take longer than all of them before the load. Otherwise before it, as many
    as fit in `free`."""
    most = max(1, min(len(tasks), cores))
    full = [tasks[i::most] for i in range(most)]
    if sum(map(need, full)) <= free - peak:
        return full, False
    for count in range(most, 0, -1):
        groups = [tasks[i::count] for i in range(count)]
        if sum(map(need, groups)) <= free:
            return groups, True
    return None


def _helper_bytes(family, planner, plan):
    """A function of a helper's tasks: the device memory it takes (the device's own overhead, its
    largest skeleton component, a small working set)."""
    sizes = {}

    def need(group: list[dict]) -> int:
        for task in group:
            for name in family.components_of(task):
                if name not in sizes:
                    sizes[name] = family.skeleton_bytes(planner.profile, name)
        largest = max(sizes[name] for task in group for name in family.components_of(task))
        return plan.overhead + largest + WORKING_BYTES

    return need


def _device_free() -> int:
    """Free device bytes, less what this process's MLX holds (other models' weights, its cache)."""
    import mlx.core as mx

    from ollama_img.memory.device import free_bytes

    return max(0, free_bytes()[0] - mx.get_active_memory() - mx.get_cache_memory())


def stored_dtypes(source) -> list[str]:
    """The dtypes the model's tensors are stored in (a float16 checkpoint computes, and compiles, in
    float16): from a store model's manifest, or a folder's safetensors headers."""
    from ollama_img.weights import FolderSource

    manifest = getattr(source, "manifest", None)
    if manifest is not None:
        return sorted({layer.dtype for layer in manifest.layers if layer.is_tensor and layer.dtype})
    if isinstance(source, FolderSource):
        from ollama_img.store.folder import inspect_folder

        found = inspect_folder(source.root).components
        return sorted({t.dtype for c in found for shard in c.shards for t in shard.header.tensors})
    return []


def source_spec(source) -> dict | None:
    """How a helper opens the same weights: a folder's path, or a store's root and the model's name."""
    from ollama_img.weights import FolderSource, StoreSource

    if isinstance(source, FolderSource):
        return {"folder": str(source.root)}
    if isinstance(source, StoreSource):
        return {"store": str(source.store.root), "name": source.label}
    return None


def _marker(family: str, tasks: list[dict], plan, dtypes: list[str], dtype) -> Path | None:
    """The file that says these parts were primed with this MLX on this GPU (None: no such cache)."""
    from ollama_img import caches

    folder = caches.configure().mlx_dir
    if folder is None:
        return None
    computes = sorted((c.name, c.compute, c.quant_type or "") for c in plan.components)
    what = json.dumps([VERSION, family, tasks, computes, dtypes, str(dtype)], sort_keys=True)
    return folder / MARKERS / f"{family}-{hashlib.sha256(what.encode()).hexdigest()[:16]}.json"


# -- running ---------------------------------------------------------------------------------------------


def start(job: Job) -> Helpers:
    """Start the job's helpers; they inherit this process's cache variables (MLX's and the driver's)."""
    from ollama_img import caches

    caches.configure()
    env = dict(os.environ, **{PRIME_ENV: "0"})
    helpers = Helpers(job, [], [])
    try:
        for group in job.groups:
            handle, name = tempfile.mkstemp(prefix="ollama-img-prime-", suffix=".log")
            helpers.logs.append(Path(name))
            with os.fdopen(handle, "wb") as stream:
                argument = json.dumps({**job.spec, "tasks": group, "engine": os.getpid()})
                helpers.processes.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "ollama_img.priming", argument],
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=stream,
                        env=env,
                    )
                )
    except BaseException:  # a helper that cannot start (no process or file left): none of them run
        helpers.stop()
        raise
    where = "before loading" if job.before_load else "while loading"
    log.info(
        "compiling %s's GPU kernels once, %s: %d parts in %d processes (later loads reuse them)",
        job.family,
        where,
        job.parts,
        len(helpers.processes),
    )
    return helpers


def helper(argument: str) -> None:
    """One helper: open the model, plan it as the main process did, run each task (`python -m`)."""
    from ollama_img.backend import require_mlx

    require_mlx()
    from ollama_img.memory.budget import Budget
    from ollama_img.memory.device import device_kind
    from ollama_img.memory.plan import Planner
    from ollama_img.models import architecture_for
    from ollama_img.store import Store
    from ollama_img.weights import FolderSource, StoreSource

    spec = json.loads(argument)
    where = spec["source"]
    source = (
        FolderSource(where["folder"])
        if "folder" in where
        else StoreSource(Store(where["store"]), where["name"])
    )
    arch = architecture_for(source.read_json("model_index.json").get("_class_name"))
    budget = Budget(spec["budget"], spec["budget_source"])
    planner = Planner(arch.memory_of(source), device_kind(), budget, label=source.label)
    family = importlib.import_module(spec["priming"])
    dtype = None
    if spec.get("dtype"):
        import mlx.core as mx

        dtype = getattr(mx, spec["dtype"])
    from ollama_img.memory.device import give_back

    for task in spec["tasks"]:
        if os.getppid() != spec["engine"]:  # the engine is gone: nobody loads what the rest compiles
            return
        family.run(source, planner, task, dtype)
        give_back()  # the next task's skeleton in the memory this one's held (`_helper_bytes`)


if __name__ == "__main__":
    helper(sys.argv[1])
