"""`load_pipeline`: a model name or folder in, a ready MLX pipeline out, whatever the architecture."""

from __future__ import annotations

import importlib
import inspect
import logging
from pathlib import Path

from ollama_img.adapters import resolve as resolve_adapters
from ollama_img.adapters import stored_adapters, with_adapters
from ollama_img.backend import require_mlx
from ollama_img.errors import UserError
from ollama_img.model_defaults import with_model_defaults
from ollama_img.models import architecture_for
from ollama_img.phases import phase
from ollama_img.weights import open_source

log = logging.getLogger("ollama_img.engine")


def load_pipeline(
    name_or_folder: str | Path,
    *,
    store=None,
    dtype=None,
    budget=None,
    planner=None,
    plan=None,
    loras=None,
    lora_strategy=None,
):
    """Load from the store (a model name) or from a diffusers model folder (a directory path).

    A model made by a Modelfile has its PARAMETERs as the pipeline's defaults (`pipe.defaults`, and
    what `generate` uses for the options it is not given): a request's values, then the model's, then
    the family's.

    `loras`: LoRA adapters to apply, `[(path_or_digest, scale), ...]`: a safetensors file, or the
    `sha256:...` digest of an adapter in the store; each is checked against the model first (a
    UserError names the first key that does not fit). A store model's own adapters (a Modelfile's
    ADAPTER) come first. `lora_strategy` (`models.lora_layers.STRATEGIES`) forces how they compute.

    `dtype` overrides the compute dtype (default: the checkpoint's on a GPU, float32 on the CPU).
    Memory is planned (`ollama_img.memory`): within `budget` (a `memory.budget.Budget`; default
    OLLAMA_IMG_GPU_MEMORY, cut to what the device has free), for the model's default size at load and
    again for each generation; MLX's memory limit is set to the budget. The engine passes its own
    `planner` (and the load's `plan`) instead, having accounted for the other models it holds.
    A MemoryPlanError (a UserError) says when even the load cannot fit.
    """
    with phase("resolve"):
        require_mlx()
        source = open_source(name_or_folder, store)
    return _load(source, dtype, budget, planner, plan, loras, lora_strategy)


def load_stored(
    name: str, *, store=None, dtype=None, budget=None, planner=None, plan=None, loras=None, lora_strategy=None
):
    """Load a model from the store by name only, never from a folder: what the engine does, since a
    name from a client must not reach a path on the engine's disk (`tmp/x/y` is not /tmp/x/y:latest)."""
    from ollama_img.store import Store
    from ollama_img.weights import StoreSource

    with phase("resolve"):
        require_mlx()
        source = StoreSource(store or Store(), name)
    return _load(source, dtype, budget, planner, plan, loras, lora_strategy)


def _load(source, dtype, budget, planner, plan, loras=None, lora_strategy=None):
    with phase("resolve"):
        from ollama_img.memory.device import apply_limits, device_kind, engine_budget
        from ollama_img.memory.plan import Planner

        arch = architecture_for(source.read_json("model_index.json").get("_class_name"))
        module = importlib.import_module(arch.loader)
        adapters = resolve_adapters([*stored_adapters(source), *(loras or ())], source, arch)
        planned_here = planner is None  # the engine plans its loads itself and sets MLX's limits
        if planned_here:
            planner = Planner(
                arch.memory_of(source), device_kind(), engine_budget(budget), label=source.label
            )
        planner = with_adapters(planner, arch, adapters, lora_strategy)
        if plan is None or planned_here:
            plan = planner.for_load()
        if planned_here:
            apply_limits(plan.memory_limit(), plan.cache_limit)
    accepted = inspect.signature(module.load).parameters  # a family's loader may not take a plan
    given = (("plan", plan), ("planner", planner), ("lora_strategy", lora_strategy))
    extra = {key: value for key, value in given if key in accepted and value is not None}
    if "adapters" in accepted:
        extra["adapters"] = adapters
    elif adapters:
        raise UserError(f"{source.label}: {arch.family} models do not take LoRA adapters yet")
    helpers = _start_priming(arch, source, planner, plan, dtype)
    try:
        if helpers is not None and helpers.job.before_load:  # no room for both: kernels first
            with phase("prime"):
                helpers.finish()
            helpers = None
        with phase("build"):  # what the loader does not mark as read or eval
            pipe = module.load(source, dtype=dtype, **extra)
    except BaseException:
        if helpers is not None:
            helpers.stop()
        raise
    if helpers is not None:  # the first image must find every kernel the helpers compile
        with phase("prime"):
            helpers.finish()
    manifest = getattr(source, "manifest", None)  # a store model's; a folder has no Modelfile
    return with_model_defaults(pipe, manifest.config.params) if manifest is not None else pipe


def _start_priming(arch, source, planner, plan, dtype):
    """The helpers that compile the model's GPU kernels during (or before) its load, or None when
    there is nothing to compile (`ollama_img.priming`). A fault of priming never fails the load."""
    from ollama_img import priming

    priming.policy()  # a malformed OLLAMA_IMG_PRIME is the user's to fix: one clear error
    try:
        job = priming.plan_job(arch, source, planner, plan, dtype)
        return priming.start(job) if job is not None else None
    except Exception:
        log.exception("priming %s's GPU kernels failed; the first image compiles them", source.label)
        return None
