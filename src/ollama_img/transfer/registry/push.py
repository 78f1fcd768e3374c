"""`push NAME`: a model from the store to the registry its name names (`host/namespace/model:tag`).

Blobs first, manifest last, as the distribution spec orders it: each blob the registry lacks (`HEAD`)
is mounted from another repository of the same registry when a model in the store shows it is there,
else uploaded (`POST`, then one `PUT ?digest=` or, for large blobs, `PATCH` chunks and a closing `PUT`).
Each blob is hashed as it is read, so a damaged blob in the store is named rather than uploaded. The
manifest is pushed byte for byte as stored, so the model has the same ID on every machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

import httpx

from ollama_img.errors import UserError
from ollama_img.names import ModelName
from ollama_img.store import Store
from ollama_img.store.manifest import MANIFEST_MEDIA_TYPE, Manifest
from ollama_img.transfer.parallel import run_parallel
from ollama_img.transfer.progress import NoProgress, TransferProgress
from ollama_img.transfer.registry.auth import Credentials, repository_scope
from ollama_img.transfer.registry.client import RegistryClient, backoff, describe_failure, is_transient
from ollama_img.transfer.registry.download import Cancelled

PARALLEL = 8  # blobs checked or uploaded at once
CHUNK_SIZE = 64 * 1024 * 1024  # blobs up to this size go in one PUT; larger ones in chunks of it
READ_SIZE = 1 << 20


@dataclass(frozen=True)
class PushResult:
    name: ModelName
    digest: str  # the manifest's digest
    blobs: int  # distinct blobs the model uses
    uploaded: int
    uploaded_bytes: int
    present: int  # already on the registry
    mounted: int  # linked from another repository of the registry


@dataclass(frozen=True)
class _Blob:
    digest: str
    size: int
    what: str  # "config" or the layer's name
    path: Path


def push_model(
    store: Store,
    name: ModelName | str,
    *,
    insecure: bool = False,
    progress: TransferProgress | None = None,
    parallel: int = PARALLEL,
    chunk_size: int = CHUNK_SIZE,
    credentials: Credentials | None = None,
) -> PushResult:
    """Push the stored model `name` to its registry; blobs the registry has are not sent again."""
    name = name if isinstance(name, ModelName) else ModelName.parse(name)
    progress = progress or NoProgress()
    manifest = store.manifest(name)
    blobs = _local_blobs(store, manifest)
    repository = f"{name.namespace}/{name.model}"
    scopes = (repository_scope(repository, push=True),)
    sources = _mount_sources(store, name, repository)
    with RegistryClient(name.host, insecure=insecure, credentials=credentials) as client:
        uploader = _Uploader(client, repository, scopes, progress, chunk_size)
        states = run_parallel([lambda b=b: uploader.check(b, sources.get(b.digest)) for b in blobs], parallel)
        to_upload = [b for b, state in zip(blobs, states, strict=True) if state == "missing"]
        progress.start("uploading", sum(b.size for b in to_upload), len(to_upload))
        jobs = [lambda b=b: uploader.upload(b) for b in to_upload]
        run_parallel(jobs, parallel, uploader.cancel, on_done=lambda _: progress.file_done())
        uploader.put_manifest(name, manifest)
    return PushResult(
        name=name,
        digest=manifest.digest,
        blobs=len(blobs),
        uploaded=len(to_upload),
        uploaded_bytes=sum(b.size for b in to_upload),
        present=states.count("present"),
        mounted=states.count("mounted"),
    )


def _local_blobs(store: Store, manifest: Manifest) -> list[_Blob]:
    """Every distinct blob of the model (config first), each checked to be in the store whole."""
    entries = [(manifest.config_digest, manifest.config_size, "config")]
    entries += [(layer.digest, layer.size, layer.name) for layer in manifest.layers]
    blobs = {}
    for digest, size, what in entries:
        path = store.blob_path(digest)
        try:
            whole = path.stat().st_size == size
        except FileNotFoundError:
            whole = False
        if not whole:
            raise UserError(
                f"model '{manifest.name}' is damaged: the blob of {what} ({digest}) is missing or truncated; "
                "re-create or pull the model again"
            )
        blobs.setdefault(digest, _Blob(digest, size, what, path))
    return list(blobs.values())


def _mount_sources(store: Store, name: ModelName, repository: str) -> dict[str, str]:
    """digest -> another repository of the same registry that a stored model says holds it."""
    sources: dict[str, str] = {}
    for other in store.names():
        other_repository = f"{other.namespace}/{other.model}"
        if other.host != name.host or other_repository == repository:
            continue
        try:
            digests = store.manifest(other).digests()
        except UserError:
            continue
        for digest in digests:
            sources.setdefault(digest, other_repository)
    return sources


class _Uploader:
    def __init__(
        self, client: RegistryClient, repository: str, scopes, progress: TransferProgress, chunk_size
    ):
        self.client = client
        self.repository = repository
        self.scopes = scopes
        self.progress = progress
        self.chunk_size = chunk_size
        self.cancel = threading.Event()

    def check(self, blob: _Blob, mount_from: str | None) -> str:
        """Whether the registry has the blob: "present", "mounted" (now it has), or "missing"."""
        what = f"checking for blob {blob.what}"
        response = self.client.request(
            "HEAD", f"/v2/{self.repository}/blobs/{blob.digest}", self.scopes, what=what
        )
        if response.status_code == 200:
            return "present"
        if response.status_code != 404:
            raise self.client.error(response, what)
        if mount_from is None:
            return "missing"
        scopes = (*self.scopes, repository_scope(mount_from))
        query = f"?mount={blob.digest}&from={mount_from}"
        response = self.client.request(
            "POST", f"/v2/{self.repository}/blobs/uploads/{query}", scopes, what=f"mounting blob {blob.what}"
        )
        if response.status_code == 201:
            return "mounted"
        if response.status_code == 202:  # no mount, but an upload session we will not use
            self._abandon(response.headers.get("location"))
        return "missing"

    def upload(self, blob: _Blob) -> None:
        failures = 0
        while True:
            body = _FileBody(blob, self.progress, self.cancel)
            try:
                self._upload_once(blob, body)
                return
            except httpx.HTTPError as exc:
                body.discard()
                failures += 1
                if not is_transient(exc) or failures >= self.client.attempts:
                    raise UserError(
                        f"uploading blob {blob.what} to registry {self.client.host} failed: {describe_failure(exc)}"
                    ) from None
                if self.cancel.wait(backoff(failures)):
                    raise Cancelled() from None

    def _upload_once(self, blob: _Blob, body: _FileBody) -> None:
        what = f"uploading blob {blob.what}"
        response = self.client.send(
            "POST", f"/v2/{self.repository}/blobs/uploads/", self.scopes, headers={"Content-Length": "0"}
        )
        response.read()
        if response.status_code != 202 or not response.headers.get("location"):
            raise self.client.error(response, what)
        location = response.headers["location"]
        minimum = _int(response.headers.get("oci-chunk-min-length"))
        chunk = max(self.chunk_size, minimum)
        if blob.size > chunk:
            location = self._patch_chunks(blob, body, location, chunk, what)
            final = self.client.send(
                "PUT", self._with_digest(location, blob.digest), self.scopes, content=b""
            )
        else:
            final = self.client.send(
                "PUT",
                self._with_digest(location, blob.digest),
                self.scopes,
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(blob.size)},
                content=lambda: body.read(0, blob.size),
            )
        final.read()
        body.check()
        if final.status_code != 201:
            raise self.client.error(final, what)

    def _patch_chunks(self, blob: _Blob, body: _FileBody, location: str, chunk: int, what: str) -> str:
        for start in range(0, blob.size, chunk):
            end = min(blob.size, start + chunk)
            response = self.client.send(
                "PATCH",
                location,
                self.scopes,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{start}-{end - 1}",
                    "Content-Length": str(end - start),
                },
                content=lambda start=start, end=end: body.read(start, end),
            )
            response.read()
            if response.status_code != 202:
                raise self.client.error(response, what)
            location = response.headers.get("location") or location
        return location

    def _with_digest(self, location: str, digest: str) -> str:
        return str(httpx.URL(self.client.url(location)).copy_merge_params({"digest": digest}))

    def _abandon(self, location: str | None) -> None:
        if location:  # best effort: the registry times unused sessions out anyway
            with contextlib.suppress(httpx.HTTPError):
                self.client.send("DELETE", location, self.scopes).read()

    def put_manifest(self, name: ModelName, manifest: Manifest) -> None:
        what = f"pushing the manifest of '{name}'"
        response = self.client.request(
            "PUT",
            f"/v2/{self.repository}/manifests/{name.tag}",
            self.scopes,
            headers={"Content-Type": MANIFEST_MEDIA_TYPE},
            content=manifest.raw,
            what=what,
        )
        if response.status_code not in (200, 201):
            raise self.client.error(response, what)


class _FileBody:
    """A blob's bytes read from the store in order, hashed and counted as they go out."""

    def __init__(self, blob: _Blob, progress: TransferProgress, cancel: threading.Event):
        self.blob = blob
        self.progress = progress
        self.cancel = cancel
        self._hash = hashlib.sha256()
        self._hashed_to = 0
        self.sent = 0

    def read(self, start: int, end: int):
        """The bytes [start, end); sending a range again (after a 401) does not count twice."""
        if start < self._hashed_to:  # a request is being re-sent: forget what its first try counted
            self.progress.advance(-(self._hashed_to - start))
            self.sent -= self._hashed_to - start
            self._hash = hashlib.sha256() if start == 0 else self._hash
            self._hashed_to = start
        with open(self.blob.path, "rb") as f:
            f.seek(start)
            position = start
            while position < end:
                if self.cancel.is_set():
                    raise Cancelled()
                data = f.read(min(READ_SIZE, end - position))
                if not data:
                    raise UserError(f"the blob of {self.blob.what} in the store shrank while it was uploaded")
                if position >= self._hashed_to:
                    self._hash.update(data)
                    self._hashed_to = position + len(data)
                position += len(data)
                self.sent += len(data)
                self.progress.advance(len(data))
                yield data

    def discard(self) -> None:
        """An attempt failed: what it counted is undone."""
        self.progress.advance(-self.sent)
        self.sent = 0

    def check(self) -> None:
        """After the last byte: the store's bytes were those the blob's name promises."""
        got = "sha256:" + self._hash.hexdigest()
        if self._hashed_to == self.blob.size and got != self.blob.digest:
            raise UserError(
                f"the store's blob of {self.blob.what} is damaged (its bytes hash to {got}, not "
                f"{self.blob.digest}); re-create or pull the model again"
            )


def _int(value: str | None) -> int:
    try:
        return max(0, int(value or 0))
    except ValueError:
        return 0
