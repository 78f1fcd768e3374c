"""The device side of the memory plan: what the device has free, and holding MLX to the budget.

- CUDA: the free memory of the GPU (MLX's `device_info()["free_memory"]`, which asks NVML, so other
  processes count; else NVML through ctypes; else 90% of the card). MLX's CUDA allocator takes managed
  memory: past the card it does not fail, it pages to the host and crawls, so the engine plans within
  what is free and never raises MLX's memory limit above it.
- Metal: the recommended working set (`max_recommended_working_set_size`).
- CPU: available RAM (`MemAvailable` in /proc/meminfo, else the OS's free pages).

What this process already holds in MLX counts as available to it. `apply_limits` sets MLX's memory
limit to the budget (MLX then waits for the device to finish work before allocating beyond it, rather
than running ahead) and its cache limit to the plan's working set.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from ollama_img.backend import platform_backend, require_mlx
from ollama_img.memory.budget import Budget, resolve, user_budget
from ollama_img.memory.plan import DEVICES, DeviceKind

_DEFAULT_LIMITS: dict[str, int] = {}  # MLX's own limits, before this process changed them


def device_kind() -> DeviceKind:
    return DEVICES[platform_backend()]


def installed_device_kind() -> DeviceKind:
    """The back end MLX would use here, judged without importing it (for `show`): Metal on macOS, CUDA
    where MLX's CUDA build is installed, else the CPU."""
    import sys
    from importlib import metadata

    if sys.platform == "darwin":
        return DEVICES["metal"]
    names = {(d.metadata["Name"] or "").lower() for d in metadata.distributions()}
    return (
        DEVICES["cuda"]
        if any(n.startswith("mlx-cuda") or n.startswith("mlx_cuda") for n in names)
        else DEVICES["cpu"]
    )


def free_bytes() -> tuple[int, str]:
    """(bytes the device has free for this process, what the figure is), counting what MLX holds here."""
    mx = require_mlx()
    own = mx.get_active_memory() + mx.get_cache_memory()
    backend = platform_backend()
    if backend == "cuda":
        info = mx.device_info()
        free = info.get("free_memory")
        if not isinstance(free, int):
            free = _nvml_free()
        if free is None:
            total = info.get("total_memory") or info.get("memory_size")
            return (
                (int(0.9 * total), "90% of the GPU's memory")
                if total
                else (_mlx_default_limit(mx), "MLX's limit")
            )
        return free + own, "free GPU memory"
    if backend == "metal":
        info = mx.device_info()
        return int(info["max_recommended_working_set_size"]), "the GPU's recommended working set"
    available = _available_ram()
    if available is None:
        return _mlx_default_limit(mx), "MLX's memory limit"
    return available + own, "available RAM"


def _mlx_default_limit(mx) -> int:
    """MLX's own memory limit, not the one a plan set (`apply_limits` keeps the default)."""
    return _DEFAULT_LIMITS.get("memory") or mx.get_memory_limit()


def engine_budget(user: Budget | None = None) -> Budget:
    """The budget to plan with: the user's (argument, else OLLAMA_IMG_GPU_MEMORY), cut to what is free."""
    free, source = free_bytes()
    return resolve(user if user is not None else user_budget(), free, source)


def apply_limits(budget: Budget, cache_limit: int | None = None) -> None:
    """MLX's memory limit at the budget (less the back end's own overhead and its allocator's reserve,
    never above MLX's default), and its buffer cache at `cache_limit` bytes when given."""
    mx = require_mlx()
    if not _DEFAULT_LIMITS:
        _DEFAULT_LIMITS["memory"] = mx.get_memory_limit()
    limit = max(1, min(_DEFAULT_LIMITS["memory"], device_kind().mlx_room(budget.bytes)))
    mx.set_memory_limit(limit)
    if cache_limit is not None:
        previous = mx.set_cache_limit(max(0, cache_limit))
        _DEFAULT_LIMITS.setdefault("cache", previous)


def restore_limits() -> None:
    """MLX's own limits again (nothing loaded any more), and its cache emptied."""
    mx = require_mlx()
    if "memory" in _DEFAULT_LIMITS:
        mx.set_memory_limit(_DEFAULT_LIMITS["memory"])
    if "cache" in _DEFAULT_LIMITS:
        mx.set_cache_limit(_DEFAULT_LIMITS["cache"])
    _DEFAULT_LIMITS.clear()
    give_back()


def give_back() -> int:
    """Hand freed memory back to the device, not only to MLX's cache: empty the cache and, on CUDA, trim
    the driver's pool under it, where freed buffers otherwise stay reserved to the process (nvidia-smi
    counts them). For after a component or a model is released. Returns the bytes the pool gave back."""
    mx = require_mlx()
    mx.clear_cache()
    if platform_backend() != "cuda":
        return 0
    from ollama_img.memory import cuda_pool

    return cuda_pool.trim() or 0


def _available_ram() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


class _NvmlMemory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


def _nvml_free(index: int = 0) -> int | None:
    memory = nvml_memory(index)
    return None if memory is None else memory[1]


def nvml_memory(index: int = 0) -> tuple[int, int] | None:
    """(total, free) bytes of GPU `index` from NVML (the driver's library), or None when it cannot say."""
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
        if nvml.nvmlInit_v2() != 0:
            return None
        handle = ctypes.c_void_p()
        memory = _NvmlMemory()
        if nvml.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle)) != 0:
            return None
        if nvml.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(memory)) != 0:
            return None
        return int(memory.total), int(memory.free)
    except (OSError, AttributeError):
        return None
