"""Content-addressed blobs: `blobs/sha256-<hex>`, each named by the SHA-256 of its bytes.

A blob is written to a temporary file in the same directory (`.tmp-*`), hashed while it is written,
then fsynced and hard-linked under its name. `link` never replaces an existing file, so a blob is never
rewritten: when it already exists the temporary file is dropped unsynced (that is the deduplication,
and it costs no disk writes). A reader therefore never sees a partial blob under a blob name, and a
crash leaves at most a `.tmp-*` file, which the store sweeps away later.

Tensor blobs are minimal safetensors files (see `write_tensor_blob`): `mx.load(path, format="safetensors")`
and the `safetensors` library read them directly.
"""

import errno
import hashlib
import os
import re
import secrets
from collections.abc import Iterable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ollama_img.errors import UserError
from ollama_img.store.safetensors_format import TensorEntry, encode_header
from ollama_img.store.verify import Stamps, file_sha256

if TYPE_CHECKING:
    from ollama_img.store.publisher import BlobPublisher

TEMP_PREFIX = ".tmp-"
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")  # used with fullmatch
_LINK_UNSUPPORTED = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS}

PLAIN_TENSOR_NAME = "data"


def is_digest(value) -> bool:
    """Whether `value` is a digest as manifests spell it: `sha256:` and 64 lowercase hex digits."""
    return isinstance(value, str) and _DIGEST.fullmatch(value) is not None


def blob_file_name(digest: str) -> str:
    """`sha256:<hex>` -> `sha256-<hex>` (a ValueError for anything that is not a sha256 digest)."""
    match = _DIGEST.fullmatch(digest) if isinstance(digest, str) else None
    if not match:
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return f"sha256-{match.group(1)}"


def digest_of_file_name(file_name: str) -> str | None:
    """The digest a blob file name stands for, or None for anything else in the directory."""
    if file_name.startswith("sha256-"):
        digest = "sha256:" + file_name[len("sha256-") :]
        if is_digest(digest):
            return digest
    return None


@dataclass(frozen=True)
class BlobRef:
    digest: str  # "sha256:<hex>"
    size: int


@dataclass(frozen=True)
class WrittenBlob(BlobRef):
    new: bool  # False when an identical blob was already in the store


class BlobWriter:
    """Write one blob; use as a context manager so that a failure leaves no temporary file behind.

    With an `executor`, hashing of each chunk runs in its thread while the chunk is written (hashlib
    and file writes both release the GIL). The caller must keep a chunk's buffer unchanged until the
    next `write` call returns.
    """

    def __init__(self, blobs_dir: Path, executor: Executor | None = None):
        self.blobs_dir = blobs_dir
        self._hash = hashlib.sha256()
        self._size = 0
        self._executor = executor
        self._pending: Future | None = None
        self._temp = blobs_dir / f"{TEMP_PREFIX}{secrets.token_hex(12)}"
        self._fd = _create_exclusive(self._temp)
        self._handed_off = False
        self.digest: str | None = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if self._fd is not None and not self._handed_off:
            self.abort()

    @property
    def size(self) -> int:
        return self._size

    def hand_off(self) -> None:
        """Someone else (a publisher) will publish or abort this blob; leaving the `with` block won't."""
        self._handed_off = True

    def write(self, data) -> None:
        if self._executor is None:
            self._hash.update(data)
        else:
            self._wait_for_hash()
            self._pending = self._executor.submit(self._hash.update, data)
        _write_all(self._fd, data, self._temp)
        self._size += len(data)

    def _wait_for_hash(self):
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def commit(self) -> WrittenBlob:
        self.seal()
        return self.publish()

    def seal(self) -> BlobRef:
        """Finish hashing: the blob's digest is now known (no more writes)."""
        self._wait_for_hash()
        self.digest = "sha256:" + self._hash.hexdigest()
        return BlobRef(self.digest, self._size)

    def publish(self) -> WrittenBlob:
        """Name the sealed blob by its hash; an intact existing blob is kept and this copy dropped, a
        damaged one (other bytes under the name) is replaced by this copy."""
        digest = self.digest
        target = self.blobs_dir / blob_file_name(digest)
        try:
            new = not blob_intact(target, digest, self._size)
            if new:
                os.fsync(self._fd)
                new = _link_without_overwrite(self._temp, target, digest, self._size)
        except OSError as exc:
            self.abort()
            raise _write_error(exc, target) from None
        os.close(self._fd)
        self._fd = None
        self._temp.unlink(missing_ok=True)
        Stamps.for_blobs(self.blobs_dir).record(digest)  # after the unlink, which changes the ctime
        return WrittenBlob(digest, self._size, new)

    def abort(self) -> None:
        self._pending = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._temp.unlink(missing_ok=True)


