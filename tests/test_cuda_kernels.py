"""Our CUDA kernels compiled once per GPU and kept on disk: the source, where NVRTC and the headers are
found, the cache key, and (with pip's NVRTC, which compiles without a GPU) the real Z-Image kernels
compiled to cubins, kept, and read back instead of compiled again."""

from pathlib import Path

import pytest

from ollama_img import cuda_kernels
from ollama_img.backend import use_cuda_kernels
from ollama_img.cuda_kernels import (
    KernelSpec,
    Toolchain,
    compiled,
    find_cuda_include,
    find_nvrtc,
    kernel_source,
)
from ollama_img.models.zimage import attention_prep
from tests.fixtures.full_size import zimage_kernels

SPEC = KernelSpec(
    name="demo",
    inputs=("x", "angles"),
    outputs=("y",),
    scalars=("rows",),
    body="    if (threadIdx.x < rows) y[threadIdx.x] = x[threadIdx.x] * static_cast<T>(angles[0] + DIM);",
    float_inputs=("angles",),
)

ZIMAGE_KERNELS = zimage_kernels()  # with the full model's sizes


def test_source_declares_inputs_outputs_and_scalars_in_launch_order():
    entry, source = kernel_source(SPEC, "bfloat16", {"DIM": 64})
    assert entry.startswith("demo_bfloat16_DIM64_") and len(entry) == len("demo_bfloat16_DIM64_") + 8
    assert "using T = __nv_bfloat16;" in source and "constexpr int DIM = 64;" in source
    signature = source[source.index(f'extern "C" __global__ void {entry}(') :].split(")", 1)[0]
    params = [p.strip() for p in signature.split("(", 1)[1].split(",")]
    assert params == [
        "const T* __restrict__ x",
        "const float* __restrict__ angles",
        "T* __restrict__ y",
        "const int rows",
    ]
    assert SPEC.body.strip() in source
    assert kernel_source(SPEC, "float32", {"DIM": 64})[1] != source


def test_nvrtc_is_the_one_mlx_loaded_before_any_on_disk(tmp_path):
    lib = tmp_path / "nvidia" / "cu13" / "lib"
    lib.mkdir(parents=True)
    (lib / "libnvrtc.so.13").write_bytes(b"")
    loaded = ["/usr/lib/libc.so.6", "/opt/x/libnvrtc.so.12.8"]
    assert find_nvrtc(loaded, [tmp_path / "nvidia"]) == Path("/opt/x/libnvrtc.so.12.8")
    assert find_nvrtc(loaded[:1], [tmp_path / "nvidia"]) == lib / "libnvrtc.so.13"
    assert find_nvrtc(loaded[:1], []) is None


def test_headers_from_pip_packages_then_cuda_home(tmp_path):
    package = tmp_path / "site" / "nvidia"
    home = tmp_path / "cuda"
    (home / "include").mkdir(parents=True)
    (home / "include" / "cuda_bf16.h").write_text("")
    assert find_cuda_include(None, [package], {"CUDA_HOME": str(home)}) == home / "include"
    (package / "cuda_runtime" / "include").mkdir(parents=True)
    (package / "cuda_runtime" / "include" / "cuda_bf16.h").write_text("")
    assert (
        find_cuda_include(None, [package], {"CUDA_HOME": str(home)}) == package / "cuda_runtime" / "include"
    )
    beside = tmp_path / "mlx-site" / "nvidia" / "cu13"
    (beside / "include").mkdir(parents=True)
    (beside / "include" / "cuda_bf16.h").write_text("")
    nvrtc = beside / "lib" / "libnvrtc.so.13"
    assert find_cuda_include(nvrtc, [package], {"CUDA_HOME": str(home)}) == beside / "include"
    assert find_cuda_include(None, [], {}) in (None, Path("/usr/local/cuda/include"))


def _toolchain(tmp_path, capability=(9, 0), version=(12, 9), include=Path("/inc")) -> Toolchain:
    return Toolchain(None, version, include, capability, tmp_path / "kernels")


def test_cache_file_is_per_architecture_and_compiler(tmp_path):
    entry, source = kernel_source(SPEC, "bfloat16", {"DIM": 64})
    h100 = _toolchain(tmp_path).cache_path(entry, source)
    assert h100.parent == tmp_path / "kernels" / "sm_90a" and h100.name.startswith(entry + "-")
    assert _toolchain(tmp_path, include=Path("/elsewhere")).cache_path(entry, source) == h100
    others = [
        _toolchain(tmp_path, capability=(8, 6)).cache_path(entry, source),
        _toolchain(tmp_path, version=(13, 0)).cache_path(entry, source),
        _toolchain(tmp_path).cache_path(entry, source + " "),
    ]
    assert len({h100, *others}) == 4
    assert others[0].parent.name == "sm_86"  # arch-specific ("a") targets only from Hopper on


