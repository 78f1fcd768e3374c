"""Loading a checkpoint into MLX modules, the same way for every family.

A family builds each module from its config and hands it, with its component's folder name, to a
`ComponentLoader`, which

- maps names: a module may define `parameter_name(checkpoint_name) -> str | None`, its own name for a
  tensor of the checkpoint (None: a tensor it does not use); quantized weights' companions
  (`<base>.scales`, `<base>.biases`) are real tensors of the component and are mapped the same way;
- transposes PyTorch convolution kernels, (out, in, kh, kw), into MLX's (out, kh, kw, in);
- loads strictly: every parameter gets a tensor of its shape and every tensor a parameter;
- computes in one dtype (`compute_dtype`), casting all but Linear weights to it;
- runs quantized Linear weights one of three ways, picked per component by the memory plan (from
  `ollama_img.quantization.loading_strategy`: per back end and mode), or forced:
  - `QUANTIZED_MATMUL`: `nn.QuantizedLinear`, MLX's quantized matmul on the packed weights;
  - `DEQUANTIZE_PER_CALL`: `DequantizingLinear`, packed weights dequantized in every call and multiplied
    with a plain matmul: the quantized model's memory at about a plain matmul's speed where MLX's
    quantized matmul is slow for the mode (dequantizing costs O(weights), the matmul O(tokens x weights));
  - `DEQUANTIZE_AT_LOAD`: plain `nn.Linear` weights dequantized once while loading: a plain matmul's
    speed, the unquantized model's memory;
- fuses after loading, when asked (`fuse_linears` makes one layer of several that share their input);
- reads each stored byte once, evaluating nothing before it is fused and cast: each component is one lazy
  graph, evaluated in pieces (`_evaluate_in_pieces`) so that what a piece drops is reused by the next;
  on CUDA, several threads read groups of tensors at once (`models.reading`, `OLLAMA_IMG_LOAD_THREADS`).
  bench/load_speed.py and bench/gpu_load_profile.py measure it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TypeVar

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from ollama_img.backend import platform_backend
from ollama_img.errors import UserError
from ollama_img.models.reading import GROUP_BYTES, load_threads, read_in_threads, tensor_groups
from ollama_img.phases import phase
from ollama_img.quantization import (
    DEQUANTIZE_AT_LOAD,
    DEQUANTIZE_PER_CALL,
    QUANTIZED_MATMUL,
    STRATEGIES,
    QuantParams,
    loading_strategy,
)
from ollama_img.weights import ComponentWeights, WeightSource

__all__ = [
    "DEQUANTIZE_AT_LOAD",
    "DEQUANTIZE_PER_CALL",
    "QUANTIZED_MATMUL",
    "STRATEGIES",
    "ComponentLoader",
    "DequantizingLinear",
    "compute_dtype",
    "fuse_linears",
]

LOAD_CACHE_BYTES = 4 * GROUP_BYTES  # MLX's buffer cache while a component is evaluated (`_cache_room`)
MX_DTYPES = {"BF16": mx.bfloat16, "F16": mx.float16, "F32": mx.float32}
M = TypeVar("M", bound=nn.Module)


def compute_dtype(checkpoint_dtype: mx.Dtype) -> mx.Dtype:
    """The checkpoint's dtype on a GPU; float32 on the CPU.

    MLX's CPU back end has no fast half-precision matmul (bf16 runs no faster than float32 there) and
    bf16 arithmetic would only lose accuracy, so the CPU computes in float32. Linear weights keep the
    checkpoint's dtype even then: bf16 -> float32 is exact, MLX promotes them per product, and the
    model needs half the memory.
    """
    return checkpoint_dtype if mx.default_device() == mx.gpu else mx.float32


def checkpoint_dtype(weights: ComponentWeights) -> mx.Dtype:
    """The dtype of a component's floating-point tensors (packed quantized weights are integers)."""
    for name, value in weights.tensors.items():
        if mx.issubdtype(value.dtype, mx.floating) and not name.endswith((".scales", ".biases")):
            return value.dtype
    return mx.bfloat16


