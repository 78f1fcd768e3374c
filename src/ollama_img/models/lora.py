"""LoRA adapter files: which of a model's modules they change, by how much, and whether they fit it.

Plain Python (no MLX): `create` checks an ADAPTER against its base with `check_adapter`, from tensor
headers alone; `models.lora_layers` then applies what `read_layout` found.

An adapter is a safetensors file of low-rank pairs, one per Linear layer it changes: a down matrix A
(rank x in) and an up matrix B (out x rank), so that the layer computes W x + s * B A x. The files in
use spell them three ways, all read here (as diffusers' `ZImageLoraLoaderMixin` reads them):

- PEFT / diffusers: `[transformer.]<module>.lora_A.weight` and `.lora_B.weight` (`lora_A.default.weight`
  from a PEFT model too), with s = lora_alpha / r from the PEFT config diffusers saves in the file's
  metadata (`lora_adapter_metadata`: `r`, `lora_alpha`, `rank_pattern`, `alpha_pattern`, `use_rslora`),
  1 without one;
- kohya (sd-scripts, ai-toolkit, ComfyUI): `lora_unet_<module with _ for .>.lora_down.weight`,
  `.lora_up.weight` and `.alpha`, with s = alpha / rank;
- either with a `diffusion_model.` prefix, and the original trainers' module names (`attention.qkv`,
  `attention.out`) where the family declares them (`LoraRule.alternates`).

Module names are matched with `.` and `_` alike, so the underscored kohya names need no word lists.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ollama_img.errors import UserError

if TYPE_CHECKING:
    from ollama_img.models.architecture import Architecture

PEFT_METADATA_KEY = "lora_adapter_metadata"  # what diffusers' save_lora_weights writes the PEFT config under
MAX_ADAPTERS = 16  # adapters one generation may apply


# How adapters reach a loaded component (`models.lora_layers`): beside the weights, or written into them.
SIDE_PATH = "side-path"
MERGED = "merged"
STRATEGIES = (SIDE_PATH, MERGED)
DEFAULT_STRATEGY = SIDE_PATH


@dataclass(frozen=True)
class LoraRule:
    """How a family's adapters map onto its modules (declared in the family's package, beside its
    quantization rule).

    `component` is the folder whose Linear layers adapters change. `prefixes` are the key prefixes that
    name it in adapter files (stripped). `alternates` maps a module name suffix other trainers use to the
    checkpoint's modules it stands for: one (a rename) or several (a fused layer whose up matrix splits
    evenly along its outputs, the down matrix shared). `fused` maps a loaded module's name suffix to the
    checkpoint modules the loader concatenates into it along the outputs (equal parts)."""

    component: str
    prefixes: tuple[str, ...] = ("transformer.", "diffusion_model.", "lora_unet_")
    alternates: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    fused: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class AdapterModule:
    """One low-rank pair of a file: the checkpoint modules it changes, its tensors, its rank and scale."""

    targets: tuple[str, ...]  # checkpoint module names ("layers.0.attention.to_q"); several: up splits
    down: str  # the file's key of A (rank x in)
    up: str  # the file's key of B (out x rank)
    rank: int
    scale: float  # alpha / rank (or the PEFT config's), before the user's own scale


@dataclass(frozen=True)
class AdapterLayout:
    """What an adapter file changes, checked against its base: `check_adapter` returns it."""

    path: Path
    modules: tuple[AdapterModule, ...]
    side_path_elements: int = 0  # what its side paths hold on the device, in elements (`side_path_elements`)

    @property
    def targets(self) -> set[str]:
        return {target for module in self.modules for target in module.targets}


_PAIR_SUFFIXES = (
    (".lora_A.weight", ".lora_B.weight"),
    (".lora_A.default.weight", ".lora_B.default.weight"),
    (".lora_down.weight", ".lora_up.weight"),
    (".lora.down.weight", ".lora.up.weight"),
)
_UNSUPPORTED = (
    ("lora_magnitude_vector", "DoRA"),
    ("dora_scale", "DoRA"),
    (".lokr_", "LoKr"),
    (".hada_", "LoHa"),
)
_FLOATS = {"F64": "<f8", "F32": "<f4", "F16": "<f2"}


def check_adapter(
    architecture: Architecture,
    path: Path | str,
    base_shapes: Mapping[str, tuple[int, ...]],
    label: str | None = None,
) -> AdapterLayout:
    """The layout of the adapter at `path` for a model of `architecture` whose component holds the
    tensors `base_shapes` (checkpoint name -> logical shape; `adapters.component_shapes` gives them); a
    UserError naming the first key that does not fit (unknown module, wrong shape, unsupported kind).
    Messages call the adapter `label` (default: its path)."""
    rule = architecture.lora
    if rule is None:
        raise UserError(f"{architecture.family} models do not take LoRA adapters")
    return read_layout(rule, path, base_shapes, label)


def read_layout(
    rule: LoraRule, path: Path | str, base_shapes: Mapping[str, tuple[int, ...]], label: str | None = None
) -> AdapterLayout:
    """`check_adapter` for a rule: headers and the alpha scalars are read, nothing else."""
    from ollama_img.store.source import read_header

    path = Path(path).expanduser()
    where = f"adapter {label or path}"
    if not path.is_file():
        raise UserError(f"{where}: no such file")
    header = read_header(path, where)
    tensors = {t.name: t for t in header.tensors}
    if not tensors:
        raise UserError(f"{where} holds no tensors: not a LoRA adapter")
    linears = {
        name.removesuffix(".weight"): tuple(shape)
        for name, shape in base_shapes.items()
        if name.endswith(".weight") and len(shape) == 2
    }
    names = _ModuleNames(rule, linears)
    peft = _PeftConfig.from_metadata(header.metadata.get(PEFT_METADATA_KEY), where)
    pairs, alphas = _pairs(tensors, rule, where)
    modules = []
    for module, (down, up) in pairs.items():
        targets = names.resolve(module, down, where)
        down_info, up_info = tensors[down], tensors[up]
        rank = _check_pair(down, down_info.shape, up, up_info.shape, [linears[t] for t in targets], where)
        scale = 1.0
        alpha_key = alphas.pop(module, None)
        if alpha_key is not None:
            scale = _read_scalar(path, tensors[alpha_key], where) / rank
        if peft is not None:
            scale *= peft.scale(_strip(module, rule))
        modules.append(AdapterModule(targets, down, up, rank, scale))
    if alphas:  # an alpha without its pair
        raise UserError(f"{where}: key {next(iter(alphas.values()))!r} has no LoRA pair beside it")
    return AdapterLayout(path, tuple(modules), side_path_elements(rule, modules, linears))


def side_path_elements(
    rule: LoraRule, modules: Iterable[AdapterModule], linears: Mapping[str, tuple[int, ...]]
) -> int:
    """Elements of the factors `models.lora_layers.factors` builds for these modules: per target, a
    `down` of rank x in and an `up` of rank x the loaded layer's outputs, which for a layer the loader
    fused is every part's (the `up` is block-diagonal over the parts, zeros included)."""
    total = 0
    for module in modules:
        for target in module.targets:
            outputs, inputs = linears[target]
            total += module.rank * (inputs + outputs * _fused_parts(rule, target))
    return total


