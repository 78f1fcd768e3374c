"""ollama-img: ollama's run / create / ps / stop for local text-to-image models, on MLX."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ollama-img")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"

__all__ = ["__version__", "load_pipeline"]


def load_pipeline(name_or_folder, **kwargs):
    """Load a text-to-image pipeline from a store model name or a model folder.

    Imported lazily so that `import ollama_img` (and the CLI) never pays for MLX.
    """
    from ollama_img.loader import load_pipeline as _load

    return _load(name_or_folder, **kwargs)
