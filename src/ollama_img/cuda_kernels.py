"""Our own CUDA kernels, compiled once per GPU architecture and kept on disk.

MLX's `mx.fast.cuda_kernel` compiles a kernel's source with NVRTC in every new process (it keeps no disk
cache for custom kernels), and with all of MLX's device headers included: the first Z-Image image after
an engine restart spent 9.8 s there on an H200, while every kernel of MLX's own came from its cache.
Here each kernel is a complete `extern "C"` source that needs only the CUDA half-precision headers. NVRTC
compiles it to a cubin for this GPU once; the cubin is kept under `<cache>/kernels/sm_XY/`, named by a
hash of everything that went into it, and run through `mx.fast.precompiled_cuda_kernel`.

Where NVRTC or the CUDA headers cannot be found, or a compile fails, `compiled()` says so once in the
log and returns None, and the caller computes the same thing with plain MLX ops.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ollama_img.backend import require_mlx

log = logging.getLogger("ollama_img")

_CUDA_TYPES = {"float32": "float", "float16": "__half", "bfloat16": "__nv_bfloat16"}
_HEADER = "#include <cuda_fp16.h>\n#include <cuda_bf16.h>\n\n"
_ELF = b"\x7fELF"  # how every cubin starts


@dataclass(frozen=True)
class KernelSpec:
    """A kernel's name, its parameters in launch order (inputs, outputs, int scalars) and its body.

    In the body `T` is the element type and each constant (template value) a `constexpr`; inputs are
    `const T*` (those in `float_inputs`: `const float*`), outputs `T*`, scalars `int`.
    """

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    scalars: tuple[str, ...]
    body: str
    float_inputs: tuple[str, ...] = ()


def kernel_source(spec: KernelSpec, dtype_name: str, constants: dict[str, int]) -> tuple[str, str]:
    """The kernel's entry point name and complete CUDA source for one element type and set of constants."""
    cuda_type = _CUDA_TYPES[dtype_name]
    # MLX keeps a process's loaded kernels by entry name: the body's digest keeps variants apart (eps)
    body = hashlib.sha256(spec.body.encode()).hexdigest()[:8]
    entry = "_".join([spec.name, dtype_name, *(f"{k}{v}" for k, v in sorted(constants.items())), body])
    params = (
        [f"const {'float' if n in spec.float_inputs else 'T'}* __restrict__ {n}" for n in spec.inputs]
        + [f"T* __restrict__ {n}" for n in spec.outputs]
        + [f"const int {n}" for n in spec.scalars]
    )
    lines = [_HEADER + f"using T = {cuda_type};"]
    lines += [f"constexpr int {k} = {v};" for k, v in sorted(constants.items())]
    lines.append(f'\nextern "C" __global__ void {entry}(\n    ' + ",\n    ".join(params) + ") {")
    lines.append(spec.body.rstrip() + "\n}\n")
    return entry, "\n".join(lines)


def dtype_name(dtype) -> str:
    """An MLX dtype's short name (`bfloat16`), the key `compiled()` takes."""
    return str(dtype).removeprefix("mlx.core.")


class CompiledKernel:
    """One compiled entry point, called like `mx.fast.cuda_kernel`'s kernels (grid in threads)."""

    def __init__(self, entry: str, cubin: bytes):
        self.entry = entry
        self.cubin = cubin

    def __call__(self, *, inputs, output_shapes, output_dtypes, scalars, grid, threadgroup):
        mx = require_mlx()
        return mx.fast.precompiled_cuda_kernel(
            name=self.entry,
            compiled_source=self.cubin,
            inputs=inputs,
            output_shapes=output_shapes,
            output_dtypes=output_dtypes,
            scalars=list(scalars),
            grid=grid,
            threadgroup=threadgroup,
            ensure_row_contiguous=True,
        )


