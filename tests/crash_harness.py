"""Run `ollama-img ARGS...` and SIGKILL it (or pause it) at a chosen file-system operation.

    python -m tests.crash_harness POINT -- ARGS...

POINT is `<operation>:<n>[:pause]`, counting calls made by this process:
  write:n    kill in the middle of the n-th os.write (half the bytes written: a partial temporary file)
  fsync:n    kill before the n-th os.fsync (a complete temporary file, not yet named)
  link:n     kill right after the n-th os.link (a blob just published, its temporary name still there)
  replace:n  kill right before the n-th os.replace (for `create`: the manifest, when n is the last one)
  replaced:n kill right after the n-th os.replace
With `:pause`, instead of dying the process touches $HARNESS_DIR/paused and waits for $HARNESS_DIR/resume.
The kill is a real SIGKILL of this process, so nothing (no finally block, no atexit) runs after it.
"""

import os
import signal
import sys
import time
from pathlib import Path


def _stop(pause: bool):
    if not pause:
        os.kill(os.getpid(), signal.SIGKILL)
    control = Path(os.environ["HARNESS_DIR"])
    (control / "paused").touch()
    while not (control / "resume").exists():
        time.sleep(0.01)


def install(point: str):
    operation, n, *flags = point.split(":")
    target, pause = int(n), flags == ["pause"]
    calls = {"count": 0}

    def hit() -> bool:
        calls["count"] += 1
        return calls["count"] == target

    original_write, original_fsync = os.write, os.fsync
    original_link, original_replace = os.link, os.replace

    def write(fd, data):
        if operation == "write" and hit():
            original_write(fd, memoryview(data)[: len(data) // 2])
            _stop(pause)
        return original_write(fd, data)

    def fsync(fd):
        if operation == "fsync" and hit():
            _stop(pause)
        return original_fsync(fd)

    def link(src, dst, *args, **kwargs):
        original_link(src, dst, *args, **kwargs)
        if operation == "link" and hit():
            _stop(pause)

    def replace(src, dst, *args, **kwargs):
        if operation == "replace" and hit():
            _stop(pause)
        original_replace(src, dst, *args, **kwargs)
        if operation == "replaced" and hit():
            _stop(pause)

    os.write, os.fsync, os.link, os.replace = write, fsync, link, replace


if __name__ == "__main__":
    point, separator, *args = sys.argv[1:]
    assert separator == "--"
    install(point)
    from ollama_img.cli.app import main

    main(args)
