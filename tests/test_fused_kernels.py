"""The fused CUDA kernels (q/k norm + RoPE + layout, residual + norm, SwiGLU) against plain MLX arithmetic."""

import mlx.core as mx
import numpy as np
import pytest

from ollama_img.backend import use_cuda_kernels
from ollama_img.models.zimage import attention_prep


def _inputs(b=2, length=96, heads=3, head_dim=128, dtype=mx.float32):
    qkv = (mx.random.normal((b, length, 3 * heads * head_dim), key=mx.random.key(0)) * 3).astype(dtype)
    wq = (1 + 0.1 * mx.random.normal((head_dim,), key=mx.random.key(1))).astype(dtype)
    wk = (1 + 0.1 * mx.random.normal((head_dim,), key=mx.random.key(2))).astype(dtype)
    angles = mx.random.uniform(-10, 10, (length, head_dim // 2), key=mx.random.key(3))
    return qkv, wq, wk, mx.cos(angles), mx.sin(angles), heads


def test_reference_path_normalises_rotates_and_transposes():
    qkv, wq, wk, cos, sin, heads = _inputs(b=1, length=5, heads=2, head_dim=8)
    q, k, v = attention_prep.qk_norm_rope_plain(qkv, wq, wk, cos, sin, heads, 1e-5)
    assert q.shape == k.shape == v.shape == (1, 2, 5, 8)
    x = np.array(qkv).reshape(1, 5, 3, 2, 8)
    np.testing.assert_array_equal(np.array(v), x[:, :, 2].transpose(0, 2, 1, 3))
    # q for token 3, head 1, by hand: RMS-normalise, weight, rotate pair (0, 1) by the token's first angle
    row = x[0, 3, 0, 1]
    normed = row / np.sqrt((row**2).mean() + 1e-5) * np.array(wq)
    c, s = float(cos[3, 0]), float(sin[3, 0])
    expected = [normed[0] * c - normed[1] * s, normed[0] * s + normed[1] * c]
    np.testing.assert_allclose(np.array(q)[0, 1, 3, :2], expected, rtol=1e-5)


@pytest.mark.skipif(not use_cuda_kernels(), reason="needs MLX on a CUDA GPU")
@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16])
def test_cuda_kernel_matches_the_reference(dtype):
    qkv, wq, wk, cos, sin, heads = _inputs(dtype=dtype)
    got = attention_prep.qk_norm_rope(qkv, wq, wk, cos, sin, heads, 1e-5)
    want = attention_prep.qk_norm_rope_plain(qkv, wq, wk, cos, sin, heads, 1e-5)
    tol = 1e-5 if dtype == mx.float32 else 1e-2
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(
            np.array(g.astype(mx.float32)), np.array(w.astype(mx.float32)), atol=tol, rtol=tol
        )


def _rows(shape=(2, 37, 640), dtype=mx.float32, seed=0):
    return (mx.random.normal(shape, key=mx.random.key(seed)) * 2).astype(dtype)


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * w


def test_add_norm_and_swiglu_fallbacks_match_numpy():
    from ollama_img.models.zimage.fused_ops import add_norm, swiglu

    if use_cuda_kernels():
        pytest.skip("checks the CPU/Metal path")
    x, y = _rows(seed=1), _rows(seed=2)
    w1, w2 = 1 + 0.1 * _rows((640,), seed=3), 1 + 0.1 * _rows((640,), seed=4)
    x_new, h = add_norm(x, y, w1, w2, 1e-5)
    want = np.array(x) + _rms_norm(np.array(y), np.array(w1))
    np.testing.assert_allclose(np.array(x_new), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.array(h), _rms_norm(want, np.array(w2)), rtol=1e-5, atol=1e-5)
    assert add_norm(x, y, w1, None, 1e-5)[1] is None
    gu = _rows((2, 5, 16), seed=5)
    g, u = np.array(gu[..., :8]), np.array(gu[..., 8:])
    np.testing.assert_allclose(np.array(swiglu(gu, 8)), g / (1 + np.exp(-g)) * u, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not use_cuda_kernels(), reason="needs MLX on a CUDA GPU")
@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16])
@pytest.mark.parametrize("dim", [1024, 3840])
def test_cuda_add_norm_matches_the_plain_arithmetic(dtype, dim):
    from ollama_img.models.zimage.fused_ops import add_norm

    x, y = _rows((2, 37, dim), dtype, 1), _rows((2, 37, dim), dtype, 2)
    w1 = (1 + 0.1 * _rows((dim,), seed=3)).astype(dtype)
    w2 = (1 + 0.1 * _rows((dim,), seed=4)).astype(dtype)
    got_x, got_h = add_norm(x, y, w1, w2, 1e-5)
    want_x = (
        x.astype(mx.float32) + mx.fast.rms_norm(y.astype(mx.float32), w1.astype(mx.float32), 1e-5)
    ).astype(dtype)
    want_h = mx.fast.rms_norm(want_x.astype(mx.float32), w2.astype(mx.float32), 1e-5)
    tol = 1e-5 if dtype == mx.float32 else 2e-2
    np.testing.assert_allclose(
        np.array(got_x.astype(mx.float32)), np.array(want_x.astype(mx.float32)), atol=tol, rtol=tol
    )
    np.testing.assert_allclose(np.array(got_h.astype(mx.float32)), np.array(want_h), atol=tol, rtol=tol)
    only_x, none = add_norm(x, y, w1, None, 1e-5)
    assert none is None
    np.testing.assert_array_equal(np.array(only_x.astype(mx.float32)), np.array(got_x.astype(mx.float32)))


@pytest.mark.skipif(not use_cuda_kernels(), reason="needs MLX on a CUDA GPU")
@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16])
def test_cuda_swiglu_matches_the_plain_arithmetic(dtype):
    from ollama_img.models.zimage.fused_ops import swiglu

    gu = _rows((2, 33, 2 * 10240), dtype, 5)
    want = mx.sigmoid(gu[..., :10240].astype(mx.float32)) * gu[..., :10240].astype(mx.float32)
    want = want * gu[..., 10240:].astype(mx.float32)
    tol = 1e-5 if dtype == mx.float32 else 2e-2
    got = swiglu(gu, 10240)
    np.testing.assert_allclose(np.array(got.astype(mx.float32)), np.array(want), atol=tol, rtol=tol)
