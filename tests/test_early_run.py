"""`run`'s early request (`cli.early_run`): sent by the console entry before the CLI is imported, adopted
only when the command's own request is the same, cancelled otherwise. Against a real engine."""

import re
import sys
from pathlib import Path

import pytest

from ollama_img.cli import early_run
from ollama_img.engine.client import EngineClient
from tests.fixtures.engine_env import EngineEnv

JOB = re.compile(r"job (\d+) (done|cancelled|failed)")


def jobs(world: EngineEnv) -> list[tuple[int, str]]:
    """The engine's finished jobs so far, from its log: (number, how it ended)."""
    return [(int(n), how) for n, how in JOB.findall(world.log_text())]


@pytest.fixture
def world(tmp_path, tiny_folder):
    env = EngineEnv(tmp_path, PYTHONPATH=str(Path(__file__).resolve().parent.parent / "src"))
    env.create("tiny", tiny_folder)
    env.start_engine()
    yield env
    env.close()


@pytest.fixture
def in_world(world, monkeypatch):
    """This process sees the world's store and engine socket (for calling early_run directly)."""
    for key, value in world.env.items():
        if key.startswith(("OLLAMA_IMG_", "XDG_")) or key == "HOME":
            monkeypatch.setenv(key, value)
    yield world
    early_run.discard()


@pytest.mark.parametrize(
    "args",
    [
        ["tiny"],  # no prompt: interactive, or stdin
        ["tiny", "   "],
        ["tiny", "a cat", "--image", "x.png"],
        ["tiny", "a cat", "--lora", "a.safetensors"],
        ["tiny", "a cat", "--teacache"],
        ["tiny", "a cat", "--help"],
        ["tiny", "a cat", "--no-such-flag", "1"],
        ["tiny", "a cat", "-n3"],
        ["tiny", "a cat", "--size", "64by64"],
        ["tiny", "a cat", "--steps", "many"],
        ["tiny", "a cat", "--steps"],
        ["Not A Name!", "a cat"],
    ],
    ids=lambda args: " ".join(args),
)
def test_what_it_does_not_read_sends_nothing(args):
    assert early_run.request_body(args) is None


def test_it_reads_the_flags_as_the_command_does():
    body = early_run.request_body(
        ["tiny", "a", "--steps=3", "cat", "--size", "64x32", "-n", "2", "--guidance", "1", "-o", "out/"]
        + ["--no-open", "--negative", "", "--keepalive", "5m", "--", "--not-a-flag"]
    )
    assert body == {
        "model": "tiny:latest",
        "prompt": "a cat --not-a-flag",
        "width": 64,
        "height": 32,
        "steps": 3,
        "guidance": 1.0,
        "negative_prompt": "",
        "n": 2,
        "keep_alive": "5m",
        "stream": True,
        "raw_images": True,
    }


@pytest.mark.parametrize(
    "args",
    [
        ["a cat", "--size", "64x64", "--steps", "2", "--seed", "3", "--no-open"],
        ["--steps=2", "a", "cat", "--size=64x32", "-n", "2", "--guidance", "0", "-o", "many/"],
        ["  a cat  ", "--format", "json", "--steps", "2", "--size", "64x64", "--keepalive", "5m"],
    ],
    ids=["plain", "interspersed", "json"],
)
def test_the_command_adopts_the_early_request(world, args):
    """The engine makes one job per run and cancels none: the command read the answer to the request the
    entry sent, instead of sending its own."""
    (world.work / "many").mkdir()
    before = jobs(world)
    done = world.cli("run", "tiny", *args)
    assert done.returncode == 0, done.stderr
    new = jobs(world)[len(before) :]
    assert [how for _, how in new] == ["done"], world.log_text()[-2000:]
    assert list(world.work.rglob("*.png"))


def test_a_command_that_fails_its_checks_cancels_the_early_request(world):
    before = jobs(world)
    done = world.cli("run", "tiny", "a cat", "--steps", "2", "--size", "64x64", "-o", "no/such/x.png")
    assert done.returncode == 1
    assert done.stderr.startswith("Error: ") and done.stderr.count("\n") == 1
    world.wait_for(lambda: len(jobs(world)) > len(before), what="the early job to end")
    assert [how for _, how in jobs(world)[len(before) :]] == ["cancelled"]
    again = world.cli("run", "tiny", "a cat", "--steps", "2", "--size", "64x64")
    assert again.returncode == 0, again.stderr  # the engine serves the next one


def test_an_early_request_for_another_body_is_cancelled(in_world):
    world = in_world
    args = ["tiny", "a cat", "--steps", "2", "--size", "64x64"]
    before = jobs(world)
    assert early_run.send(args)
    other = {**early_run.request_body(args), "seed": 7}
    assert early_run.take(other) is None
    world.wait_for(lambda: len(jobs(world)) > len(before), what="the early job to end")
    assert [how for _, how in jobs(world)[len(before) :]] == ["cancelled"]
    assert early_run.take(early_run.request_body(args)) is None  # nothing left to take


def test_an_early_request_the_engine_refused_is_asked_again(in_world, tiny_folder):
    """The early request named a model the store did not have yet (the command pulls it first): its 404
    is not the answer; the client asks again."""
    world = in_world
    args = ["later", "a cat", "--steps", "2", "--size", "64x64"]
    body = early_run.request_body(args)
    assert early_run.send(args)
    world.create("later", tiny_folder)
    sent = early_run.take(body)
    assert sent is not None
    events = list(EngineClient(world.socket).generate(body, sent))
    assert events[-1]["done"] and events[-1]["pngs"][0].startswith(b"\x89PNG")


def test_no_engine_no_early_request(in_world):
    world = in_world
    world.shutdown()
    assert not early_run.send(["tiny", "a cat"])  # the socket is gone
    world.socket.parent.mkdir(parents=True, exist_ok=True)
    world.socket.touch()  # a stale socket file: nothing listens
    assert not early_run.send(["tiny", "a cat"])
    assert early_run.take(early_run.request_body(["tiny", "a cat"])) is None


def test_quick_commands_do_not_load_the_early_request_code(world):
    import subprocess

    probe = (
        "import sys; from ollama_img.cli import console; sys.argv = ['ollama-img', 'ps'];\n"
        "import atexit; atexit.register(lambda: print('EARLY' if 'ollama_img.cli.early_run' in sys.modules else 'NONE'))\n"
        "console.entry()"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env=world.env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("NONE")


def test_an_early_connection_that_broke_is_asked_again(in_world):
    """The engine's answer on the early connection never came (the connection broke): asked again."""
    import socket

    world = in_world
    ours, theirs = socket.socketpair()
    theirs.close()
    body = early_run.request_body(["tiny", "a cat", "--steps", "2", "--size", "64x64"])
    events = list(EngineClient(world.socket).generate(body, ours))
    assert events[-1]["done"] and events[-1]["pngs"][0].startswith(b"\x89PNG")


def test_a_runtime_folder_naming_no_user_fails_in_one_line(world):
    """The console entry's early request gives way to the command's own error for a bad variable."""
    env = {**world.env, "OLLAMA_IMG_RUNTIME_DIR": "~no-such-user-here/run"}
    import subprocess

    done = subprocess.run(
        world.command("run", "tiny", "a cat"),
        env=env,
        cwd=world.work,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("Error: OLLAMA_IMG_RUNTIME_DIR")
