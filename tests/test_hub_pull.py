"""pull from Hugging Face, without the network: a local server answers the Hub's endpoints (HF_ENDPOINT),
serving the tiny model folder plus files a pull must leave alone; the Hugging Face cache is a temp folder.
"""

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ollama_img.errors import UserError
from ollama_img.store import Store, import_folder, inspect_folder
from tests.conftest import snapshot
from tests.fixtures.hub_server import HubServer
from tests.fixtures.registry import free_port
from tests.fixtures.zimage_folder import model_index

REPO = "Org/Tiny-Z"
# What a real repository also holds, and a pull must not download: a duplicate variant, a single-file
# checkpoint at the root, PyTorch weights, a README and an image.
DECOYS = {
    "transformer/diffusion_pytorch_model.fp16.safetensors": 4096,
    "z_image_turbo_bf16.safetensors": 4096,
    "text_encoder/pytorch_model.bin": 4096,
    "README.md": 64,
    "assets/sample.png": 2048,
}


@pytest.fixture(scope="module")
def hub_repo(tiny_folder, tmp_path_factory) -> Path:
    repo = Path(shutil.copytree(tiny_folder, tmp_path_factory.mktemp("hub-repo") / "Tiny-Z"))
    for path, size in DECOYS.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_bytes(os.urandom(size))
    return repo


