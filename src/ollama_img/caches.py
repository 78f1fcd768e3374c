"""Compile caches that outlive the engine and the reboot: MLX's CUDA kernels and the CUDA driver's JIT.

MLX compiles its CUDA kernels (NVRTC) the first time each is needed, about 40 s for Z-Image, and keeps
them in `/tmp/mlx/<version>/ptx` unless `MLX_PTX_CACHE_DIR` names another folder; where /tmp is a tmpfs
every reboot pays that again. The CUDA driver keeps what it JIT-compiles from PTX in `CUDA_CACHE_PATH`
(256 MiB by default). Both go into the user's cache folder instead (`OLLAMA_IMG_CACHE_DIR` moves it):

    <cache>/mlx/<mlx version>/sm_<compute capability>/   MLX_PTX_CACHE_DIR
    <cache>/cuda/                                        CUDA_CACHE_PATH, CUDA_CACHE_MAXSIZE
    <cache>/kernels/sm_<compute capability>[a]/          ollama-img's own kernels (`cuda_kernels`)

The MLX folder is per GPU architecture because MLX stores device code (cubins) under names that do
not say which GPU they were built for: a home folder shared by machines with different GPUs would
otherwise hand one GPU the other's kernels. A variable the user set wins. Nothing is set or written on
a machine without an NVIDIA driver, nor on macOS (Metal needs neither cache).

Everything here must run before MLX is imported (the driver reads its variables once, at cuInit).
"""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ollama_img.paths import cache_dir

MLX_ENV = "MLX_PTX_CACHE_DIR"
CUDA_PATH_ENV = "CUDA_CACHE_PATH"
CUDA_SIZE_ENV = "CUDA_CACHE_MAXSIZE"
# The driver's own default is 256 MiB. MLX's CUDA wheel carries device code for the common GPUs, so on
# those the driver JIT-compiles little; on a GPU it has no device code for, every MLX, cuBLAS and cuDNN
# kernel a generation uses is compiled from PTX, which can outgrow 256 MiB and then recompiles at every
# start. 1 GiB holds that with room to spare and bounds the disk it takes (the driver's limit is 4 GiB).
CUDA_CACHE_BYTES = 1 << 30


@dataclass
class CompileCaches:
    """What the process's compile caches are, and which of them ollama-img chose."""

    settings: dict[str, str] = field(default_factory=dict)  # the variables we set
    kept: dict[str, str] = field(default_factory=dict)  # the user's own, left alone

    @property
    def mlx_dir(self) -> Path | None:
        value = self.settings.get(MLX_ENV) or self.kept.get(MLX_ENV)
        return Path(value) if value else None

    def describe(self) -> str:
        if not self.settings and not self.kept:
            return "no GPU compile caches (no NVIDIA driver)"
        parts = [f"{name}={value}" for name, value in {**self.settings, **self.kept}.items()]
        return "compile caches: " + ", ".join(parts)

    def mlx_cache_empty(self) -> bool:
        """True when MLX has no compiled kernel cached yet, so the first image compiles them."""
        folder = self.mlx_dir
        return folder is not None and not (folder.is_dir() and any(folder.iterdir()))


def driver_settings(environ, root: Path) -> CompileCaches:
    """The CUDA driver's cache variables for this process (pure: nothing is touched)."""
    caches = CompileCaches()
    if environ.get(CUDA_PATH_ENV):  # the user moved the driver's cache, and sized it as they wished
        caches.kept[CUDA_PATH_ENV] = environ[CUDA_PATH_ENV]
    else:
        caches.settings[CUDA_PATH_ENV] = str(root / "cuda")
        if not environ.get(CUDA_SIZE_ENV):
            caches.settings[CUDA_SIZE_ENV] = str(CUDA_CACHE_BYTES)
    return caches


def mlx_settings(
    environ, root: Path, *, mlx_version: str, compute_capability: tuple[int, int]
) -> CompileCaches:
    """MLX's kernel cache variable for this process and GPU architecture (pure)."""
    caches = CompileCaches()
    if environ.get(MLX_ENV):
        caches.kept[MLX_ENV] = environ[MLX_ENV]
    else:
        major, minor = compute_capability
        caches.settings[MLX_ENV] = str(root / "mlx" / mlx_version / f"sm_{major}{minor}")
    return caches


def make_private_dirs(folders) -> None:
    """Create each folder, and any missing parent, readable by the user alone (0700); existing ones stay."""
    for folder in folders:
        folder = Path(folder)
        for path in reversed([p for p in (folder, *folder.parents) if not p.exists()]):
            path.mkdir(mode=0o700, exist_ok=True)


_configured: CompileCaches | None = None


def configure() -> CompileCaches:
    """Point MLX and the CUDA driver at the persistent caches; once per process, before MLX is imported."""
    global _configured
    if _configured is None:
        _configured = configure_environ(os.environ, probe_gpu)
    return _configured


def configure_environ(environ, probe) -> CompileCaches:
    """Set the caches' variables in `environ` and create their folders, where `probe()` finds a GPU.

    `probe` returns device 0's compute capability, or None without an NVIDIA GPU; it is called after the
    driver's variables are set, since the driver reads them when it starts.
    """
    if not sys.platform.startswith("linux"):
        return CompileCaches()
    root = cache_dir()
    caches = driver_settings(environ, root)
    environ.update(caches.settings)
    capability = probe()
    if capability is None:  # no NVIDIA GPU: nothing to cache, nothing set
        for name in caches.settings:
            environ.pop(name, None)
        return CompileCaches()
    mlx = mlx_settings(environ, root, mlx_version=_mlx_version(), compute_capability=capability)
    caches.settings.update(mlx.settings)
    caches.kept.update(mlx.kept)
    make_private_dirs(caches.settings[n] for n in (MLX_ENV, CUDA_PATH_ENV) if n in caches.settings)
    environ.update(caches.settings)
    return caches


def probe_gpu() -> tuple[int, int] | None:
    """Device 0's compute capability through the CUDA driver, or None where there is none."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    return gpu_compute_capability(cuda)


def gpu_compute_capability(cuda: ctypes.CDLL) -> tuple[int, int] | None:
    """Device 0's compute capability from the CUDA driver library, or None when it has no GPU."""
    count, device, major, minor = (ctypes.c_int() for _ in range(4))
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return None
    if cuda.cuDeviceGet(ctypes.byref(device), 0) != 0:
        return None
    for value, attribute in ((major, 75), (minor, 76)):  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_*
        if cuda.cuDeviceGetAttribute(ctypes.byref(value), attribute, device) != 0:
            return None
    return major.value, minor.value


def _mlx_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mlx")
    except PackageNotFoundError:
        return "unknown"