class ComponentLoader:
    """Loads the components of one weight source into modules, in one compute dtype.

    `dtype` None takes `compute_dtype` of the first component loaded. `quantized` (one of `STRATEGIES`)
    forces one way of running every quantized weight (benchmarks, tests); else `strategies` (component
    -> strategy, the memory plan's) says, and for a component it does not name, the back end's choice.
    """

    def __init__(
        self,
        source: WeightSource,
        *,
        dtype: mx.Dtype | None = None,
        quantized: str | None = None,
        strategies: dict[str, str] | None = None,
    ):
        if quantized is not None and quantized not in STRATEGIES:
            raise ValueError(f"quantized must be one of {STRATEGIES}, got {quantized!r}")
        self.source = source
        self.dtype = dtype
        self._forced = quantized
        self._strategies = {c: s for c, s in (strategies or {}).items() if s in STRATEGIES}
        self._backend = platform_backend()

    def strategy(self, mode: str, component: str | None = None, params: QuantParams | None = None) -> str:
        """How weights quantized in `mode` run here, in `component`. A quantized matmul the back end
        cannot run for these parameters (`params`) falls back to dequantizing per call."""
        if self._forced:
            return self._forced
        chosen = self._strategies.get(component) or loading_strategy(self._backend, mode)
        if chosen == QUANTIZED_MATMUL and params is not None and not quantized_matmul_runs(params):
            return DEQUANTIZE_PER_CALL
        return chosen

    def config(self, build: Callable[[dict], object], relpath: str):
        """`build(config.json object)` for a component's config, or a UserError naming the model."""
        try:
            return build(self.source.read_json(relpath))
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{self.source.label}: unsupported or invalid configuration ({exc})") from None

    def load(self, component: str, module: M, *, fuse: Callable[[M], list[FuseUnit]] | None = None) -> M:
        """Load `component`'s weights into `module` (evaluated, ready to run). `fuse(module)` names the
        blocks whose projections merge (`FuseUnit`s); each block's `fuse()` runs once its weights are
        loaded, before quantized layers take their final form."""
        weights = self.source.weights(component)  # lazy: only the headers are read so far
        stored_dtype = checkpoint_dtype(weights)
        if self.dtype is None:
            self.dtype = compute_dtype(stored_dtype)
        label = f"{self.source.label} {component}"
        convert = _Conversion(module, weights, self.dtype)
        ways = {base: self.strategy(p.mode, component, p) for base, p in convert.quantized.items()}
        at_load = {base: p for base, p in convert.quantized.items() if ways[base] == DEQUANTIZE_AT_LOAD}
        use_quantized_linears(module, {b: p for b, p in convert.quantized.items() if b not in at_load}, label)
        convert.settle(module, at_load)
        threads = load_threads(self._backend)
        units = fuse(module) if fuse is not None else []
        with _cache_room():
            if threads == 1:  # one lazy graph, fused before it is evaluated
                _load_strictly(module, convert(weights), label)
                del weights
                fuser = _Fuser(units, [], evaluate=False)  # _evaluate_in_pieces evaluates the graph
            else:  # shapes checked before anything is read, then threads read and convert groups of tensors
                expected = convert(_placeholders(weights))
                _load_strictly(module, expected, label)
                groups = tensor_groups(convert.units(weights))
                del weights
                fuser = _Fuser(units, expected, evaluate=True)

                def read(names: list[str]) -> dict[str, mx.array]:
                    return convert(self.source.weights(component, names))

                installed: set[str] = set()

                def install(arrays: dict[str, mx.array]) -> None:
                    module.load_weights(list(arrays.items()), strict=False)  # names checked above
                    installed.update(arrays)
                    fuser.loaded(arrays)

                with phase("read"):
                    read_in_threads(groups, read, threads, on_result=install)
                missing = sorted(set(expected) - installed)
                if missing:  # a placeholder left in place would be evaluated to zeros
                    raise UserError(
                        f"{label}: weights do not match the model's configuration "
                        f"({len(missing)} tensors were not read, e.g. {missing[0]})"
                    )
            with phase("eval"):  # what is not evaluated yet is read and moved to the device here
                fuser.finish()
                per_call = {
                    convert.quantized[b].mode for b, way in ways.items() if way == DEQUANTIZE_PER_CALL
                }
                use_dequantizing_linears(module, per_call, _linear_dtype(stored_dtype, self.dtype))
                _evaluate_in_pieces(module)
        return module


