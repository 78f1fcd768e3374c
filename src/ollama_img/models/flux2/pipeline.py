"""FLUX.2 [klein] in MLX: prompt -> Qwen3 layers 9/18/27 -> flow-matching Euler steps over packed latent
tokens (with the reference images' tokens beside them) -> batch-norm denormalisation -> VAE -> image.

It follows diffusers' Flux2KleinPipeline step for step (template, padding, sigmas and empirical mu,
timestep convention, reference-image preparation and positions, guidance arithmetic), so the same
weights and the same initial latents give the same image. The distilled models (`is_distilled` in
model_index.json) ignore guidance; the base models run classifier-free guidance against the empty
prompt when guidance > 1, as diffusers does.
"""

from __future__ import annotations

import secrets

import mlx.core as mx
import numpy as np
from PIL import Image

from ollama_img.backend import compile_steps
from ollama_img.models.flux2 import reference, schedule
from ollama_img.models.flux2.text_encoder import PromptEncoder
from ollama_img.models.flux2.transformer import Condition, Flux2Transformer, Rope, StepModulation
from ollama_img.models.flux2.vae import AutoencoderKLFlux2
from ollama_img.models.interface import Capabilities, Defaults, StepCallback, validate_request
from ollama_img.phases import phase

MAX_PIXELS = 2048 * 2048  # 16384 image tokens; what ollama's FLUX.2 caps its output at

# The recipes: distilled klein runs 4 steps (it ignores guidance; 1.0 as ollama shows it), the base
# models diffusers' 50 steps at guidance 4.
DISTILLED = Defaults(width=1024, height=1024, steps=4, guidance=1.0)
BASE = Defaults(width=1024, height=1024, steps=50, guidance=4.0)


