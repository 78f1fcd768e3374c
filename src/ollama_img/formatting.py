"""Human-readable sizes, counts and ages, spelled the way ollama spells them ("12 GB", "2 minutes ago"):
for the CLI's tables and the API's `parameter_size`."""

import time

_BYTE_UNITS = ((10**12, "TB"), (10**9, "GB"), (10**6, "MB"), (10**3, "KB"))


def human_bytes(n: int) -> str:
    """Decimal units like `ollama list`: 2.3 MB, 12 GB, 512 B (one decimal below 10, else whole units)."""
    for scale, unit in _BYTE_UNITS:
        if n >= scale:
            value = n / scale
            if value < 10:
                value = round(value, 1)  # first, so that 9.96 MB prints as 10 MB, not 10.0 MB
            if value >= 10 or value == int(value):
                return f"{int(value)} {unit}"
            return f"{value:.1f} {unit}"
    return f"{n} B"


def human_count(n: int) -> str:
    """Parameter counts as ollama shows them: 6.2B, 53.1M, 1.1K, 12."""
    units = ((10**9, "B"), (10**6, "M"), (10**3, "K"))
    for i, (scale, unit) in enumerate(units):
        if n >= scale:
            value = round(n / scale, 1)
            if value >= 1000 and i > 0:  # rounded up to the next unit: 999_999 is 1.0M, not 1000.0K
                scale, unit = units[i - 1]
                value = round(n / scale, 1)
            return f"{value:.1f}{unit}"
    return str(n)


def human_age(then: float, now: float | None = None) -> str:
    """How long ago `then` (epoch seconds) was: "Less than a second ago", "2 minutes ago", "3 weeks ago"."""
    seconds = max(0.0, (time.time() if now is None else now) - then)
    if seconds < 1:
        return "Less than a second ago"
    steps = (
        (60, 1, "second"),
        (3600, 60, "minute"),
        (86400, 3600, "hour"),
        (7 * 86400, 86400, "day"),
        (30 * 86400, 7 * 86400, "week"),
        (365 * 86400, 30 * 86400, "month"),
    )
    for limit, unit_seconds, unit in steps:
        if seconds < limit:
            return _ago(int(seconds // unit_seconds), unit)
    return _ago(int(seconds // (365 * 86400)), "year")


def _ago(count: int, unit: str) -> str:
    if count == 1:
        return "1 second ago" if unit == "second" else f"About {'an' if unit == 'hour' else 'a'} {unit} ago"
    return f"{count} {unit}s ago"


def human_duration(seconds: float) -> str:
    """A coarse span: "Less than a second", "5 seconds", "About a minute", "4 minutes", "2 hours"."""
    if seconds < 1:
        return "Less than a second"
    if seconds < 2:
        return "1 second"
    if seconds < 60:
        return f"{int(seconds)} seconds"
    minutes = seconds / 60
    if minutes < 2:
        return "About a minute"
    if minutes < 60:
        return f"{int(minutes)} minutes"
    hours = minutes / 60
    if hours < 2:
        return "About an hour"
    if hours < 48:
        return f"{int(hours)} hours"
    return f"{int(hours / 24)} days"


def human_until(seconds_left: float | None) -> str:
    """The UNTIL column of `ps`: "4 minutes from now", "Forever" (None or infinite), "Stopping..." once due."""
    if seconds_left is None or seconds_left == float("inf"):
        return "Forever"
    if seconds_left <= 0:
        return "Stopping..."
    return f"{human_duration(seconds_left)} from now"


def table(rows: list[list[str]], gap: int = 4) -> str:
    """Left-aligned columns separated by at least `gap` spaces; the first row is the heading."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.ljust(width + gap) for cell, width in zip(row[:-1], widths, strict=False)]
        lines.append("".join(cells) + row[-1])
    return "\n".join(lines)
