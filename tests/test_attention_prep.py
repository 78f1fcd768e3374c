"""The fused q/k norm + RoPE + layout step: its CUDA kernel against the plain MLX arithmetic."""

import mlx.core as mx
import numpy as np
import pytest

from ollama_img.models.zimage import attention_prep


def _inputs(b=2, length=96, heads=3, head_dim=128, dtype=mx.float32):
    qkv = (mx.random.normal((b, length, 3 * heads * head_dim), key=mx.random.key(0)) * 3).astype(dtype)
    wq = (1 + 0.1 * mx.random.normal((head_dim,), key=mx.random.key(1))).astype(dtype)
    wk = (1 + 0.1 * mx.random.normal((head_dim,), key=mx.random.key(2))).astype(dtype)
    angles = mx.random.uniform(-10, 10, (length, head_dim // 2), key=mx.random.key(3))
    return qkv, wq, wk, mx.cos(angles), mx.sin(angles), heads


def test_reference_path_normalises_rotates_and_transposes():
    qkv, wq, wk, cos, sin, heads = _inputs(b=1, length=5, heads=2, head_dim=8)
    q, k, v = attention_prep._reference(qkv, wq, wk, cos, sin, heads, 1e-5)
    assert q.shape == k.shape == v.shape == (1, 2, 5, 8)
    x = np.array(qkv).reshape(1, 5, 3, 2, 8)
    np.testing.assert_array_equal(np.array(v), x[:, :, 2].transpose(0, 2, 1, 3))
    # q for token 3, head 1, by hand: RMS-normalise, weight, rotate pair (0, 1) by the token's first angle
    row = x[0, 3, 0, 1]
    normed = row / np.sqrt((row**2).mean() + 1e-5) * np.array(wq)
    c, s = float(cos[3, 0]), float(sin[3, 0])
    expected = [normed[0] * c - normed[1] * s, normed[0] * s + normed[1] * c]
    np.testing.assert_allclose(np.array(q)[0, 1, 3, :2], expected, rtol=1e-5)


@pytest.mark.skipif(not attention_prep.use_cuda_kernel(), reason="needs MLX on a CUDA GPU")
@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16])
def test_cuda_kernel_matches_the_reference(dtype):
    qkv, wq, wk, cos, sin, heads = _inputs(dtype=dtype)
    got = attention_prep.qk_norm_rope(qkv, wq, wk, cos, sin, heads, 1e-5)
    want = attention_prep._reference(qkv, wq, wk, cos, sin, heads, 1e-5)
    tol = 1e-5 if dtype == mx.float32 else 1e-2
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(
            np.array(g.astype(mx.float32)), np.array(w.astype(mx.float32)), atol=tol, rtol=tol
        )
