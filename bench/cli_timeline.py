"""One CLI command with a timeline of where its wall time goes: imports, the request, the stream, exit.

    python bench/cli_timeline.py MARKS.json ARGS...     # as `ollama-img ARGS...`

Runs the real console entry point (`entry`) in this process, watching its socket calls from outside (the
package is not changed): when the CLI module was imported, when the generate request left (the
last request body sent), when the last bytes of the engine's answer came in, when the command
returned. The marks are wall-clock times (time.time()), written to MARKS.json at exit so
that the caller, which knows when it started the process, can place interpreter start-up and exit.
"""

import atexit
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
        _mark("request sent")  # the last send is the generate request's body
        return sendall(self, data, *args)

    def watched_recv_into(self, buffer, *args):
        count = recv_into(self, buffer, *args)
        _mark("last bytes in")
        return count

    socket.socket.sendall = watched_sendall
    socket.socket.recv_into = watched_recv_into


def main():
    out, args = sys.argv[1], sys.argv[2:]
    _mark("interpreter ready")
    atexit.register(_write, out)  # the console entry runs the exit handlers before its quick exit
    _watch_sockets()
    from ollama_img.cli import app

    _mark("CLI imported")
    command = app.main

    def marked_command():
        try:
            command()
        finally:
            _mark("command returned")

    app.main = marked_command  # entry() finds main among its module's globals
    sys.argv = ["ollama-img", *args]
    app.entry()


def _write(out: str):
    with open(out, "w") as file:
        file.write(json.dumps(MARKS))


def phases(marks: dict[str, float], started: float, ended: float, engine_total: float) -> dict[str, float]:
    """Seconds per phase of one traced command, from the marks and the caller's own clock: start-up
    (interpreter and CLI import), before the request (commands, flags, checks, connecting), the engine
    (request sent to last bytes in, less the engine's own total: the trip and the engine's queueing),
    after (decoding, saving, reporting) and exit."""
    sent, last = marks["request sent"], marks["last bytes in"]
    return {
        "start-up": marks["CLI imported"] - started,
        "before request": sent - marks["CLI imported"],
        "engine total": engine_total,
        "trip": (last - sent) - engine_total,
        "after": marks["command returned"] - last,
        "exit": ended - marks["command returned"],
    }


if __name__ == "__main__":
    main()
