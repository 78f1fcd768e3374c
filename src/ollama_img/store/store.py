"""The model store on disk: blobs, manifests, the lock, listing, removal with garbage collection, copy.

<root>/blobs/sha256-<hex>                         content-addressed blobs (see `blobs`)
<root>/manifests/<host>/<namespace>/<model>/<tag> one manifest per model name (see `manifest`)
<root>/.lock                                      the store lock (see `locking`)
"""

from __future__ import annotations

import difflib
import json
import os
import secrets
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ollama_img.errors import NotFound, UserError
from ollama_img.names import ModelName
from ollama_img.paths import models_dir
from ollama_img.store.blobs import (
    TEMP_PREFIX,
    blob_file_name,
    digest_of_file_name,
    fsync_dir,
    remove_temp_files,
    store_write_error,
)
from ollama_img.store.locking import shared_lock_with_cleanup, store_lock
from ollama_img.store.manifest import Manifest, decode_manifest, with_capabilities
from ollama_img.store.verify import Stamps


class UnreadableManifest(UserError):
    """A manifest in the store cannot be parsed, so which blobs are unused cannot be told."""


@dataclass(frozen=True)
class ModelEntry:
    """One model name in the store. `manifest` is None (and `problem` says why) if it cannot be read."""

    name: ModelName
    modified: float  # the manifest's mtime, seconds since the epoch
    manifest: Manifest | None
    problem: str | None = None


@dataclass(frozen=True)
class Removal:
    """What `Store.remove` did."""

    removed: tuple[ModelName, ...]
    blobs_removed: int
    bytes_freed: int


