"""The memory plan of a model load and request: a pure function of the model's profile, the device kind,
the budget and what is asked (`plan_memory`).

A generation runs in phases: `encode` (the text encoder turns the prompt into an embedding), `denoise`
(the transformer, every step) and `decode` (the VAE, once per image); `load` reads the weights. The
plan picks, from levers that trade speed for memory, the fastest combination whose peak fits:

- residency, the costly lever, tried in this order: every component resident; the text encoders
  loaded when a new prompt comes and released after encoding (`ENCODERS_ON_DEMAND`: a new prompt then
  re-reads their weights from the store's mapped blobs, a repeated one uses its cached embedding);
  one stage at a time (`ONE_STAGE`: the transformer is released too while a new prompt is encoded);
- how the encoder and the transformer stacks are evaluated (`Evaluation`): as one graph, or in
  chunks of blocks that the device runs while the next chunk is built, or block by block with a wait:
  MLX frees a block's temporaries only once the device has run it, so the chunk bounds what is alive;
- how the VAE decodes: as one graph, evaluated after each block, or after each layer;
- quantized weights stay packed (`quantization.loading_strategy` says how they compute: MLX's
  quantized matmul, or one layer dequantized just before its matmul, whose copy then counts);
- the buffer cache: capped at the plan's working set, so what the engine holds after a generation is
  its weights and at most that.

Evaluations that change only when the device runs the same operations come first when the sequence
is long: they cost little time and bound the peak (MLX's CUDA allocator would otherwise keep every
block's temporaries of a step until the device catches up). The estimates are conservative; the
engine also sets MLX's memory limit to the plan's peak within the budget, which makes MLX empty its
cache and wait for the device rather than allocate beyond it (`memory.device.apply_limits`). A plan's
peak is the device memory it needs: MLX's bytes, what the back end's allocator keeps reserved beside
them and the back end's own overhead (`DeviceKind`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ollama_img.errors import UserError
from ollama_img.formatting import human_bytes
from ollama_img.memory.budget import Budget
from ollama_img.memory.profile import DECODER, DENOISER, ENCODER, BlockStack, MemoryProfile
from ollama_img.quantization import DEQUANTIZE_PER_CALL, QUANTIZED_MATMUL, loading_strategy

PHASES = ("load", "encode", "denoise", "decode")

RESIDENT = "resident"
ENCODERS_ON_DEMAND = "encoders on demand"
ONE_STAGE = "one stage at a time"
RESIDENCIES = (RESIDENT, ENCODERS_ON_DEMAND, ONE_STAGE)

# Below this many tokens in a pass, a stack's temporaries are small and evaluating it whole is fastest
# (bench/RESULTS.md: 512x512, 1,056 tokens, ran fastest without mid-stack evaluation).
SHORT_SEQUENCE = 4096

DECODE_WHOLE, DECODE_BLOCKS, DECODE_LAYERS = "whole", "blocks", "layers"


@dataclass(frozen=True)
class DeviceKind:
    """What the planner needs to know of a back end."""

    name: str  # "cuda", "metal", "cpu"
    computes_float32: bool  # the CPU computes in float32 whatever the checkpoint's dtype
    overhead: int  # bytes the back end uses outside MLX's count (the CUDA context, its libraries)
    fused_attention: bool  # attention without forming the score matrix (MLX's GPU kernels)
    unfolds_convolutions: bool  # convolutions as a matmul over unfolded patches (the CPU)
    pool_slack: float = 0.0  # what the allocator keeps reserved beyond MLX's bytes, as a fraction of them

    def mlx_room(self, total: int) -> int:
        """The bytes MLX may hold within `total` bytes of device memory (the inverse of `MemoryPlan.peak`)."""
        return int((total - self.overhead) / (1 + self.pool_slack))


# The CUDA context, cuBLAS/cuDNN handles and MLX's compiled kernels live outside MLX's allocator:
# 0.55-0.70 GB on an H200 for a process that ran Z-Image; 0.75 GB keeps a margin. MLX takes its
# buffers from the driver's stream-ordered pool (cudaMallocAsync), which keeps partly used chunks
# reserved: after 1024x1024 images nvidia-smi showed 6-16% above MLX's peak beyond the context
# (H200, bench/RESULTS.md "Memory plans on a GPU", 2026-12-03), so plans count 12% of MLX's bytes.
DEVICES = {
    "cuda": DeviceKind(
        "cuda", False, overhead=750_000_000, fused_attention=True, unfolds_convolutions=False, pool_slack=0.12
    ),
    "metal": DeviceKind("metal", False, overhead=0, fused_attention=True, unfolds_convolutions=False),
    "cpu": DeviceKind("cpu", True, overhead=0, fused_attention=False, unfolds_convolutions=True),
}


@dataclass(frozen=True)
class Request:
    """What a generation asks for, as far as memory goes."""

    width: int
    height: int
    count: int = 1  # images, made one after another
    batch: int = 1  # latents per transformer pass (2 when classifier-free guidance runs both branches)
    prompt_bytes: int | None = None  # UTF-8 bytes of the longest prompt; None: the longest possible

    def describe(self) -> str:
        n = f", {self.count} images" if self.count > 1 else ""
        return f"{self.width}x{self.height}{n}"


@dataclass(frozen=True)
class Evaluation:
    """How a stack of blocks is evaluated: `chunk` blocks at a time (None: as one graph), the next chunk
    built while the device runs this one (`pipelined`) or only once it has finished."""

    chunk: int | None = None
    pipelined: bool = True

    def in_flight(self, blocks: int) -> int:
        """Blocks whose temporaries can be alive at once: a pipelined chunk runs while the next is built
        and the one before is being freed."""
        if self.chunk is None:
            return blocks
        return min(blocks, 2 * self.chunk + 1 if self.pipelined else self.chunk)

    def describe(self) -> str:
        if self.chunk is None:
            return "whole"
        blocks = "block" if self.chunk == 1 else f"{self.chunk} blocks"
        return f"{blocks} at a time" + ("" if self.pipelined else ", waiting for each")

    def to_json(self) -> dict:
        return {"chunk": self.chunk, "pipelined": self.pipelined}


WHOLE = Evaluation(None)
STACK_EVALUATIONS = (Evaluation(1), Evaluation(1, pipelined=False))


@dataclass(frozen=True)
class ComponentPlan:
    name: str
    role: str
    weights: int
    resident: bool  # loaded with the model and kept; False: loaded when its phase needs it
    compute: str  # "plain", or the quantization strategy (`quantization.STRATEGIES`)
    quant_type: str | None = None

    def describe(self) -> str:
        if self.compute == DEQUANTIZE_PER_CALL:
            return f"{self.quant_type} packed, each layer dequantized before its matmul"
        if self.compute == QUANTIZED_MATMUL and self.quant_type:
            return f"{self.quant_type} packed, quantized matmul"
        return "as stored"

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "role": self.role,
            "weights": self.weights,
            "resident": self.resident,
            "compute": self.compute,
            "quantization": self.quant_type,
        }


@dataclass(frozen=True)
class MemoryPlan:
    """Where each component sits and how each phase runs, with the bytes each phase is estimated to need
    (weights held plus working set; the device's own overhead apart)."""

    family: str
    device: str
    budget: Budget
    request: Request
    residency: str
    components: tuple[ComponentPlan, ...]
    holds: dict[str, tuple[str, ...]]  # phase -> components loaded during it
    encoder: Evaluation
    denoiser: Evaluation
    decoder: str  # DECODE_WHOLE, DECODE_BLOCKS or DECODE_LAYERS
    phases: dict[str, int]  # phase -> estimated bytes (weights held + working set)
    overhead: int
    itemsize: int  # bytes per activation element (2: bf16; 4: float32 on the CPU)
    pool_slack: float = 0.0  # the back end's allocator's reserve beyond MLX's bytes (`DeviceKind`)

    @property
    def mlx_peak(self) -> int:
        """The largest phase: what MLX itself holds at the peak."""
        return max(self.phases.values())

    @property
    def peak(self) -> int:
        """The estimated peak of the device's memory: MLX's, its allocator's reserve and the device's own
        overhead."""
        return int(self.mlx_peak * (1 + self.pool_slack)) + self.overhead

    @property
    def held_after(self) -> int:
        """Weights still loaded after a generation."""
        return self._weights(self.holds["decode"])

    def memory_limit(self, others: int = 0) -> Budget:
        """MLX's memory limit while this plan runs: its peak (at most its budget) beside the `others` bytes
        that other loaded models hold. With no budget set the budget is the whole free GPU, and MLX,
        whose limit only makes it empty its cache and wait for the device, would otherwise keep buffers
        far beyond the plan (33 GB held on an H200 after two 1024x1024 images planned at 24 GB)."""
        others_on_device = int(others * (1 + self.pool_slack))  # MLX bytes, as device memory like the peak
        return Budget(
            others_on_device + min(self.peak, self.budget.bytes), f"the plan's peak ({self.budget.source})"
        )

    @property
    def cache_limit(self) -> int:
        """MLX's buffer cache cap: the working set, so that weights plus cache stay within the peak."""
        return max(0, self.mlx_peak - self.held_after)

    def component(self, name: str) -> ComponentPlan:
        return next(c for c in self.components if c.name == name)

    def on_demand(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.components if not c.resident)

    def _weights(self, names) -> int:
        return sum(c.weights for c in self.components if c.name in names)

    def summary(self) -> list[str]:
        """Short phrases for `ps`, `show` and the engine log: what is not plain and resident."""
        lines = []
        for c in self.components:
            if not c.resident:
                lines.append(f"{c.name.replace('_', ' ')} on demand")
        for c in self.components:
            if c.quant_type:
                how = "dequantized per layer" if c.compute == DEQUANTIZE_PER_CALL else "quantized matmul"
                lines.append(f"{c.name.replace('_', ' ')} {c.quant_type} ({how})")
        lines.append(f"transformer {self.denoiser.describe()}")
        lines.append(f"VAE {'whole' if self.decoder == DECODE_WHOLE else 'by ' + self.decoder}")
        return lines

    def to_json(self) -> dict:
        return {
            "device": self.device,
            "budget": self.budget.to_json(),
            "request": {
                "width": self.request.width,
                "height": self.request.height,
                "count": self.request.count,
                "batch": self.request.batch,
            },
            "residency": self.residency,
            "components": [c.to_json() for c in self.components],
            "encoder_evaluation": self.encoder.to_json(),
            "transformer_evaluation": self.denoiser.to_json(),
            "vae_decode": self.decoder,
            "phases": dict(self.phases),
            "overhead": self.overhead,
            "pool_slack": self.pool_slack,
            "peak": self.peak,
            "cache_limit": self.cache_limit,
            "summary": self.summary(),
        }


class MemoryPlanError(UserError):
    """No plan fits: the request needs more memory than the budget, even with every lever.

    503: the engine cannot serve it with the memory it has; it keeps serving other requests."""

    status = 503

    def __init__(self, message: str, need: int):
        super().__init__(message)
        self.need = need


@dataclass(frozen=True)
class Planner:
    """A model's profile with the device and the budget it plans against: one plan per request. A pipeline
    holds one and plans each generation (the engine replaces its budget with what other models leave)."""

    profile: MemoryProfile
    device: DeviceKind
    budget: Budget
    label: str = "the model"

    def plan(
        self,
        width: int | None = None,
        height: int | None = None,
        *,
        count: int = 1,
        batch: int = 1,
        prompts: tuple[str | None, ...] = (),
    ) -> MemoryPlan:
        """The plan for a request (None: the model's default size; no prompts: the longest prompt)."""
        texts = [p for p in prompts if p is not None]
        request = Request(
            width or self.profile.default_width,
            height or self.profile.default_height,
            count=count,
            batch=batch,
            prompt_bytes=max(len(t.encode()) for t in texts) if texts else None,
        )
        return plan_memory(
            self.profile, device=self.device, budget=self.budget, request=request, label=self.label
        )

    def for_load(self) -> MemoryPlan:
        """The plan to load with: for the default size, else for the largest smaller size of its shape
        that fits (a model that fits only smaller images still loads; a larger request is then refused).
        The default size's MemoryPlanError when not even the smallest fits."""
        try:
            return self.plan()
        except MemoryPlanError as error:
            for scale in (0.75, 0.5, 0.25, 0.125, 0.0625):
                width = max(16, int(self.profile.default_width * scale) // 16 * 16)
                height = max(16, int(self.profile.default_height * scale) // 16 * 16)
                try:
                    return self.plan(width, height)
                except MemoryPlanError:
                    continue
            raise error

    def within(self, budget: Budget) -> Planner:
        return replace(self, budget=budget)

    def with_adapters(self, name: str, elements: int) -> Planner:
        """This planner for component `name` holding `elements` of LoRA side paths."""
        held = [c.adapter_elements for c in self.profile.components if c.name == name]
        if held in ([], [elements]):
            return self
        return replace(self, profile=self.profile.with_adapters(name, elements))

    def adding_adapters(self, name: str, elements: int) -> Planner:
        """This planner for component `name` holding `elements` of side paths more than it does."""
        held = sum(c.adapter_elements for c in self.profile.components if c.name == name)
        return self.with_adapters(name, held + elements)


# ---------------------------------------------------------------------------------------------------
# Working sets


def stack_bytes(
    stack: BlockStack,
    tokens: int,
    batch: int,
    evaluation: Evaluation,
    *,
    itemsize: int,
    fused: bool,
    dequant: int,
) -> int:
    """Bytes a stack's evaluation holds beyond its weights: the stream between blocks, every output of
    the blocks in flight, their score matrices when attention is not fused, and `dequant` bytes of
    dequantized weights per block in flight."""
    blocks = evaluation.in_flight(stack.blocks)
    per_token = stack.live_per_token + blocks * stack.outputs_per_token
    scores = 0 if fused else blocks * batch * stack.heads * tokens * tokens * 4
    return itemsize * batch * tokens * per_token + scores + blocks * dequant


def _dequant_bytes(profile: MemoryProfile, stack: BlockStack, components) -> int:
    """One block's dequantized weights, when its component dequantizes per call."""
    if any(c.compute == DEQUANTIZE_PER_CALL for c in components):
        return stack.weights * profile.weight_itemsize
    return 0


# ---------------------------------------------------------------------------------------------------
# The planner


def holds_for(profile: MemoryProfile, residency: str) -> dict[str, tuple[str, ...]]:
    """The components loaded during each phase under a residency."""
    names = {role: tuple(c.name for c in profile.by_role(role)) for role in (ENCODER, DENOISER, DECODER)}
    everything = names[ENCODER] + names[DENOISER] + names[DECODER]
    without_encoders = names[DENOISER] + names[DECODER]
    if residency == RESIDENT:
        return {phase: everything for phase in PHASES}
    if residency == ENCODERS_ON_DEMAND:
        return {
            "load": without_encoders,
            "encode": everything,
            "denoise": without_encoders,
            "decode": without_encoders,
        }
    # One stage at a time; the small decoder stays. The transformer stays through decoding, so that
    # the next image of a repeated prompt needs no reload.
    return {
        "load": without_encoders,
        "encode": names[ENCODER] + names[DECODER],
        "denoise": without_encoders,
        "decode": without_encoders,
    }


def plan_memory(
    profile: MemoryProfile,
    *,
    device: DeviceKind,
    budget: Budget,
    request: Request,
    label: str = "the model",
) -> MemoryPlan:
    """The fastest plan whose estimated peak fits `budget`, or a MemoryPlanError that says how much the
    request needs and what to try (`label` names the model in it). The residencies tried are those the
    family's pipeline supports (`profile.residencies`), in the order of RESIDENCIES."""
    residencies = tuple(r for r in RESIDENCIES if r in profile.residencies)
    best = None
    for residency in residencies:
        plan = _leanest_or_fastest(profile, device, budget, request, residency)
        if plan.peak <= budget.bytes:
            return plan
        if best is None or plan.peak < best.peak:
            best = plan
    raise MemoryPlanError(
        _no_fit_message(profile, device, budget, request, label, best, residencies), best.peak
    )


def needs(profile: MemoryProfile, device: DeviceKind, request: Request) -> dict[str, int]:
    """The least peak under each residency the family supports, every other lever taken (`show`)."""
    nothing = Budget(0, "none")
    return {
        residency: _leanest_or_fastest(profile, device, nothing, request, residency).peak
        for residency in RESIDENCIES
        if residency in profile.residencies
    }


def report(profile: MemoryProfile, device: DeviceKind, budget: Budget | None) -> dict:
    """What `show` and /api/show tell of a model's memory at its default size: the least it needs under
    each residency, and the plan within `budget` when one is set (or why none fits)."""
    request = Request(profile.default_width, profile.default_height)
    out = {"device": device.name, "width": request.width, "height": request.height}
    out["needs"] = needs(profile, device, request)
    if budget is not None:
        try:
            out["plan"] = plan_memory(profile, device=device, budget=budget, request=request).to_json()
        except MemoryPlanError as exc:
            out["error"] = str(exc)
    return out


def _leanest_or_fastest(
    profile: MemoryProfile, device: DeviceKind, budget: Budget, request: Request, residency: str
) -> MemoryPlan:
    """Under one residency: for each phase the first (fastest) evaluation that fits, else its leanest."""
    itemsize = 4 if device.computes_float32 else profile.weight_itemsize
    components = tuple(
        ComponentPlan(
            name=c.name,
            role=c.role,
            weights=c.held(device.computes_float32),
            resident=residency == RESIDENT
            or c.role == DECODER
            or (c.role == DENOISER and residency != ONE_STAGE),
            compute=loading_strategy(device.name, c.quant_mode) if c.quant_mode else "plain",
            quant_type=c.quant_type,
        )
        for c in profile.components
    )
    holds = holds_for(profile, residency)

    def held(phase: str) -> int:
        return sum(c.weights for c in components if c.name in holds[phase])

    room = device.mlx_room(budget.bytes)
    prompt_tokens = profile.prompt_tokens(request.prompt_bytes)

    def first_fitting(options, working):
        for option in options:
            if working(option) <= room:
                return option
        return min(options, key=working)

    encoder_eval, encode = WHOLE, 0
    if profile.encoder is not None and profile.by_role(ENCODER):
        enc_dequant = _dequant_bytes(profile, profile.encoder, [c for c in components if c.role == ENCODER])

        def encoding(option):
            working = stack_bytes(
                profile.encoder, prompt_tokens, 1, option,
                itemsize=itemsize, fused=device.fused_attention, dequant=enc_dequant,
            )  # fmt: skip
            return held("encode") + working

        options = _stack_options(prompt_tokens, enc_dequant)
        encoder_eval = first_fitting(options, encoding)
        encode = encoding(encoder_eval)

    tokens = profile.sequence(request.width, request.height, prompt_tokens)
    den_dequant = _dequant_bytes(profile, profile.denoiser, [c for c in components if c.role == DENOISER])

    def denoising(option):
        working = stack_bytes(
            profile.denoiser, tokens, request.batch, option,
            itemsize=itemsize, fused=device.fused_attention, dequant=den_dequant,
        )  # fmt: skip
        return held("denoise") + working

    denoiser_eval = first_fitting(_stack_options(tokens * request.batch, den_dequant), denoising)

    images = request.count * request.width * request.height * 3 if device.name == "cpu" else 0

    def decoding(mode):
        working = profile.decoder_bytes(
            request.width, request.height, itemsize, mode, device.unfolds_convolutions
        )
        return held("decode") + working + images

    # From 1024x1024 up, evaluating the VAE after each layer ran as fast as after each block (H200:
    # 0.908 against 0.904 s/image) and peaked 3.2 GB lower (bench/RESULTS.md, "Issues 10 and 11 after
    # the fixes").
    small = (request.width // 16) * (request.height // 16) < SHORT_SEQUENCE
    decode_modes = (DECODE_WHOLE, DECODE_BLOCKS, DECODE_LAYERS) if small else (DECODE_LAYERS,)
    decoder_mode = first_fitting(decode_modes, decoding)

    # Loading casts what a float32 device upcasts while the stored copy is still alive.
    upcast = (
        sum(c.upcast for c in profile.components if c.name in holds["load"]) if device.computes_float32 else 0
    )
    phases = {
        "load": held("load") + profile.load_slack + upcast,
        "encode": encode,
        "denoise": denoising(denoiser_eval) + profile.working_allowance,
        "decode": decoding(decoder_mode),
    }
    return MemoryPlan(
        family=profile.family,
        device=device.name,
        budget=budget,
        request=request,
        residency=residency,
        components=components,
        holds=holds,
        encoder=encoder_eval,
        denoiser=denoiser_eval,
        decoder=decoder_mode,
        phases=phases,
        overhead=device.overhead,
        pool_slack=device.pool_slack,
        itemsize=itemsize,
    )


def _stack_options(tokens: int, dequant: int) -> tuple[Evaluation, ...]:
    """Whole first for a short sequence of plain weights; a dequantized copy of every block's weights
    would be alive at once otherwise."""
    return (WHOLE, *STACK_EVALUATIONS) if tokens < SHORT_SEQUENCE and not dequant else STACK_EVALUATIONS


def _no_fit_message(profile, device, budget, request, label, best: MemoryPlan, residencies) -> str:
    levers = []
    if ENCODERS_ON_DEMAND in residencies:
        levers.append("the text encoder on demand")
    if ONE_STAGE in residencies:
        levers.append("one stage at a time")
    levers += [f"the transformer {best.denoiser.describe()}", f"the VAE by {best.decoder}"]
    message = (
        f"{label} needs about {human_bytes(best.peak)} of memory for {request.describe()}, even with "
        f"{', '.join(levers)}; the budget is {budget.describe()}"
    )
    tries = []
    smaller = _fitting_size(profile, device, budget, request, residencies)
    if smaller is not None:
        tries.append(f"a smaller size ({smaller.width}x{smaller.height} fits)")
    elif request.count > 1:
        tries.append("fewer images at a time")
    denoisers = profile.by_role(DENOISER)
    if any(c.quant_type is None for c in denoisers):
        tries.append("a quantized model (ollama-img create NEW --from MODEL --quantize fp8, or int4)")
    elif any(c.quant_type not in FOUR_BIT for c in denoisers):
        tries.append("a 4-bit model (ollama-img create NEW --from MODEL --quantize int4)")
    if budget.source.startswith(("OLLAMA_IMG", "--")) and "cut to" not in budget.source:
        tries.append("a larger budget")
    return message + ("; try " + " or ".join(tries) if tries else "")


FOUR_BIT = ("int4", "nvfp4", "mxfp4")


def _fitting_size(profile, device, budget, request, residencies) -> Request | None:
    """The largest smaller size of the same shape (sides in multiples of 16) whose plan fits, if any."""
    for scale in (0.875, 0.75, 0.625, 0.5, 0.375, 0.25):
        width = max(16, int(request.width * scale) // 16 * 16)
        height = max(16, int(request.height * scale) // 16 * 16)
        smaller = replace(request, width=width, height=height)
        for residency in residencies:
            if _leanest_or_fastest(profile, device, budget, smaller, residency).peak <= budget.bytes:
                return smaller
    return None


__all__ = [
    "DEVICES",
    "ENCODERS_ON_DEMAND",
    "ONE_STAGE",
    "PHASES",
    "RESIDENT",
    "DeviceKind",
    "Evaluation",
    "MemoryPlan",
    "MemoryPlanError",
    "Planner",
    "Request",
    "needs",
    "plan_memory",
    "report",
]
