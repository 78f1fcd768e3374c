"""The memory budget: how many bytes the engine may use on its device.

Either the user's (`OLLAMA_IMG_GPU_MEMORY=12GB`, `serve --gpu-memory 12GB`; on the CPU back end it
budgets RAM) or, when none is set, what the device has free (`memory.device.available_bytes`). A user
budget larger than the device's free memory is cut to it: MLX's CUDA allocator would not fail beyond
the card, it would page to the host and crawl.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ollama_img.errors import UserError
from ollama_img.formatting import human_bytes

BUDGET_ENV = "OLLAMA_IMG_GPU_MEMORY"

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
MIN_BUDGET = 10**6  # below a megabyte nothing runs; a smaller figure is a typo (a forgotten unit)


def parse_bytes(text: str, where: str = BUDGET_ENV) -> int:
    """ "12GB", "12 GB", "1.5GiB", "800MB", "24g" -> bytes (KB/MB/GB are powers of 1000, KiB/MiB/GiB of
    1024, a bare number is bytes). A UserError names `where` and the accepted forms."""
    match = _SIZE.match(text) if isinstance(text, str) else None
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS:
        raise UserError(f"{where} must be a size such as 12GB, 800MB or 1.5GiB, got {text!r}")
    value = int(float(match.group(1)) * _UNITS[unit])
    if value < MIN_BUDGET:
        raise UserError(f"{where} must be at least 1MB, got {text!r}")
    return value


@dataclass(frozen=True)
class Budget:
    """Bytes the engine may use, and where the figure came from (shown by `ps`, `show` and errors)."""

    bytes: int
    source: str  # "OLLAMA_IMG_GPU_MEMORY", "--gpu-memory", "free GPU memory", "available RAM", ...

    def describe(self) -> str:
        return f"{human_bytes(self.bytes)} ({self.source})"

    def to_json(self) -> dict:
        return {"bytes": self.bytes, "source": self.source}


def user_budget(environ=os.environ) -> Budget | None:
    """The budget the user set in the environment, or None."""
    raw = environ.get(BUDGET_ENV, "").strip()
    if not raw:
        return None
    return Budget(parse_bytes(raw), BUDGET_ENV)


def resolve(user: Budget | None, device_bytes: int, device_source: str) -> Budget:
    """The budget to plan with: the user's, cut to what the device has, else the device's."""
    if user is None:
        return Budget(device_bytes, device_source)
    if user.bytes > device_bytes:
        return Budget(device_bytes, f"{user.source} {human_bytes(user.bytes)}, cut to the {device_source}")
    return user
