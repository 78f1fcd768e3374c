"""Where `run` puts its images: default names in the current folder, a folder, a file, or stdout.

Files appear whole or not at all (written aside, then linked or renamed into place), so a Ctrl-C never
leaves half a PNG; a default name never replaces an existing file. A named output that is a symlink is
written through (its target is replaced, the link stays), and one that is not a regular file (a FIFO, a
device) is opened and written, never replaced.
"""

import contextlib
import os
import stat
import tempfile
import time
from collections.abc import Iterator
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
    if output == STDOUT:
        if count != 1:
            raise UserError("-o - writes one image to stdout; use -n 1 or an output folder")
        return
    if output is None or is_folder(output):
        folder = Path(output).expanduser() if output else Path.cwd()
        while not folder.exists() and folder != folder.parent:  # save() creates what is missing
            folder = folder.parent
        _check_writable_folder(output or str(folder), folder)
        return
    named = Path(output).expanduser()
    if count != 1:  # NAME-1.png, NAME-2.png... next to it
        _check_writable_folder(output, named.parent)
        return
    target = Path(os.path.realpath(named))
    if target.exists() and not target.is_file():
        mode = target.stat().st_mode
        if not (stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)):  # a socket cannot be opened, a disk must not be
            raise UserError(f"cannot save to {output}: it is not a file, a pipe or a character device")
        if not os.access(target, os.W_OK):  # a FIFO or a device (/dev/stdout): written in place
            raise UserError(f"cannot save to {output}: permission denied")
        return
    _check_writable_folder(output, target.parent)


def _check_writable_folder(output: str, folder: Path):
    """The folder exists and a file can really be created in it: permissions alone do not tell (root
    may write anywhere but in /proc, a read-only mount refuses everyone)."""
    if not folder.exists():
        raise UserError(f"cannot save to {output}: folder {folder} does not exist")
    if not folder.is_dir():
        raise UserError(f"cannot save to {output}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"cannot save to {output}: folder {folder} is not writable")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".ollama-img-", suffix=".probe")
    except OSError as exc:
        raise UserError(f"cannot save to {output}: {exc.strerror or exc}") from None
    os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(probe)


def save(pngs: list[bytes], seeds: list[int], model: str, output: str | None) -> list[Path]:
    """Write the images; returns their absolute paths. UserError (naming what was saved) if one fails."""
    saved: list[Path] = []
    try:
        for path in _write_all(pngs, seeds, model, output):
            saved.append(path)
    except OSError as exc:
        where = output or str(Path.cwd())
        done = f" (saved: {', '.join(map(str, saved))})" if saved else ""
        raise UserError(f"cannot save to {where}: {exc.strerror or exc}{done}") from None
    return saved


def _write_all(pngs: list[bytes], seeds: list[int], model: str, output: str | None) -> Iterator[Path]:
    if output is None or is_folder(output):
        folder = Path(output).expanduser() if output else Path.cwd()
        folder.mkdir(parents=True, exist_ok=True)
        now = time.time()
        for png, seed in zip(pngs, seeds, strict=True):
            yield write_new(folder / default_name(model, seed, now), png)
        return
    target = Path(output).expanduser()
    if len(pngs) == 1:
        yield write_replacing(target, pngs[0])
        return
    for i, png in enumerate(pngs, 1):
        yield write_replacing(target.with_name(f"{target.stem}-{i}{target.suffix or '.png'}"), png)


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
                    _create_new(candidate, data)
                except FileExistsError:
                    continue
            return candidate.absolute()
        raise UserError(f"could not find a free file name next to {path}")
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _create_new(path: Path, data: bytes):
    """Create `path` (FileExistsError if taken) and write it; a failed write leaves no partial file."""
    with open(path, "xb") as f:
        try:
            f.write(data)
            f.flush()
        except BaseException:
            os.unlink(path)
            raise


def write_replacing(path: Path, data: bytes) -> Path:
    """Write to exactly `path` (the user named it): through a symlink to its target, into a FIFO or device
    as it is, and otherwise by replacing the file whole."""
    target = Path(os.path.realpath(path))
    if target.exists() and not target.is_file():
        with open(target, "wb") as f:
            f.write(data)
        return path.absolute()
    tmp = _write_aside(target.parent, data)
    try:
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return path.absolute()
