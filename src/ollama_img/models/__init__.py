"""The model families ollama-img runs, keyed by the `_class_name` of a diffusers `model_index.json`.

The store, the CLI and the engine only consult this table and the interfaces beside it: `Architecture`
(`models/architecture.py`: a family's components, capabilities, quantization rule and loader) and
`ImagePipeline` with its `Capabilities` (`models/interface.py`). Parts that families share are
modules of this package: the Qwen3 text encoder (`qwen3`), the chat-template tokenizer
(`chat_tokenizer`), the flow-matching schedule (`flow_match`), the AutoencoderKL blocks
(`autoencoder_kl`), config reading (`configs`), weight loading (`loading`), memory estimates
(`memory_estimates`), components loaded on demand (`residency`) and chunked evaluation (`evaluation`).

A new family touches only:
  1. its own package, `models/<family>/`: `__init__.py` declaring `ARCHITECTURE` (plain Python, no MLX:
     components, `capabilities(read_json)`, size unit, the `QuantRule` for `create --quantize`, and
     `memory`, its components' roles and working sets for the memory planner, in `memory.py` with the
     shared estimates of `memory_estimates`), `config.py` (its config dataclasses), `loader.py`
     (`load(source, dtype=None, *, plan=None, planner=None)` -> its pipeline, built with
     `loading.ComponentLoader`, components loaded as the plan says: `residency.Parts`) and its model
     modules; the pipeline class satisfies `ImagePipeline` (and follows its `memory_plan`). When the
     family takes LoRA adapters, the mapping from adapter keys (diffusers/PEFT, kohya) to its module
     paths is its own too, beside its quantization rule;
  2. one line of `FAMILIES` below;
  3. its tests (tiny folders in the release layout, parity with the diffusers pipeline).
"""

import difflib
import importlib
import math

from ollama_img.errors import UserError
from ollama_img.models.architecture import Architecture, Component

__all__ = ["ARCHITECTURES", "Architecture", "Component", "architecture_for", "size_unit"]

FAMILIES = ("zimage", "flux2")  # packages under ollama_img.models, each with its ARCHITECTURE

ARCHITECTURES: dict[str, Architecture] = {
    arch.class_name: arch
    for arch in (importlib.import_module(f"{__name__}.{family}").ARCHITECTURE for family in FAMILIES)
}


def architecture_for(class_name) -> Architecture:
    """The architecture for a model_index.json `_class_name` (any JSON value), or a UserError naming the
    known ones."""
    if isinstance(class_name, str) and class_name in ARCHITECTURES:
        return ARCHITECTURES[class_name]
    known = ", ".join(sorted(ARCHITECTURES))
    close = difflib.get_close_matches(str(class_name), ARCHITECTURES, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise UserError(f"unsupported architecture {class_name!r} in model_index.json{hint}; supported: {known}")


def size_unit() -> int:
    """What every family's image sides are multiples of (the gcd of their units): a side that is not
    suits no model, so a request can be refused before its model is even looked up."""
    return math.gcd(*(arch.size_unit for arch in ARCHITECTURES.values()))
