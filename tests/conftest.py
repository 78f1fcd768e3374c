"""Shared fixtures: tiny model folders (built once per session), a store in a temp dir, the CLI in-process."""

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from ollama_img.store import Store
from tests.fixtures.zimage_folder import TINY, build_zimage_folder

pytest_plugins = ["tests.fixtures.registry"]  # real registries (docker-registry) for pull/push tests


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    """A bf16 Z-Image folder: sharded transformer, one text-encoder file, chat template inline. Read-only."""
    return build_zimage_folder(tmp_path_factory.mktemp("tiny") / "Z-Image", TINY)


@pytest.fixture(scope="session")
def tiny_folder_f32(tmp_path_factory) -> Path:
    """An f32 variant: sharded text encoder too, chat template in chat_template.jinja. Read-only."""
    return build_zimage_folder(
        tmp_path_factory.mktemp("tiny-f32") / "Z-Image",
        TINY,
        dtype="float32",
        text_encoder_shards=2,
        chat_template_file=True,
    )


@pytest.fixture(scope="session")
def reference_folder(tmp_path_factory):
    """A tiny float32 Z-Image folder written by diffusers' own save_pretrained."""
    pytest.importorskip("diffusers")
    from tests.fixtures.reference import build_reference_folder

    return build_reference_folder(tmp_path_factory.mktemp("ref") / "Z-Image-Ref")


@pytest.fixture(scope="session")
def reference_pipe(reference_folder):
    from tests.fixtures.reference import load_reference

    return load_reference(reference_folder)


def loaded(way: str, folder: Path, name: str, tmp_path_factory):
    """The pipeline of `folder`, loaded from the folder itself or from a store it was imported into."""
    from ollama_img import load_pipeline
    from ollama_img.store import import_folder, inspect_folder

    if way == "folder":
        return load_pipeline(folder)
    store = Store(tmp_path_factory.mktemp(f"{name}-store"))
    import_folder(store, name, inspect_folder(folder))
    pipe = load_pipeline(name, store=store)
    assert pipe.digest == store.manifest(name).digest
    return pipe


@pytest.fixture(scope="session", params=["folder", "store"])
def mlx_pipe(request, reference_folder, tmp_path_factory):
    """ollama-img's pipeline on the reference weights, loaded from the folder and from the store (after create)."""
    return loaded(request.param, reference_folder, "zimage-ref", tmp_path_factory)


@pytest.fixture(scope="session")
def flux2_reference_folder(tmp_path_factory):
    """A tiny float32 FLUX.2 [klein] folder written by diffusers' own save_pretrained."""
    pytest.importorskip("diffusers")
    from tests.fixtures.flux2_reference import build_flux2_reference_folder

    return build_flux2_reference_folder(tmp_path_factory.mktemp("flux2-ref") / "FLUX.2-klein-ref")


@pytest.fixture(scope="session")
def flux2_reference_pipe(flux2_reference_folder):
    from tests.fixtures.flux2_reference import load_flux2_reference

    return load_flux2_reference(flux2_reference_folder)


@pytest.fixture(scope="session", params=["folder", "store"])
def flux2_pipe(request, flux2_reference_folder, tmp_path_factory):
    """ollama-img's FLUX.2 pipeline on the reference weights, from the folder and from the store (after create)."""
    return loaded(request.param, flux2_reference_folder, "klein-ref", tmp_path_factory)


@pytest.fixture
def folder_copy(tiny_folder, tmp_path) -> Path:
    """A private copy of the tiny folder that a test may damage."""
    return Path(shutil.copytree(tiny_folder, tmp_path / "copy"))


@pytest.fixture
def store(tmp_path, monkeypatch) -> Store:
    """An empty store in a temp dir, also what the CLI uses (OLLAMA_IMG_MODELS)."""
    root = tmp_path / "store"
    monkeypatch.setenv("OLLAMA_IMG_MODELS", str(root))
    return Store(root)


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys):
    """Run `ollama-img ARGS...` in-process through the real entry point; returns code, stdout, stderr."""
    from ollama_img.cli.app import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        else:
            code = 0
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def snapshot(root: Path) -> dict[str, str] | None:
    """Every file under `root` with the sha256 of its bytes (None if `root` does not exist)."""
    if not root.exists():
        return None
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def assert_store_consistent(store: Store) -> None:
    """No file under a blob name holds other bytes than its name says; every manifest's blobs exist."""
    import json

    if store.blobs_dir.is_dir():
        for path in store.blobs_dir.iterdir():
            if path.name.startswith("sha256-"):
                assert file_sha256(path) == path.name.removeprefix("sha256-"), f"bad blob {path.name}"
    for name in store.names():
        doc = json.loads(store.manifest_path(name).read_bytes())
        for ref in [doc["config"], *doc["layers"]]:
            blob = store.blob_path(ref["digest"])
            assert blob.is_file(), f"{name} points at missing blob {ref['digest']}"
            assert blob.stat().st_size == ref["size"]