FuseUnit = tuple[str, nn.Module]  # (the block's parameter prefix, e.g. "layers.3"; the block, with `fuse()`)


class _Fuser:
    """Each block's `fuse()` as soon as all its weights are loaded, then its parameters evaluated.

    With several reading threads the parts of a fused layer are freed while the threads go on reading
    tensors of the same sizes, which reuse them; fused only after everything was read, the parts would
    be freed last, scattered between the weights that stay, where the CUDA driver's memory pool keeps
    them reserved (2.5-3 GB for Z-Image-Turbo on an H200, bench/RESULTS.md). With one thread the whole
    component is one lazy graph: `finish()` fuses it unevaluated, and each piece is fused as it is read.
    """

    def __init__(self, units: list[FuseUnit], names, *, evaluate: bool):
        self.evaluate = evaluate
        self.waiting: dict[str, tuple[nn.Module, set[str]]] = {}
        self.owner: dict[str, str] = {}
        for prefix, block in units:
            needed = {n for n in names if n.startswith(prefix + ".")}
            self.waiting[prefix] = (block, needed)
            self.owner.update(dict.fromkeys(needed, prefix))

    def loaded(self, arrays: dict[str, mx.array]) -> None:
        for name in arrays:
            prefix = self.owner.get(name)
            if prefix is None or prefix not in self.waiting:
                continue
            needed = self.waiting[prefix][1]
            needed.discard(name)
            if not needed:
                self._fuse(prefix)

    def finish(self) -> None:
        for prefix in list(self.waiting):
            self._fuse(prefix)

    def _fuse(self, prefix: str) -> None:
        block, _ = self.waiting.pop(prefix)
        block.fuse()
        if self.evaluate:
            mx.eval(block.parameters())


_QMM_RUNS: dict[tuple, bool] = {}


def quantized_matmul_runs(params: QuantParams) -> bool:
    """Whether MLX's quantized matmul runs for these parameters on the default device (asked once)."""
    key = (str(mx.default_device()), params.mode, params.bits, params.group_size)
    if key not in _QMM_RUNS:
        try:
            weight = mx.zeros((32, 4 * params.group_size), dtype=mx.bfloat16)
            kwargs = {"group_size": params.group_size, "bits": params.bits, "mode": params.mode}
            packed = mx.quantize(weight, **kwargs, stream=mx.cpu)  # some GPUs lack a mode's quantizer
            mx.eval(packed)
            biases = packed[2] if len(packed) > 2 else None
            x = mx.zeros((16, weight.shape[1]), dtype=mx.bfloat16)
            out = mx.quantized_matmul(
                x,
                packed[0],
                packed[1],
                biases,
                group_size=params.group_size,
                bits=params.bits,
                mode=params.mode,
            )
            mx.eval(out)
            _QMM_RUNS[key] = True
        except (RuntimeError, ValueError):
            _QMM_RUNS[key] = False
    return _QMM_RUNS[key]


