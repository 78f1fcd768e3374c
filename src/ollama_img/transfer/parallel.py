"""Run transfer jobs a few at a time on daemon threads.

Daemon threads, not a ThreadPoolExecutor: the interpreter waits for an executor's threads at exit, so a
Ctrl-C during a download stalled on a slow server would hang until its read timed out. Here the first
failure (or Ctrl-C in the main thread) sets `stop`, which jobs check between chunks, and is raised
(after the other jobs stopped, except on Ctrl-C).
"""

import queue
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
JOIN_TIMEOUT = 10.0  # seconds to wait for the other jobs to stop after one failed


def run_parallel(
    jobs: list[Callable[[], T]],
    workers: int,
    stop: threading.Event | None = None,
    on_done: Callable[[T], None] | None = None,
) -> list[T]:
    """Results in the jobs' order; `on_done(result)` is called in the calling thread as each finishes."""
    stop = stop or threading.Event()
    todo: queue.Queue = queue.Queue()
    for index, job in enumerate(jobs):
        todo.put((index, job))
    finished: queue.Queue = queue.Queue()

    def work():
        while not stop.is_set():
            try:
                index, job = todo.get_nowait()
            except queue.Empty:
                return
            try:
                finished.put((index, True, job()))
            except BaseException as exc:  # handed to the calling thread
                finished.put((index, False, exc))

    threads = [
        threading.Thread(target=work, daemon=True, name="transfer") for _ in range(min(workers, len(jobs)))
    ]
    for thread in threads:
        thread.start()
    results: list = [None] * len(jobs)
    try:
        for _ in jobs:
            index, ok, value = finished.get()
            if not ok:
                raise value
            results[index] = value
            if on_done is not None:
                on_done(value)
    except BaseException as exc:
        stop.set()
        if not isinstance(exc, KeyboardInterrupt):  # let the others drop their partial work tidily
            for thread in threads:
                thread.join(JOIN_TIMEOUT)
        raise
    return results
