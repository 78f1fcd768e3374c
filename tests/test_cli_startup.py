"""The CLI starts without the heavy libraries: no MLX, PIL or numpy (nor httpx, rich, pydantic) for
importing it, `--help`, `ps` and `list`. Start-up time itself is measured by bench/cli_startup.py."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.engine_env import EngineEnv

HEAVY = ("mlx", "PIL", "numpy", "httpx", "rich", "pydantic", "filelock")

# Runs the real entry point, then reports which top-level packages the process imported.
PROBE = """
import atexit, json, sys
atexit.register(lambda: sys.__stderr__.write("MODULES " + json.dumps(sorted({m.split(".")[0] for m in sys.modules})) + "\\n"))
from ollama_img.cli.app import main
main(sys.argv[1:])
"""


def imported_by(world: EngineEnv, *args: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        env=world.env,
        cwd=world.work,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stderr.splitlines() if x.startswith("MODULES "))
    return set(json.loads(line.removeprefix("MODULES ")))


@pytest.fixture
def world(tmp_path, tiny_folder):
    env = EngineEnv(tmp_path, PYTHONPATH=str(Path(__file__).resolve().parent.parent / "src"))
    done = env.cli("create", "tiny", "-f", str(tiny_folder))
    assert done.returncode == 0, done.stderr
    yield env
    env.close()


def test_importing_the_cli_loads_no_heavy_library(world):
    code = "import json, sys; from ollama_img.cli import app; app._register_commands(); print(json.dumps(list(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], env=world.env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    loaded = {m.split(".")[0] for m in json.loads(done.stdout)}
    assert "ollama_img" in loaded
    assert not loaded & set(HEAVY)


@pytest.mark.parametrize("args", [("--help",), ("ps",), ("list",), ("--version",)], ids=" ".join)
def test_quick_commands_load_no_heavy_library(world, args):
    loaded = imported_by(world, *args)
    assert "typer" in loaded  # the probe saw the real CLI run
    assert not loaded & set(HEAVY), f"{' '.join(args)} imported {sorted(loaded & set(HEAVY))}"


def test_ps_against_a_running_engine_loads_no_heavy_library(world):
    world.start_engine()
    done = world.cli("run", "tiny", "a red fox", "--size", "64x64", "--steps", "1", "-o", "fox.png")
    assert done.returncode == 0, done.stderr
    loaded = imported_by(world, "ps")
    assert not loaded & set(HEAVY)
    table = world.cli("ps").stdout
    assert "tiny:latest" in table  # the stdlib client read the engine's answer


def test_registering_the_commands_leaves_the_model_families_unimported(world):
    """`run` at a model's own size sends its request without importing the families' declarations (about
    40 ms): a size, a strength or a LoRA given, or a store command, imports them when it needs them."""
    code = (
        "import json, sys; from ollama_img.cli import app; app._register_commands(); "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('ollama_img.models'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=world.env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


class QuickExit(Exception):
    def __init__(self, code):
        self.code = code


@pytest.fixture
def quick_exit(monkeypatch):
    """entry()'s os._exit, caught: the status it would end the process with."""

    def caught(code):
        raise QuickExit(code)

    monkeypatch.setattr("os._exit", caught)


@pytest.mark.parametrize(
    "argv, code",
    [(["--version"], 0), (["rm", "no-such-model"], 1), (["run", "--no-such-flag"], 2)],
    ids=["done", "user error", "usage error"],
)
def test_the_console_entry_ends_with_the_commands_status(world, quick_exit, monkeypatch, capsys, argv, code):
    from ollama_img.cli import console

    for key, value in world.env.items():
        if key.startswith(("OLLAMA_IMG_", "XDG_", "HOME")):
            monkeypatch.setenv(key, value)
    ran = []
    monkeypatch.setattr("atexit._run_exitfuncs", lambda: ran.append(True))
    monkeypatch.setattr("threading.active_count", lambda: 1)  # this process's other threads (another
    # test's PNG pool) are not the command's
    monkeypatch.setattr("sys.argv", ["ollama-img", *argv])
    with pytest.raises(QuickExit) as ended:
        console.entry()
    assert ended.value.code == code
    assert ran == [True]  # the exit handlers ran before the quick exit
    if code == 1:
        assert capsys.readouterr().err.startswith("Error: ")


def test_the_console_entry_waits_for_threads_left_running(quick_exit, monkeypatch):
    """A command that leaves a thread running exits the usual way (SystemExit), which waits for it."""
    import threading

    from ollama_img.cli import console

    release = threading.Event()
    worker = threading.Thread(target=release.wait)
    worker.start()
    try:
        monkeypatch.setattr("sys.argv", ["ollama-img", "--version"])
        with pytest.raises(SystemExit) as ended:
            console.entry()
        assert ended.value.code == 0
    finally:
        release.set()
        worker.join()


def test_the_console_script_flushes_what_it_printed(world):
    """`python -m ollama_img` (the console script's entry): piped output arrives whole, then the status."""
    done = world.cli("list")
    assert done.returncode == 0, done.stderr
    assert "tiny:latest" in done.stdout and done.stdout.endswith("\n")
    missing = world.cli("show", "no-such-model")
    assert missing.returncode == 1
    assert missing.stderr.strip().count("\n") == 0 and missing.stderr.startswith("Error: ")
