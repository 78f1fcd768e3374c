"""MLX and the back end it runs on: a clear message when MLX has none, what its first import needs, and
the switches that depend on the back end.

Model code asks here, not MLX directly, whether to use the custom CUDA kernels and whether to
`mx.compile` its step, so every family decides the same way.
"""

import sys

from ollama_img.errors import UserError

_NO_BACKEND = (
    "MLX is installed without a back end ({detail}); reinstall with the extra for this machine: "
    "pip install 'ollama-img[cpu]' (CPU) or 'ollama-img[cuda]' (NVIDIA GPU, CUDA 13; 'cuda12' for CUDA 12)"
)


def require_mlx():
    """Import and return `mlx.core`, or raise a UserError that names the extras to install.

    The first import also sets up what must precede it (persistent compile caches) and what must
    follow it (OpenBLAS under MLX's CPU matrix products), for the engine and the Python API alike.
    """
    if "mlx.core" not in sys.modules:
        from ollama_img import caches

        caches.configure()
    try:
        import mlx.core as mx
    except ImportError as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(_NO_BACKEND.format(detail=detail)) from None
    from ollama_img import cpu_blas

    cpu_blas.install()
    return mx


def processor_name() -> str:
    """What `ps` shows in its PROCESSOR column for the default MLX device."""
    mx = require_mlx()
    return "100% GPU" if mx.default_device() == mx.gpu else "100% CPU"


def platform_backend() -> str:
    """A short name for the back end MLX runs on: metal, cuda or cpu."""
    mx = require_mlx()
    if mx.default_device() != mx.gpu:
        return "cpu"
    return "metal" if sys.platform == "darwin" else "cuda"


def use_cuda_kernels() -> bool:
    """Whether custom `mx.fast.cuda_kernel`s run: on the GPU of a CUDA build (elsewhere, plain MLX ops)."""
    mx = require_mlx()
    return mx.default_device() == mx.gpu and mx.cuda.is_available()


def compile_steps() -> bool:
    """Whether a pipeline `mx.compile`s its denoising step: on Metal only.

    There compiling fuses the elementwise work; on CUDA the fused kernels already do that and the
    compiled Z-Image step measured slower (H100, 1024x1024: 100.8 ms against 97.7 ms eager); on the
    CPU MLX compiles with the system C++ compiler, which costs more than it saves.
    """
    return platform_backend() == "metal"
