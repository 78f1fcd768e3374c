"""The store lock: writers share it, garbage collection takes it alone.

`create` and `cp` hold the lock shared from before they write their first blob until their manifest
is in place; `rm` holds it exclusively while it removes manifests and collects unreferenced blobs. So
garbage collection never sees a blob that an import in progress is about to reference. It is an
advisory `flock` on a file in the store root (MLX runs on macOS and Linux only); the kernel releases it
when the holder dies, so a killed `create` never leaves the store locked.
"""

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE_NAME = ".lock"


@contextmanager
def store_lock(root: Path, exclusive: bool, blocking: bool = True):
    """Hold the store lock (creating the store root if needed) for the duration of the block.

    Yields True; with `blocking=False`, yields False at once instead of waiting if someone else holds it.
    """
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_FILE_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(fd, mode if blocking else mode | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
        else:
            yield True
    finally:
        os.close(fd)  # closing the last descriptor releases the flock


@contextmanager
def shared_lock_with_cleanup(root: Path, cleanup):
    """Hold the lock shared; if nobody else holds it right now, first run `cleanup()` exclusively.

    This lets `create` sweep away temporary files of killed writers without waiting for anyone:
    while it holds the lock exclusively no writer can be running.
    """
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_FILE_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            cleanup()
        fcntl.flock(fd, fcntl.LOCK_SH)  # converts an exclusive lock, or waits for one held elsewhere
        yield
    finally:
        os.close(fd)
