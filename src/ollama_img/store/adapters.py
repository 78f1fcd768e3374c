"""LoRA adapters in the store: each is its safetensors file stored as it is, one blob named by its sha256.

A model made with a Modelfile's ADAPTER lists its adapters as layers (`ADAPTER_MEDIA_TYPE`); `run --lora`
puts a file here for one request, and the engine takes adapters by digest from here only. A blob no
manifest names is removed by the next garbage collection (`rm`), as any unused blob is; `run --lora`
stores it again when it needs it (an intact blob is never rewritten).
"""

from __future__ import annotations

from pathlib import Path

from ollama_img.errors import UserError
from ollama_img.store.blobs import WrittenBlob, blob_intact, is_digest, write_file_blob
from ollama_img.store.store import Store


def put_adapter(store: Store, path: Path | str) -> WrittenBlob:
    """Store the file at `path` as a blob (deduplicated, atomic, under the store lock)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"adapter {path}: no such file")
    with store.writing():
        try:
            return write_file_blob(store.blobs_dir, path)
        except OSError as exc:  # reading it: writing the store raises UserErrors of its own
            raise UserError(f"cannot read adapter {path}: {exc.strerror or exc}") from None


def adapter_blob(store: Store, digest: str) -> Path:
    """The blob of the adapter `digest`, its bytes checked against it; a UserError when the store has no
    such blob (or a damaged one)."""
    if not is_digest(digest):
        raise UserError(f"adapter {digest!r} is not a digest (sha256:<64 hex digits>)")
    path = store.blob_path(digest)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise UserError(
            f"adapter {digest} is not in the store: add it with 'ollama-img create NAME -f Modelfile' "
            "(ADAPTER PATH) or 'ollama-img run MODEL --lora PATH'"
        ) from None
    if not blob_intact(path, digest, size):
        raise UserError(f"adapter {digest} is damaged in the store (its bytes changed); store it again")
    return path
