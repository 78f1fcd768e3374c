"""`load_pipeline`: a model name or folder in, a ready MLX pipeline out, whatever the architecture."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

from ollama_img.backend import require_mlx
from ollama_img.model_defaults import with_model_defaults
from ollama_img.models import architecture_for
from ollama_img.phases import phase
from ollama_img.weights import open_source


def load_pipeline(
    name_or_folder: str | Path, *, store=None, dtype=None, budget=None, planner=None, plan=None
):
    """Load from the store (a model name) or from a diffusers model folder (a directory path).

    A model made by a Modelfile has its PARAMETERs as the pipeline's defaults (`pipe.defaults`, and
    what `generate` uses for the options it is not given): a request's values, then the model's, then
    the family's.

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
    return _load(source, dtype, budget, planner, plan)


def load_stored(name: str, *, store=None, dtype=None, budget=None, planner=None, plan=None):
    """Load a model from the store by name only, never from a folder: what the engine does, since a
    name from a client must not reach a path on the engine's disk (`tmp/x/y` is not /tmp/x/y:latest)."""
    from ollama_img.store import Store
    from ollama_img.weights import StoreSource

    with phase("resolve"):
        require_mlx()
        source = StoreSource(store or Store(), name)
    return _load(source, dtype, budget, planner, plan)


def _load(source, dtype, budget, planner, plan):
    with phase("resolve"):
        from ollama_img.memory.device import apply_limits, device_kind, engine_budget
        from ollama_img.memory.plan import Planner

        arch = architecture_for(source.read_json("model_index.json").get("_class_name"))
        module = importlib.import_module(arch.loader)
        if planner is None:
            budget = engine_budget(budget)
            planner = Planner(arch.memory_of(source), device_kind(), budget, label=source.label)
            plan = planner.for_load()
            apply_limits(budget, plan.cache_limit)
        elif plan is None:
            plan = planner.for_load()
    accepted = inspect.signature(module.load).parameters  # a family's loader may not take a plan
    memory = {key: value for key, value in (("plan", plan), ("planner", planner)) if key in accepted}
    with phase("build"):  # what the loader does not mark as read or eval
        pipe = module.load(source, dtype=dtype, **memory)
    manifest = getattr(source, "manifest", None)  # a store model's; a folder has no Modelfile
    return with_model_defaults(pipe, manifest.config.params) if manifest is not None else pipe