class Store:
    """A model store rooted at `root` (default: `models_dir()`, i.e. `OLLAMA_IMG_MODELS` or the data dir).

    Reading (`manifest`, `list`, `blob_path`) takes no lock: manifests and blobs only ever appear
    whole, by rename or link.
    """

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root).expanduser() if root is not None else models_dir()

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    @property
    def blobs_dir(self) -> Path:
        return self.root / "blobs"

    @property
    def manifests_dir(self) -> Path:
        return self.root / "manifests"

    def blob_path(self, digest: str) -> Path:
        """Where the blob `sha256:<hex>` lives (whether or not it exists)."""
        return self.blobs_dir / blob_file_name(digest)

    def manifest_path(self, name: ModelName | str) -> Path:
        return self.manifests_dir.joinpath(*_as_name(name).parts)

    # -- reading -------------------------------------------------------------------------------------

    def manifest(self, name: ModelName | str) -> Manifest:
        """The manifest of a model, or NotFound (with a "did you mean" hint when a stored name is close)."""
        name = _as_name(name)
        try:
            raw = self.manifest_path(name).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise self._not_found(name) from None

        def read_blob(digest: str) -> bytes:
            return self.blob_path(digest).read_bytes()

        return with_capabilities(decode_manifest(raw, read_blob, name), read_blob)

    def modified(self, name: ModelName | str) -> float:
        """When the model was last created or copied (its manifest's mtime), or NotFound."""
        name = _as_name(name)
        try:
            return self.manifest_path(name).stat().st_mtime
        except FileNotFoundError:
            raise self._not_found(name) from None

    def exists(self, name: ModelName | str) -> bool:
        return self.manifest_path(name).is_file()

    def names(self) -> list[ModelName]:
        """Every model name in the store, sorted."""
        return sorted((name for name, _ in self._manifest_files()), key=str)

    def list(self) -> list[ModelEntry]:
        """Every model, most recently modified first (as `ollama list` orders them)."""
        entries = []
        for name, path in self._manifest_files():
            try:
                modified = path.stat().st_mtime
            except FileNotFoundError:  # removed while we looked
                continue
            try:
                entries.append(ModelEntry(name, modified, self.manifest(name)))
            except NotFound:
                continue
            except UserError as exc:
                entries.append(ModelEntry(name, modified, None, str(exc)))
        return sorted(entries, key=lambda e: (-e.modified, str(e.name)))

    def _manifest_files(self):
        """(name, path) for every manifest file, skipping temporary files and anything misplaced."""
        base = self.manifests_dir
        if not base.is_dir():
            return
        for path in base.glob("*/*/*/*"):
            if not path.is_file() or any(part.startswith(".") for part in path.relative_to(base).parts):
                continue
            host, namespace, model, tag = path.relative_to(base).parts
            try:
                yield ModelName.parse(f"{host}/{namespace}/{model}:{tag}"), path
            except UserError:
                continue

    def _not_found(self, name: ModelName) -> NotFound:
        known = [str(n) for n in self.names()]
        same_model = [k for k in known if k.rsplit(":", 1)[0] == str(name).rsplit(":", 1)[0]]
        close = same_model or difflib.get_close_matches(str(name), known, n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(repr(c) for c in close[:3])}?)" if close else ""
        return NotFound(f"model '{name}' not found{hint}")

    # -- writing -------------------------------------------------------------------------------------

    @contextmanager
    def writing(self):
        """Hold the store lock shared while adding blobs and manifests (create, cp).

        If no one else holds the lock, temporary files left by killed writers are swept first.
        """
        with self._disk_errors(), shared_lock_with_cleanup(self.root, self._sweep_temp_files):
            self.blobs_dir.mkdir(parents=True, exist_ok=True)
            try:
                yield
            finally:
                Stamps.for_blobs(self.blobs_dir).save()  # which blobs were hashed (see `verify`)

    @contextmanager
    def _disk_errors(self):
        """A full disk or a read-only store ends in one clear line, not a traceback."""
        try:
            yield
        except OSError as exc:
            raise store_write_error(exc, self.root) from None

    def write_manifest(self, name: ModelName | str, raw: bytes) -> bytes | None:
        """Put a manifest in place atomically (temporary file, fsync, rename). Hold `writing()`.

        Returns the bytes of the manifest it replaced (None if the name was new), for `free_replaced`.
        """
        path = self.manifest_path(name)
        try:
            previous = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            previous = None
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.parent / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
        try:
            with open(temp, "xb") as f:
                f.write(raw)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)
        fsync_dir(path.parent)
        return previous

    def free_replaced(self, previous: bytes | None, current: bytes) -> int:
        """After `write_manifest` put `current` over `previous` (and `writing()` is left): remove the blobs
        only the replaced model used; returns the bytes freed.

        Best effort, since the new model is in place already: it never waits for a `create`, `cp` or
        `rm` that is running, and frees nothing (0) while another manifest is unreadable.
        """
        if previous is None or previous == current:
            return 0
        try:
            collected = self.collect_garbage(wait=False)
        except UnreadableManifest:
            return 0
        return collected[1] if collected else 0

    def copy(self, source: ModelName | str, destination: ModelName | str) -> Manifest:
        """Make `destination` name the same model as `source` (an existing destination is replaced, and
        the blobs only it used are freed)."""
        source, destination = _as_name(source), _as_name(destination)
        if source == destination:
            raise UserError(f"cannot copy '{source}' onto itself: give a different destination name")
        self.manifest(source)  # fail before taking the lock, which would create an empty store
        with self.writing():
            manifest = self.manifest(source)
            previous = self.write_manifest(destination, manifest.raw)
        self.free_replaced(previous, manifest.raw)
        return manifest

    def remove(self, names: list[ModelName | str]) -> Removal:
        """Remove models, then every blob that no remaining manifest references.

        All names are checked first: if one does not exist nothing is removed. Nor is anything removed
        while another model's manifest is unreadable, since which blobs it uses cannot be told.
        """
        parsed = list(dict.fromkeys(_as_name(n) for n in names))
        for name in parsed:  # fail before taking the lock, which would create an empty store
            if not self.exists(name):
                raise self._not_found(name)
        with self._disk_errors(), store_lock(self.root, exclusive=True):
            for name in parsed:
                if not self.exists(name):
                    raise self._not_found(name)
            doing = f"not removing {', '.join(repr(str(n)) for n in parsed)}"
            referenced = self._referenced_digests(doing, skip=set(parsed))
            for name in parsed:
                self._unlink_manifest(name)
            blobs, freed = self._remove_unreferenced(referenced)
        return Removal(tuple(parsed), blobs, freed)

    def collect_garbage(self, wait: bool = True) -> tuple[int, int] | None:
        """Remove blobs no manifest references; returns (blobs, bytes) freed.

        With `wait=False` it gives up at once (None) when a `create`, `cp` or `rm` is running. An
        unreadable manifest makes it refuse (`UnreadableManifest`) and remove nothing.
        """
        if not self.root.is_dir():
            return (0, 0)
        with self._disk_errors(), store_lock(self.root, exclusive=True, blocking=wait) as locked:
            if not locked:
                return None
            return self._remove_unreferenced(self._referenced_digests("not collecting unused blobs"))

    def _unlink_manifest(self, name: ModelName) -> None:
        path = self.manifest_path(name)
        path.unlink()
        fsync_dir(path.parent)
        for parent in path.parents:  # prune now-empty model / namespace / host folders
            if parent == self.manifests_dir:
                break
            try:
                parent.rmdir()
            except OSError:
                break

    def _referenced_digests(self, doing: str, skip: set[ModelName] = frozenset()) -> set[str]:
        """Every digest a manifest (other than those of `skip`) names. Hold the lock exclusively.

        An unreadable manifest raises `UnreadableManifest`, which says what is not done (`doing`).
        """
        referenced = set()
        for name, path in self._manifest_files():
            if name in skip:
                continue
            try:
                doc = json.loads(path.read_bytes())
                referenced.add(doc["config"]["digest"])
                referenced.update(layer["digest"] for layer in doc["layers"])
            except (ValueError, KeyError, TypeError) as exc:
                raise UnreadableManifest(
                    f"{doing}: the manifest of '{name}' is unreadable ({exc}); "
                    f"remove it with 'ollama-img rm {name}'"
                ) from None
        return referenced

    def _remove_unreferenced(self, referenced: set[str]) -> tuple[int, int]:
        """Delete the blobs not in `referenced` and stale temporary files. Hold the lock exclusively."""
        removed = freed = 0
        if self.blobs_dir.is_dir():
            for path in self.blobs_dir.iterdir():
                digest = digest_of_file_name(path.name)
                if digest is None or digest in referenced:
                    continue
                freed += path.stat().st_size
                path.unlink()
                removed += 1
        return removed, freed + self._sweep_temp_files()

    def _sweep_temp_files(self) -> int:
        """Remove `.tmp-*` files of killed writers; returns their bytes. Only while no writer runs."""
        return remove_temp_files(self.blobs_dir) + remove_temp_files(self.manifests_dir)


def _as_name(name: ModelName | str) -> ModelName:
    return name if isinstance(name, ModelName) else ModelName.parse(name)
