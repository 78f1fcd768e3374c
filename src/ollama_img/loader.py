"""`load_pipeline`: a model name or folder in, a ready MLX pipeline out, whatever the architecture."""

from __future__ import annotations

import importlib
from pathlib import Path

from ollama_img.backend import require_mlx
from ollama_img.models import architecture_for
from ollama_img.phases import phase
from ollama_img.weights import open_source


def load_pipeline(name_or_folder: str | Path, *, store=None, dtype=None):
    """Load from the store (a model name) or from a diffusers model folder (a directory path).

    `dtype` overrides the compute dtype (default: the checkpoint's on a GPU, float32 on the CPU).
    """
    with phase("resolve"):
        require_mlx()
        source = open_source(name_or_folder, store)
        arch = architecture_for(source.read_json("model_index.json").get("_class_name"))
        module = importlib.import_module(arch.loader)
    with phase("build"):  # what the loader does not mark as read or eval
        return module.load(source, dtype=dtype)
