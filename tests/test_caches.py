"""Persistent compile caches: where they go, who may read them, and that a user's own choice wins.

The GPU probe is the one boundary faked here (CI has no GPU); everything else runs for real.
"""

import os
import stat
import subprocess
import sys

import pytest

from ollama_img import caches


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A clean process environment with the user's cache folder in a temp dir."""
    for name in (caches.MLX_ENV, caches.CUDA_PATH_ENV, caches.CUDA_SIZE_ENV, "OLLAMA_IMG_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return os.environ


def gpu(environ, capability=(9, 0)):
    """A probe that finds a GPU, and checks the driver's variables were set before it ran (cuInit reads them)."""

    def probe():
        assert environ.get(caches.CUDA_PATH_ENV), "the driver's cache must be set before cuInit"
        return capability

    return probe


def private(path) -> bool:
    info = path.stat()
    return info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) == 0o700


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the CUDA caches exist on Linux only")
def test_with_a_gpu_the_caches_live_in_the_users_cache_folder(env, tmp_path):
    result = caches.configure_environ(env, gpu(env, (9, 0)))
    root = tmp_path / "xdg-cache" / "ollama-img"
    mlx_dir = root / "mlx" / caches._mlx_version() / "sm_90"
    assert env[caches.MLX_ENV] == str(mlx_dir)
    assert env[caches.CUDA_PATH_ENV] == str(root / "cuda")
    assert (
        int(env[caches.CUDA_SIZE_ENV]) == caches.CUDA_CACHE_BYTES > 256 << 20
    )  # more than the driver's default
    for folder in (mlx_dir, root / "cuda", root):
        assert folder.is_dir() and private(folder), folder
    assert result.mlx_dir == mlx_dir and result.mlx_cache_empty()
    (mlx_dir / "binary_ops.ptx").write_bytes(b"compiled")
    assert not result.mlx_cache_empty()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the CUDA caches exist on Linux only")
def test_each_gpu_architecture_gets_its_own_kernel_folder(env):
    first_env, second_env = dict(env), dict(env)
    first = caches.configure_environ(first_env, gpu(first_env, (8, 0)))
    second = caches.configure_environ(second_env, gpu(second_env, (12, 0)))
    assert first.mlx_dir.name == "sm_80" and second.mlx_dir.name == "sm_120"
    assert first.mlx_dir.parent == second.mlx_dir.parent


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the CUDA caches exist on Linux only")
def test_ollama_img_cache_dir_moves_them(env, tmp_path, monkeypatch):
    moved = tmp_path / "elsewhere" / "caches"
    monkeypatch.setenv("OLLAMA_IMG_CACHE_DIR", str(moved))
    caches.configure_environ(env, gpu(env))
    assert env[caches.MLX_ENV].startswith(str(moved / "mlx"))
    assert env[caches.CUDA_PATH_ENV] == str(moved / "cuda")
    assert private(moved) and private(moved / "cuda")
    assert not (tmp_path / "xdg-cache").exists()  # nothing written where it was not asked


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the CUDA caches exist on Linux only")
def test_the_users_own_variables_win(env, tmp_path, monkeypatch):
    mine = tmp_path / "my-ptx"
    monkeypatch.setenv(caches.MLX_ENV, str(mine))
    monkeypatch.setenv(caches.CUDA_PATH_ENV, str(tmp_path / "my-nv"))
    result = caches.configure_environ(env, gpu(env))
    assert env[caches.MLX_ENV] == str(mine) and env[caches.CUDA_PATH_ENV] == str(tmp_path / "my-nv")
    assert caches.CUDA_SIZE_ENV not in env  # whoever moved the driver's cache sizes it too
    assert result.settings == {} and result.mlx_dir == mine
    assert not (tmp_path / "xdg-cache").exists() and not mine.exists()  # their folders are theirs to make


def test_without_a_gpu_nothing_is_set_or_written(env, tmp_path):
    before = dict(env)
    result = caches.configure_environ(env, lambda: None)
    assert dict(env) == before
    assert result.settings == {} and result.mlx_dir is None and not result.mlx_cache_empty()
    assert not (tmp_path / "xdg-cache").exists()


def test_an_engine_on_this_machine_sets_what_its_gpu_needs(tmp_path):
    """The real probe in a fresh process: with no NVIDIA driver (CI), nothing; with one, the folders."""
    code = (
        "import os; from ollama_img import caches; from ollama_img.backend import require_mlx; require_mlx(); "
        "print(caches.configure().describe()); print(os.environ.get('MLX_PTX_CACHE_DIR', '-'))"
    )
    env = {k: v for k, v in os.environ.items() if k not in (caches.MLX_ENV, caches.CUDA_PATH_ENV)}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    description, mlx_dir = done.stdout.splitlines()
    if caches.probe_gpu() is None:
        assert mlx_dir == "-" and "no GPU" in description
        assert not (tmp_path / "cache").exists()
    else:
        assert mlx_dir.startswith(str(tmp_path / "cache" / "ollama-img" / "mlx"))
