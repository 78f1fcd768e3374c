"""Z-Image (Tongyi-MAI) in MLX: build the pipeline from any weight source."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten

from ollama_img.backend import platform_backend
from ollama_img.errors import UserError
from ollama_img.models.zimage.pipeline import ZImagePipeline
from ollama_img.models.zimage.text_encoder import Qwen3Config, Qwen3TextEncoder
from ollama_img.models.zimage.tokenizer import PromptTokenizer
from ollama_img.models.zimage.transformer import ZImageConfig, ZImageTransformer
from ollama_img.models.zimage.vae import AutoencoderKL, VaeConfig
from ollama_img.quantization import QuantParams, packed_matmul_is_faster
from ollama_img.weights import ComponentWeights, WeightSource

__all__ = ["ZImagePipeline", "compute_dtype", "load"]


def compute_dtype(checkpoint_dtype: mx.Dtype) -> mx.Dtype:
    """The checkpoint's dtype on a GPU; float32 on the CPU.

    MLX's CPU back end has no fast half-precision matmul (bf16 runs no faster than float32 there) and
    bf16 arithmetic would only lose accuracy, so the CPU computes in float32. Linear weights keep the
    checkpoint's dtype even then: bf16 -> float32 is exact, MLX promotes them per product, and the
    model needs half the memory.
    """
    return checkpoint_dtype if mx.default_device() == mx.gpu else mx.float32


def _load_module(
    module: nn.Module,
    weights: dict[str, mx.array],
    dtype: mx.Dtype,
    label: str,
    quantized: dict[str, QuantParams] | None = None,
    packed: bool = True,
) -> None:
    """Load weights strictly; cast all but Linear weights (and quantized ones) to the compute dtype.

    Linear layers whose weights arrive quantized become `nn.QuantizedLinear` (`packed`), or get their
    weights dequantized once here, back to the checkpoint's dtype, where the quantized matmul is slower.
    """
    if quantized:
        if packed:
            _use_quantized_linears(module, quantized, label)
        else:
            weights = _dequantized(weights, quantized)
    keep_dtype = {f"{path}.weight" for path, m in module.named_modules() if isinstance(m, nn.Linear)}
    for path, m in module.named_modules():
        if isinstance(m, nn.QuantizedLinear):
            keep_dtype.update(f"{path}.{key}" for key in ("weight", "scales", "biases"))
    cast = {}
    for name, value in weights.items():
        floating = mx.issubdtype(value.dtype, mx.floating)
        keep = not floating or (name in keep_dtype and mx.finfo(value.dtype).bits <= mx.finfo(dtype).bits)
        cast[name] = value if keep or value.dtype == dtype else value.astype(dtype)
    try:
        module.load_weights(list(cast.items()), strict=True)
    except ValueError as exc:
        raise UserError(f"{label}: weights do not match the model's configuration ({exc})") from None
    mx.eval(module.parameters())


def _use_quantized_linears(module: nn.Module, quantized: dict[str, QuantParams], label: str) -> None:
    """Swap each Linear whose weight is stored quantized for a QuantizedLinear of the same shape."""
    linears = {path: m for path, m in module.named_modules() if isinstance(m, nn.Linear)}
    swaps = []
    for path, params in quantized.items():
        linear = linears.get(path)
        if linear is None:
            raise UserError(f"{label}: {path} is stored quantized but is not a Linear layer of this model")
        out_dims, in_dims = linear.weight.shape
        swaps.append(
            (
                path,
                nn.QuantizedLinear(
                    in_dims,
                    out_dims,
                    bias="bias" in linear,
                    group_size=params.group_size,
                    bits=params.bits,
                    mode=params.mode,
                ),
            )
        )
    module.update_modules(tree_unflatten(swaps))


def _dequantized(weights: dict[str, mx.array], quantized: dict[str, QuantParams]) -> dict[str, mx.array]:
    """The weights with every quantized one turned back into a plain matrix of its logical dtype."""
    weights = dict(weights)
    for base, params in quantized.items():
        weights[f"{base}.weight"] = mx.dequantize(
            weights.pop(f"{base}.weight"),
            weights.pop(f"{base}.scales"),
            weights.pop(f"{base}.biases", None),
            group_size=params.group_size,
            bits=params.bits,
            mode=params.mode,
            dtype=_MX_DTYPES[params.dtype],
        )
    return weights


_MX_DTYPES = {"BF16": mx.bfloat16, "F16": mx.float16, "F32": mx.float32}


def _renamed(sanitize, quantized: dict[str, QuantParams]) -> dict[str, QuantParams]:
    """Apply a module's checkpoint-name mapping (`sanitize`) to the base names of its quantized weights."""
    renamed = sanitize({f"{base}.weight": params for base, params in quantized.items()})
    return {name.removesuffix(".weight"): params for name, params in renamed.items()}