def _fused_parts(rule: LoraRule, target: str) -> int:
    for parts in rule.fused.values():
        if any(target == part or target.endswith("." + part) for part in parts):
            return len(parts)
    return 1


# -- keys ----------------------------------------------------------------------------------------------


def _pairs(tensors: dict, rule: LoraRule, where: str) -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
    """(module as spelled in the file -> (down key, up key)), (module -> alpha key): every key placed."""
    pairs: dict[str, tuple[str, str]] = {}
    alphas: dict[str, str] = {}
    for key in tensors:
        for marker, kind in _UNSUPPORTED:
            if marker in key:
                raise UserError(f"{where}: key {key!r} is a {kind} adapter's, which ollama-img cannot apply")
        if key.endswith(".alpha"):
            alphas[key.removesuffix(".alpha")] = key
            continue
        for down_suffix, up_suffix in _PAIR_SUFFIXES:
            if key.endswith(down_suffix):
                module = key.removesuffix(down_suffix)
                up = module + up_suffix
                if up not in tensors:
                    raise UserError(f"{where}: key {key!r} has no {up_suffix.lstrip('.')} beside it")
                pairs[module] = (key, up)
                break
            if key.endswith(up_suffix):
                down = key.removesuffix(up_suffix) + down_suffix
                if down not in tensors:
                    raise UserError(f"{where}: key {key!r} has no {down_suffix.lstrip('.')} beside it")
                break
        else:
            raise UserError(
                f"{where}: key {key!r} is not a LoRA weight (lora_A/lora_B, lora_down/lora_up, alpha)"
            )
    if not pairs:
        raise UserError(f"{where} holds no LoRA pairs: not a LoRA adapter")
    return pairs, alphas


def _strip(module: str, rule: LoraRule) -> str:
    for prefix in rule.prefixes:
        if module.startswith(prefix):
            return module[len(prefix) :]
    return module


def _flat(name: str) -> str:
    return name.replace(".", "_")


