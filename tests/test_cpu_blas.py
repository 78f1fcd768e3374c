"""OpenBLAS under MLX's CPU matrix products: bound where it is installed, right, and optional.

Speed is measured by bench/cpu_blas.py; here: which library serves MLX's `cblas_sgemm`, and that
every product MLX hands to BLAS still equals numpy's, with and without the switch.
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MLX's Linux CPU wheel only")
HAS_OPENBLAS = importlib.util.find_spec("scipy_openblas32") is not None

# In a fresh process: set up MLX as the engine and load_pipeline do, then report who serves it.
REPORT = """
import json, sys
from ollama_img.backend import require_mlx
from ollama_img import cpu_blas
mx = require_mlx()
with mx.stream(mx.cpu):
    product = mx.array([[1.0, 2.0], [3.0, 4.0]]) @ mx.array([[5.0], [6.0]])
print(json.dumps({"result": cpu_blas.install(), "library": str(cpu_blas.serving_library()),
                  "product": product.tolist()}))
"""


def report(**env) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", REPORT],
        env={**{k: v for k, v in os.environ.items() if k != "OLLAMA_IMG_CPU_BLAS"}, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not HAS_OPENBLAS, reason="scipy-openblas32 (the cpu extra) is not installed")
def test_mlx_products_run_on_openblas_once_mlx_is_set_up():
    from ollama_img import cpu_blas
    from ollama_img.backend import require_mlx

    require_mlx()
    assert "OpenBLAS" in cpu_blas.install()
    assert cpu_blas.serving_library().name.startswith("libscipy_openblas")
    assert cpu_blas.install() == cpu_blas.install()  # works once, answers the same after


def test_products_equal_numpys():
    """float32 plain, transposed and batched, float64 (dgemm) and a convolution (sgemm underneath)."""
    from ollama_img.backend import require_mlx

    mx = require_mlx()
    rng = np.random.default_rng(1)
    a = rng.standard_normal((3, 70, 90)).astype(np.float32)
    b = rng.standard_normal((3, 90, 40)).astype(np.float32)
    with mx.stream(mx.cpu):
        batched = np.array(mx.array(a) @ mx.array(b))
        transposed = np.array(mx.array(b[0]).T @ mx.array(a[0]).T)
        doubles = np.array(mx.array(a[0], dtype=mx.float64) @ mx.array(b[0], dtype=mx.float64))
        image = rng.standard_normal((1, 12, 12, 5)).astype(np.float32)
        kernel = rng.standard_normal((7, 3, 3, 5)).astype(np.float32)
        conv = np.array(mx.conv2d(mx.array(image), mx.array(kernel)))
    expected = a.astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_allclose(batched, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(transposed, expected[0].T, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(doubles, expected[0], rtol=1e-10, atol=1e-10)
    windows = np.lib.stride_tricks.sliding_window_view(image[0].astype(np.float64), (3, 3), axis=(0, 1))
    reference = np.einsum("hwcij,oijc->hwo", windows, kernel.astype(np.float64))
    np.testing.assert_allclose(conv[0], reference, rtol=1e-4, atol=1e-4)


def test_bundled_blas_when_asked():
    seen = report(OLLAMA_IMG_CPU_BLAS="bundled")
    assert seen["result"] is None
    assert "scipy_openblas" not in seen["library"]
    assert seen["product"] == [[17.0], [39.0]]


def test_no_openblas_falls_back_silently():
    hidden = REPORT.replace("import json, sys", "import json, sys; sys.modules['scipy_openblas32'] = None", 1)
    done = subprocess.run([sys.executable, "-c", hidden], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["result"] is None and "scipy_openblas" not in seen["library"]
    assert seen["product"] == [[17.0], [39.0]]
    assert "Traceback" not in done.stderr and "OpenBLAS" not in done.stderr


@pytest.mark.skipif(not HAS_OPENBLAS, reason="scipy-openblas32 (the cpu extra) is not installed")
def test_a_fresh_process_gets_openblas_by_itself():
    seen = report()
    assert "OpenBLAS" in seen["result"] and "scipy_openblas" in seen["library"]
    assert seen["product"] == [[17.0], [39.0]]


def test_libmlx_imports_the_products_it_calls():
    from ollama_img import cpu_blas
    from ollama_img.backend import require_mlx

    require_mlx()
    path, base = cpu_blas._loaded_libmlx()
    slots = cpu_blas.got_slots(path, base, cpu_blas.FUNCTIONS)
    assert {s.symbol for s in slots} == set(cpu_blas.FUNCTIONS)
    assert all(s.address > base for s in slots)
