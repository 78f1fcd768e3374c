"""One CLI command with a timeline of where its wall time goes: imports, the request, the stream, exit.

    python bench/cli_timeline.py MARKS.json ARGS...     # as `ollama-img ARGS...`

Runs the real console entry point (`cli.console.entry`) in this process, watching from outside (the
package is not changed) its socket calls and its imports: when the generate request left (the first
send of a `POST /api/generate`, early or not), when the CLI's Typer app had been imported, when the last
bytes of the engine's answer came in, when the command returned. The marks are wall-clock times
(time.time()), written to MARKS.json at exit so that the caller, which knows when it started the
process, can place interpreter start-up and exit.
"""

import atexit
import importlib.abc
import importlib.machinery
import json
import socket
import sys
import time

MARKS: dict[str, float] = {}


def _mark(name: str):
    MARKS[name] = time.time()


def _watch_sockets():
    sendall, recv_into = socket.socket.sendall, socket.socket.recv_into

    def watched_sendall(self, data, *args):
        if "request sent" not in MARKS and bytes(data[:64]).startswith(b"POST /api/generate"):
            _mark("request sent")
        return sendall(self, data, *args)

    def watched_recv_into(self, buffer, *args):
        count = recv_into(self, buffer, *args)
        _mark("last bytes in")
        return count

    socket.socket.sendall = watched_sendall
    socket.socket.recv_into = watched_recv_into


class _MarkWhenImported(importlib.abc.MetaPathFinder):
    """Marks "CLI imported" once the module `name` has run (the Typer app and its commands' imports)."""

    def __init__(self, name: str):
        self.name = name

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            exec_module = spec.loader.exec_module

            def marked(module):
                exec_module(module)
                _mark("CLI imported")

            spec.loader.exec_module = marked
        return spec


def phases(marks: dict[str, float], started: float, ended: float, engine_total: float) -> dict[str, float]:
    """Seconds per phase of one traced command, from the marks and the caller's own clock: before the
    request (the interpreter and what the command does before its request leaves: with an engine
    running, `run` sends it before importing the CLI), the engine (request sent to last bytes in, less
    the engine's own total: the trip and the engine's queueing), after (decoding, saving, reporting)
    and exit; and, apart, when the CLI's import was done (from the start)."""
    sent, last = marks["request sent"], marks["last bytes in"]
    return {
        "before request": sent - started,
        "engine total": engine_total,
        "trip": (last - sent) - engine_total,
        "after": marks["command returned"] - last,
        "exit": ended - marks["command returned"],
        "CLI imported at": marks["CLI imported"] - started,
    }


def main():
    out, args = sys.argv[1], sys.argv[2:]
    _mark("interpreter ready")
    atexit.register(_write, out)  # the console entry runs the exit handlers before its quick exit
    _watch_sockets()
    sys.meta_path.insert(0, _MarkWhenImported("ollama_img.cli.app"))
    from ollama_img.cli import console

    def command_returned(*args, **kwargs):
        _mark("command returned")
        return atexit_run(*args, **kwargs)

    atexit_run = atexit._run_exitfuncs
    atexit._run_exitfuncs = command_returned  # the entry runs them once its command is done
    sys.argv = ["ollama-img", *args]
    console.entry()


def _write(out: str):
    with open(out, "w") as file:
        file.write(json.dumps(MARKS))


if __name__ == "__main__":
    main()
