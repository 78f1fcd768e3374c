"""ollama-img: ollama's run / create / ps / stop for local text-to-image models, on MLX."""

# The one place the version is written (pyproject.toml reads it from here): a literal, so that starting
# the CLI costs no package-metadata look-up.
__version__ = "0.1.0"

__all__ = ["__version__", "load_pipeline"]


def load_pipeline(name_or_folder, **kwargs):
    """Load a text-to-image pipeline from a store model name or a model folder.

    Imported lazily so that `import ollama_img` (and the CLI) never pays for MLX.
    """
    from ollama_img.loader import load_pipeline as _load

    return _load(name_or_folder, **kwargs)