class _Conversion:
    """How the component's checkpoint tensors become the module's parameters, as a function of any subset
    of them (each thread that reads converts its own): names mapped by the module's `parameter_name`,
    convolution kernels transposed into MLX's layout, weights quantized for `DEQUANTIZE_AT_LOAD`
    dequantized, and all but Linear weights (plain or quantized) cast to the compute dtype."""

    def __init__(self, module: nn.Module, weights: ComponentWeights, dtype: mx.Dtype):
        self.rename = getattr(module, "parameter_name", None) or (lambda name: name)
        self.convs = {f"{path}.weight" for path, m in module.named_modules() if isinstance(m, nn.Conv2d)}
        self.dtype = dtype
        self.quantized: dict[str, QuantParams] = {}  # by the module's base name
        self.stored_quantized: set[str] = set()  # the checkpoint's base names of those
        for base, params in weights.quantized.items():
            mapped = self.rename(f"{base}.scales")  # every quantized weight has its scales tensor
            if mapped is not None:
                self.quantized[mapped.removesuffix(".scales")] = params
                self.stored_quantized.add(base)
        self.at_load: dict[str, QuantParams] = {}
        self.keep_dtype: set[str] = set()

    def settle(self, module: nn.Module, at_load: dict[str, QuantParams]) -> None:
        """Once quantized layers are swapped in: which weights dequantize here and which keep their dtype."""
        self.at_load = at_load
        self.keep_dtype = {f"{path}.weight" for path, m in module.named_modules() if isinstance(m, nn.Linear)}
        for path, m in module.named_modules():
            if isinstance(m, nn.QuantizedLinear):
                self.keep_dtype.update(f"{path}.{key}" for key in ("weight", "scales", "biases"))

    def __call__(self, weights: ComponentWeights) -> dict[str, mx.array]:
        tensors = {}
        for name, value in weights.tensors.items():
            mapped = self.rename(name)
            if mapped is None:
                continue
            if mapped in self.convs and value.ndim == 4:
                value = value.transpose(0, 2, 3, 1)
            tensors[mapped] = value
        present = {base: p for base, p in self.at_load.items() if f"{base}.weight" in tensors}
        if present:
            tensors = dequantize_weights(tensors, present)
        return {name: self._cast(name, value) for name, value in tensors.items()}

    def _cast(self, name: str, value: mx.array) -> mx.array:
        floating = mx.issubdtype(value.dtype, mx.floating)
        keep = not floating or (
            name in self.keep_dtype and mx.finfo(value.dtype).bits <= mx.finfo(self.dtype).bits
        )
        return value if keep or value.dtype == self.dtype else value.astype(self.dtype)

    def units(self, weights: ComponentWeights) -> list[tuple[list[str], int]]:
        """The checkpoint tensors the module uses, in stored order, as (names read together, bytes):
        a quantized weight with its companions."""
        units: dict[str, tuple[list[str], int]] = {}
        for name, value in weights.tensors.items():
            if self.rename(name) is None:
                continue
            base, _, key = name.rpartition(".")
            unit = base if base in self.stored_quantized and key in ("weight", "scales", "biases") else name
            names, nbytes = units.get(unit, ([], 0))
            units[unit] = ([*names, name], nbytes + value.nbytes)
        return list(units.values())


@contextlib.contextmanager
def _cache_room() -> Iterator[None]:
    """MLX's buffer cache at least `LOAD_CACHE_BYTES` while a component loads (never lowered: a GPU's
    default is its memory limit), then as it was, which also gives back what the load left in it."""
    previous = mx.set_cache_limit(LOAD_CACHE_BYTES)
    if previous > LOAD_CACHE_BYTES:
        mx.set_cache_limit(previous)
    try:
        yield
    finally:
        mx.set_cache_limit(previous)


def _evaluate_in_pieces(module: nn.Module) -> None:
    """Evaluate the parameters a piece of about `GROUP_BYTES` at a time (inside `_cache_room`).

    What a piece reads and then drops (the parts of a fused layer, a weight before its cast) goes back to
    the cache and is taken again by the next piece's reads, which have the same sizes block after block:
    fresh memory, what reading costs most, is touched about once per byte loaded, and only one piece is
    ever held twice. One graph of the whole component would allocate all its reads first.
    """
    piece, size = [], 0
    for _, value in tree_flatten(module.parameters()):
        piece.append(value)
        size += value.nbytes
        if size >= GROUP_BYTES:
            mx.eval(piece)
            piece, size = [], 0
    mx.eval(piece)


def _placeholders(weights: ComponentWeights) -> ComponentWeights:
    """Unevaluated arrays of the tensors' shapes and dtypes (never read, never allocated): what checking
    the module's shapes needs, without holding the files open."""
    return ComponentWeights(
        {name: mx.zeros(value.shape, value.dtype) for name, value in weights.tensors.items()},
        weights.quantized,
    )


def _load_strictly(module: nn.Module, weights: dict[str, mx.array], label: str) -> None:
    """Every parameter from `weights` (converted already), every tensor to a parameter."""
    try:
        module.load_weights(list(weights.items()), strict=True)
    except ValueError as exc:
        raise UserError(f"{label}: weights do not match the model's configuration ({exc})") from None


def _linear_dtype(checkpoint: mx.Dtype, compute: mx.Dtype) -> mx.Dtype:
    """What plain Linear weights hold after loading: the checkpoint's dtype unless the compute dtype is
    narrower."""
    return checkpoint if mx.finfo(checkpoint).bits <= mx.finfo(compute).bits else compute


