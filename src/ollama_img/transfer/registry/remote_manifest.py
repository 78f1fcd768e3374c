"""A manifest as a registry sends it: fetched with a bounded size, checked before anything is downloaded.

ollama-img pushes docker v2 schema 2 manifests (as ollama does); an OCI image manifest with the same
fields is read the same way. A multi-platform index is refused with a message: models are not images.
"""

import hashlib
import json
from dataclasses import dataclass

from ollama_img.errors import NotFound, UserError
from ollama_img.store.blobs import is_digest
from ollama_img.store.manifest import MANIFEST_MEDIA_TYPE
from ollama_img.transfer.registry.client import RegistryClient

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (MANIFEST_MEDIA_TYPE, OCI_MANIFEST)
ACCEPT = ", ".join((*MANIFEST_TYPES, OCI_INDEX, DOCKER_LIST))

MAX_MANIFEST_BYTES = 16 * 1024 * 1024  # a full-size model's manifest is about 0.3 MB
MAX_LAYERS = 100_000
MAX_BLOB_SIZE = 1 << 40
MAX_NAME_LENGTH = 1024


@dataclass(frozen=True)
class RemoteBlob:
    digest: str
    size: int
    media_type: str
    name: str  # the layer's name, or "config"


@dataclass(frozen=True)
class RemoteManifest:
    raw: bytes
    config: RemoteBlob
    layers: tuple[RemoteBlob, ...]

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.raw).hexdigest()

    def unique_layers(self) -> list[RemoteBlob]:
        """Each layer blob once (several layers may share one blob, e.g. equal tensors)."""
        return list({layer.digest: layer for layer in self.layers}.values())


def fetch_manifest(
    client: RegistryClient, repository: str, reference: str, scopes, label: str
) -> RemoteManifest:
    """GET the manifest of `repository:reference`; NotFound for an unknown model."""
    what = f"the manifest of '{label}'"
    response = client.request(
        "GET",
        f"/v2/{repository}/manifests/{reference}",
        scopes,
        headers={"Accept": ACCEPT},
        what=what,
        limit=MAX_MANIFEST_BYTES,
    )
    if response.status_code == 404:
        raise NotFound(f"model '{label}' not found on registry {client.host}")
    if response.status_code != 200:
        raise client.error(response, what)
    raw = response.content
    claimed = response.headers.get("docker-content-digest")
    manifest = parse_manifest(raw, response.headers.get("content-type", ""), f"'{label}' on {client.host}")
    if claimed and claimed.startswith("sha256:") and claimed != manifest.digest:
        raise UserError(
            f"registry {client.host} sent a manifest for '{label}' whose bytes do not match the digest it "
            f"claims ({claimed}); refused"
        )
    return manifest


def parse_manifest(raw: bytes, content_type: str, where: str) -> RemoteManifest:
    """Check a manifest's shape; a UserError names what is wrong."""
    media_type = content_type.split(";", 1)[0].strip()

    def bad(problem: str) -> UserError:
        return UserError(f"the manifest of {where} {problem}")

    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise bad("is not JSON") from None
    if not isinstance(doc, dict):
        raise bad("is not a JSON object")
    if doc.get("mediaType", media_type) in (OCI_INDEX, DOCKER_LIST) or "manifests" in doc:
        raise bad("is a multi-platform image index, not a model")
    if doc.get("schemaVersion") != 2:
        raise bad(f"has schemaVersion {doc.get('schemaVersion')!r}, not 2")
    if doc.get("mediaType") is not None and doc["mediaType"] not in MANIFEST_TYPES:
        raise bad(
            f"has the media type {doc['mediaType']!r}"
        )  # (a bare Content-Type is not trusted either way)
    config = doc.get("config")
    layers = doc.get("layers")
    if not isinstance(config, dict) or not isinstance(layers, list):
        raise bad("lacks a config or layers")
    if len(layers) > MAX_LAYERS:
        raise bad(f"has {len(layers)} layers (at most {MAX_LAYERS})")
    return RemoteManifest(
        raw, _blob(config, "config", bad), tuple(_blob(layer, None, bad) for layer in layers)
    )


def _blob(entry, name: str | None, bad) -> RemoteBlob:
    if not isinstance(entry, dict):
        raise bad("has a layer that is not an object")
    digest, size, media_type = entry.get("digest"), entry.get("size"), entry.get("mediaType")
    name = name if name is not None else entry.get("name", "")
    if not isinstance(name, str) or len(name) > MAX_NAME_LENGTH:
        raise bad("has a layer with an invalid name")
    label = name or "a layer"
    if not is_digest(digest):
        raise bad(f"gives {label} the digest {digest!r} (expected sha256:<64 hex digits>)")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_BLOB_SIZE:
        raise bad(f"gives {label} the size {size!r}")
    if not isinstance(media_type, str):
        raise bad(f"gives {label} no mediaType")
    return RemoteBlob(digest, size, media_type, name)
