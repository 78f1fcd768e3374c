"""LoRA adapters applied to a loaded MLX component, one of two ways.

Every adapter pair (A, B, scale s) that changes a Linear layer W becomes, with the other adapters of
the same layer, one pair of factors: `down` (in x R) and `up` (R x out), R the ranks added up and each
adapter's scale (its own times the user's) folded into its columns of `up`, so that several adapters
cost what one of their total rank costs. Layers the loader fused (Z-Image's q|k|v, w1|w3: the family's
`LoraRule.fused`) take their parts' pairs side by side: `up` is block-diagonal over the parts.

- `SIDE_PATH`: each adapted layer computes `W x + (x down) up`: two thin matmuls beside the base's,
  whatever the base is (plain, quantized, dequantized per call), which stays untouched; another set of
  adapters is swapped in without reading the model again.
- `MERGED`: W + (down up)^T written into the weights once, after loading: no cost per step; a
  quantized weight is dequantized, merged and quantized again in its own type (which adds that type's
  rounding to the adapter's change). Another set of adapters means loading the component again.

bench/lora.py measures both (load time, step time, memory, error); bench/RESULTS.md says which the
loader uses (`DEFAULT_STRATEGY`).
"""

from __future__ import annotations

from collections.abc import Iterable

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten

from ollama_img.adapters import Adapter, held_elements
from ollama_img.models.lora import DEFAULT_STRATEGY, MERGED, SIDE_PATH, STRATEGIES, LoraRule
from ollama_img.phases import phase

__all__ = ["DEFAULT_STRATEGY", "MERGED", "SIDE_PATH", "STRATEGIES"]  # declared with the plain rules


class LoraLinear(nn.Module):
    """A Linear layer (plain or quantized) with a low-rank side path: base(x) + (x down) up."""

    def __init__(self, base: nn.Module, down: mx.array, up: mx.array):
        super().__init__()
        self.base = base
        self.lora_down = down  # (in, R)
        self.lora_up = up  # (R, out), the scales folded in

    def __call__(self, x: mx.array) -> mx.array:
        return self.base(x) + (x @ self.lora_down) @ self.lora_up


def factors(
    module: nn.Module, rule: LoraRule, adapters: Iterable[Adapter], dtype: mx.Dtype
) -> dict[str, tuple[mx.array, mx.array]]:
    """(down (in, R), up (R, out)) for each of `module`'s layers that the adapters change, by its path
    in the loaded module (fused layers included)."""
    layers = _linear_layers(module)
    placement = _placement(rule, layers)
    pairs: dict[str, list[tuple[int, int, mx.array, mx.array]]] = {}
    for adapter in adapters:
        tensors = mx.load(str(adapter.layout.path), format="safetensors")  # store blobs have no extension
        for item in adapter.layout.modules:
            down = tensors[item.down].astype(mx.float32)
            up = tensors[item.up].astype(mx.float32) * (item.scale * adapter.scale)
            ups = mx.split(up, len(item.targets), axis=0) if len(item.targets) > 1 else [up]
            for target, part_up in zip(item.targets, ups, strict=True):
                path, part, parts = placement.get(target, (target, 0, 1))
                if path not in layers:
                    raise ValueError(f"the adapter changes {target}, which the loaded model lacks")
                pairs.setdefault(path, []).append((part, parts, down, part_up))
    out = {}
    for path, items in pairs.items():
        downs, columns = [], []
        for part, parts, down, up in items:
            rows = up.shape[0]
            block = [up]
            if part:
                block.insert(0, mx.zeros((part * rows, up.shape[1])))
            if parts - part - 1:
                block.append(mx.zeros(((parts - part - 1) * rows, up.shape[1])))
            downs.append(down)
            columns.append(mx.concatenate(block, axis=0) if len(block) > 1 else up)
        down = mx.concatenate(downs, axis=0) if len(downs) > 1 else downs[0]
        up = mx.concatenate(columns, axis=1) if len(columns) > 1 else columns[0]
        out[path] = (down.T.astype(dtype), up.T.astype(dtype))
    return out


