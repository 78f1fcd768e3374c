"""Show a saved image in the platform's viewer, only where someone can see it, never blocking `run`."""

import os
import shutil
import subprocess
import sys

NOOPEN_ENV = "OLLAMA_IMG_NOOPEN"


def _viewer_command() -> list[str] | None:
    if sys.platform == "darwin":
        return ["open"]
    if sys.platform.startswith("linux") or "bsd" in sys.platform:
        if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            return None  # a headless box or an SSH session without X forwarding: nobody to show it to
        opener = shutil.which("xdg-open")
        return [opener] if opener else None
    return None


def has_display() -> bool:
    """True when there is a graphical session and a viewer to open images with."""
    return _viewer_command() is not None


def disabled_by_env() -> bool:
    """`OLLAMA_IMG_NOOPEN` set to anything but empty/0/false turns the viewer off."""
    return os.environ.get(NOOPEN_ENV, "").strip().lower() not in ("", "0", "false", "no")


def open_image(path) -> bool:
    """Start the viewer on `path` in the background (its own session, output discarded); False if none."""
    command = _viewer_command()
    if command is None:
        return False
    try:
        subprocess.Popen(
            [*command, str(path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError:
        return False
    return True