def _checkpoint_dtype(weights: ComponentWeights) -> mx.Dtype:
    """The dtype of the checkpoint's floating-point tensors (packed quantized weights are integers)."""
    for name, value in weights.tensors.items():
        if mx.issubdtype(value.dtype, mx.floating) and not name.endswith((".scales", ".biases")):
            return value.dtype
    return mx.bfloat16


def _config(build, cfg: dict, label: str):
    try:
        return build(cfg)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{label}: unsupported or invalid configuration ({exc})") from None


def load(
    source: WeightSource, dtype: mx.Dtype | None = None, *, quantized_matmul: bool | None = None
) -> ZImagePipeline:
    """Read configs and weights from `source` and build the MLX pipeline (weights evaluated, ready to run).

    Quantized weights stay packed (quantized matmul) where that is faster on this back end and are
    dequantized once at load where it is not (`packed_matmul_is_faster`); `quantized_matmul` forces
    one or the other (benchmarks).
    """
    tok_cfg = source.read_json("tokenizer/tokenizer_config.json")
    tokenizer_json = source.read_text("tokenizer/tokenizer.json")
    if tokenizer_json is None:
        raise UserError(f"{source.label}: tokenizer/tokenizer.json is missing")
    try:
        tokenizer = PromptTokenizer(
            tokenizer_json, tok_cfg, source.read_text("tokenizer/chat_template.jinja")
        )
    except Exception as exc:
        raise UserError(f"{source.label}: cannot load the tokenizer ({exc})") from None

    backend = platform_backend()

    def packed(quantized: dict[str, QuantParams]) -> bool:
        if quantized_matmul is not None:
            return quantized_matmul
        return all(packed_matmul_is_faster(backend, params.mode) for params in quantized.values())

    te = source.weights("text_encoder")
    if dtype is None:
        dtype = compute_dtype(_checkpoint_dtype(te))
    te_cfg = _config(Qwen3Config.from_dict, source.read_json("text_encoder/config.json"), source.label)
    text_encoder = Qwen3TextEncoder(te_cfg)
    te_quantized = _renamed(text_encoder.sanitize, te.quantized)
    _load_module(
        text_encoder,
        text_encoder.sanitize(te.tensors),
        dtype,
        f"{source.label} text_encoder",
        te_quantized,
        packed(te_quantized),
    )
    del te

    tr_cfg = _config(ZImageConfig.from_dict, source.read_json("transformer/config.json"), source.label)
    transformer = ZImageTransformer(tr_cfg)
    tr = source.weights("transformer")
    _load_module(
        transformer, tr.tensors, dtype, f"{source.label} transformer", tr.quantized, packed(tr.quantized)
    )
    del tr
    transformer.fuse_projections()
    mx.eval(transformer.parameters())

    vae_cfg = _config(VaeConfig.from_dict, source.read_json("vae/config.json"), source.label)
    vae = AutoencoderKL(vae_cfg)
    _load_module(vae, vae.sanitize(source.tensors("vae")), dtype, f"{source.label} vae")

    return ZImagePipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        transformer=transformer,
        vae=vae,
        scheduler_config=source.read_json("scheduler/scheduler_config.json"),
        dtype=dtype,
        name=source.label,
        digest=source.digest,
    )