def write_bytes_blob(blobs_dir: Path, data: bytes) -> WrittenBlob:
    """Store a small file (a config, a tokenizer) as a blob."""
    with BlobWriter(blobs_dir) as writer:
        writer.write(data)
        return writer.commit()


FILE_CHUNK = 8 * 1024 * 1024


def write_file_blob(blobs_dir: Path, path: Path) -> WrittenBlob:
    """Store a file's bytes as they are (a LoRA adapter), streamed in 8 MiB chunks: a large file is
    never held in memory whole. OSErrors reading `path` propagate (the caller names the file)."""
    with BlobWriter(blobs_dir) as writer, open(path, "rb", buffering=0) as source:
        while chunk := source.read(FILE_CHUNK):
            writer.write(chunk)
        return writer.commit()


def write_tensor_blob(
    blobs_dir: Path,
    tensors: list[tuple[TensorEntry, Iterable]],
    metadata: dict[str, str] | None = None,
    executor: Executor | None = None,
    publisher: "BlobPublisher | None" = None,
) -> BlobRef:
    """Store tensors as one minimal safetensors blob, streaming each tensor's chunks.

    A plain weight is one tensor named `data` (`PLAIN_TENSOR_NAME`) and no metadata. A blob may also
    hold several named tensors plus string metadata (a quantized weight: `weight`, `scales`, `biases`,
    with the quantization in `__metadata__`).

    Returns the WrittenBlob; with a `BlobPublisher`, returns as soon as the digest is known and leaves
    fsync and naming to the publisher (whose `drain()` gives the WrittenBlobs).
    """
    with BlobWriter(blobs_dir, executor) as writer:
        writer.write(encode_header([entry for entry, _ in tensors], metadata))
        for entry, chunks in tensors:
            written = 0
            for chunk in chunks:
                writer.write(chunk)
                written += len(chunk)
            if written != entry.nbytes:
                raise ValueError(f"tensor {entry.name!r}: got {written} bytes, expected {entry.nbytes}")
        if publisher is None:
            return writer.commit()
        ref = writer.seal()
        publisher.submit(writer)
        return ref


def remove_temp_files(directory: Path) -> int:
    """Delete `.tmp-*` files (here and below) left by killed writers; returns the bytes freed.

    Call only while no writer can be running (under the exclusive store lock).
    """
    freed = 0
    for path in directory.rglob(f"{TEMP_PREFIX}*") if directory.is_dir() else ():
        try:
            freed += path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            pass
    return freed


def fsync_dir(directory: Path) -> None:
    """Make renames and links in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_exclusive(path: Path) -> int:
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as exc:
        raise _write_error(exc, path) from None


def _write_all(fd: int, data, path: Path) -> None:
    view = memoryview(data).cast("B")
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError as exc:
        raise _write_error(exc, path) from None


def blob_intact(target: Path, digest: str, size: int) -> bool:
    """Whether `target` holds the blob `digest`: the right size, and bytes known (or now hashed) to match;
    what `create` and `pull` ask before reusing a blob already in the store."""
    try:
        if target.stat().st_size != size:
            return False
    except FileNotFoundError:
        return False
    stamps = Stamps.for_blobs(target.parent)
    if stamps.is_fresh(digest):
        return True
    try:
        intact = file_sha256(target) == digest
    except FileNotFoundError:
        return False
    if not intact:
        stamps.forget(digest)
    return intact


def _link_without_overwrite(temp: Path, target: Path, digest: str, size: int) -> bool:
    """Give the synced temporary file the blob's name without ever overwriting a good blob.

    Returns False if another writer published the same blob first.
    """
    try:
        os.link(temp, target)
        return True
    except FileExistsError:
        if blob_intact(target, digest, size):
            return False
        # Other bytes under a blob name are damage from outside; replace them atomically.
        os.replace(temp, target)
        return True
    except OSError as exc:
        if exc.errno not in _LINK_UNSUPPORTED:
            raise
        # Filesystems without hard links: rename (a racing writer would replace it with the same bytes).
        os.replace(temp, target)
        return True


def _write_error(exc: OSError, path: Path) -> Exception:
    return store_write_error(exc, path.parent)


def store_write_error(exc: OSError, where: Path) -> Exception:
    """A full disk or a store the user may not write to is a UserError; other OSErrors stay as they are."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(f"no space left on the device holding the model store ({where})")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST):
        return UserError(f"cannot write to the model store ({where}): {exc.strerror}")
    return exc