class _ModuleNames:
    """The base's Linear modules, and the names other trainers give them, found by their `_` spelling."""

    def __init__(self, rule: LoraRule, linears: dict[str, tuple[int, ...]]):
        self.rule = rule
        self.exact: dict[str, tuple[str, ...]] = {name: (name,) for name in linears}
        for suffix, stands_for in rule.alternates.items():
            for name in linears:
                if name.endswith("." + stands_for[0]):
                    head = name[: -len(stands_for[0])]
                    targets = tuple(head + part for part in stands_for)
                    if all(t in linears for t in targets):
                        self.exact.setdefault(head + suffix, targets)
        # by the `_` spelling; two names spelled alike that way are told apart only by an exact match
        self.flat: dict[str, tuple[str, ...] | None] = {}
        for name, targets in self.exact.items():
            flat = _flat(name)
            self.flat[flat] = targets if self.flat.get(flat, targets) == targets else None

    def resolve(self, module: str, key: str, where: str) -> tuple[str, ...]:
        name = _strip(module, self.rule)
        other = [p.rstrip("._") for p in ("text_encoder.", "lora_te") if name.startswith(p)]
        if other:
            raise UserError(
                f"{where}: key {key!r} changes the text encoder; adapters change the {self.rule.component} only"
            )
        targets = self.exact.get(name) or self.flat.get(_flat(name))
        if targets is None:
            raise UserError(
                f"{where}: key {key!r} names no Linear layer of the model's {self.rule.component}"
            )
        return targets


def _check_pair(down, down_shape, up, up_shape, bases: list[tuple[int, ...]], where: str) -> int:
    """The pair's rank, or a UserError naming the key whose shape does not fit the layers it changes."""
    out_total = sum(b[0] for b in bases)
    in_dims = bases[0][1]
    if len(down_shape) != 2 or down_shape[1] != in_dims:
        raise UserError(
            f"{where}: key {down!r} has shape {list(down_shape)}, the layer takes {in_dims} inputs"
        )
    rank = down_shape[0]
    if len(up_shape) != 2 or tuple(up_shape) != (out_total, rank):
        raise UserError(f"{where}: key {up!r} has shape {list(up_shape)}, expected {[out_total, rank]}")
    if rank == 0:
        raise UserError(f"{where}: key {down!r} has rank 0")
    return rank


def _read_scalar(path: Path, info, where: str) -> float:
    """An alpha: one float (any float dtype) read from its place in the file."""
    import numpy as np

    if math.prod(info.shape) != 1 or info.dtype not in (*_FLOATS, "BF16"):
        raise UserError(
            f"{where}: key {info.name!r} is not one float (dtype {info.dtype}, shape {list(info.shape)})"
        )
    with open(path, "rb") as f:
        f.seek(info.begin)
        raw = f.read(info.nbytes)
    if info.dtype == "BF16":
        return float(np.frombuffer(raw, "<u2").astype(np.uint32).__lshift__(16).view(np.float32)[0])
    return float(np.frombuffer(raw, _FLOATS[info.dtype])[0])


@dataclass(frozen=True)
class _PeftConfig:
    """The scaling part of a PEFT LoraConfig as diffusers stores it in an adapter's metadata."""

    r: int
    alpha: float
    rank_pattern: dict
    alpha_pattern: dict
    rslora: bool

    @classmethod
    def from_metadata(cls, raw: str | None, where: str) -> _PeftConfig | None:
        if not raw:
            return None
        try:
            config = json.loads(raw)
            if not isinstance(config, dict):
                raise ValueError("not an object")
            # a pipeline's file prefixes each key with its component; a model's does not
            prefixed = {k.split(".", 1)[1]: v for k, v in config.items() if k.startswith("transformer.")}
            config = prefixed or config
            if config.get("use_dora"):
                raise UserError(f"{where} is a DoRA adapter, which ollama-img cannot apply")
            r = int(config.get("r", 8))
            return cls(
                r=r,
                alpha=float(config.get("lora_alpha", r)),
                rank_pattern=dict(config.get("rank_pattern") or {}),
                alpha_pattern=dict(config.get("alpha_pattern") or {}),
                rslora=bool(config.get("use_rslora", False)),
            )
        except (ValueError, TypeError) as exc:
            raise UserError(f"{where}: its {PEFT_METADATA_KEY} is not a PEFT config ({exc})") from None

    def scale(self, module: str) -> float:
        """lora_alpha / r for `module`, each from its pattern when one matches (as PEFT matches them)."""
        r = _pattern_value(self.rank_pattern, module, self.r)
        alpha = _pattern_value(self.alpha_pattern, module, self.alpha)
        return alpha / math.sqrt(r) if self.rslora else alpha / r


def _pattern_value(patterns: dict, module: str, default):
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default