def apply(
    module: nn.Module,
    rule: LoraRule,
    adapters: Iterable[Adapter],
    strategy: str = DEFAULT_STRATEGY,
    dtype: mx.Dtype = mx.float32,
) -> int:
    """Apply the adapters to the loaded `module` (evaluated); returns how many layers they change.

    A module that has side paths already loses them first, so the adapters given are the ones it has
    afterwards; merged adapters cannot be taken out (load the component again instead)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    remove_side_paths(module)
    adapters = list(adapters)
    if not adapters:
        return 0
    by_layer = factors(module, rule, adapters, mx.float32 if strategy == MERGED else dtype)
    layers = _linear_layers(module)
    if strategy == SIDE_PATH:
        swaps = [(path, LoraLinear(layers[path], down, up)) for path, (down, up) in by_layer.items()]
        module.update_modules(tree_unflatten(swaps))
        mx.eval([(down, up) for down, up in by_layer.values()])
    else:
        for path, (down, up) in by_layer.items():
            merge(layers[path], down, up)
            mx.eval(layers[path].parameters())
    return len(by_layer)


def remove_side_paths(module: nn.Module) -> int:
    """Give each layer with a side path back its base; returns how many there were."""
    swaps = [(path, m.base) for path, m in module.named_modules() if isinstance(m, LoraLinear)]
    if swaps:
        module.update_modules(tree_unflatten(swaps))
    return len(swaps)


def merge(layer: nn.Module, down: mx.array, up: mx.array) -> None:
    """W + (down up)^T into a Linear layer's weight, computed in float32; a quantized weight is
    dequantized, merged and quantized again with its own parameters."""
    delta = (down @ up).T
    if isinstance(layer, nn.QuantizedLinear):
        params = {"group_size": layer.group_size, "bits": layer.bits, "mode": layer.mode}
        weight = mx.dequantize(layer.weight, layer.scales, layer.get("biases"), **params, dtype=mx.float32)
        # quantized from the logical dtype, so that scales and offsets keep theirs (bf16 for affine)
        logical = layer.scales.dtype if mx.issubdtype(layer.scales.dtype, mx.floating) else mx.bfloat16
        packed = _quantize((weight + delta).astype(logical), params)
        layer.weight, layer.scales = packed[0], packed[1]
        if len(packed) > 2:
            layer.biases = packed[2]
    else:
        layer.weight = (layer.weight.astype(mx.float32) + delta).astype(layer.weight.dtype)


def _quantize(weight: mx.array, params: dict) -> tuple[mx.array, ...]:
    try:
        packed = mx.quantize(weight, **params)
        mx.eval(packed)
    except (RuntimeError, ValueError):  # a GPU without this mode's quantizer: the CPU has all
        packed = mx.quantize(weight, **params, stream=mx.cpu)
    return tuple(packed)


def _linear_layers(module: nn.Module) -> dict[str, nn.Module]:
    return {path: m for path, m in module.named_modules() if isinstance(m, nn.Linear | nn.QuantizedLinear)}


def _placement(rule: LoraRule, layers: dict[str, nn.Module]) -> dict[str, tuple[str, int, int]]:
    """Checkpoint module -> (the loaded layer computing it, its part, how many parts) for fused layers."""
    out = {}
    for suffix, parts in rule.fused.items():
        for path in layers:
            if path == suffix or path.endswith("." + suffix):
                head = path[: -len(suffix)]
                for index, part in enumerate(parts):
                    out[head + part] = (path, index, len(parts))
    return out


class ComponentAdapters:
    """The adapters of one component of a pipeline, kept applied however often the component loads:
    the model's own (`own`, from its load) and a generation's extra ones (`use`).

    `resolve(specs)` turns (path or digest, scale) pairs into checked `Adapter`s (`adapters.resolve`
    bound to the model's source)."""

    def __init__(self, rule: LoraRule, resolve, own=(), strategy: str | None = None):
        self.rule = rule
        self.strategy = strategy or DEFAULT_STRATEGY
        if self.strategy not in STRATEGIES:
            raise ValueError(f"lora strategy must be one of {STRATEGIES}, got {strategy!r}")
        self.own = tuple(own)
        self.extra: tuple[Adapter, ...] = ()
        self._resolve = resolve
        self._specs: tuple = ()  # the extra adapters' specs, resolved once while they stay the same
        self._applied: tuple | None = None  # the keys of what the loaded component has

    @property
    def wanted(self) -> tuple[Adapter, ...]:
        return self.own + self.extra

    @property
    def held_elements(self) -> int:
        """What the wanted adapters hold beside the weights (`adapters.held_elements`)."""
        return held_elements(self.wanted, self.strategy)

    def attach(self, module: nn.Module, dtype: mx.Dtype) -> nn.Module:
        """Apply the wanted adapters to a freshly loaded component (the loader's last step)."""
        if self.wanted:  # a fresh component has no side paths: without adapters there is nothing to do
            with phase("lora"):
                apply(module, self.rule, self.wanted, self.strategy, dtype)
        self._applied = _keys(self.wanted)
        self._dtype = dtype
        return module

    def use(self, specs, parts, name: str) -> bool:
        """Make the model's own adapters plus `specs` ((path or digest, scale) pairs) the component's;
        returns whether a loaded component changed (its compiled steps must be traced again). Side
        paths are swapped in place; merged adapters release the component, which loads again with them."""
        specs = tuple((str(where), float(scale)) for where, scale in specs or ())
        if specs != self._specs:
            self.extra, self._specs = tuple(self._resolve(specs)), specs
        if not parts.is_loaded(name) or _keys(self.wanted) == self._applied:
            return False
        if self.strategy == SIDE_PATH:  # the side paths it has are taken out, the wanted ones put in
            with phase("lora"):
                apply(parts.get(name), self.rule, self.wanted, self.strategy, self._dtype)
            self._applied = _keys(self.wanted)
        else:
            parts.release(name)
            self._applied = None
        return True


def _keys(adapters) -> tuple:
    return tuple(adapter.key for adapter in adapters)
