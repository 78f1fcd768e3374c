"""Are a model's blobs the bytes their names promise? Hashed once, then trusted until the file changes.

Hashing every blob at every load would cost 20 GB of SHA-256 per load of Z-Image-Turbo (5-55 s on one
core, see bench/RESULTS.md "SHA-256"), more than the whole load should take. Instead a blob is hashed
when it is written (`create`, `pull`: its name *is* its hash), when a re-run finds it already there, by
`ollama-img verify`, and by a load that finds it changed since it was last hashed. What was hashed is
remembered in `<store>/.verified.json` as the file's identity (inode, size, mtime and ctime in ns): any
write to the file, or a replacement, changes its ctime, which no program can set back. So a blob damaged
by anything that writes to it is hashed again, and its model refused, before it can make an image;
`verify` also catches damage the file system never saw (a failing disk).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ollama_img.errors import UserError

STAMPS_NAME = ".verified.json"
CHUNK = 8 * 2**20
# Blobs hashed at once: hashlib releases the GIL on large updates, so threads use more cores (and keep
# a disk's queue full); a few are enough to reach the page cache's or an SSD's read speed.
HASH_THREADS = min(8, os.cpu_count() or 1)


def file_sha256(path: Path) -> str:
    """`sha256:<hex>` of a file's bytes, read in 8 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def identity(path: Path) -> list[int] | None:
    """What changes whenever a file's bytes can have changed: inode, size, mtime and ctime (ns)."""
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return [info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns]


class Stamps:
    """The blobs of one store known to match their names, as of a file identity. Thread-safe.

    One instance per blobs folder and process (`for_blobs`); `save` merges into the file whatever other
    processes recorded meanwhile. A lost update only costs a blob being hashed once more.
    """

    _instances: dict[Path, Stamps] = {}
    _instances_lock = threading.Lock()

    def __init__(self, blobs_dir: Path):
        self.blobs_dir = blobs_dir
        self.path = blobs_dir.parent / STAMPS_NAME
        self._lock = threading.Lock()
        self._known: dict[str, list[int]] = {}
        self._read_as_of: list[int] | None = None
        self._forgotten: set[str] = set()  # found damaged: dropped from the file too, whatever it says
        self._dirty = False
        self.reload()

    @classmethod
    def for_blobs(cls, blobs_dir: Path) -> Stamps:
        key = Path(os.path.abspath(blobs_dir))
        with cls._instances_lock:
            if key not in cls._instances:
                cls._instances[key] = cls(key)
            return cls._instances[key]

    def reload(self) -> None:
        """Take in what other processes recorded since we last read the file (if it changed)."""
        as_of = identity(self.path)
        with self._lock:
            if as_of == self._read_as_of:
                return
            known = {**_read(self.path), **(self._known if self._dirty else {})}
            self._known = {d: v for d, v in known.items() if d not in self._forgotten}
            self._read_as_of = as_of

    def blob(self, digest: str) -> Path:
        return self.blobs_dir / ("sha256-" + digest.removeprefix("sha256:"))

    def is_fresh(self, digest: str) -> bool:
        """Hashed before, and not changed since."""
        current = identity(self.blob(digest))
        with self._lock:
            return current is not None and self._known.get(digest) == current

    def record(self, digest: str) -> None:
        """The blob's bytes were just found to hash to `digest`."""
        current = identity(self.blob(digest))
        if current is not None:
            with self._lock:
                self._known[digest] = current
                self._forgotten.discard(digest)
                self._dirty = True

    def forget(self, digest: str) -> None:
        """The blob was found damaged: it is hashed again whenever asked about."""
        with self._lock:
            self._known.pop(digest, None)
            self._forgotten.add(digest)
            self._dirty = True

    def save(self) -> None:
        """Write the records (merged with the file's, dropping blobs that are gone); best effort."""
        with self._lock:
            if not self._dirty:
                return
            merged = {**_read(self.path), **self._known}
            merged = {
                d: ident
                for d, ident in merged.items()
                if d not in self._forgotten and identity(self.blob(d)) == ident
            }
            self._known, self._dirty = merged, False
        temp = self.path.with_name(f"{STAMPS_NAME}.tmp-{secrets.token_hex(6)}")
        try:
            temp.write_text(json.dumps(merged, separators=(",", ":")))
            os.replace(temp, self.path)
        except OSError:  # a read-only store: blobs are simply hashed again next time
            temp.unlink(missing_ok=True)
            return
        with self._lock:
            self._read_as_of = identity(self.path)