def test_no_toolchain_means_plain_ops(monkeypatch):
    monkeypatch.setattr(cuda_kernels, "_toolchain", lambda: None)
    compiled.cache_clear()
    assert compiled(SPEC, "bfloat16", (("DIM", 64),)) is None
    assert compiled(SPEC, "int8", (("DIM", 64),)) is None


def _pip_nvrtc(capability=(9, 0), kernels_dir=Path()) -> Toolchain | None:
    return cuda_kernels.find_toolchain(capability, kernels_dir)


needs_nvrtc = pytest.mark.skipif(
    _pip_nvrtc() is None, reason="needs NVRTC and the CUDA headers (pip's packages)"
)


@needs_nvrtc
@pytest.mark.parametrize("capability", [(8, 0), (9, 0)])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_zimage_kernels_compile_to_cubins(capability, dtype):
    toolchain = _pip_nvrtc(capability)
    for spec, constants in ZIMAGE_KERNELS:
        entry, source = kernel_source(spec, dtype, constants)
        cubin = toolchain.compile(entry, source)
        assert cubin[:4] == b"\x7fELF"  # device code for that GPU, not PTX for the driver to JIT
        assert entry.encode() in cubin  # the unmangled entry point MLX looks the kernel up by


@needs_nvrtc
def test_a_compile_error_is_one_line_from_nvrtc():
    toolchain = _pip_nvrtc()
    entry, source = kernel_source(
        KernelSpec("broken", ("x",), ("y",), (), "    y[0] = undefined_name;"), "float32", {}
    )
    with pytest.raises(RuntimeError, match="undefined_name") as error:
        toolchain.compile(entry, source)
    assert "\n" not in str(error.value)


@needs_nvrtc
def test_compiled_once_then_read_from_disk(tmp_path, monkeypatch):
    toolchain = _pip_nvrtc(kernels_dir=tmp_path / "kernels")
    compiles = []
    real_compile = Toolchain.compile

    def counting_compile(self, entry, source):
        compiles.append(entry)
        return real_compile(self, entry, source)

    monkeypatch.setattr(Toolchain, "compile", counting_compile)
    monkeypatch.setattr(cuda_kernels, "_toolchain", lambda: toolchain)
    spec, constants = ZIMAGE_KERNELS[0]
    key = tuple(constants.items())
    compiled.cache_clear()
    first = compiled(spec, "bfloat16", key)
    assert compiles == [first.entry]
    kept = list((tmp_path / "kernels" / "sm_90a").iterdir())
    assert [p.name for p in kept] == [toolchain.cache_path(*kernel_source(spec, "bfloat16", constants)).name]
    assert kept[0].read_bytes() == first.cubin
    compiled.cache_clear()  # a new process: nothing in memory, the cubin on disk
    second = compiled(spec, "bfloat16", key)
    assert compiles == [first.entry] and second.cubin == first.cubin
    assert (tmp_path / "kernels").stat().st_mode & 0o777 == 0o700
    compiled.cache_clear()


@pytest.mark.skipif(not use_cuda_kernels(), reason="needs MLX on a CUDA GPU")
def test_on_a_gpu_the_kernels_come_from_the_toolchain_and_run():
    """On CUDA the fused kernels must not silently fall back to plain ops: NVRTC and the headers are found,
    and a precompiled kernel runs with inputs, outputs and scalars in launch order."""
    import mlx.core as mx

    assert cuda_kernels._toolchain() is not None
    for spec, constants in ZIMAGE_KERNELS:
        assert compiled(spec, "bfloat16", tuple(constants.items())) is not None
    kernel = compiled(SPEC, "float32", (("DIM", 2),))
    x = mx.arange(8, dtype=mx.float32)
    (y,) = kernel(
        inputs=[x, mx.array([0.5])],
        scalars=(5,),
        grid=(8, 1, 1),
        threadgroup=(8, 1, 1),
        output_shapes=[(8,)],
        output_dtypes=[mx.float32],
    )
    assert y[:5].tolist() == [v * 2.5 for v in range(5)]


def test_variants_of_a_body_get_their_own_entry_names():
    """MLX keeps a process's loaded kernels by name: two eps of one kernel must not share one."""
    names = {
        kernel_source(attention_prep._spec(eps), "bfloat16", {"HD": 128, "NH": 24})[0] for eps in (1e-5, 1e-6)
    }
    assert len(names) == 2


@needs_nvrtc
def test_a_damaged_cached_cubin_is_compiled_again(tmp_path, monkeypatch):
    toolchain = _pip_nvrtc(kernels_dir=tmp_path / "kernels")
    monkeypatch.setattr(cuda_kernels, "_toolchain", lambda: toolchain)
    spec, constants = ZIMAGE_KERNELS[2]
    path = toolchain.cache_path(*kernel_source(spec, "float32", constants))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"half a cub")
    compiled.cache_clear()
    kernel = compiled(spec, "float32", tuple(constants.items()))
    assert kernel.cubin.startswith(b"\x7fELF") and path.read_bytes() == kernel.cubin
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".partial")]
    compiled.cache_clear()
