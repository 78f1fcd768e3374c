"""What a model family declares about its memory, so that a generic planner can size any model.

A family (in `models/<family>/memory.py`, plain Python) describes each component by its role and its
bytes, and the working sets of running them as functions of the request: the text encoder and the
denoiser as chains of identical blocks (`BlockStack`), the decoder by a function of the image size.
Shared parts (the Qwen3 encoder, DiT blocks, the AutoencoderKL decoder) have their estimates in
`ollama_img.models.memory_estimates`.

Estimates are conservative by design: a block's working set counts every array it writes, as if none
were freed before the block ends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

ENCODER = "encoder"  # runs once per prompt (text encoders)
DENOISER = "denoiser"  # runs every step (the transformer)
DECODER = "decoder"  # runs once per image (the VAE)
ROLES = (ENCODER, DENOISER, DECODER)


@dataclass(frozen=True)
class Stored:
    """A component as the store (or a folder) holds it: the input a family's profile starts from."""

    weights: int  # bytes of its tensors
    quant_type: str | None = None  # "fp8", "int4" when its matmul weights are stored quantized
    quant_mode: str | None = None  # the MLX mode of those weights ("mxfp8", "affine")
    upcast: int = 0  # bytes of its half-precision tensors that are not matmul weights (`upcast_bytes`)


def upcast_bytes(name: str, dtype: str | None, shape: tuple[int, ...] | None, nbytes: int) -> int:
    """What a tensor adds when the device computes in float32 (the CPU): every half-precision tensor but
    a matmul weight (2-D, named `.weight`; an embedding table is not one) doubles."""
    if dtype not in ("BF16", "F16"):
        return 0
    matmul = shape is not None and len(shape) == 2 and name.endswith(".weight") and "embed_tokens" not in name
    return 0 if matmul else nbytes


@dataclass(frozen=True)
class ComponentMemory:
    """One component with weights: its role and the bytes it holds once loaded."""

    name: str  # the folder name, "text_encoder"
    role: str  # one of ROLES
    weights: int  # bytes of its tensors as stored (what loading reads into memory)
    quant_type: str | None = None  # "fp8", "int4" when its matmul weights are stored quantized
    quant_mode: str | None = None  # the MLX mode of those weights ("mxfp8", "affine")
    upcast: int = 0  # bytes more when held on a device that computes in float32
    adapter_elements: int = 0  # LoRA side paths beside its weights, in the compute dtype

    def held(self, computes_float32: bool) -> int:
        if computes_float32:
            return self.weights + self.upcast + 4 * self.adapter_elements
        return self.weights + 2 * self.adapter_elements


@dataclass(frozen=True)
class BlockStack:
    """A chain of identical blocks, sized per token, so the plan can weigh evaluating it in chunks.

    Counts are in elements (times the compute dtype's size for bytes): `outputs_per_token` is what one
    block writes per token, all of it (its projections, attention, feed-forward and norms), and
    `live_per_token` what stays alive between blocks (the residual stream, its norm, rotary tables).
    `weights` is one block's matmul weights: what dequantizing per call writes while the block runs.
    `heads` are its attention heads: without a fused attention kernel (the CPU) each block forms a
    heads x tokens x tokens float32 score matrix.
    """

    blocks: int
    outputs_per_token: int
    live_per_token: int
    weights: int
    heads: int


@dataclass(frozen=True)
class MemoryProfile:
    """Everything the planner needs to know about one model (a family's declaration, filled in with
    the model's own configs and stored bytes)."""

    family: str
    components: tuple[ComponentMemory, ...]
    default_width: int
    default_height: int
    max_prompt_tokens: int  # the text encoder's longest input (longer prompts are cut)
    template_tokens: int  # what the chat template adds to a prompt's own tokens
    encoder: BlockStack | None  # the text encoder's layers; None: no text encoder
    denoiser: BlockStack
    sequence: Callable[[int, int, int], int]  # (width, height, prompt tokens) -> denoiser tokens
    # (width, height, itemsize, mode, unfolded convolutions) -> bytes; the CPU unfolds convolutions' patches
    decoder_bytes: Callable[[int, int, int, str, bool], int]
    load_slack: int = 0  # bytes beyond the weights that loading needs at once (fusing projections)
    weight_itemsize: int = 2  # bytes per element of dequantized weights (the checkpoint's bf16)
    working_allowance: int = 0  # bytes added to the denoising phase (a family that declares no stack)
    residencies: tuple[str, ...] = ("resident", "encoders on demand", "one stage at a time")  # its pipeline's

    def prompt_tokens(self, prompt_bytes: int | None) -> int:
        """An upper bound on a prompt's tokens: at most one per UTF-8 byte, plus the template's."""
        if prompt_bytes is None:
            return self.max_prompt_tokens
        return max(1, min(self.max_prompt_tokens, prompt_bytes + self.template_tokens))

    def by_role(self, role: str) -> tuple[ComponentMemory, ...]:
        return tuple(c for c in self.components if c.role == role)

    def with_adapters(self, name: str, elements: int) -> MemoryProfile:
        """This profile with component `name` holding `elements` of LoRA side paths (instead of what it
        held before)."""
        return replace(
            self,
            components=tuple(
                replace(c, adapter_elements=elements) if c.name == name else c for c in self.components
            ),
        )

    @property
    def weights(self) -> int:
        return sum(c.weights for c in self.components)


def component(name: str, role: str, stored: dict[str, Stored]) -> ComponentMemory:
    """A family's component `name` of `role`, with what the store holds of it."""
    held = stored.get(name, Stored(0))
    return ComponentMemory(name, role, held.weights, held.quant_type, held.quant_mode, held.upcast)


def weights_only(family: str, stored: dict[str, Stored], default_size: tuple[int, int]) -> MemoryProfile:
    """The profile of a family that declares none: its weights, all resident, and a working set of a
    quarter of them (a guess, so that the scheduler still refuses what clearly cannot fit)."""
    weights = sum(s.weights for s in stored.values())
    nothing = BlockStack(blocks=1, outputs_per_token=0, live_per_token=0, weights=0, heads=0)
    return MemoryProfile(
        family=family,
        components=tuple(component(name, DENOISER, stored) for name in stored),
        default_width=default_size[0],
        default_height=default_size[1],
        max_prompt_tokens=1,
        template_tokens=0,
        encoder=None,
        denoiser=nothing,
        sequence=lambda width, height, tokens: 1,
        decoder_bytes=lambda width, height, itemsize, mode, unfolded: 0,
        working_allowance=weights // 4,
        residencies=("resident",),
    )
