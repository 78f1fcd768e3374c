"""Image files for `run`: read and checked before anything starts, and found in an interactive line.

A file is checked as the engine will check its bytes (format, pixels, a full decode), so a wrong file
is one line naming it, before an engine starts or a model loads; the request then carries the bytes
as base64, as `/api/generate` takes them.

In the interactive loop, as in ollama, a path to an existing .png, .jpg, .jpeg or .webp file in the
line (starting with /, ./, ../, ~/ or a drive letter, spaces escaped with a backslash or the whole path
quoted) is taken out of the prompt and sent as its image.
"""

import base64
import re
import sys
from pathlib import Path

from ollama_img.errors import UserError

_EXTENSION = r"\.(?:png|jpe?g|webp)"
_PATH = re.compile(
    rf"""'(?P<single>[^']+?{_EXTENSION})'"""  # 'quoted path.png'
    rf"""|"(?P<double>[^"]+?{_EXTENSION})\""""  # "quoted path.png"
    rf"""|(?P<bare>(?:[A-Za-z]:)?(?:~|\.{{1,2}})?[/\\](?:\\.|\S)*?{_EXTENSION})(?=[\s,;:!?]|\.?$|\.\s)""",
    re.IGNORECASE,
)
_ESCAPED = re.compile(r"\\(.)")


def encoded(path: str, name: str) -> str:
    """The file's bytes as base64, after the engine's own checks; errors name it as `name`."""
    from ollama_img import image_input

    file = Path(path).expanduser()
    try:
        if not file.is_file():
            raise UserError(f"{name}: no such file" if not file.exists() else f"{name}: not a file")
        if file.stat().st_size > image_input.MAX_IMAGE_BYTES:
            raise UserError(f"{name} is too large: more than {image_input.MAX_IMAGE_BYTES} bytes")
        data = file.read_bytes()
    except OSError as exc:
        raise UserError(f"{name}: {exc.strerror or exc}") from None
    image_input.read(data, name).decoded()
    return base64.b64encode(data).decode("ascii")


def take_images(line: str) -> tuple[str, list[str]]:
    """The line without the paths of the image files it names, and those paths (existing files only:
    anything else stays in the prompt)."""
    found = []

    def take(match: re.Match) -> str:
        quoted = match.group("single") or match.group("double")
        path = quoted or _ESCAPED.sub(r"\1", match.group("bare"))
        if not Path(path).expanduser().is_file():
            return match.group(0)
        found.append(path)
        print(f"Added image '{path}'", file=sys.stderr)
        return ""

    text = _PATH.sub(take, line)
    return " ".join(text.split()), found