class Flux2KleinPipeline:
    def __init__(
        self,
        *,
        prompt_encoder: PromptEncoder,
        transformer: Flux2Transformer,
        vae: AutoencoderKLFlux2,
        scheduler_config: dict,
        distilled: bool,
        capabilities: Capabilities,
        dtype: mx.Dtype,
        name: str,
        digest: str | None = None,
    ):
        self.prompt_encoder = prompt_encoder
        self.transformer = transformer
        self.vae = vae
        self.scheduler_config = scheduler_config
        self.distilled = distilled
        self.capabilities = capabilities
        self.dtype = dtype
        self.name = name
        self.digest = digest
        self.compile = compile_steps()  # bench/gpu_flux2.py measures the step both ways on a GPU
        self._compiled_step = None

    # -- facts for the engine ------------------------------------------------------------------

    @property
    def defaults(self) -> Defaults:
        return DISTILLED if self.distilled else BASE

    @property
    def text_encoder(self):
        return self.prompt_encoder.encoder

    @property
    def tokenizer(self):
        return self.prompt_encoder.tokenizer

    @property
    def resident_bytes(self) -> int:
        """Bytes of weights this pipeline holds."""
        from mlx.utils import tree_flatten

        modules = (self.text_encoder, self.transformer, self.vae)
        return sum(v.nbytes for m in modules for _, v in tree_flatten(m.parameters()))

    @property
    def size_unit(self) -> int:
        """Image sides are multiples of this: one token's worth of pixels."""
        return self.vae.config.size_unit

    @property
    def benefits_from_warm_up(self) -> bool:
        """On a GPU the first image compiles kernels and sets up the GPU libraries; the CPU has nothing
        to compile, so warming up there would only keep the cores busy."""
        return mx.default_device() == mx.gpu

    def warm_up(self, width: int | None = None, height: int | None = None) -> None:
        """Run every part once at this size (default: the model's): text encoder, one transformer step,
        VAE decode, and the VAE encoder on a reference image of that size, so that the first request
        finds its kernels compiled. Uses no global random state: later images are unchanged."""
        width = width or self.defaults.width
        height = height or self.defaults.height
        self.encode_references(
            [Image.new("RGB", (max(width, reference.MIN_SIDE), max(height, reference.MIN_SIDE)))]
        )
        self.generate("warm-up", width=width, height=height, steps=1, seed=0)

    def validate(self, *, width: int, height: int, steps: int) -> None:
        """Raise ValueError with a message a user can act on when the request cannot run."""
        validate_request(self.capabilities, width=width, height=height, steps=steps)
        if width * height > MAX_PIXELS:
            raise ValueError(
                f"width x height must be at most {MAX_PIXELS} pixels (2048x2048), got {width}x{height}"
            )

    # -- the parts -----------------------------------------------------------------------------

    def encode_prompt(self, prompt: str) -> mx.array:
        """(1, 512, 3 * hidden) text embedding, pads included (the transformer attends to all of them)."""
        embedding = self.prompt_encoder(prompt, self.dtype)
        mx.eval(embedding)
        return embedding

    def encode_references(self, images: list[Image.Image]) -> list[tuple[mx.array, int, int]]:
        """Each reference image as (normalised packed tokens (1, n, 128), token rows, token cols)."""
        reference.check_all(images)
        out = []
        for image in images:
            pixels = reference.prepare(image)
            tokens = self.vae.encode_tokens(mx.array(pixels).astype(self.dtype)).astype(self.dtype)
            mx.eval(tokens)
            out.append((tokens, pixels.shape[1] // self.size_unit, pixels.shape[2] // self.size_unit))
        return out

    def latents_shape(self, width: int, height: int) -> tuple[int, int, int, int]:
        """Flux2KleinPipeline's `latents`: (1, 4 * latent_channels, height // 16, width // 16)."""
        return (1, self.vae.config.token_features, height // self.size_unit, width // self.size_unit)

    def initial_latents(self, width: int, height: int, seed: int) -> mx.array:
        return mx.random.normal(self.latents_shape(width, height), dtype=mx.float32, key=mx.random.key(seed))

    def decode(self, tokens: mx.array, rows: int, cols: int) -> Image.Image:
        image = self.vae.decode_tokens(tokens, rows, cols)[0]
        image = mx.clip(image.astype(mx.float32) / 2 + 0.5, 0.0, 1.0)
        pixels = np.array(mx.round(image * 255).astype(mx.uint8))
        return Image.fromarray(pixels, mode="RGB")

    # -- generation ----------------------------------------------------------------------------

    def generate(self, prompt: str, **kwargs) -> Image.Image:
        """One image; the arguments are `denoise`'s."""
        with phase("denoise"):
            tokens, rows, cols = self.denoise(prompt, **kwargs)
        with phase("decode"):
            return self.decode(tokens, rows, cols)

    def size_for(
        self, *, width: int | None = None, height: int | None = None, reference_images=None, **_
    ) -> tuple[int, int]:
        """The size `generate` makes: each side as asked, else the first reference image's as prepared
        (about a megapixel at most, multiples of 16: as diffusers sizes it), else the default. A
        ValueError names a reference image diffusers would refuse."""
        references = list(reference_images or [])
        reference.check_all(references)
        if references and (width is None or height is None):
            w, h = reference.prepared_size(*references[0].size)
            width = w if width is None else width
            height = h if height is None else height
        return (
            self.defaults.width if width is None else width,
            self.defaults.height if height is None else height,
        )

    def denoise(
        self,
        prompt: str,
        *,
        width: int | None = None,
        height: int | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int | None = None,
        latents: np.ndarray | None = None,
        reference_images: list[Image.Image] | None = None,
        on_step: StepCallback | None = None,
    ) -> tuple[mx.array, int, int]:
        """The final packed tokens (1, rows * cols, 128) and the token grid (rows, cols).

        `latents` (1, 128, height // 16, width // 16) float32, Flux2KleinPipeline's layout, replaces the
        seeded noise. `on_step(step, total)` runs after every step; an exception it raises stops the
        generation.
        """
        references = list(reference_images or [])
        width, height = self.size_for(width=width, height=height, reference_images=references)
        steps = self.defaults.steps if steps is None else steps
        guidance = self.defaults.guidance if guidance is None else guidance
        self.validate(width=width, height=height, steps=steps)
        if latents is not None:
            expected = self.latents_shape(width, height)
            if tuple(latents.shape) != expected:
                raise ValueError(f"latents must have shape {expected}, got {tuple(latents.shape)}")
            grid = mx.array(np.asarray(latents, dtype=np.float32))
        else:
            grid = self.initial_latents(width, height, secrets.randbits(32) if seed is None else seed)
        _, features, rows, cols = grid.shape
        x = grid.reshape(1, features, rows * cols).transpose(0, 2, 1)  # packed: one token per position

        with phase("references"):
            ref_tokens = self.encode_references(references)
        use_cfg = guidance > 1 and not self.distilled
        with phase("text"):
            embeds = self.encode_prompt(prompt)
            if use_cfg:  # the base models guide against the empty prompt, in one batch with the prompt
                embeds = mx.concatenate([embeds, self.encode_prompt("")])
            cond = self.transformer.condition(embeds, rows, cols, ref_tokens)

        sig = schedule.sigmas(self.scheduler_config, steps, rows * cols)
        times = schedule.model_times(sig, self.scheduler_config.get("num_train_timesteps", 1000))
        mods = self.transformer.modulations(mx.array(times), self.dtype)
        done = None  # the previous step's latents: waited for while the current step runs
        for i in range(steps):
            velocity = self._velocity(x, cond, mods[i], guidance if use_cfg else None)
            x = x + float(sig[i + 1] - sig[i]) * velocity
            mx.async_eval(x)
            if done is not None:
                mx.eval(done)
                if on_step is not None:
                    on_step(i, steps)
            done = x
        mx.eval(x)
        if on_step is not None:
            on_step(steps, steps)
        return x, rows, cols

    def _velocity(
        self, x: mx.array, cond: Condition, mod: StepModulation, guidance: float | None
    ) -> mx.array:
        """The transformer's prediction, float32; with guidance, from the prompt and the empty prompt."""
        latents = x.astype(self.dtype)
        if guidance is not None:
            latents = mx.concatenate([latents, latents])
        out = self._step(latents, cond, mod).astype(mx.float32)
        if guidance is None:
            return out
        pos, neg = out[:1], out[1:]
        return neg + guidance * (pos - neg)

    def _step(self, latents: mx.array, cond: Condition, mod: StepModulation) -> mx.array:
        if not self.compile:
            return self.transformer.step(latents, cond, mod)
        if self._compiled_step is None:
            self._compiled_step = CompiledStep(self.transformer)
        return self._compiled_step(latents, cond, mod)


class CompiledStep:
    """`Flux2Transformer.step`, mx.compile'd: arrays in, arrays out (compile retraces per new shape)."""

    def __init__(self, transformer: Flux2Transformer):
        def step(latents, context, rope, mod, reference=None):
            cond = Condition(context, reference, Rope(*rope))
            return transformer.step(latents, cond, StepModulation(*mod), submit=False)

        self._plain = mx.compile(lambda *a: step(*a))
        self._with_reference = mx.compile(lambda *a: step(*a))

    def __call__(self, latents: mx.array, cond: Condition, mod: StepModulation) -> mx.array:
        r = cond.rope
        rope = [r.txt_cos, r.txt_sin, r.img_cos, r.img_sin, r.cos, r.sin]
        mods = [mod.img, mod.txt, mod.single, mod.final]
        if cond.reference is None:
            return self._plain(latents, cond.context, rope, mods)
        return self._with_reference(latents, cond.context, rope, mods, cond.reference)
