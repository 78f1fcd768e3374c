"""Where ollama-img keeps things: the model store, the engine's socket, its log, its compile caches."""

import os
import tempfile
import warnings
from pathlib import Path

import platformdirs

from ollama_img.errors import UserError

APP = "ollama-img"


def _override(name: str) -> Path | None:
    """The folder the variable `name` sets, `~` expanded; None when unset. A `~user` that names no user is
    the user's mistake, told in one line (pathlib raises RuntimeError for it)."""
    value = os.environ.get(name)
    if not value:
        return None
    try:
        return Path(value).expanduser()
    except RuntimeError:
        raise UserError(f"{name}={value!r}: cannot expand its '~' (no such user or home folder)") from None


def models_dir() -> Path:
    """The model store root: `OLLAMA_IMG_MODELS`, else the user's data dir."""
    override = _override("OLLAMA_IMG_MODELS")
    if override is not None:
        return override
    return platformdirs.user_data_path(APP) / "models"


def runtime_dir() -> Path:
    """A private directory for the engine's socket (created 0700 by whoever first needs it).

    platformdirs names XDG_RUNTIME_DIR on Linux; where that does not exist (containers, root without a
    login session) we fall back to a per-user folder in the temp dir.
    """
    override = _override("OLLAMA_IMG_RUNTIME_DIR")
    if override is not None:
        return override
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset; we handle that here
        warnings.simplefilter("ignore")
        path = platformdirs.user_runtime_path(APP)
    if path.parent.is_dir() and os.access(path.parent, os.W_OK):
        return path
    return Path(tempfile.gettempdir()) / f"{APP}-{os.getuid()}"


def log_dir() -> Path:
    """Where the background engine writes its log."""
    return platformdirs.user_log_path(APP)


def cache_dir() -> Path:
    """Compile caches kept across runs and reboots: `OLLAMA_IMG_CACHE_DIR`, else the user's cache dir."""
    override = _override("OLLAMA_IMG_CACHE_DIR")
    if override is not None:
        return override
    return platformdirs.user_cache_path(APP)
