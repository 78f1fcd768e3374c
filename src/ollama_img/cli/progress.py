"""How `run` shows an engine job's progress: a rich bar on a terminal, plain lines anywhere else.

Both read the engine's NDJSON events (queued / loading / generating) and write to stderr, so stdout
carries only results ("Image saved to: ...", JSON, or PNG bytes).
"""

import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text


def describe(event: dict) -> str | None:
    """One line for an event, as the plain view prints it."""
    status = event.get("status")
    if status == "queued":
        return f"Waiting: position {event.get('queue_position')} in the queue"
    if status == "loading":
        return f"Loading {event.get('model')}"
    if status == "generating":
        return f"Generating: step {event.get('completed')}/{event.get('total')}"
    return None


class PlainProgress:
    """A line per change: for logs, pipes and CI."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self._last = None

    def update(self, event: dict):
        line = describe(event)
        if line and line != self._last:
            print(line, file=self.stream, flush=True)
            self._last = line

    def close(self):
        pass


class StepsColumn(ProgressColumn):
    """ "3/9" once the steps are known; nothing while waiting or loading."""

    def render(self, task) -> Text:
        if task.total is None:
            return Text("")
        return Text(f"{int(task.completed)}/{int(task.total)}", style="progress.download")


class StepRateColumn(ProgressColumn):
    """Denoising speed: "2.31 it/s", or "4.20 s/it" when steps take longer than a second."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        if not speed or task.total is None:
            return Text("", style="progress.data.speed")
        label = f"{speed:.2f} it/s" if speed >= 1 else f"{1 / speed:.2f} s/it"
        return Text(label, style="progress.data.speed")


class RichProgress:
    """A transient bar on the terminal: spinner while queued or loading, then step k/N, it/s and ETA."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            StepsColumn(),
            StepRateColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self._task = None
        self._total = None

    def update(self, event: dict):
        status = event.get("status")
        if self._task is None:
            self._progress.start()
            self._task = self._progress.add_task(describe(event) or "Starting", total=None)
        if status in ("queued", "loading"):
            self._progress.update(self._task, description=describe(event), total=None, completed=0)
        elif status == "generating":
            total = event.get("total")
            if total != self._total:
                # A fresh start, so the speed estimate covers denoising only, not loading or waiting.
                self._progress.reset(self._task, total=total, completed=0, description="Generating")
                self._total = total
            self._progress.update(self._task, completed=event.get("completed", 0))

    def close(self):
        if self._task is not None:
            self._progress.stop()
            self._task = None


def make_progress(stream=None):
    """The rich bar when `stream` (stderr by default) is a terminal, else plain lines."""
    stream = stream or sys.stderr
    if stream.isatty():
        return RichProgress(Console(file=stream))
    return PlainProgress(stream)
