"""Fetch blobs from a registry into the store: hashed while they stream, resumed with Range, retried.

Each blob is written through the store's `BlobWriter` (a temporary file in `blobs/`, fsynced and linked
under its name only once complete): if its bytes do not hash to the digest the manifest names, it is
dropped and the pull fails, so no blob name ever holds other bytes. A connection that breaks mid-blob
is resumed where it stopped (`Range: bytes=N-`), up to `ATTEMPTS` failures in a row without progress;
a registry that ignores Range is read again from the start.
"""

from __future__ import annotations

import hashlib
import re
import threading
from pathlib import Path

import httpx

from ollama_img.errors import UserError
from ollama_img.store.blobs import BlobWriter, WrittenBlob
from ollama_img.transfer.parallel import run_parallel
from ollama_img.transfer.progress import TransferProgress
from ollama_img.transfer.registry.client import (
    RETRY_STATUSES,
    RegistryClient,
    backoff,
    describe_failure,
    is_transient,
    read_bounded,
    retry_delay,
)
from ollama_img.transfer.registry.remote_manifest import RemoteBlob

CHUNK = 1 << 20
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class Cancelled(Exception):
    """Another blob of the same pull failed: this one stops too."""


class _Retry(Exception):
    """This attempt failed in a way worth another (the reason is the message)."""


def fetch_small(
    client: RegistryClient, repository: str, blob: RemoteBlob, scopes, limit: int, what: str
) -> bytes:
    """A small blob (a config) in memory, verified against its digest."""
    if blob.size > limit:
        raise UserError(f"{what} is {blob.size} bytes (at most {limit})")
    path = f"/v2/{repository}/blobs/{blob.digest}"
    response = client.request(
        "GET", path, scopes, what=what, limit=limit, headers=_IDENTITY, follow_redirects=True
    )
    if response.status_code != 200:
        raise client.error(response, what)
    check_digest(response.content, blob, client.host, what)
    return response.content


def check_digest(data: bytes, blob: RemoteBlob, host: str, what: str) -> None:
    got = "sha256:" + hashlib.sha256(data).hexdigest()
    if got != blob.digest or len(data) != blob.size:
        raise digest_mismatch(blob, got, host, what)


def digest_mismatch(blob: RemoteBlob, got: str, host: str, what: str) -> UserError:
    return UserError(
        f"{what} from registry {host} does not match its digest {blob.digest} (its bytes hash to {got}); "
        "refused, nothing of it was stored"
    )


_IDENTITY = {"Accept-Encoding": "identity"}


def fetch_blob(
    client: RegistryClient,
    repository: str,
    blob: RemoteBlob,
    blobs_dir: Path,
    scopes,
    progress: TransferProgress,
    cancel: threading.Event,
) -> WrittenBlob:
    """Download one blob into the store (verified, resumed, retried); returns the published blob."""
    download = _Download(client, repository, blob, blobs_dir, scopes, progress, cancel)
    try:
        return download.run()
    finally:
        download.writer.abort()  # nothing left behind unless published (then this does nothing)


class _Download:
    """One blob on its way into the store; `writer` holds the bytes so far (replaced on a restart)."""

    def __init__(self, client, repository, blob, blobs_dir, scopes, progress, cancel):
        self.client, self.repository, self.blob = client, repository, blob
        self.blobs_dir, self.scopes, self.progress, self.cancel = blobs_dir, scopes, progress, cancel
        self.what = f"blob {blob.digest[:19]}… ({blob.name or blob.media_type})"
        self.writer = BlobWriter(blobs_dir)

    def run(self) -> WrittenBlob:
        failures = 0
        while True:
            before = self.writer.size
            try:
                self._attempt()
                if self.writer.size == self.blob.size:
                    break
                raise _Retry(f"the connection ended after {self.writer.size} of {self.blob.size} bytes")
            except (_Retry, httpx.HTTPError) as exc:
                if isinstance(exc, httpx.HTTPError) and not is_transient(exc):
                    raise self.client.transport_error(exc, f"downloading {self.what}") from None
                failures = 0 if self.writer.size > before else failures + 1
                if failures >= self.client.attempts:
                    reason = describe_failure(exc)
                    raise UserError(
                        f"downloading {self.what} from registry {self.client.host} failed {failures} times "
                        f"in a row ({reason}); run the pull again to resume"
                    ) from None
                _sleep(getattr(exc, "delay", None) or backoff(failures), self.cancel)
        ref = self.writer.seal()
        if ref.digest != self.blob.digest:
            raise digest_mismatch(self.blob, ref.digest, self.client.host, self.what)
        return self.writer.publish()

    def _attempt(self) -> None:
        """Read as much of the blob as one connection gives."""
        offset = self.writer.size
        headers = dict(_IDENTITY)
        if offset:
            headers["Range"] = f"bytes={offset}-"
        path = f"/v2/{self.repository}/blobs/{self.blob.digest}"
        with self.client.stream("GET", path, self.scopes, headers=headers, follow_redirects=True) as response:
            status = response.status_code
            if status in RETRY_STATUSES:
                retry = _Retry(f"HTTP {status}")
                retry.delay = retry_delay(response, 1)
                raise retry
            if status == 206 and offset and _range_start(response) != offset:
                self._restart()
                raise _Retry("the registry resumed at another offset than asked")
            if status == 200 and offset:  # the registry ignored Range: start again from the first byte
                self._restart()
            elif status not in (200, 206):
                raise self.client.error(
                    read_bounded(response, 64 * 1024, self.what), f"downloading {self.what}"
                )
            for chunk in response.iter_bytes(CHUNK):
                if self.cancel.is_set():
                    raise Cancelled()
                if self.writer.size + len(chunk) > self.blob.size:
                    raise UserError(
                        f"{self.what} from registry {self.client.host} is longer than the {self.blob.size} "
                        "bytes its manifest says; refused, nothing of it was stored"
                    )
                self.writer.write(chunk)
                self.progress.advance(len(chunk))

    def _restart(self) -> None:
        self.progress.advance(-self.writer.size)
        self.writer.abort()
        self.writer = BlobWriter(self.blobs_dir)


def _range_start(response: httpx.Response) -> int | None:
    match = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", "").strip())
    return int(match.group(1)) if match else None


def _sleep(seconds: float, cancel: threading.Event) -> None:
    if cancel.wait(seconds):
        raise Cancelled()


def fetch_blobs(
    client: RegistryClient,
    repository: str,
    blobs: list[RemoteBlob],
    blobs_dir: Path,
    scopes,
    progress: TransferProgress,
    parallel: int,
) -> list[WrittenBlob]:
    """Fetch `blobs`, at most `parallel` at a time; the first failure stops the others and is raised."""
    stop = threading.Event()
    jobs = [
        lambda blob=blob: fetch_blob(client, repository, blob, blobs_dir, scopes, progress, stop)
        for blob in blobs
    ]
    return run_parallel(jobs, parallel, stop, on_done=lambda _blob: progress.file_done())
