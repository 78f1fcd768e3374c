"""The elementwise glue of a Z-Image block as single CUDA kernels, with plain MLX everywhere else.

- `add_norm(x, y, w_y, w_next)`: the residual update `x + rms_norm(y, w_y)` and, in the same pass, the
  next normalised input `rms_norm(x_new, w_next)`. In MLX ops that is three kernels and four trips
  through memory; here one read of x and y and one write of each result.
- `swiglu(gate_up, hidden)`: `silu(gate) * up` from the fused w1|w3 projection, reading its two halves
  directly instead of as strided views.

Both compute in float32 and round once at the end; the fallbacks are the same arithmetic.
"""

from functools import cache

import mlx.core as mx
import mlx.nn as nn

from ollama_img.models.zimage.attention_prep import use_cuda_kernel

_ADD_NORM = """
    const int D = DIM;
    const long row = blockIdx.x;
    const int tid = threadIdx.x;
    constexpr int PER = (DIM + THREADS - 1) / THREADS;
    __shared__ float partial[32];
    const T* xr = x + row * D;
    const T* yr = y + row * D;
    float yv[PER];
    float xv[PER];

    auto block_sum = [&](float v) {
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
        __syncthreads();
        if ((tid & 31) == 0) partial[tid >> 5] = v;
        __syncthreads();
        float total = 0.0f;
        for (int i = 0; i < THREADS / 32; ++i) total += partial[i];
        return total;
    };

    float ss = 0.0f;
    for (int k = 0; k < PER; ++k) {
        const int i = tid + k * THREADS;
        yv[k] = i < D ? static_cast<float>(yr[i]) : 0.0f;
        ss += yv[k] * yv[k];
    }
    const float ry = rsqrtf(block_sum(ss) / D + EPS);
    float ss2 = 0.0f;
    for (int k = 0; k < PER; ++k) {
        const int i = tid + k * THREADS;
        if (i < D) {
            const float v = static_cast<float>(xr[i]) + yv[k] * ry * static_cast<float>(w_y[i]);
            const T rounded = static_cast<T>(v);
            x_out[row * D + i] = rounded;
            xv[k] = static_cast<float>(rounded);
            ss2 += xv[k] * xv[k];
        } else {
            xv[k] = 0.0f;
        }
    }
    if (NEXT) {
        const float rx = rsqrtf(block_sum(ss2) / D + EPS);
        for (int k = 0; k < PER; ++k) {
            const int i = tid + k * THREADS;
            if (i < D) h_out[row * D + i] = static_cast<T>(xv[k] * rx * static_cast<float>(w_next[i]));
        }
    }
"""

_SWIGLU = """
    const long idx = long(blockIdx.x) * blockDim.x + threadIdx.x;
    const long rows = gate_up_shape[0] * gate_up_shape[1];
    if (idx >= rows * HIDDEN) return;
    const long r = idx / HIDDEN;
    const long j = idx - r * HIDDEN;
    const float g = static_cast<float>(gate_up[r * 2 * HIDDEN + j]);
    const float u = static_cast<float>(gate_up[r * 2 * HIDDEN + HIDDEN + j]);
    out[idx] = static_cast<T>(g / (1.0f + expf(-g)) * u);
"""

_THREADS = 256


@cache
def _add_norm_kernel(eps: float, with_next: bool):
    outputs = ["x_out", "h_out"] if with_next else ["x_out"]
    inputs = ["x", "y", "w_y", "w_next"] if with_next else ["x", "y", "w_y"]
    return mx.fast.cuda_kernel(
        name=f"zimage_add_norm_{int(with_next)}_{abs(hash(eps)) % 10**8}",
        input_names=inputs,
        output_names=outputs,
        source=_ADD_NORM.replace("EPS", f"{eps:.9e}f").replace("NEXT", "true" if with_next else "false"),
    )


@cache
def _swiglu_kernel():
    return mx.fast.cuda_kernel(
        name="zimage_swiglu", input_names=["gate_up"], output_names=["out"], source=_SWIGLU
    )


def add_norm(x: mx.array, y: mx.array, w_y: mx.array, w_next: mx.array | None, eps: float):
    """(x + rms_norm(y, w_y), rms_norm(that, w_next) or None) for x, y (B, L, D)."""
    if not use_cuda_kernel() or x.dtype != y.dtype:
        x = x + mx.fast.rms_norm(y, w_y, eps)
        return x, (None if w_next is None else mx.fast.rms_norm(x, w_next, eps))
    b, length, dim = x.shape
    with_next = w_next is not None
    inputs = [x, y, w_y.astype(x.dtype)] + ([w_next.astype(x.dtype)] if with_next else [])
    n_out = 2 if with_next else 1
    outs = _add_norm_kernel(eps, with_next)(
        inputs=inputs,
        template=[("T", x.dtype), ("DIM", dim), ("THREADS", _THREADS)],
        grid=(b * length * _THREADS, 1, 1),
        threadgroup=(_THREADS, 1, 1),
        output_shapes=[x.shape] * n_out,
        output_dtypes=[x.dtype] * n_out,
    )
    return outs[0], (outs[1] if with_next else None)


def swiglu(gate_up: mx.array, hidden: int) -> mx.array:
    """silu(gate) * up for gate_up = [gate | up] along the last axis."""
    if not use_cuda_kernel() or gate_up.ndim != 3:
        return nn.silu(gate_up[..., :hidden]) * gate_up[..., hidden:]
    b, length, _ = gate_up.shape
    total = b * length * hidden
    return _swiglu_kernel()(
        inputs=[gate_up],
        template=[("T", gate_up.dtype), ("HIDDEN", hidden)],
        grid=(total, 1, 1),
        threadgroup=(256, 1, 1),
        output_shapes=[(b, length, hidden)],
        output_dtypes=[gate_up.dtype],
    )[0]