@cache
def compiled(
    spec: KernelSpec, dtype_name: str, constants: tuple[tuple[str, int], ...]
) -> CompiledKernel | None:
    """The kernel for this element type and constants, from the disk cache or compiled now; None if it can't be."""
    if dtype_name not in _CUDA_TYPES:
        return None
    toolchain = _toolchain()
    if toolchain is None:
        return None
    entry, source = kernel_source(spec, dtype_name, dict(constants))
    path = toolchain.cache_path(entry, source)
    try:
        kept = path.read_bytes()
        if kept.startswith(_ELF):  # a damaged file is compiled again and replaced
            return CompiledKernel(entry, kept)
    except OSError:
        pass
    try:
        cubin = toolchain.compile(entry, source)
    except RuntimeError as exc:
        log.warning("CUDA kernel %s did not compile (%s); plain MLX ops run instead", entry, exc)
        return None
    _store(path, cubin)
    return CompiledKernel(entry, cubin)


def _store(path: Path, data: bytes) -> None:
    """Write a cubin next to its final name and rename it into place: readers never see half a file."""
    from ollama_img.caches import make_private_dirs

    partial = None
    try:
        make_private_dirs([path.parent])
        handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
        partial = Path(name)
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(partial, path)
    except OSError as exc:  # a read-only or full cache costs a compile next time, nothing else
        log.warning("could not keep the compiled kernel %s: %s", path.name, exc)
        if partial is not None:
            partial.unlink(missing_ok=True)


@dataclass(frozen=True)
class Toolchain:
    """NVRTC, the CUDA headers and the GPU it compiles for."""

    nvrtc: ctypes.CDLL
    nvrtc_version: tuple[int, int]
    include_dir: Path
    compute_capability: tuple[int, int]
    cache_dir: Path

    @property
    def arch(self) -> str:
        major, minor = self.compute_capability
        return f"sm_{major}{minor}" + ("a" if major >= 9 else "")  # as MLX compiles its own kernels

    @property
    def flags(self) -> list[str]:
        """What decides the code NVRTC makes (the include folder, which may move, does not)."""
        return [f"--gpu-architecture={self.arch}", "--std=c++17"]

    def cache_path(self, entry: str, source: str) -> Path:
        recipe = "\n".join([source, *self.flags, "nvrtc {}.{}".format(*self.nvrtc_version)])
        digest = hashlib.sha256(recipe.encode()).hexdigest()[:20]
        return self.cache_dir / self.arch / f"{entry}-{digest}.cubin"

    def compile(self, entry: str, source: str) -> bytes:
        """Compile `source` to a cubin for this GPU; a RuntimeError carries NVRTC's log."""
        lib = self.nvrtc
        program = ctypes.c_void_p()
        _check(
            lib,
            lib.nvrtcCreateProgram(
                ctypes.byref(program), source.encode(), f"{entry}.cu".encode(), 0, None, None
            ),
        )
        try:
            options = [o.encode() for o in (*self.flags, f"--include-path={self.include_dir}")]
            argv = (ctypes.c_char_p * len(options))(*options)
            status = lib.nvrtcCompileProgram(program, len(options), argv)
            if status != 0:
                size = ctypes.c_size_t()
                lib.nvrtcGetProgramLogSize(program, ctypes.byref(size))
                text = ctypes.create_string_buffer(size.value + 1)
                lib.nvrtcGetProgramLog(program, text)
                lines = text.value.decode(errors="replace").strip().splitlines()
                errors = [line for line in lines if "error" in line] or lines
                raise RuntimeError(errors[0] if errors else f"NVRTC error {status}")
            size = ctypes.c_size_t()
            _check(lib, lib.nvrtcGetCUBINSize(program, ctypes.byref(size)))
            cubin = ctypes.create_string_buffer(size.value)
            _check(lib, lib.nvrtcGetCUBIN(program, cubin))
            return cubin.raw
        finally:
            lib.nvrtcDestroyProgram(ctypes.byref(program))


