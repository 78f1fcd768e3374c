"""A pipeline's components, each held from the start or loaded when a phase of generation needs it.

The memory plan says which components a phase holds (`MemoryPlan.holds`); entering a phase releases
the others and loads what it needs, from the same weight source as at load time (a store model's
blobs, mapped from the page cache once read). Releasing gives the buffers back to the device at once
(`memory.device.give_back`: MLX's cache emptied, the CUDA pool trimmed): the next phase's allocations
must find the memory free, not kept by MLX or by the driver's pool.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Iterable

import mlx.nn as nn
from mlx.utils import tree_flatten

from ollama_img.memory.device import give_back

log = logging.getLogger("ollama_img.engine")


def module_bytes(module: nn.Module) -> int:
    return sum(v.nbytes for _, v in tree_flatten(module.parameters()))


class Parts:
    """Named components: loaded modules, and how to load each one again."""

    def __init__(self, loaded: dict[str, nn.Module], loaders: dict[str, Callable[[], nn.Module]]):
        self._loaded = dict(loaded)
        self._loaders = dict(loaders)
        self.loads = 0  # components loaded after the pipeline was built (re-loads on demand)

    def get(self, name: str) -> nn.Module:
        module = self._loaded.get(name)
        if module is None:
            started = time.perf_counter()
            module = self._loaded[name] = self._loaders[name]()
            self.loads += 1
            log.info("loaded %s on demand in %.2fs", name, time.perf_counter() - started)
        return module

    def is_loaded(self, name: str) -> bool:
        return name in self._loaded

    def keep_only(self, names: Iterable[str]) -> None:
        """Release every loaded component not in `names` (those with a loader: the others cannot come back)."""
        keep = set(names)
        released = [n for n in self._loaded if n not in keep and n in self._loaders]
        for name in released:
            del self._loaded[name]
        if released:
            gc.collect()
            give_back()

    def release(self, name: str) -> None:
        """Release one component (it loads again, from its loader, when next needed)."""
        self.keep_only(n for n in self._loaded if n != name)

    @property
    def nbytes(self) -> int:
        return sum(module_bytes(m) for m in self._loaded.values())
