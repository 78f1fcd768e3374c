"""The CUDA driver's memory pool under MLX's allocator: what it reserves, and handing back what it keeps.

MLX's CUDA allocator takes device buffers with `cudaMallocAsync` from the device's default memory pool
and frees them with `cudaFreeAsync`. MLX counts the bytes of its live buffers (active) and of the
buffers it keeps for reuse (cache); the pool under it may reserve more than that: memory freed back to
the pool stays reserved until the pool is trimmed, and nvidia-smi counts it against the process. Trimming
the pool (`cuMemPoolTrimTo`) returns what no live allocation uses; it frees nothing MLX holds. Free space
inside chunks that still hold a live buffer cannot be returned: on an H200 a trim gave back 0.1-1.5 GB
of the 2.5-5 GB the pool held beyond its use (bench/RESULTS.md, "Where the first image's seconds...").

Reached through the driver's own library (`libcuda.so.1`) with ctypes, so this works with any MLX CUDA
build and costs nothing on Metal or the CPU, where there is no such pool (every call returns None).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

_RESERVED_MEM_CURRENT = 5  # CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT
_RESERVED_MEM_HIGH = 6  # CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH
_USED_MEM_CURRENT = 7  # CU_MEMPOOL_ATTR_USED_MEM_CURRENT
_USED_MEM_HIGH = 8  # CU_MEMPOOL_ATTR_USED_MEM_HIGH

_DRIVER: list = []  # [libcuda or None], looked up once


@dataclass(frozen=True)
class PoolUsage:
    reserved: int  # bytes the pool holds on the device
    used: int  # bytes of live allocations in it
    reserved_high: int  # the most it held since the driver started counting (or `reset_high`)
    used_high: int  # the most its live allocations came to, likewise


def _driver():
    if not _DRIVER:
        try:
            lib = ctypes.CDLL("libcuda.so.1")
            _DRIVER.append(lib if lib.cuInit(0) == 0 else None)
        except (OSError, AttributeError):
            _DRIVER.append(None)
    return _DRIVER[0]


def _pool(device: int = 0):
    lib = _driver()
    if lib is None:
        return None, None
    handle = ctypes.c_int()
    pool = ctypes.c_void_p()
    try:
        if lib.cuDeviceGet(ctypes.byref(handle), device) != 0:
            return lib, None
        if lib.cuDeviceGetDefaultMemPool(ctypes.byref(pool), handle) != 0:
            return lib, None
    except AttributeError:  # a driver older than memory pools
        return lib, None
    return lib, pool


def _attribute(lib, pool, attribute: int) -> int | None:
    value = ctypes.c_uint64()
    if lib.cuMemPoolGetAttribute(pool, attribute, ctypes.byref(value)) != 0:
        return None
    return int(value.value)


def usage(device: int = 0) -> PoolUsage | None:
    """What the default pool of GPU `device` reserves and uses, or None without a CUDA driver."""
    lib, pool = _pool(device)
    if pool is None:
        return None
    reserved = _attribute(lib, pool, _RESERVED_MEM_CURRENT)
    used = _attribute(lib, pool, _USED_MEM_CURRENT)
    high = _attribute(lib, pool, _RESERVED_MEM_HIGH)
    used_high = _attribute(lib, pool, _USED_MEM_HIGH)
    if reserved is None or used is None:
        return None
    return PoolUsage(
        reserved, used, reserved if high is None else high, used if used_high is None else used_high
    )


def reset_high(device: int = 0) -> None:
    """Start the pool's high-water marks again from what it reserves and uses now."""
    lib, pool = _pool(device)
    if pool is not None:
        for attribute in (_RESERVED_MEM_HIGH, _USED_MEM_HIGH):
            lib.cuMemPoolSetAttribute(pool, attribute, ctypes.byref(ctypes.c_uint64(0)))


def trim(device: int = 0) -> int | None:
    """Give the device back what the pool reserves beyond its live allocations; the bytes released
    (None without a CUDA driver). Synchronises the whole context first, so that buffers MLX freed on its
    streams have reached the pool."""
    lib, pool = _pool(device)
    if pool is None:
        return None
    before = _attribute(lib, pool, _RESERVED_MEM_CURRENT)
    lib.cuCtxSynchronize()  # every stream of the context, MLX's own freeing stream among them
    if lib.cuMemPoolTrimTo(pool, ctypes.c_size_t(0)) != 0:
        return None
    after = _attribute(lib, pool, _RESERVED_MEM_CURRENT)
    return None if before is None or after is None else max(0, before - after)
