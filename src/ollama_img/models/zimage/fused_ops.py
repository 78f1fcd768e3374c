"""The elementwise glue of a Z-Image block as single CUDA kernels, with plain MLX everywhere else.

- `add_norm(x, y, w_y, w_next)`: the residual update `x + rms_norm(y, w_y)` and, in the same pass, the
  next normalised input `rms_norm(x_new, w_next)`. In MLX ops that is three kernels and four trips
  through memory; here one read of x and y and one write of each result.
- `swiglu(gate_up, hidden)`: `silu(gate) * up` from the fused w1|w3 projection, reading its two halves
  directly instead of as strided views.

Both compute in float32 and round once at the end; the fallbacks are the same arithmetic. The kernels
are compiled once per GPU and kept on disk (`ollama_img.cuda_kernels`).
"""

from functools import cache

import mlx.core as mx
import mlx.nn as nn

from ollama_img.backend import use_cuda_kernels
from ollama_img.cuda_kernels import KernelSpec, compiled, dtype_name

# Both kernels move 16 bytes per load and store (8 bf16 or 4 float32 values): `VEC` elements.
_ADD_NORM = """
    constexpr int VEC = 16 / sizeof(T);
    const long row = blockIdx.x;
    const int tid = threadIdx.x;  // one vector of the row per thread: blockDim.x == DIM / VEC
    const long base = row * DIM + long(tid) * VEC;
    __shared__ float partial[32];
    auto block_sum = [&](float v) {
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
        __syncthreads();
        if ((tid & 31) == 0) partial[tid >> 5] = v;
        __syncthreads();
        float total = 0.0f;
        for (int i = 0; i < (DIM / VEC) / 32; ++i) total += partial[i];
        return total;
    };
    struct alignas(16) V { T v[VEC]; };
    const V xv = *reinterpret_cast<const V*>(x + base);
    const V yv = *reinterpret_cast<const V*>(y + base);
    const V wy = *reinterpret_cast<const V*>(w_y + long(tid) * VEC);
    float yf[VEC];
    float ss = 0.0f;
    for (int i = 0; i < VEC; ++i) { yf[i] = static_cast<float>(yv.v[i]); ss += yf[i] * yf[i]; }
    const float ry = rsqrtf(block_sum(ss) / DIM + EPS);
    V xo;
    float xf[VEC];
    float ss2 = 0.0f;
    for (int i = 0; i < VEC; ++i) {
        xo.v[i] = static_cast<T>(static_cast<float>(xv.v[i]) + yf[i] * ry * static_cast<float>(wy.v[i]));
        xf[i] = static_cast<float>(xo.v[i]);
        ss2 += xf[i] * xf[i];
    }
    *reinterpret_cast<V*>(x_out + base) = xo;
    // NEXT-BEGIN
    {
        const float rx = rsqrtf(block_sum(ss2) / DIM + EPS);
        const V wn = *reinterpret_cast<const V*>(w_next + long(tid) * VEC);
        V h;
        for (int i = 0; i < VEC; ++i) h.v[i] = static_cast<T>(xf[i] * rx * static_cast<float>(wn.v[i]));
        *reinterpret_cast<V*>(h_out + base) = h;
    }
    // NEXT-END
"""

_SWIGLU = """
    constexpr int VEC = 16 / sizeof(T);
    struct alignas(16) V { T v[VEC]; };
    const long per_row = HIDDEN / VEC;
    const long idx = long(blockIdx.x) * blockDim.x + threadIdx.x;
    const long rows = n_rows;
    if (idx >= rows * per_row) return;
    const long r = idx / per_row;
    const long j = (idx - r * per_row) * VEC;
    const V g = *reinterpret_cast<const V*>(gate_up + r * 2 * HIDDEN + j);
    const V u = *reinterpret_cast<const V*>(gate_up + r * 2 * HIDDEN + HIDDEN + j);
    V o;
    for (int i = 0; i < VEC; ++i) {
        const float a = static_cast<float>(g.v[i]);
        o.v[i] = static_cast<T>(a / (1.0f + expf(-a)) * static_cast<float>(u.v[i]));
    }
    *reinterpret_cast<V*>(out + r * HIDDEN + j) = o;
"""


def _vec(dtype: mx.Dtype) -> int:
    return 16 // dtype.size


def _source(eps: float, with_next: bool) -> str:
    source = _ADD_NORM.replace("EPS", f"{eps:.9e}f")
    if not with_next:  # the variant without the next norm has no w_next/h_out at all
        head, _, rest = source.partition("// NEXT-BEGIN")
        source = head + rest.partition("// NEXT-END")[2]
    return source


@cache
def _add_norm_spec(eps: float, with_next: bool) -> KernelSpec:
    return KernelSpec(
        name="zimage_add_norm_next" if with_next else "zimage_add_norm",  # eps is in the body
        inputs=("x", "y", "w_y", "w_next") if with_next else ("x", "y", "w_y"),
        outputs=("x_out", "h_out") if with_next else ("x_out",),
        scalars=(),
        body=_source(eps, with_next),
    )


_SWIGLU_SPEC = KernelSpec(
    name="zimage_swiglu", inputs=("gate_up",), outputs=("out",), scalars=("n_rows",), body=_SWIGLU
)


def add_norm(x: mx.array, y: mx.array, w_y: mx.array, w_next: mx.array | None, eps: float):
    """(x + rms_norm(y, w_y), rms_norm(that, w_next) or None) for x, y (B, L, D)."""
    b, length, dim = x.shape
    threads = dim // _vec(x.dtype)
    with_next = w_next is not None
    kernel = None
    if (
        use_cuda_kernels()
        and x.dtype == y.dtype
        and not dim % _vec(x.dtype)
        and not threads % 32
        and threads <= 1024
    ):
        kernel = compiled(_add_norm_spec(eps, with_next), dtype_name(x.dtype), (("DIM", dim),))
    if kernel is None:
        x = x + mx.fast.rms_norm(y, w_y, eps)
        return x, (None if w_next is None else mx.fast.rms_norm(x, w_next, eps))
    inputs = [x, y, w_y.astype(x.dtype)] + ([w_next.astype(x.dtype)] if with_next else [])
    n_out = 2 if with_next else 1
    outs = kernel(
        inputs=inputs,
        scalars=(),
        grid=(b * length * threads, 1, 1),
        threadgroup=(threads, 1, 1),
        output_shapes=[x.shape] * n_out,
        output_dtypes=[x.dtype] * n_out,
    )
    return outs[0], (outs[1] if with_next else None)


def swiglu(gate_up: mx.array, hidden: int) -> mx.array:
    """silu(gate) * up for gate_up = [gate | up] along the last axis."""
    kernel = None
    if use_cuda_kernels() and gate_up.ndim == 3 and not hidden % _vec(gate_up.dtype):
        kernel = compiled(_SWIGLU_SPEC, dtype_name(gate_up.dtype), (("HIDDEN", hidden),))
    if kernel is None:
        return nn.silu(gate_up[..., :hidden]) * gate_up[..., hidden:]
    b, length, _ = gate_up.shape
    threads = b * length * hidden // _vec(gate_up.dtype)
    return kernel(
        inputs=[gate_up],
        scalars=(b * length,),
        grid=((threads + 255) // 256 * 256, 1, 1),
        threadgroup=(256, 1, 1),
        output_shapes=[(b, length, hidden)],
        output_dtypes=[gate_up.dtype],
    )[0]
