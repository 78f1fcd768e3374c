"""`pull [HOST/]NAMESPACE/MODEL[:TAG]`: a model from an OCI registry into the store.

Order of work, so that a failure costs as little as possible and never leaves a broken model:

1. the manifest and the config blob (small, held in memory, verified): a model that is unknown, not an
   image model, or of an unsupported architecture is refused before any weight is downloaded, and the
   store is not touched;
2. under the shared store lock (as `create` holds it, so `rm` cannot collect what is being fetched):
   the blobs the store lacks, several at a time, each verified while it streams (`download`);
3. the manifest last, after every blob it names is durable (or, for an ollama image model, the
   conversion into ollama-img's layout through the importer, see `ollama_format`).

Blobs fetched by a pull that fails stay in the store (whole and verified), so running it again fetches
only the rest; `rm` of any model collects them if the pull is abandoned.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ollama_img.errors import UserError
from ollama_img.models import architecture_for
from ollama_img.names import ModelName
from ollama_img.store import Manifest, Store
from ollama_img.store.blobs import PLAIN_TENSOR_NAME, blob_intact, fsync_dir, write_bytes_blob
from ollama_img.store.manifest import ADAPTER_MEDIA_TYPE, decode_manifest
from ollama_img.store.source import read_header
from ollama_img.transfer.progress import NoProgress, TransferProgress
from ollama_img.transfer.registry import ollama_format
from ollama_img.transfer.registry.auth import Credentials, repository_scope
from ollama_img.transfer.registry.client import RegistryClient
from ollama_img.transfer.registry.download import fetch_blobs, fetch_small
from ollama_img.transfer.registry.remote_manifest import RemoteBlob, RemoteManifest, fetch_manifest

PARALLEL = 8  # blobs fetched at once (many are small: their fsyncs overlap)
MAX_CONFIG_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class PullResult:
    name: ModelName
    manifest: Manifest
    blobs: int  # distinct blobs the model uses, its config included
    fetched: int  # of them downloaded now
    fetched_bytes: int
    present: int  # of them already in the store
    converted_from: str | None = None  # "ollama" when an ollama image model was converted on the way
    bytes_freed: int = 0


def pull_model(
    store: Store,
    name: ModelName | str,
    *,
    insecure: bool = False,
    progress: TransferProgress | None = None,
    parallel: int = PARALLEL,
    credentials: Credentials | None = None,
) -> PullResult:
    """Pull `name` (its host is the registry) into `store`; an existing model of that name is replaced."""
    name = name if isinstance(name, ModelName) else ModelName.parse(name)
    progress = progress or NoProgress()
    repository = f"{name.namespace}/{name.model}"
    scopes = (repository_scope(repository),)
    with RegistryClient(name.host, insecure=insecure, credentials=credentials) as client:
        remote = fetch_manifest(client, repository, name.tag, scopes, str(name))
        config_bytes = fetch_small(
            client, repository, remote.config, scopes, MAX_CONFIG_BYTES, f"the config of '{name}'"
        )
        kind = ollama_format.classify(remote, config_bytes, str(name))
        if kind == ollama_format.NATIVE:
            manifest = _check_native(remote, config_bytes, name)
        blobs = remote.unique_layers()
        missing = [blob for blob in blobs if not _present(store, blob)]
        config_fetched = [] if _present(store, remote.config) else [remote.config]
        progress.start("downloading", sum(b.size for b in missing), len(missing))
        with store.writing():
            write_bytes_blob(store.blobs_dir, config_bytes)
            fetch_blobs(client, repository, missing, store.blobs_dir, scopes, progress, parallel)
            fsync_dir(store.blobs_dir)
            if kind == ollama_format.NATIVE:
                check_tensor_blobs(store, manifest)
                previous = store.write_manifest(name, remote.raw)
            else:
                manifest = ollama_format.convert(store, name, remote, json.loads(config_bytes))
                previous = None
    if kind == ollama_format.NATIVE:
        freed = store.free_replaced(previous, remote.raw)
    else:  # the ollama-layout blobs the conversion replaced, and those of a model this name named
        collected = store.collect_garbage(wait=False)
        freed = collected[1] if collected else 0
    return PullResult(
        name=name,
        manifest=manifest,
        blobs=len(blobs) + 1,
        fetched=len(missing) + len(config_fetched),
        fetched_bytes=sum(b.size for b in missing + config_fetched),
        present=len(blobs) - len(missing) + 1 - len(config_fetched),
        converted_from=None if kind == ollama_format.NATIVE else "ollama",
        bytes_freed=freed,
    )


def _present(store: Store, blob: RemoteBlob) -> bool:
    """A blob the store has already, intact (blobs only ever appear whole, but a file can be damaged
    later: one whose bytes do not match its name is fetched again, and replaced)."""
    return blob_intact(store.blob_path(blob.digest), blob.digest, blob.size)


def _check_native(remote: RemoteManifest, config_bytes: bytes, name: ModelName) -> Manifest:
    """The manifest as the store will read it, and a supported architecture, before downloading."""
    manifest = decode_manifest(remote.raw, lambda _digest: config_bytes, name)
    architecture_for(manifest.config.architecture)
    return manifest


def check_tensor_blobs(store: Store, manifest: Manifest) -> None:
    """Each tensor blob is a safetensors file holding what its layer says, and each adapter blob a
    safetensors file (a registry is not trusted)."""
    for layer in manifest.layers:
        if layer.media_type == ADAPTER_MEDIA_TYPE:
            read_header(
                store.blob_path(layer.digest), f"adapter {layer.name} of '{manifest.name}' on the registry"
            )
        if not layer.is_tensor:
            continue
        where = f"the blob of {layer.name} in '{manifest.name}'"
        header = read_header(store.blob_path(layer.digest), where)
        names = {tensor.name for tensor in header.tensors}
        if names == {PLAIN_TENSOR_NAME}:
            (tensor,) = header.tensors
            if tensor.dtype == layer.dtype and tensor.shape == layer.shape:
                continue
        elif "weight" in names and "scales" in names and header.metadata.get("mode"):
            continue  # a quantized weight, as `create --quantize` writes it
        raise UserError(
            f"model '{manifest.name}' on the registry is damaged: {where} does not hold the "
            f"{layer.dtype} {list(layer.shape or ())} tensor its manifest names"
        )
