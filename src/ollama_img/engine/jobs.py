"""A generation job: what was asked, the events it emits while it waits and runs, and how it ended.

Events travel from the MLX worker thread to the HTTP handler through an asyncio queue owned by the
event loop; the worker posts with `call_soon_threadsafe`. Cancelling is a flag the worker checks
between denoising steps, so a job stops at the next step boundary.
"""

import asyncio
import itertools
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from ollama_img.engine.params import GenerateParams

_ids = itertools.count(1)


class JobCancelled(Exception):
    """Raised inside the worker (from the step callback) when the client went away."""


@dataclass
class Timings:
    """Seconds spent waiting in the queue, loading the model, generating, and encoding the PNGs."""

    queue: float = 0.0
    load: float = 0.0
    generate: float = 0.0
    encode: float = 0.0

    @property
    def total(self) -> float:
        """From the request to the answer: every part above."""
        return self.queue + self.load + self.generate + self.encode


@dataclass
class Result:
    """What a finished job hands back: one PNG per image, with the seed it was made from."""

    model: str
    digest: str | None
    pngs: list[bytes]
    seeds: list[int]
    width: int
    height: int
    steps: int
    guidance: float | None  # None: the model takes no guidance scale
    timings: Timings


# Event kinds a job emits, in order: QUEUED* LOADING? STEP* then exactly one of DONE / FAILED / CANCELLED.
QUEUED, LOADING, STEP, DONE, FAILED, CANCELLED = "queued", "loading", "step", "done", "failed", "cancelled"
FINAL = {DONE, FAILED, CANCELLED}


@dataclass
class Event:
    kind: str
    position: int = 0  # QUEUED: 1 = next to run
    completed: int = 0  # STEP: steps done over all images
    total: int = 0
    result: Result | None = None  # DONE
    error: Exception | None = None  # FAILED


@dataclass
class Job:
    params: GenerateParams
    digest: str | None  # the manifest the request was checked against
    loop: asyncio.AbstractEventLoop
    adapters_held: tuple[str, int] | None = None  # its own LoRA side paths: (component, elements)
    id: int = field(default_factory=lambda: next(_ids))
    created: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    finished: bool = False

    def emit(self, event: Event):
        """Post an event from the event loop."""
        if self.finished:
            return
        if event.kind in FINAL:
            self.finished = True
        self.events.put_nowait(event)

    def emit_threadsafe(self, event: Event):
        """Post an event from the worker thread."""
        self.loop.call_soon_threadsafe(self.emit, event)

    def cancel(self):
        """Stop at the next step boundary (or never start, if still queued). Safe to call twice."""
        self.cancelled.set()

    def check_cancelled(self):
        if self.cancelled.is_set():
            raise JobCancelled()

    async def stream(self) -> AsyncIterator[Event]:
        """Every event up to and including the final one."""
        while True:
            event = await self.events.get()
            yield event
            if event.kind in FINAL:
                return

    async def outcome(self) -> Event:
        """Wait for the final event, skipping progress."""
        async for event in self.stream():
            if event.kind in FINAL:
                return event
        raise AssertionError("a job stream always ends with a final event")
