"""From the fused q|k|v projection to attention inputs: per-head RMSNorm of q and k, 3-axis RoPE, and the
(B, L, H, D) -> (B, H, L, D) layout that scaled_dot_product_attention takes.

On CUDA this is one custom kernel that reads the projection once and writes q, k and v once: done as
separate MLX ops it costs two norms, two rotations in float32 and three transposes, about a third of
a transformer block's non-matmul time at 1024x1024. Everywhere else (CPU, Metal) the same arithmetic
runs as plain MLX ops. Both compute in float32 and round once at the end. The kernel is compiled once
per GPU and kept on disk (`ollama_img.cuda_kernels`).
"""

from functools import cache

import mlx.core as mx

from ollama_img.backend import use_cuda_kernels
from ollama_img.cuda_kernels import KernelSpec, compiled, dtype_name

# One warp per (batch, token, head): lanes 0-15 take q's 128 values, lanes 16-31 k's, each lane 16
# bytes at a time (VEC values); RMS over the half-warp, rotate pairs, write (B, H, L, D); v is copied.
_SOURCE = """
    constexpr int VEC = 16 / sizeof(T);
    constexpr int ITER = HD / (16 * VEC);
    struct alignas(16) V { T v[VEC]; };
    const int lane = threadIdx.x & 31;
    const int part = lane >> 4;
    const int hl = lane & 15;
    const long row = (long(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
    const long B = batch;
    const long L = length;
    if (row >= B * L * NH) return;
    const int h = row % NH;
    const long bl = row / NH;
    const long l = bl % L;
    const long b = bl / L;
    const long dim = long(NH) * HD;
    const T* src = qkv + bl * 3 * dim + long(h) * HD;
    const long dst = ((b * NH + h) * L + l) * HD;
    const T* x = src + part * dim;
    const T* w = part == 0 ? q_weight : k_weight;
    T* out = (part == 0 ? q_out : k_out) + dst;
    float v[ITER][VEC];
    float ss = 0.0f;
    for (int it = 0; it < ITER; ++it) {
        const V in = *reinterpret_cast<const V*>(x + (it * 16 + hl) * VEC);
        for (int i = 0; i < VEC; ++i) { v[it][i] = static_cast<float>(in.v[i]); ss += v[it][i] * v[it][i]; }
    }
    for (int o = 8; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffff, ss, o);
    const float r = rsqrtf(ss / HD + EPS);
    for (int it = 0; it < ITER; ++it) {
        const int e0 = (it * 16 + hl) * VEC;
        const V wv = *reinterpret_cast<const V*>(w + e0);
        V o;
        for (int i = 0; i < VEC; i += 2) {
            const float a = v[it][i] * r * static_cast<float>(wv.v[i]);
            const float c = v[it][i + 1] * r * static_cast<float>(wv.v[i + 1]);
            const long p = l * (HD / 2) + (e0 + i) / 2;
            const float cs = cos_t[p], sn = sin_t[p];
            o.v[i] = static_cast<T>(a * cs - c * sn);
            o.v[i + 1] = static_cast<T>(a * sn + c * cs);
        }
        *reinterpret_cast<V*>(out + e0) = o;
        if (part == 0) {
            *reinterpret_cast<V*>(v_out + dst + e0) = *reinterpret_cast<const V*>(src + 2 * dim + e0);
        }
    }
"""


@cache
def _spec(eps: float) -> KernelSpec:
    return KernelSpec(
        name="zimage_qk_norm_rope",  # eps is in the body
        inputs=("qkv", "q_weight", "k_weight", "cos_t", "sin_t"),
        outputs=("q_out", "k_out", "v_out"),
        scalars=("batch", "length"),
        body=_SOURCE.replace("EPS", f"{eps:.9e}f"),
        float_inputs=("cos_t", "sin_t"),
    )


def rope(x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    """Rotate interleaved pairs (x[2i], x[2i+1]) of x (B, L, H, D) by per-token angles, in float32."""
    b, length, h, d = x.shape
    pairs = x.astype(mx.float32).reshape(b, length, h, d // 2, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    cos, sin = cos[:, None, :], sin[:, None, :]
    out = mx.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1)
    return out.reshape(b, length, h, d)


def qk_norm_rope_plain(qkv, q_weight, k_weight, cos, sin, n_heads: int, eps: float):
    """The same as the CUDA kernel in plain MLX ops: the CPU and Metal path, and the kernel's test reference."""
    b, length, three_dim = qkv.shape
    q, k, v = mx.split(qkv.reshape(b, length, 3, n_heads, -1), 3, axis=2)
    q, k, v = (t.squeeze(2) for t in (q, k, v))

    def norm_rope(t, w):
        t = mx.fast.rms_norm(t.astype(mx.float32), w.astype(mx.float32), eps)
        return rope(t, cos, sin).astype(qkv.dtype).transpose(0, 2, 1, 3)

    return norm_rope(q, q_weight), norm_rope(k, k_weight), v.transpose(0, 2, 1, 3)


def qk_norm_rope(
    qkv: mx.array,
    q_weight: mx.array,
    k_weight: mx.array,
    cos: mx.array,
    sin: mx.array,
    n_heads: int,
    eps: float,
):
    """q, k, v as (B, H, L, D) from the fused projection qkv (B, L, 3 * H * D)."""
    b, length, three_dim = qkv.shape
    head_dim = three_dim // (3 * n_heads)
    kernel = None
    if use_cuda_kernels() and not head_dim % (16 * (16 // qkv.dtype.size)):
        kernel = compiled(_spec(eps), dtype_name(qkv.dtype), (("HD", head_dim), ("NH", n_heads)))
    if kernel is None:
        return qk_norm_rope_plain(qkv, q_weight, k_weight, cos, sin, n_heads, eps)
    shape = (b, n_heads, length, head_dim)
    return kernel(
        inputs=[
            qkv,
            q_weight.astype(qkv.dtype),
            k_weight.astype(qkv.dtype),
            cos.astype(mx.float32),
            sin.astype(mx.float32),
        ],
        scalars=(b, length),
        grid=(b * length * n_heads * 32, 1, 1),
        threadgroup=(256, 1, 1),
        output_shapes=[shape, shape, shape],
        output_dtypes=[qkv.dtype] * 3,
    )
