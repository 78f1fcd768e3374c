"""Z-Image in MLX: prompt -> Qwen3 embedding -> flow-matching Euler steps -> VAE -> image.

It follows diffusers' ZImagePipeline step for step (same template, same sigmas, same timestep
convention, same guidance arithmetic), so the same weights and the same initial latents give the
same image. From a start image (and a mask) it follows ZImageImg2ImgPipeline and
ZImageInpaintPipeline: the preparation is `edit.py`'s, the steps are the same loop.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass

import mlx.core as mx
import numpy as np
from PIL import Image

from ollama_img.backend import compile_steps
from ollama_img.image_input import oriented_size
from ollama_img.memory.plan import MemoryPlan, MemoryPlanError, Planner
from ollama_img.models import flow_match
from ollama_img.models.autoencoder_kl import AutoencoderKL
from ollama_img.models.chat_tokenizer import ChatTokenizer
from ollama_img.models.interface import Capabilities, Defaults, StepCallback, validate_request
from ollama_img.models.lora_layers import ComponentAdapters
from ollama_img.models.qwen3 import Qwen3TextEncoder
from ollama_img.models.residency import Parts
from ollama_img.models.zimage import edit
from ollama_img.models.zimage.config import PATCH, ZImageConfig
from ollama_img.models.zimage.transformer import Caption, Modulation, ZImageTransformer
from ollama_img.phases import phase
from ollama_img.teacache import TeaCache


@dataclass
class GenerationStats:
    """What a generation ran: steps, and main-block-stack passes computed and skipped (TeaCache)."""

    steps: int = 0
    stack_passes: int = 0
    stack_skipped: int = 0


@dataclass(frozen=True)
class Branch:
    """One transformer pass of a step: its caption(s) and how many copies of the latents it takes."""

    name: str  # the TeaCache residual it uses
    caption: Caption
    batch: int


# Z-Image-Turbo: 9 steps (8 effective); diffusers' strengths from a start image, without and with a mask
TURBO = Defaults(
    width=1024,
    height=1024,
    steps=9,
    guidance=0.0,
    strength=edit.IMAGE_STRENGTH,
    mask_strength=edit.INPAINT_STRENGTH,
)
PROMPT_CACHE = 8  # prompt embeddings kept (a few MB each): a repeated prompt needs no text encoder


class ZImagePipeline:
    """Satisfies `ollama_img.models.interface.ImagePipeline`.

    Its components (`text_encoder`, `transformer`, `vae`) are `parts`, loaded when the memory plan
    (`memory_plan`, made again for each request by `planner` when it has one) has them resident or a
    phase needs them; each phase of a generation first releases what the plan does not hold in it.
    """

    def __init__(
        self,
        *,
        tokenizer: ChatTokenizer,
        parts: Parts,
        transformer_config: ZImageConfig,
        scheduler_config: dict,
        capabilities: Capabilities,
        dtype: mx.Dtype,
        name: str,
        digest: str | None = None,
        memory_plan: MemoryPlan | None = None,
        planner: Planner | None = None,
        lora: ComponentAdapters | None = None,
    ):
        self.tokenizer = tokenizer
        self.lora = lora
        self.parts = parts
        self.transformer_config = transformer_config  # known without loading the transformer
        self.memory_plan = memory_plan
        self.planner = planner
        self._embeddings: OrderedDict[str, mx.array] = OrderedDict()
        self.scheduler_config = scheduler_config
        self.capabilities = capabilities
        self.defaults = TURBO
        self.dtype = dtype
        self.name = name
        self.digest = digest
        self.compile = compile_steps()

    # -- facts for the engine ------------------------------------------------------------------

    @property
    def text_encoder(self) -> Qwen3TextEncoder:
        return self.parts.get("text_encoder")

    @property
    def transformer(self) -> ZImageTransformer:
        return self.parts.get("transformer")

    @property
    def vae(self) -> AutoencoderKL:
        return self.parts.get("vae")

    @property
    def resident_bytes(self) -> int:
        """Bytes of weights this pipeline holds now (components released by the plan count nothing)."""
        return self.parts.nbytes

    def plan_memory(self, width: int, height: int, guidance: float, prompts: tuple[str | None, ...]) -> None:
        """Re-plan for this request when the pipeline has a planner (a MemoryPlanError when nothing
        fits), and keep MLX's buffer cache to the plan's working set."""
        if self.planner is None:
            return
        batch = 2 if guidance > 0 else 1
        if self.lora is not None:  # the adapters of this generation, beside the transformer's weights
            self.planner = self.planner.with_adapters(self.lora.rule.component, self.lora.held_elements)
        self.memory_plan = self.planner.plan(width, height, batch=batch, prompts=prompts)
        mx.set_cache_limit(self.memory_plan.cache_limit)

    def _enter(self, phase: str) -> None:
        """Release what the memory plan does not hold during `phase` (what it needs loads on first use)."""
        if self.memory_plan is not None:
            self.parts.keep_only(self.memory_plan.holds[phase])

    @property
    def latent_scale(self) -> int:
        return self.vae.config.scale_factor

    @property
    def benefits_from_warm_up(self) -> bool:
        """On a GPU the first image compiles kernels and sets up cuBLAS/cuDNN; the CPU has nothing to
        compile (see `compile`), so warming up there would only keep the cores busy."""
        return mx.default_device() == mx.gpu

    def warm_up(self, width: int | None = None, height: int | None = None) -> None:
        """Run every part once (text encoder, one transformer step, VAE decode) at this size, by default
        the model's, so that the first request finds its kernels compiled, its GPU library plans made
        and its buffers allocated. Uses no global random state: later images are unchanged."""
        width = width or self.defaults.width
        height = height or self.defaults.height
        self.decode(self.denoise("warm-up", width=width, height=height, steps=1, seed=0))

    def validate(self, *, width: int, height: int, steps: int) -> None:
        """Raise ValueError with a message a user can act on when the request cannot run."""
        validate_request(self.capabilities, width=width, height=height, steps=steps)

    def size_for(
        self, *, width: int | None = None, height: int | None = None, image: Image.Image | None = None, **_
    ) -> tuple[int, int]:
        """The size `generate` makes: each side as asked, else the start image's rounded down to the size
        unit (as diffusers' image processor rounds it), else the default."""
        if image is None or (width is not None and height is not None):
            return (
                self.defaults.width if width is None else width,
                self.defaults.height if height is None else height,
            )
        unit = self.capabilities.sizes.unit
        own_width, own_height = edit.start_size(image, unit)
        limits = self.capabilities.sizes
        shown = "x".join(map(str, oriented_size(image)))
        if min(own_width, own_height) < unit:
            raise ValueError(f"the start image is {shown}: each side must be at least {unit}, or ask a size")
        if own_width > limits.max_width or own_height > limits.max_height:
            raise ValueError(
                f"the start image is {shown}, larger than this model makes "
                f"({limits.max_width}x{limits.max_height}): ask a smaller size"
            )
        return own_width if width is None else width, own_height if height is None else height

    @property
    def adapters(self) -> tuple:
        """The LoRA adapters the next image is made with (`adapters.Adapter`s)."""
        return self.lora.wanted if self.lora is not None else ()

    def use_loras(self, loras) -> None:
        """Make the model's own adapters plus `loras` the transformer's (checked first: a UserError names
        what does not fit); compiled steps are traced again when the transformer changed."""
        if self.lora is None:
            if loras:
                raise ValueError(f"{self.name} takes no LoRA adapters")
            return
        if self.lora.use(loras, self.parts, "transformer") and self.parts.is_loaded("transformer"):
            self.transformer._compiled = None

    # -- the parts -----------------------------------------------------------------------------

    def encode_prompt(self, prompt: str) -> mx.array:
        """(1, tokens, hidden) text embedding of the real (unpadded) tokens; the last few are kept."""
        cached = self._embeddings.get(prompt)
        if cached is not None:
            self._embeddings.move_to_end(prompt)
            return cached
        self._enter("encode")
        ids = mx.array([self.tokenizer.encode(prompt)])
        plan = self.memory_plan
        embedding = self.text_encoder(ids, evaluation=plan.encoder if plan else None).astype(self.dtype)
        mx.eval(embedding)
        self._embeddings[prompt] = embedding
        if len(self._embeddings) > PROMPT_CACHE:
            self._embeddings.popitem(last=False)
        return embedding

    def latent_shape(self, width: int, height: int) -> tuple[int, int, int, int]:
        return (
            1,
            self.transformer_config.in_channels,
            height // self.latent_scale,
            width // self.latent_scale,
        )

    def initial_latents(self, width: int, height: int, seed: int) -> mx.array:
        return mx.random.normal(self.latent_shape(width, height), dtype=mx.float32, key=mx.random.key(seed))

    def given_latents(self, name: str, value: np.ndarray, width: int, height: int) -> mx.array:
        """Caller-given latents or noise (diffusers' layout, float32) of the shape the size needs."""
        expected = self.latent_shape(width, height)
        if tuple(value.shape) != expected:
            raise ValueError(f"{name} must have shape {expected}, got {tuple(value.shape)}")
        return mx.array(np.asarray(value, dtype=np.float32))

    def encode_image(self, pixels: np.ndarray) -> mx.array:
        """(1, H, W, 3) pixels in [-1, 1] -> scaled latents (1, 16, H / 8, W / 8): the posterior's mean."""
        return self.vae.encode(mx.array(pixels).astype(self.dtype))

    def decode(self, latents: mx.array) -> Image.Image:
        self._enter("decode")
        mode = self.memory_plan.decoder if self.memory_plan else "whole"
        image = self.vae.decode(latents.astype(self.dtype), mode)[0]
        image = mx.clip(image.astype(mx.float32) / 2 + 0.5, 0.0, 1.0)
        pixels = np.array(mx.round(image * 255).astype(mx.uint8))
        return Image.fromarray(pixels, mode="RGB")

    # -- generation ----------------------------------------------------------------------------

    def generate(self, prompt: str, **kwargs) -> Image.Image:
        """One image; the arguments are `denoise`'s."""
        with phase("denoise"):
            latents = self.denoise(prompt, **kwargs)
        with phase("decode"):
            return self.decode(latents)

    def denoise(
        self,
        prompt: str,
        *,
        width: int | None = None,
        height: int | None = None,
        steps: int = TURBO.steps,
        guidance: float = TURBO.guidance,
        negative_prompt: str | None = None,
        seed: int | None = None,
        latents: np.ndarray | None = None,
        on_step: StepCallback | None = None,
        cfg_normalization: float = 0.0,
        cfg_truncation: float = 1.0,
        teacache: float | TeaCache | None = None,
        stats: GenerationStats | None = None,
        image: Image.Image | None = None,
        mask: Image.Image | None = None,
        strength: float | None = None,
        noise: np.ndarray | None = None,
        loras=None,
    ) -> mx.array:
        """The final latents. `latents` (1, 16, height // 8, width // 8) float32 replaces the seeded noise.

        From a start `image` (and, to repaint only part of it, a `mask`: white repaints), `strength` in
        (0, 1] says how much of the schedule runs (default 0.6, with a mask 1.0); the size defaults to
        the image's; `noise`, in the layout of `latents`, replaces the seeded noise the image is mixed
        with. `on_step(step, total)` runs after every step; an exception it raises stops the generation.
        `teacache` (a threshold, e.g. 0.3) skips the main blocks on steps whose input changed little;
        `stats`, if given, is filled with what ran. `loras`, `[(path_or_digest, scale), ...]`, are LoRA
        adapters for this image on top of the model's own (`load_pipeline(loras=...)`).
        """
        width, height = self.size_for(width=width, height=height, image=image)
        self.validate(width=width, height=height, steps=steps)
        self.use_loras(loras)
        try:
            self.plan_memory(width, height, guidance, (prompt, negative_prompt if guidance > 0 else None))
        except MemoryPlanError:
            if loras:  # refused: the model goes back to its own adapters, not holding these for nothing
                self.use_loras(())
            raise
        start = self._start(width, height, steps, seed, latents, image, mask, strength, noise)
        x = start.latents

        use_cfg = guidance > 0
        with phase("text"):
            embeddings = [self.encode_prompt(prompt)]
            if use_cfg:
                embeddings.append(self.encode_prompt(negative_prompt or ""))
            self._enter("denoise")
            positive, *negative = [self._caption(embedding) for embedding in embeddings]
            plain = [Branch("positive", positive, 1)]
            guided = self._guided_branches(positive, negative[0]) if use_cfg else plain

        sig = start.sigmas
        times = flow_match.model_times(sig)
        mods = self.transformer.modulations(mx.array(times), self.dtype)
        if isinstance(teacache, TeaCache):  # a caller's own cache (bench/teacache.py --fit probes with one)
            cache = teacache
        else:  # threshold 0 never skips, so it is off
            cache = TeaCache(teacache, steps) if teacache else None
        done = None  # the previous step's latents: waited for while the current step runs
        total = steps - start.first  # the steps that run (fewer from a start image)
        for i in range(start.first, steps):
            scale = guidance if use_cfg and times[i] <= cfg_truncation else 0.0
            branches = guided if scale > 0 else plain
            velocity = self._velocity(i, x, mods[i], branches, scale, cfg_normalization, cache)
            x = x + float(sig[i + 1] - sig[i]) * -velocity
            if start.blend is not None:
                x = start.blend(i, x)
            mx.async_eval(x)
            if done is not None:
                mx.eval(done)
                if on_step is not None:
                    on_step(i - start.first, total)
            done = x
        mx.eval(x)
        if on_step is not None:
            on_step(total, total)
        if stats is not None:
            stats.steps = total
            stats.stack_passes = cache.computed if cache else total
            stats.stack_skipped = cache.skipped if cache else 0
        return x

    def _start(self, width, height, steps, seed, latents, image, mask, strength, noise) -> edit.Start:
        """The latents the steps begin from, the schedule and the step they begin at: seeded (or given)
        noise for text-to-image, the start image noised to its strength's sigma otherwise."""
        seq_len = (height // self.latent_scale // PATCH) * (width // self.latent_scale // PATCH)
        sig = flow_match.sigmas(self.scheduler_config, steps, seq_len)
        if image is None:
            for name, value in (("mask", mask), ("strength", strength), ("noise", noise)):
                if value is not None:
                    raise ValueError(f"{name} needs a start image (image=...)")
            if latents is not None:
                return edit.Start(self.given_latents("latents", latents, width, height), sig)
            return edit.Start(self.initial_latents(width, height, _seed(seed)), sig)
        if latents is not None:
            raise ValueError("latents are for text-to-image; from a start image, pass noise=")
        if strength is None:
            strength = self.defaults.mask_strength if mask is not None else self.defaults.strength
        if mask is not None and oriented_size(mask) != oriented_size(image):
            raise ValueError(
                f"the mask is {'x'.join(map(str, oriented_size(mask)))} but the image "
                f"{'x'.join(map(str, oriented_size(image)))}: they must be the same size"
            )
        given = self.given_latents("noise", noise, width, height) if noise is not None else None
        return edit.prepare(
            self.encode_image,
            image=image,
            mask=mask,
            strength=strength,
            noise=given if given is not None else self.initial_latents(width, height, _seed(seed)),
            sigmas=sig,
            width=width,
            height=height,
            scale=self.latent_scale,
        )

    def _caption(self, embedding: mx.array) -> Caption:
        caption = self.transformer.encode_caption(embedding, [embedding.shape[1]])
        mx.eval(caption.tokens)
        return caption

    @staticmethod
    def _guided_branches(positive: Caption, negative: Caption) -> list[Branch]:
        """Both branches as one batch when their captions pad to the same length (each sequence attends
        only to itself, so batching changes nothing), else one after the other. Built once per generation."""
        if positive.padded_len == negative.padded_len:
            both = Caption(mx.concatenate([positive.tokens, negative.tokens]), positive.cos, positive.sin)
            return [Branch("both", both, 2)]
        return [Branch("positive", positive, 1), Branch("negative", negative, 1)]

    def _velocity(
        self,
        step: int,
        x: mx.array,
        mod: Modulation,
        branches: list[Branch],
        scale: float,
        norm: float,
        cache: TeaCache | None,
    ) -> mx.array:
        """The velocity, float32: guided (positive and negative outputs combined) when there are two."""
        plan = self.memory_plan
        evaluation = plan.denoiser if plan is not None and plan.denoiser.chunk else None
        model = self.transformer
        parts = model.compiled if self.compile else model
        latents = x.astype(self.dtype)
        outputs, compute = [], None
        for branch in branches:
            lat = latents if branch.batch == 1 else mx.concatenate([latents] * branch.batch)
            if evaluation is not None:  # the noise refiner in chunks too: not compiled
                h, cos, sin = model.embed_image(lat, branch.caption, mod, evaluation)
            else:
                h, cos, sin = parts.embed_image(lat, branch.caption, mod)

            def stack(h, cos=cos, sin=sin):
                if evaluation is not None:  # evaluated in chunks: not inside a compiled function
                    return model.main_stack(h, cos, sin, mod, evaluation)
                return parts.main_stack(h, cos, sin, mod)

            if cache is None:
                out = stack(h)
            else:
                if compute is None:  # one decision per step, from the first branch's modulated input
                    first = model.layers[0]
                    compute = cache.decide(step, mx.fast.rms_norm(h, mod.layers[0][0], first.eps))
                out = cache.run(branch.name, compute, h, stack)
            outputs.append(parts.unembed(out, lat.shape, mod).astype(mx.float32))

        if len(outputs) == 1 and branches[0].batch == 1:
            return outputs[0]
        pos, neg = mx.split(outputs[0], 2) if len(outputs) == 1 else outputs
        pred = pos + scale * (pos - neg)
        if norm > 0:
            max_norm = mx.linalg.norm(pos.reshape(-1)) * norm
            pred_norm = mx.linalg.norm(pred.reshape(-1))
            pred = mx.where(pred_norm > max_norm, pred * (max_norm / pred_norm), pred)
        return pred


def _seed(seed: int | None) -> int:
    return secrets.randbits(32) if seed is None else seed
