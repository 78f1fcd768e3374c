"""Where `run` puts its images: default names in the current folder, a folder, a file, or stdout.

Files appear whole or not at all (written aside, then linked or renamed into place), so a Ctrl-C never
leaves half a PNG; a default name never replaces an existing file.
"""

import contextlib
import os
import tempfile
import time
from pathlib import Path

from ollama_img.errors import UserError
from ollama_img.names import ModelName

STDOUT = "-"


def default_name(model: str, seed: int, now: float | None = None) -> str:
    """`z-image-20250101-120000-1234.png`: model, local time, seed."""
    short = ModelName.parse(model).model
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return f"{short}-{stamp}-{seed}.png"


def is_folder(output: str) -> bool:
    return output.endswith(("/", os.sep)) or Path(output).is_dir()


def check_output(output: str | None, count: int):
    """Fail before generating when the images could not be saved as asked."""
    if output is None or output == STDOUT or is_folder(output):
        if output == STDOUT and count != 1:
            raise UserError("-o - writes one image to stdout; use -n 1 or an output folder")
        return
    parent = Path(output).expanduser().parent
    if not parent.is_dir():
        raise UserError(f"cannot save to {output}: folder {parent} does not exist")


def save(pngs: list[bytes], seeds: list[int], model: str, output: str | None) -> list[Path]:
    """Write the images; returns their absolute paths."""
    if output is None or is_folder(output):
        folder = Path(output).expanduser() if output else Path.cwd()
        folder.mkdir(parents=True, exist_ok=True)
        now = time.time()
        return [
            write_new(folder / default_name(model, seed, now), png)
            for png, seed in zip(pngs, seeds, strict=True)
        ]
    target = Path(output).expanduser()
    if len(pngs) == 1:
        return [write_replacing(target, pngs[0])]
    return [
        write_replacing(target.with_name(f"{target.stem}-{i}{target.suffix or '.png'}"), png)
        for i, png in enumerate(pngs, 1)
    ]


def _write_aside(folder: Path, data: bytes) -> Path:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".ollama-img-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    os.chmod(tmp, 0o666 & ~_umask())
    return Path(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_new(path: Path, data: bytes) -> Path:
    """Write to `path`, or `path-1`, `path-2`… if taken. Never replaces a file."""
    tmp = _write_aside(path.parent, data)
    try:
        for n in range(10_000):
            candidate = path if n == 0 else path.with_name(f"{path.stem}-{n}{path.suffix}")
            try:
                os.link(tmp, candidate)
            except FileExistsError:
                continue
            except OSError:  # a file system without hard links: exclusive create instead
                try:
                    with open(candidate, "xb") as f:
                        f.write(data)
                except FileExistsError:
                    continue
            return candidate.absolute()
        raise UserError(f"could not find a free file name next to {path}")
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_replacing(path: Path, data: bytes) -> Path:
    """Write to exactly `path` (the user named it), replacing it whole."""
    tmp = _write_aside(path.parent, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return path.absolute()
