"""The committed completion scripts are what the app generates today, and the app answers them."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ollama_img.cli.completion import COMPLETE_VAR, SCRIPT_FILES, script

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("shell", sorted(SCRIPT_FILES))
def test_committed_scripts_are_up_to_date(shell):
    committed = (ROOT / "completions" / SCRIPT_FILES[shell]).read_text()
    assert committed == script(shell), (
        f"completions/{SCRIPT_FILES[shell]} is stale: run `python -m ollama_img.cli.completion completions`"
    )


def complete(env_extra: dict) -> str:
    env = {**os.environ, COMPLETE_VAR: "", **env_extra}
    code = "from ollama_img.cli.app import main; main()"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_bash_completes_commands_and_options():
    commands = complete(
        {COMPLETE_VAR: "complete_bash", "COMP_WORDS": "ollama-img r", "COMP_CWORD": "1"}
    ).split()
    assert "run" in commands and all(c.startswith("r") for c in commands)
    words = "ollama-img run z-image a --st"
    assert complete({COMPLETE_VAR: "complete_bash", "COMP_WORDS": words, "COMP_CWORD": "4"}).split() == [
        "--steps",
        "--strength",
    ]


def test_fish_completes_commands_with_help():
    out = complete(
        {
            COMPLETE_VAR: "complete_fish",
            "_TYPER_COMPLETE_FISH_ACTION": "get-args",
            "_TYPER_COMPLETE_ARGS": "ollama-img s",
        }
    )
    helps = dict(line.split("\t", 1) for line in out.splitlines())
    assert {"stop", "serve"} <= set(helps) and all(name.startswith("s") for name in helps)
    assert helps["stop"] == "Unload a model from the engine now."
