"""The console script `ollama-img`: a warm `run`'s request first, then the Typer app, then a quick exit.

Nothing here imports Typer before a `run`'s request has gone to a running engine (`cli.early_run`): the
image is being made while the command starts.
"""

import sys


def entry():
    """`main()`, after sending a `run`'s request early, then a quick exit.

    Tearing the interpreter down (every module's objects, a last garbage collection) costs about 50 ms
    after a `run`, which a person waits for on every image. Nothing in it is needed once the command is
    done: the exit handlers still run, then the streams are flushed and the process ends. A command that
    left threads running exits the usual way, which waits for them."""
    if sys.argv[1:2] == ["run"]:
        from ollama_img.cli import early_run

        early_run.send(sys.argv[2:])
    import atexit
    import contextlib
    import os
    import threading

    from ollama_img.cli.app import main

    code = 0
    try:
        main()  # ends in SystemExit
    except SystemExit as exc:
        if threading.active_count() > 1:
            raise
        code = exc.code
    finally:
        early = sys.modules.get("ollama_img.cli.early_run")
        if early is not None:
            early.discard()  # a request the command did not take is cancelled
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed, or its reader is gone: nothing reaches it
            stream.flush()
    os._exit(code or 0)
