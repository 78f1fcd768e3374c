"""Where a load or a generation spends its time: named phases with their seconds.

Loads report resolve, read, build and eval; generations text, denoise and decode. The engine records
them; the code marks its phases with `phase(name)` (or `@timed(name)`), which costs next to nothing
when nobody records, as under the Python API. Phases may nest: each counts only its own time, an
inner phase's seconds are taken out of the outer one's, so the figures add up to the whole. A name
used twice adds up.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Iterator

_local = threading.local()


class PhaseTimer:
    """The phases of one load or generation, in the order they first ended."""

    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self.phases: dict[str, float] = {}
        self._inner: list[float] = []  # per open phase: seconds its inner phases took

    def add(self, name: str, seconds: float):
        self.phases[name] = self.phases.get(name, 0.0) + seconds

    def summary(self) -> str:
        return ", ".join(f"{name} {seconds:.2f} s" for name, seconds in self.phases.items())


@contextlib.contextmanager
def recording(clock=time.perf_counter) -> Iterator[PhaseTimer]:
    """Record the phases that code on this thread marks until the block ends."""
    timer = PhaseTimer(clock)
    previous = getattr(_local, "timer", None)
    _local.timer = timer
    try:
        yield timer
    finally:
        _local.timer = previous


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Count the block's time (less that of phases inside it) as `name`, if a recording is on."""
    timer: PhaseTimer | None = getattr(_local, "timer", None)
    if timer is None:
        yield
        return
    timer._inner.append(0.0)
    started = timer.clock()
    try:
        yield
    finally:
        elapsed = timer.clock() - started
        inner = timer._inner.pop()
        timer.add(name, elapsed - inner)
        if timer._inner:
            timer._inner[-1] += elapsed


def timed(name: str):
    """Decorator form of `phase`."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            with phase(name):
                return fn(*args, **kwargs)

        return run

    return wrap