def _read(path: Path) -> dict[str, list[int]]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict):
        return {}
    return {d: v for d, v in doc.items() if isinstance(v, list) and len(v) == 4}


@dataclass(frozen=True)
class BlobProblem:
    """One blob of a model that cannot be used: its layer, and what is wrong with it."""

    layer: str  # the layer's name ("transformer/layers.0.attention.to_q.weight"), or "config"
    digest: str
    problem: str  # "missing", "has N bytes, the manifest says M", "does not match its digest"

    def __str__(self) -> str:
        return f"{self.layer} ({self.digest[:19]}...) {self.problem}"


def blob_refs(manifest) -> list[tuple[str, str, int]]:
    """(layer name, digest, size) of every blob a manifest names, its config blob first."""
    return [("config", manifest.config_digest, manifest.config_size)] + [
        (layer.name, layer.digest, layer.size) for layer in manifest.layers
    ]


def missing_blobs(store, manifest) -> list[BlobProblem]:
    """Blobs that are gone or of the wrong size: a look at the files only, no reading (`list`, `show`)."""
    problems = []
    for layer, digest, size in blob_refs(manifest):
        ident = identity(store.blob_path(digest))
        if ident is None:
            problems.append(BlobProblem(layer, digest, "missing"))
        elif ident[1] != size:
            problems.append(BlobProblem(layer, digest, f"has {ident[1]} bytes, the manifest says {size}"))
    return problems


def check_blobs(
    store,
    refs: Iterable[tuple[str, str, int]],
    *,
    rehash: bool = False,
    on_hashed: Callable[[int], None] | None = None,
) -> list[BlobProblem]:
    """Problems with the blobs `refs` names: missing, wrong size, or (hashing those not known good, or
    all with `rehash`) bytes that do not match the digest. `on_hashed(bytes)` reports hashing progress."""
    stamps = Stamps.for_blobs(store.blobs_dir)
    stamps.reload()
    problems: list[BlobProblem] = []
    to_hash: list[tuple[str, str]] = []
    for layer, digest, size in dict.fromkeys(refs):
        ident = identity(store.blob_path(digest))
        if ident is None:
            problems.append(BlobProblem(layer, digest, "missing"))
        elif ident[1] != size:
            problems.append(BlobProblem(layer, digest, f"has {ident[1]} bytes, the manifest says {size}"))
        elif rehash or not stamps.is_fresh(digest):
            to_hash.append((layer, digest))

    def hash_one(item):
        layer, digest = item
        path = store.blob_path(digest)
        try:
            actual = file_sha256(path)
        except FileNotFoundError:
            return BlobProblem(layer, digest, "missing")
        except OSError as exc:
            return BlobProblem(layer, digest, f"cannot be read ({exc.strerror or exc})")
        if on_hashed is not None:
            on_hashed(path.stat().st_size)
        if actual != digest:
            stamps.forget(digest)
            return BlobProblem(layer, digest, "does not match its digest (its bytes changed)")
        stamps.record(digest)
        return None

    if to_hash:
        with ThreadPoolExecutor(HASH_THREADS, thread_name_prefix="verify") as pool:
            problems += [p for p in pool.map(hash_one, to_hash) if p is not None]
        stamps.save()
    return problems


class DamagedModel(UserError):
    """A model whose blobs are missing or do not match their digests: it must not make an image."""


def check_before_loading(store, manifest) -> None:
    """Refuse to load a model with a missing, truncated or changed blob (hashing only what changed)."""
    problems = check_blobs(store, blob_refs(manifest))
    if problems:
        raise DamagedModel(damage_message(str(manifest.name), problems))


def damage_message(name: str, problems: list[BlobProblem]) -> str:
    shown = "; ".join(str(p) for p in problems[:3])
    more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
    return (
        f"model '{name}' is damaged: {len(problems)} blob(s) unusable: {shown}{more}; re-create it "
        f"(ollama-img create) or pull it again"
    )
