"""What a transfer reports while it runs. Plain callbacks, so the transfer code never draws anything.

The CLI turns these into one rich display (bytes, files, speed, ETA); tests use them to observe a
transfer, and to interrupt one at a chosen moment.
"""

from typing import Protocol


class TransferProgress(Protocol):
    def start(self, phase: str, total_bytes: int, total_files: int, done_bytes: int = 0) -> None:
        """A phase begins ("downloading", "uploading"): what it will move, and what needs no moving."""

    def advance(self, nbytes: int) -> None:
        """`nbytes` more bytes moved (negative when a restarted transfer throws bytes away)."""

    def file_done(self) -> None:
        """One more file or blob is complete."""


class NoProgress:
    """A TransferProgress that reports nothing."""

    def start(self, phase: str, total_bytes: int, total_files: int, done_bytes: int = 0) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def file_done(self) -> None:
        pass
