"""Z-Image's GPU kernels compiled before its first image, one part per helper process (`ollama_img.priming`).

On empty caches a first image compiles about ten MLX modules one after another, 4-7.6 s each on an H200
(bench/RESULTS.md, "What a first image compiles"): the text encoder's SiLU product and its embedding
gather, the transformer's gather, and each kind of VAE decoder piece. MLX names a module by its
operations and dtypes, not by the sizes it runs at, so each part can be compiled on a skeleton of the
model (`SkeletonSource`: the real configs and tensors, one block per stack) at a small size, each in
its own process, at the same time.

A task is a JSON object, the same in the process that plans and in the helper that runs it:
`{"kind": "text-embed"}`, `{"kind": "text-layers"}`, `{"kind": "step", "chunk": 1}`
(the transformer a block at a time, or with `"chunk": null` whole, where that compiles it), `{"kind": "decode", "mode": "whole"}` or
`{"kind": "decode", "mode": "layers", "piece": 5}` (one piece, of each kind of piece).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Collection

from ollama_img.memory.plan import Evaluation, MemoryPlanError, Planner
from ollama_img.memory.profile import MemoryProfile
from ollama_img.weights import ComponentWeights, WeightSource

SIDE = 256  # the skeleton's image side: the same modules as at 1024x1024, at a fraction of the work
SKELETON_CONFIG = {
    "text_encoder/config.json": {"num_hidden_layers": 2, "vocab_size": 1024},  # hidden_states[-2]: 1 layer
    "transformer/config.json": {"n_layers": 1, "n_refiner_layers": 1},
}
_BLOCK = re.compile(r"^(?:model\.)?(?:layers|noise_refiner|context_refiner)\.(\d+)\.")
_EMBEDDING = re.compile(r"^(?:model\.)?embed_tokens\.weight$")
PROMPT = "kernels"


class SkeletonSource:
    """A model's own weight source with every stack of blocks cut to its first block and the token
    embedding to `vocab_size` rows: the same dtypes, quantization and code paths, a few percent of the
    bytes."""

    def __init__(self, source: WeightSource):
        self.source = source
        self.label = f"{source.label} (skeleton)"
        self.digest = None

    def read_text(self, relpath: str) -> str | None:
        return self.source.read_text(relpath)

    def read_json(self, relpath: str) -> dict:
        config = self.source.read_json(relpath)
        cut = {k: min(v, config.get(k, v)) for k, v in SKELETON_CONFIG.get(relpath, {}).items()}
        return {**config, **cut}

    def weights(self, component: str, names: Collection[str] | None = None) -> ComponentWeights:
        import mlx.core as mx

        full = self.source.weights(component, names)
        tensors = {n: t for n, t in full.tensors.items() if _kept(n)}
        quantized = {b: p for b, p in full.quantized.items() if _kept(b + ".")}
        rows = SKELETON_CONFIG["text_encoder/config.json"]["vocab_size"]  # a smaller table stays whole
        for name in [n for n in tensors if _EMBEDDING.match(n)]:
            if name.removesuffix(".weight") not in quantized:  # a copy: a slice would keep the table
                tensors[name] = mx.contiguous(tensors[name][:rows])
        return ComponentWeights(tensors, quantized)

    def stored(self):
        return self.source.stored()


def _kept(name: str) -> bool:
    block = _BLOCK.match(name)
    return block is None or int(block.group(1)) == 0


# -- what to compile -------------------------------------------------------------------------------


def tasks(source: WeightSource, planner: Planner) -> list[dict]:
    """The parts a model's first images compile: at its default size and at half of it (where plans
    often evaluate differently), each distinct evaluation of the transformer and each kind of VAE
    piece once. The longest compiles first (the text encoder's and the step's)."""
    from ollama_img.backend import compile_steps
    from ollama_img.models.autoencoder_kl import AutoencoderKL
    from ollama_img.models.configs import AutoencoderKLConfig

    profile = planner.profile
    plans = [planner.for_load()]
    with contextlib.suppress(MemoryPlanError):  # a model that fits only its default size
        plans.append(planner.plan(profile.default_width // 2, profile.default_height // 2))
    # The pipeline compiles the stack only when its plan evaluates it whole (`_velocity`); evaluated
    # eagerly, whole or a chunk at a time, it runs the same kernels.
    compiled = compile_steps()
    chunks = dict.fromkeys(None if compiled and p.denoiser.chunk is None else 1 for p in plans)
    steps = [{"kind": "step", "chunk": chunk} for chunk in chunks]
    out: list[dict] = [{"kind": "text-layers"}, *steps, {"kind": "text-embed"}]
    vae_config = AutoencoderKLConfig.from_dict(source.read_json("vae/config.json"))
    vae = AutoencoderKL(vae_config)
    for mode in dict.fromkeys(p.decoder for p in plans):
        if mode == "whole":
            out.append({"kind": "decode", "mode": mode})
            continue
        seen = {}
        for index, (what, _) in enumerate(_piece_inputs(vae, mode)):
            seen.setdefault(what, index)
        out += [{"kind": "decode", "mode": mode, "piece": index} for index in seen.values()]
    return out


def _piece_inputs(vae, mode: str, side: int = SIDE) -> list[tuple[str, tuple[int, ...]]]:
    """(what, input shape at `side`) of each decoder piece: traced from a one-pixel latent (lazily on a
    GPU, and cheaply on the CPU, where large convolutions evaluate in strips), whose sides every piece
    scales by the same factor as at any size."""
    import mlx.core as mx

    scale = side // vae.config.scale_factor
    traced = vae.piece_inputs(mx.zeros((1, vae.config.latent_channels, 1, 1)), mode)
    return [(what, (b, h * scale, w * scale, c)) for what, (b, h, w, c), _ in traced]


def components_of(task: dict) -> tuple[str, ...]:
    """The components a task loads (the memory it needs beside the device's own overhead)."""
    kind = task["kind"]
    return ("text_encoder",) if kind.startswith("text") else ("transformer",) if kind == "step" else ("vae",)


def skeleton_bytes(profile: MemoryProfile, component: str) -> int:
    """About the most a component's skeleton holds: one block's share of the stored bytes per stack kept
    (the text encoder's one layer, the transformer's first main, noise and context blocks), all of the
    VAE."""
    stored = {c.name: c.weights for c in profile.components}[component]
    if component == "text_encoder" and profile.encoder is not None:
        # and the token table, read whole before its rows are cut: about a tenth of a Qwen3 encoder
        # (0.78 of Qwen3-4B's 8.0 GB in bf16), held while it loads
        return stored // max(1, profile.encoder.blocks) + stored // 8
    if component == "transformer":
        return stored * 3 // max(3, profile.denoiser.blocks)
    return stored


# -- running one task ----------------------------------------------------------------------------


def run(source: WeightSource, planner: Planner, task: dict, dtype=None) -> None:
    """Compile one part: load only what the task needs from the skeleton and run it once at `SIDE`."""
    import mlx.core as mx

    from ollama_img.models.zimage import loader

    component = components_of(task)[0]
    plan = planner.for_load()
    skeleton_plan = dataclasses.replace(
        plan,
        holds={phase: (component,) for phase in plan.holds},
        denoiser=Evaluation(task.get("chunk")),
    )
    pipe = loader.load(SkeletonSource(source), dtype, plan=skeleton_plan)
    kind = task["kind"]
    if kind == "text-embed":
        mx.eval(pipe.text_encoder.embed_tokens(mx.array([[1, 2, 3]])))
    elif kind == "text-layers":  # the layers' kernels, apart from the embedding's gather
        encoder = pipe.text_encoder
        x = mx.random.normal((1, 16, encoder.config.hidden_size)).astype(pipe.dtype)
        for layer in encoder.layers:
            x = layer(x, "causal", None)
        mx.eval(x)
    elif kind == "step":  # a cached prompt embedding: the step runs without the text encoder
        width = pipe.transformer_config.cap_feat_dim
        pipe._embeddings[PROMPT] = mx.random.normal((1, 40, width)).astype(pipe.dtype)
        mx.eval(pipe.denoise(PROMPT, width=SIDE, height=SIDE, steps=1, seed=0))
    elif kind == "decode":
        vae = pipe.vae
        latents = mx.random.normal((1, vae.config.latent_channels, SIDE // 8, SIDE // 8)).astype(pipe.dtype)
        if task["mode"] == "whole":
            mx.eval(vae.decode(latents, "whole"))
        else:
            _, shape = _piece_inputs(vae, task["mode"])[task["piece"]]
            x = mx.random.normal(shape).astype(pipe.dtype)
            mx.eval(vae.run_piece(task["mode"], task["piece"], x))
    else:
        raise ValueError(f"unknown priming task {task!r}")
