"""How `pull`, `push` and `create` show their progress on stderr: one rich display on a terminal, plain
lines elsewhere.

The display has one row per phase (downloading, importing or quantizing, uploading) with its bytes,
files (or tensors), speed and time left. It is fed from several transfer threads at once, so counts sit behind a lock
(rich's own updates are thread-safe).
"""

import sys
import threading

from ollama_img.formatting import human_bytes


class TransferDisplay:
    """A `TransferProgress` for people: `with TransferDisplay("pulling 'x'") as display: ...`."""

    PLAIN_STEP = 10  # percent between plain lines

    def __init__(self, title: str, stream=None):
        self.title = title
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty()
        self._lock = threading.Lock()
        self._progress = None
        self._task = None
        self._phase = None
        self._total = self._done = 0
        self._files = self._files_done = 0
        self._unit = "files"
        self._next_plain = self.PLAIN_STEP

    def __enter__(self):
        if self.interactive:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TextColumn("{task.fields[files]}/{task.fields[total_files]} {task.fields[unit]}"),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
            )
            self._progress.start()
        else:
            print(self.title, file=self.stream, flush=True)
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.stop()

    # -- TransferProgress ---------------------------------------------------------------------------

    def start(
        self,
        phase: str,
        total_bytes: int,
        total_files: int,
        done_bytes: int = 0,
        unit: str = "files",
        announce: bool = True,
    ):
        """A new row; in plain mode a line saying what it moves, unless `announce` is False (the title did)."""
        with self._lock:
            self._phase, self._total, self._done = phase, total_bytes, done_bytes
            self._files, self._files_done, self._unit = total_files, 0, unit
            self._next_plain = self.PLAIN_STEP
            if self._progress is not None:
                self._task = self._progress.add_task(
                    phase,
                    total=total_bytes,
                    completed=done_bytes,
                    files=0,
                    total_files=total_files,
                    unit=unit,
                )
            elif total_files and announce:
                print(
                    f"  {phase} {total_files} {unit}, {human_bytes(total_bytes)}",
                    file=self.stream,
                    flush=True,
                )

    def advance(self, nbytes: int) -> None:
        with self._lock:
            self._done += nbytes
            if self._progress is not None:
                self._progress.update(self._task, completed=self._done)

    def file_done(self) -> None:
        with self._lock:
            self._files_done += 1
            if self._progress is not None:
                self._progress.update(self._task, files=self._files_done)
                return
            percent = 100 * self._done // (self._total or 1)
            if percent >= self._next_plain or self._files_done == self._files:
                self._next_plain = (percent // self.PLAIN_STEP + 1) * self.PLAIN_STEP
                print(
                    f"  {min(percent, 100):3d}%  {human_bytes(self._done)} of {human_bytes(self._total)}, "
                    f"{self._files_done}/{self._files} {self._unit}",
                    file=self.stream,
                    flush=True,
                )

    # -- the importer's callback (bytes, tensors) ---------------------------------------------------

    def import_callback(self):
        def report(nbytes: int, ntensors: int) -> None:
            if nbytes:
                self.advance(nbytes)
            for _ in range(ntensors):
                self.file_done()

        return report
