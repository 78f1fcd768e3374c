"""A loaded pipeline whose defaults are its model's PARAMETERs: what `load_pipeline(NAME)` returns for a
model made by a Modelfile.

The family's pipeline keeps its own defaults (its recipe); this wrapper puts the model's in front of
them, so a caller that leaves an option out gets the model's value, then the family's, and one that
passes it gets its own. Everything else (capabilities, memory plans, `validate`) is the pipeline's.
"""

from __future__ import annotations

import dataclasses

from ollama_img.models.interface import Defaults

SIZE = ("width", "height")
IMAGE_KEYWORDS = ("image", "reference_images")  # images imply a size (the pipeline's `size_for`)


class ModelDefaults:
    """Satisfies `ImagePipeline` as the pipeline it wraps does, with `params` (option field -> value)
    as its defaults."""

    def __init__(self, pipeline, params: dict[str, object]):
        object.__setattr__(self, "pipeline", pipeline)
        object.__setattr__(self, "params", dict(params))

    def __getattr__(self, name: str):
        return getattr(self.pipeline, name)

    def __setattr__(self, name: str, value) -> None:
        setattr(self.pipeline, name, value)  # the engine sets the pipeline's planner

    def __repr__(self) -> str:
        return f"ModelDefaults({self.pipeline!r}, {self.params!r})"

    @property
    def defaults(self) -> Defaults:
        own = self.pipeline.defaults
        given = {key: self.params[key] for key in ("width", "height", "steps") if key in self.params}
        if "guidance" in self.params and own.guidance is not None:
            given["guidance"] = self.params["guidance"]
        if "strength" in self.params and own.strength is not None:
            given["strength"] = given["mask_strength"] = self.params["strength"]
        return dataclasses.replace(own, **given)

    def _filled(self, options: dict) -> dict:
        """`options` with the model's values for those left out (None or absent)."""
        images = any(options.get(key) is not None for key in IMAGE_KEYWORDS)
        out = dict(options)
        for key, value in self.params.items():
            if out.get(key) is not None or (key in SIZE and images):
                continue
            if key == "strength" and options.get("image") is None:
                continue  # a strength is for a start image
            if key in ("guidance", "negative_prompt", "teacache", "strength") and not self._takes(key):
                continue
            out[key] = value
        return out

    def _takes(self, key: str) -> bool:
        from ollama_img.options import BY_FIELD

        capability = BY_FIELD[key].capability
        return capability is None or bool(getattr(self.pipeline.capabilities, capability))

    def size_for(self, *, width: int | None = None, height: int | None = None, **options) -> tuple[int, int]:
        filled = self._filled({"width": width, "height": height, **options})
        return self.pipeline.size_for(width=filled["width"], height=filled["height"], **options)

    def warm_up(self, width: int | None = None, height: int | None = None) -> None:
        filled = self._filled({"width": width, "height": height})
        self.pipeline.warm_up(width=filled["width"], height=filled["height"])

    def generate(self, prompt: str, **options):
        return self.pipeline.generate(prompt, **self._filled(options))


def with_model_defaults(pipeline, params: dict[str, object]):
    """`pipeline` itself when the model has no PARAMETERs, else it with them as its defaults."""
    return ModelDefaults(pipeline, params) if params else pipeline