def fuse_linears(linears: list[nn.Module]) -> nn.Module:
    """One layer computing the outputs of several bias-free layers that share their input, concatenated.

    Works for plain and quantized layers: quantization groups run along the input dimension, so
    packed weights, scales and biases concatenate along the output dimension.
    """
    first = linears[0]
    if isinstance(first, nn.QuantizedLinear):
        in_dims = first.weight.shape[1] * 32 // first.bits
        fused = nn.QuantizedLinear(
            in_dims, 1, bias=False, group_size=first.group_size, bits=first.bits, mode=first.mode
        )
        fused.weight = mx.concatenate([lin.weight for lin in linears], axis=0)
        fused.scales = mx.concatenate([lin.scales for lin in linears], axis=0)
        if first.get("biases") is not None:
            fused.biases = mx.concatenate([lin.biases for lin in linears], axis=0)
        return fused
    fused = nn.Linear(1, 1, bias=False)
    fused.weight = mx.concatenate([lin.weight for lin in linears], axis=0)
    return fused


class DequantizingLinear(nn.QuantizedLinear):
    """A QuantizedLinear that dequantizes its weight in each call and runs a plain matmul."""

    weight_dtype: mx.Dtype = mx.bfloat16  # what the weight dequantizes to (the checkpoint's dtype)

    @classmethod
    def from_quantized(cls, layer: nn.QuantizedLinear, weight_dtype: mx.Dtype) -> DequantizingLinear:
        out_dims, packed = layer.weight.shape
        new = cls(
            packed * 32 // layer.bits,
            out_dims,
            bias="bias" in layer,
            group_size=layer.group_size,
            bits=layer.bits,
            mode=layer.mode,
        )
        new.weight, new.scales = layer.weight, layer.scales
        new.biases = layer.get("biases")
        if "bias" in layer:
            new.bias = layer.bias
        new.weight_dtype = weight_dtype
        return new

    def __call__(self, x: mx.array) -> mx.array:
        weight = mx.dequantize(
            self["weight"],
            self["scales"],
            self.get("biases"),
            group_size=self.group_size,
            bits=self.bits,
            mode=self.mode,
            dtype=self.weight_dtype,
        )
        y = x @ weight.T
        return y + self["bias"] if "bias" in self else y


def use_quantized_linears(module: nn.Module, quantized: dict[str, QuantParams], label: str) -> None:
    """Before loading: swap each Linear whose weight is stored quantized for a QuantizedLinear of its shape."""
    linears = {path: m for path, m in module.named_modules() if isinstance(m, nn.Linear)}
    swaps = []
    for path, params in quantized.items():
        linear = linears.get(path)
        if linear is None:
            raise UserError(f"{label}: {path} is stored quantized but is not a Linear layer of this model")
        out_dims, in_dims = linear.weight.shape
        layer = nn.QuantizedLinear(
            in_dims,
            out_dims,
            bias="bias" in linear,
            group_size=params.group_size,
            bits=params.bits,
            mode=params.mode,
        )
        swaps.append((path, layer))
    module.update_modules(tree_unflatten(swaps))


def dequantize_weights(
    weights: dict[str, mx.array], quantized: dict[str, QuantParams]
) -> dict[str, mx.array]:
    """The weights with each quantized one turned back into a plain matrix of its logical dtype."""
    weights = dict(weights)
    for base, params in quantized.items():
        weights[f"{base}.weight"] = mx.dequantize(
            weights.pop(f"{base}.weight"),
            weights.pop(f"{base}.scales"),
            weights.pop(f"{base}.biases", None),
            group_size=params.group_size,
            bits=params.bits,
            mode=params.mode,
            dtype=MX_DTYPES[params.dtype],
        )
    return weights


def use_dequantizing_linears(module: nn.Module, modes: set[str], weight_dtype: mx.Dtype) -> int:
    """After loading (and fusing): turn the QuantizedLinear layers of `modes` into DequantizingLinear ones."""
    swaps = [
        (path, DequantizingLinear.from_quantized(m, weight_dtype))
        for path, m in module.named_modules()
        if type(m) is nn.QuantizedLinear and m.mode in modes
    ]
    if swaps:
        module.update_modules(tree_unflatten(swaps))
    return len(swaps)
