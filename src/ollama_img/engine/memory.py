"""The engine's memory accounting: one budget for every model it holds, and a plan per load and request.

A model's need comes from its manifest and its family's profile (`memory.plan`), never from trying:
the scheduler admits a load or a request only when its plan fits the budget less what the other loaded
models hold, unloading the least recently used idle model first when that makes room, and refuses it
with the plan's one-line error (503) when nothing would. MLX's memory limit is set to the budget, so
MLX waits for the device rather than allocating past it (its CUDA allocator would otherwise page to the
host silently).
"""

from __future__ import annotations

from dataclasses import dataclass

from ollama_img.formatting import human_bytes
from ollama_img.memory.budget import Budget
from ollama_img.memory.plan import MemoryPlan, Planner


def planner_for(name: str, device, store=None) -> Planner:
    """A store model's planner (its profile from the manifest, configs and own adapters; no MLX), budget
    to be set."""
    from ollama_img.adapters import resolve as resolve_adapters
    from ollama_img.adapters import stored_adapters, with_adapters
    from ollama_img.models import architecture_for
    from ollama_img.store import Store
    from ollama_img.weights import StoreSource

    source = StoreSource(store or Store(), name)
    architecture = architecture_for(source.read_json("model_index.json").get("_class_name"))
    planner = Planner(architecture.memory_of(source), device, Budget(0, "unset"), label=name)
    own = resolve_adapters(stored_adapters(source), source, architecture)  # a Modelfile's ADAPTER lines
    return with_adapters(planner, architecture, own)


def left_for(budget: Budget, held_by_others: int) -> Budget:
    """What a model may plan with: the engine's budget less what the other loaded models hold."""
    if held_by_others <= 0:
        return budget
    return Budget(
        budget.bytes - held_by_others,
        f"{budget.describe()} less {human_bytes(held_by_others)} held by other models",
    )


@dataclass(frozen=True)
class Ask:
    """What a request asks that its plan depends on (None: the model's default)."""

    width: int | None
    height: int | None
    count: int
    batch: int
    prompts: tuple[str | None, ...]
    adapters: tuple[str, int] | None = None  # the request's own LoRA side paths: (component, elements)

    def plan(self, planner: Planner, budget: Budget) -> MemoryPlan:
        if self.width is None and self.height is None and not self.prompts:  # a load, no image asked
            return planner.within(budget).for_load()
        if self.adapters is not None:
            planner = planner.adding_adapters(*self.adapters)
        return planner.within(budget).plan(
            self.width, self.height, count=self.count, batch=self.batch, prompts=self.prompts
        )