def _check(lib, status: int) -> None:
    if status != 0:
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        raise RuntimeError(lib.nvrtcGetErrorString(status).decode())


@cache
def _toolchain() -> Toolchain | None:
    """The toolchain for device 0, its cubins kept in the user's cache folder, or None (said once)."""
    from ollama_img import caches
    from ollama_img.paths import cache_dir

    capability = caches.probe_gpu()
    if capability is None:
        log.warning(
            "the GPU's architecture is unknown: plain MLX ops run instead of ollama-img's CUDA kernels"
        )
        return None
    return find_toolchain(capability, cache_dir() / "kernels")


def find_toolchain(capability: tuple[int, int], kernels_dir: Path) -> Toolchain | None:
    """NVRTC as MLX loaded it (else from pip's CUDA packages) and the CUDA headers beside it, compiling for
    `capability`; None, with a warning, where either is missing. NVRTC needs no GPU."""
    library = find_nvrtc(_loaded_libraries(), _nvidia_package_dirs())
    include_dir = find_cuda_include(library, _nvidia_package_dirs(), os.environ)
    if library is None or include_dir is None:
        missing = [
            what for what, found in (("NVRTC", library), ("the CUDA headers", include_dir)) if found is None
        ]
        log.warning(
            "%s not found: plain MLX ops run instead of ollama-img's CUDA kernels", " and ".join(missing)
        )
        return None
    try:
        nvrtc = ctypes.CDLL(str(library))
        major, minor = ctypes.c_int(), ctypes.c_int()
        _check(nvrtc, nvrtc.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)))
    except (OSError, RuntimeError) as exc:
        log.warning("NVRTC at %s could not be used (%s): plain MLX ops run instead", library, exc)
        return None
    return Toolchain(nvrtc, (major.value, minor.value), include_dir, capability, kernels_dir)


def _loaded_libraries() -> list[str]:
    """Paths of the shared libraries mapped into this process (Linux), MLX's libnvrtc among them."""
    try:
        with open("/proc/self/maps") as maps:
            return [line.split(None, 5)[5].strip() for line in maps if line.count(" ") >= 5 and "/" in line]
    except OSError:
        return []


def _nvidia_package_dirs() -> list[Path]:
    """The `nvidia` folders of pip's CUDA packages on sys.path (where MLX's CUDA wheel gets NVRTC)."""
    return [Path(p) / "nvidia" for p in sys.path if p and (Path(p) / "nvidia").is_dir()]


def find_nvrtc(loaded: list[str], package_dirs: list[Path]) -> Path | None:
    """The libnvrtc MLX already loaded, else one from pip's CUDA packages (so both agree on a version)."""
    for path in loaded:
        if Path(path).name.startswith("libnvrtc.so"):
            return Path(path)
    for root in package_dirs:
        found = sorted(root.glob("*/lib/libnvrtc.so*"), reverse=True)
        if found:
            return found[0]
    return None


def find_cuda_include(nvrtc: Path | None, package_dirs: list[Path], environ) -> Path | None:
    """A folder holding cuda_bf16.h: beside NVRTC's own package first (the headers of its CUDA version),
    then pip's CUDA runtime packages, CUDA_HOME/CUDA_PATH and /usr/local/cuda."""
    candidates = []
    if nvrtc is not None:  # pip's cu13 package: nvidia/cu13/{lib,include}; cu12: nvidia/cuda_{nvrtc,runtime}
        package = nvrtc.parent.parent
        candidates += [package / "include", package.parent / "cuda_runtime" / "include"]
    candidates += [d / name / "include" for d in package_dirs for name in ("cu13", "cuda_runtime")]
    candidates += [Path(environ[v]) / "include" for v in ("CUDA_HOME", "CUDA_PATH") if environ.get(v)]
    candidates.append(Path("/usr/local/cuda/include"))
    return next((c for c in candidates if (c / "cuda_bf16.h").is_file()), None)
