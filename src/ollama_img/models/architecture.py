"""How a family describes itself to the store, the CLI and the engine, without MLX.

An `Architecture` says what a model folder of the family holds (its components, for `create`), how
to read what the model can do from its config files (`capabilities`), which tensors `create
--quantize` quantizes (`quantization`), what its parts need in memory (`memory`), how LoRA adapters'
keys map onto its modules (`lora`), and where its loader is. Components several families share are declared here once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ollama_img.errors import UserError
from ollama_img.models.interface import Capabilities
from ollama_img.models.lora import LoraRule
from ollama_img.quantization import QuantRule

if TYPE_CHECKING:
    from ollama_img.memory.profile import MemoryProfile, Stored
    from ollama_img.weights import WeightSource

ReadJson = Callable[[str], dict]  # a model file's JSON object by its path in the folder ("vae/config.json")


@dataclass(frozen=True)
class Component:
    """One folder of a model directory."""

    name: str  # folder name, e.g. "transformer"
    weights: str | None = None  # safetensors stem ("diffusion_pytorch_model", "model"), None if no weights
    required_files: tuple[str, ...] = ()  # files that must exist in the folder
    optional_files: tuple[str, ...] = ()  # files kept when present


@dataclass(frozen=True)
class Architecture:
    class_name: str  # model_index.json `_class_name`
    family: str  # short name shown by `show` and `list`
    loader: str  # module whose `load(source, dtype=None)` returns the family's ImagePipeline
    components: tuple[Component, ...]
    capabilities: Callable[[ReadJson], Capabilities]  # what a model can do, from its config files
    size_unit: int  # its released models' image sides are multiples of this (VAE scale x patch size)
    quantization: QuantRule | None = None  # what `create --quantize` quantizes; None: not supported
    # Its memory profile from its config files and stored bytes (`memory.profile`); None: the planner
    # knows only its weights.
    memory: Callable[[ReadJson, dict[str, Stored]], MemoryProfile] | None = None
    lora: LoraRule | None = None  # how LoRA adapters map onto its modules; None: it takes none
    # The module that compiles its GPU kernels in helper processes before a first image
    # (`ollama_img.priming`): `tasks`, `components_of`, `skeleton_bytes` and `run`; None: it does not.
    priming: str | None = None

    def capabilities_of(self, source: WeightSource) -> Capabilities:
        """What a model loaded from `source` can do: what this version's code does with its config files.
        The store's record is not consulted: a model created before a capability was added (or by an
        older version) gains it with the code, as it would from its folder."""
        return self.capabilities(source.read_json)

    def memory_of(self, source: WeightSource) -> MemoryProfile:
        """The memory profile of a model loaded from `source`, from its configs and stored bytes (no MLX)."""
        from ollama_img.memory.profile import weights_only

        stored = source.stored()
        if self.memory is None:
            return weights_only(self.family, stored, (1024, 1024))
        return self.memory(source.read_json, stored)

    def quantization_rule(self) -> QuantRule:
        if self.quantization is None:
            raise UserError(f"quantization is not supported for {self.class_name} models")
        return self.quantization


# -- components shared by families -------------------------------------------------------------

SCHEDULER = Component("scheduler", required_files=("scheduler_config.json",))

QWEN3_TEXT_ENCODER = Component(
    "text_encoder",
    weights="model",
    required_files=("config.json",),
    optional_files=("generation_config.json",),
)

CHAT_TOKENIZER = Component(
    "tokenizer",
    required_files=("tokenizer.json", "tokenizer_config.json"),
    optional_files=("chat_template.jinja", "special_tokens_map.json", "vocab.json", "merges.txt"),
)

# The tensors of a Qwen3 text encoder that quantize: its decoder layers' Linear weights (checkpoints
# of Qwen3Model and of Qwen3ForCausalLM, whose names start with `model.`).
QWEN3_QUANTIZED = r"(model\.)?layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight"
