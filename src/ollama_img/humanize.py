"""Sizes and times written the way `ollama list` and `ollama ps` write them."""

import math


def human_bytes(n: int) -> str:
    """Decimal units as ollama: 912 B, 5.4 MB, 274 MB, 6.6 GB."""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            break
        value /= 1000
    if unit == "B":
        return f"{int(value)} B"
    return f"{value:.1f} {unit}" if abs(value) < 10 else f"{value:.0f} {unit}"


def human_duration(seconds: float) -> str:
    """A coarse duration: "Less than a second", "5 seconds", "About a minute", "4 minutes", "2 hours"."""
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


def until(seconds_left: float | None) -> str:
    """The UNTIL column of `ps`: "4 minutes from now", "Forever", or "Stopping..." once expired."""
    if seconds_left is None or math.isinf(seconds_left):
        return "Forever"
    if seconds_left <= 0:
        return "Stopping..."
    return f"{human_duration(seconds_left)} from now"