@pytest.fixture(scope="module")
def hub(hub_repo, tmp_path_factory):
    server = HubServer().start()
    server.add(REPO, hub_repo)
    unsupported = tmp_path_factory.mktemp("hub-sd") / "sd"
    unsupported.mkdir()
    (unsupported / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    server.add("Org/Old-SD", unsupported)
    no_index = tmp_path_factory.mktemp("hub-llm") / "llm"
    no_index.mkdir()
    (no_index / "config.json").write_text("{}")
    server.add("Org/Some-LLM", no_index)
    yield server
    server.stop()


@pytest.fixture
def env(hub, tmp_path, monkeypatch):
    """The CLI pointed at the local Hub, with an empty Hugging Face cache and an empty store."""
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("OLLAMA_IMG_MODELS", str(tmp_path / "store"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    hub.requests.clear()
    return tmp_path


def wanted_files(tiny_folder: Path) -> set[str]:
    return {p.relative_to(tiny_folder).as_posix() for p in tiny_folder.rglob("*") if p.is_file()}


def test_pull_downloads_only_what_the_model_needs_and_imports_it_as_create_does(env, hub, tiny_folder, cli):
    result = cli("pull", f"hf.co/{REPO}")
    assert result.code == 0, result.err
    assert result.out.startswith(f"pulled 'hf.co/org/tiny-z:latest' from hf.co/{REPO} (commit ")
    assert (
        f"{len(wanted_files(tiny_folder))} files, {len(wanted_files(tiny_folder))} downloaded" in result.out
    )
    assert set(hub.downloads()) == wanted_files(tiny_folder)  # the model's files, each once, no decoy
    assert len(hub.downloads()) == len(set(hub.downloads()))

    created = Store(env / "created")
    import_folder(created, "hf.co/org/tiny-z", inspect_folder(tiny_folder))
    pulled = Store(env / "store")
    assert pulled.manifest("hf.co/org/tiny-z").raw == created.manifest("hf.co/org/tiny-z").raw

    hub.requests.clear()  # and again: the Hugging Face cache has it all, so nothing is asked
    again = cli("pull", f"hf.co/{REPO}", "--as", "tiny-again")
    assert again.code == 0, again.err
    assert "all from the Hugging Face cache" in again.out and "0 new blobs" in again.out
    assert hub.requests == []


def test_a_model_hf_download_left_in_the_cache_is_found_without_any_request(env, hub, tiny_folder, cli):
    """`hf download` (huggingface_hub's own CLI) fills the cache with the whole repository, decoys too."""
    done = subprocess.run(
        [str(Path(sys.executable).with_name("hf")), "download", REPO],
        env=os.environ | {"HF_HUB_DISABLE_PROGRESS_BARS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert set(DECOYS) <= set(hub.downloads())  # it took everything
    hub.requests.clear()
    result = cli("pull", f"hf.co/{REPO}", "--as", "from-cache")
    assert result.code == 0, result.err
    assert hub.requests == []
    assert "all from the Hugging Face cache" in result.out
    assert Store(env / "store").manifest("from-cache").config.architecture == "ZImagePipeline"


def test_a_hand_made_cache_folder_works_offline(env, hub, hub_repo, tiny_folder, cli, monkeypatch):
    """The cache layout with plain files in the snapshot (no blob links), and the Hub unreachable."""
    commit = hub.repos[REPO].commit
    repo_cache = env / "hf-cache" / "models--Org--Tiny-Z"
    shutil.copytree(tiny_folder, repo_cache / "snapshots" / commit)
    (repo_cache / "refs").mkdir()
    (repo_cache / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    result = cli("pull", f"hf.co/{REPO}", "--as", "offline")
    assert result.code == 0, result.err
    assert Store(env / "store").exists("offline")


def test_pull_with_quantize_names_the_type_in_the_tag(env, cli):
    result = cli("pull", f"hf.co/{REPO}", "--quantize", "int8")
    assert result.code == 0, result.err
    manifest = Store(env / "store").manifest("hf.co/org/tiny-z:int8")
    assert manifest.config.quantization.type == "int8"


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("hf.co/Org/Nope", "hf.co/Org/Nope not found on Hugging Face"),
        (f"hf.co/{REPO}:no-such-branch", f"hf.co/{REPO}:no-such-branch: no such revision"),
        ("hf.co/Org/Old-SD", "unsupported architecture 'StableDiffusionPipeline'"),
        ("hf.co/Org/Some-LLM", "has no model_index.json: ollama-img needs a model in the diffusers layout"),
        ("hf.co/Org/Bad:..", "invalid Hugging Face name"),
    ],
)
def test_hub_mistakes_are_one_line_and_leave_the_store_alone(env, cli, target, message):
    result = cli("pull", target)
    assert result.code == 1
    errors = [line for line in result.err.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and message in errors[0], result.err
    assert snapshot(env / "store") is None


def test_an_unreachable_hub_with_nothing_cached_is_one_line(env, cli, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    result = cli("pull", f"hf.co/{REPO}")
    assert result.code == 1
    assert (
        result.err.strip().splitlines()[-1].startswith("Error: cannot reach Hugging Face (http://127.0.0.1:")
    )
    assert snapshot(env / "store") is None


def test_a_repository_without_plain_safetensors_names_what_it_has(tmp_path):
    from ollama_img.transfer.hub_files import select_files

    (tmp_path / "model_index.json").write_text(__import__("json").dumps(model_index()))
    listing = {
        "model_index.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.fp16.safetensors",
    }
    with pytest.raises(
        UserError, match=r"text_encoder/model.safetensors .* \(it has text_encoder/model.fp16"
    ):
        select_files(listing, lambda path: tmp_path / path, "hf.co/x/y")


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_run_offers_a_hub_model_that_is_not_in_the_store(env, cli, monkeypatch):
    from ollama_img.cli.transfer_commands import pull_if_missing

    with pytest.raises(UserError, match=f"not in the store; pull it first: ollama-img pull hf.co/{REPO}"):
        pull_if_missing(f"hf.co/{REPO}")  # no terminal: no question, a clear line
    monkeypatch.setattr(sys, "stderr", FakeTerminal())
    monkeypatch.setattr(sys, "stdin", FakeTerminal("n\n"))
    with pytest.raises(UserError, match="not pulled"):
        pull_if_missing(f"hf.co/{REPO}")
    assert snapshot(env / "store") is None
    monkeypatch.setattr(sys, "stdin", FakeTerminal("y\n"))
    pull_if_missing(f"hf.co/{REPO}")
    assert "Pull it from Hugging Face now?" in sys.stderr.getvalue()
    assert Store(env / "store").exists("hf.co/org/tiny-z:latest")
    pull_if_missing(f"hf.co/{REPO}")  # there now: nothing asked
    pull_if_missing("z-image")  # a bare name is never offered
