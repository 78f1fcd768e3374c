"""Warming a freshly loaded model up where nobody waits for it, and saying when kernels compile.

A request with a prompt is its own warm-up: its first image compiles what it needs, and running
anything before it would only make the person wait longer. A load-only request (`run MODEL` with no
prompt, which then asks for one; the API's preload) is answered as soon as the weights are in
memory, and the warm-up runs right after, on the device worker, while the person types: the first
image then starts with its kernels compiled and its GPU library plans made. The pipeline decides
what a warm-up runs and whether its device needs one (`benefits_from_warm_up`).

`OLLAMA_IMG_WARMUP`: `auto` (default: where the pipeline benefits), `1` always, `0` never.
"""

from __future__ import annotations

import logging
import os
import time

from ollama_img.errors import UserError

log = logging.getLogger("ollama_img.engine")
WARMUP_ENV = "OLLAMA_IMG_WARMUP"
_MODES = {"auto": "auto", "": "auto", "1": "on", "on": "on", "0": "off", "off": "off"}


def mode_from_env() -> str:
    """auto, on or off; a UserError for any other value."""
    raw = os.environ.get(WARMUP_ENV, "").strip().lower()
    if raw not in _MODES:
        raise UserError(f"{WARMUP_ENV} must be auto, 1 or 0, got {raw!r}")
    return _MODES[raw]


def wanted(pipe, mode: str) -> bool:
    if mode == "auto":
        return bool(getattr(pipe, "benefits_from_warm_up", False))
    return mode == "on" and hasattr(pipe, "warm_up")


def warm_up(pipe, name: str) -> float:
    """Run the pipeline's warm-up (on the device worker) and log it; its seconds."""
    started = time.monotonic()
    pipe.warm_up()
    seconds = time.monotonic() - started
    log.info("warmed up %s in %.2fs (warm-up)", name, seconds)
    return seconds


def compile_note() -> str | None:
    """A line for the log when this load's first image will compile GPU kernels (MLX's cache is empty)."""
    from ollama_img import caches

    configured = caches.configure()
    if not configured.mlx_cache_empty():
        return None
    return (
        f"MLX's kernel cache {configured.mlx_dir} is empty: GPU kernels are compiled once now "
        "(up to a minute); later starts reuse them"
    )
