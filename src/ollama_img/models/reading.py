"""Reading a component's tensors onto the device with several threads at once.

On CUDA, MLX reads a safetensors tensor while it evaluates the tensor's `Load`, on the thread that
called `mx.eval`: a read into a host buffer, then a copy to the device, one tensor after the other. One
thread therefore leaves most of the page cache's and the bus's speed unused; several threads, each
evaluating its own groups of tensors, keep reads and copies going side by side.

MLX binds an array to a stream of the thread that made it, and only that thread may evaluate it. So a
worker makes its own lazy arrays (`read(names)`), evaluates them and hands them back evaluated, which any
thread may then use. Each worker drops its streams before it ends (a thread's MLX state left to its exit
is destroyed after Python let go of the thread: see the engine scheduler's `_retire_worker_thread`).

`OLLAMA_IMG_LOAD_THREADS` sets how many threads read (1: the calling thread evaluates everything).
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterable

import mlx.core as mx

from ollama_img.errors import UserError

LOAD_THREADS_ENV = "OLLAMA_IMG_LOAD_THREADS"
MAX_LOAD_THREADS = 64
CUDA_LOAD_THREADS = 8
GROUP_BYTES = 128 << 20  # a worker's unit of work: small enough to share out, large enough to stream


def load_threads(backend: str) -> int:
    """How many threads read a component: `OLLAMA_IMG_LOAD_THREADS`, else per back end.

    CUDA reads on the evaluating thread, so several help. On the CPU and Metal, MLX already reads on its
    own pool of I/O threads while the calling thread only queues the reads: one thread is enough.
    """
    raw = os.environ.get(LOAD_THREADS_ENV, "").strip()
    if raw:
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_LOAD_THREADS:
            raise UserError(
                f"{LOAD_THREADS_ENV} must be a whole number from 1 to {MAX_LOAD_THREADS}, got {raw!r}"
            )
        return int(raw)
    if backend == "cuda":
        return max(1, min(CUDA_LOAD_THREADS, os.cpu_count() or 1))
    return 1


def tensor_groups(units: Iterable[tuple[list[str], int]], group_bytes: int | None = None) -> list[list[str]]:
    """Consecutive units (names read together, their bytes) gathered into groups of about `group_bytes`
    (`GROUP_BYTES` when not given, read at the call)."""
    group_bytes = group_bytes or GROUP_BYTES
    groups: list[list[str]] = []
    current: list[str] = []
    size = 0
    for names, nbytes in units:
        current.extend(names)
        size += nbytes
        if size >= group_bytes:
            groups.append(current)
            current, size = [], 0
    if current:
        groups.append(current)
    return groups


def read_in_threads(
    groups: list[list[str]],
    read: Callable[[list[str]], dict[str, mx.array]],
    threads: int,
    on_result: Callable[[dict[str, mx.array]], None] | None = None,
) -> dict[str, mx.array]:
    """`read(group)` for every group on `threads` worker threads, each result evaluated by its worker.

    Groups are taken in order, so the first bytes of the files are read first. Each evaluated result is
    handed to `on_result` on the calling thread as soon as it is ready (by default, gathered and
    returned). The first error, a worker's or `on_result`'s, stops the workers (after the group each is
    reading) and is raised here.
    """
    results: dict[str, mx.array] = {}
    handle = on_result or results.update
    errors: list[BaseException] = []
    pending = iter(groups)
    lock = threading.Lock()
    ready: queue.SimpleQueue[dict[str, mx.array] | None] = queue.SimpleQueue()

    def next_group() -> list[str] | None:
        with lock:
            return None if errors else next(pending, None)

    def work():
        try:
            while (group := next_group()) is not None:
                arrays = read(group)
                mx.eval(list(arrays.values()))
                ready.put(arrays)
        except BaseException as exc:  # handed to the caller, who raises it
            with lock:
                errors.append(exc)
        finally:
            try:
                mx.synchronize()
                mx.clear_streams()
            except BaseException as exc:
                with lock:
                    errors.append(exc)
            finally:
                ready.put(None)  # the calling thread counts the workers that ended

    workers = [
        threading.Thread(target=work, name=f"ollama-img-load-{i}", daemon=True)
        for i in range(max(1, min(threads, len(groups))))
    ]
    for worker in workers:
        worker.start()
    running = len(workers)
    while running:
        arrays = ready.get()
        if arrays is None:
            running -= 1
        elif not errors:
            try:
                handle(arrays)
            except BaseException as exc:
                with lock:
                    errors.append(exc)
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]
    return results
