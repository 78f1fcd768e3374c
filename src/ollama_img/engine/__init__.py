"""The engine: one long-lived process per user that holds models in memory and runs generations.

Nothing here is imported by the CLI at start-up except `spawn` and `client` (cheap); the server side
(Starlette, uvicorn, MLX) loads only in the engine process.
"""

import time
from datetime import UTC, datetime


def utc_iso(timestamp: float | None = None) -> str:
    """A time (now by default) as the API spells it: `2025-01-01T12:00:00.123456Z`."""
    when = time.time() if timestamp is None else timestamp
    return datetime.fromtimestamp(when, UTC).isoformat().replace("+00:00", "Z")
