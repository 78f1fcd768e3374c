"""MLX installed without a back end (plain `mlx` on Linux): one line naming the extras, and the store works.

Decision: no store command imports MLX (importing a model is byte copying), so the back-end check lives
in the commands that run models. Here a subprocess shadows `mlx` with a package whose `mlx.core` fails
the way plain `mlx` fails on Linux, then runs a command that needs MLX through the real entry point,
and the store commands, which must not care.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

NEEDS_MLX = """
from ollama_img.backend import require_mlx
from ollama_img.cli.app import app, main

@app.command("needs-mlx")
def needs_mlx():
    require_mlx()

main(["needs-mlx"])
"""


@pytest.fixture
def mlx_without_backend(tmp_path) -> dict:
    shadow = tmp_path / "shadow" / "mlx"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")
    (shadow / "core.py").write_text(
        'raise ImportError("libmlx.so: cannot open shared object file: No such file or directory")\n'
    )
    return dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(shadow.parent), str(ROOT / "src"), str(ROOT)]),
        OLLAMA_IMG_MODELS=str(tmp_path / "store"),
    )


def _run(env, *args):
    return subprocess.run(
        [sys.executable, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_a_command_that_needs_mlx_names_the_extras(mlx_without_backend):
    result = _run(mlx_without_backend, "-c", NEEDS_MLX)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: MLX is installed without a back end (libmlx.so: cannot open")
    assert "ollama-img[cpu]" in lines[0] and "ollama-img[cuda]" in lines[0]


def test_store_commands_never_import_mlx(mlx_without_backend, tiny_folder):
    env = mlx_without_backend
    created = _run(env, "-m", "ollama_img", "create", "z", "-f", str(tiny_folder))
    assert created.returncode == 0, created.stderr
    for args in (["list"], ["show", "z"], ["cp", "z", "y"], ["rm", "z", "y"]):
        result = _run(env, "-m", "ollama_img", *args)
        assert result.returncode == 0, (args, result.stderr)
