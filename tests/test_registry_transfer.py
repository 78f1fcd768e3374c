"""push and pull against a real registry (Debian's docker-registry, see tests/fixtures/registry.py).

The tiny Z-Image model goes up and comes back into an empty store as the same blobs and the same images;
a second push sends nothing; interrupted pulls resume; a damaged blob is refused.
"""

import threading
import time

import numpy as np
import pytest

from ollama_img import load_pipeline
from ollama_img.errors import UserError
from ollama_img.store import Store, import_folder, inspect_folder
from ollama_img.transfer.registry.pull import pull_model
from ollama_img.transfer.registry.push import push_model
from tests.conftest import assert_store_consistent, snapshot
from tests.fixtures.small_model import write_small_model


@pytest.fixture(scope="module")
def published(registry, tiny_folder, tmp_path_factory):
    """The tiny model in a store of its own, pushed once (with small chunks, so PATCH uploads are used)."""
    store = Store(tmp_path_factory.mktemp("source-store"))
    name = f"{registry.host}/team/tiny:v1"
    import_folder(store, name, inspect_folder(tiny_folder))
    result = push_model(store, name, chunk_size=64 * 1024)
    return store, name, result


def the_error_line(err: str) -> str:
    """stderr holds progress lines, then exactly one error line, the last."""
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("Error: ")]
    assert errors == lines[-1:], err
    return errors[0]


def blob_files(store: Store) -> dict[str, str] | None:
    return snapshot(store.blobs_dir)


def test_push_then_pull_into_an_empty_store_gives_the_same_model_and_images(published, registry, tmp_path):
    source, name, pushed = published
    manifest = source.manifest(name)
    assert pushed.uploaded == pushed.blobs == len(manifest.digests()) and pushed.present == 0
    assert pushed.uploaded_bytes == manifest.total_size
    assert registry.requests("PATCH", r"/v2/team/tiny/blobs/uploads/") > 0  # large blobs went in chunks

    empty = Store(tmp_path / "empty")
    pulled = pull_model(empty, name)
    assert pulled.fetched == pulled.blobs == pushed.blobs and pulled.present == 0
    assert empty.manifest(name).digest == manifest.digest  # the same model ID on both machines
    assert blob_files(empty) == blob_files(source)
    assert_store_consistent(empty)

    args = dict(width=32, height=32, steps=2, seed=7)
    ours = np.asarray(load_pipeline(name, store=source).generate("a red fox", **args))
    theirs = np.asarray(load_pipeline(name, store=empty).generate("a red fox", **args))
    assert ours.std() > 1 and np.array_equal(ours, theirs)


def test_pushing_again_transfers_no_blob(published, registry):
    source, name, first = published
    since = registry.log_size()
    again = push_model(source, name)
    assert (again.uploaded, again.uploaded_bytes, again.mounted) == (0, 0, 0)
    assert again.present == first.blobs
    assert registry.requests("POST", r"/blobs/uploads/", since=since) == 0
    assert registry.requests("PUT", r"/blobs/uploads/", since=since) == 0
    assert registry.requests("PUT", r"/v2/team/tiny/manifests/v1", status=201, since=since) == 1


def test_a_second_repository_gets_its_blobs_mounted_not_uploaded(published, registry):
    source, name, first = published
    other = f"{registry.host}/team/tiny-copy:v1"
    source.copy(name, other)
    since = registry.log_size()
    result = push_model(source, other)
    assert (result.mounted, result.uploaded, result.present) == (first.blobs, 0, 0)
    assert (
        registry.requests("POST", r"/v2/team/tiny-copy/blobs/uploads/\?.*mount=", status=201, since=since)
        == first.blobs
    )


def test_a_pull_of_a_partly_present_model_fetches_only_the_rest(published, tmp_path):
    source, name, _ = published
    partial = Store(tmp_path / "partial")
    partial.blobs_dir.mkdir(parents=True)
    blobs = sorted(source.blobs_dir.glob("sha256-*"))
    kept = blobs[::2]
    for path in kept:  # as if an earlier pull had stopped after these
        (partial.blobs_dir / path.name).write_bytes(path.read_bytes())
    result = pull_model(partial, name)
    assert result.present == len(kept) and result.fetched == len(blobs) - len(kept)
    assert blob_files(partial) == blob_files(source)
    assert_store_consistent(partial)


def big_model(registry, tmp_path, big=48 * 1024 * 1024):
    store = Store(tmp_path / "big-source")
    name = f"{registry.host}/team/big:v1"
    write_small_model(store, name, seed=3, big=big)
    push_model(store, name)
    return store, name


class KillMidBlob:
    """A progress that kills the registry once `after` bytes of the pull have arrived (then restarts it)."""

    def __init__(self, registry, after: int, restart: bool):
        self.registry, self.after, self.restart = registry, after, restart
        self.received = 0
        self.killed = threading.Event()
        self._lock = threading.Lock()

    def start(self, phase, total_bytes, total_files, done_bytes=0):
        pass

    def file_done(self):
        pass

    def advance(self, nbytes):
        with self._lock:
            self.received += nbytes
            if self.received < self.after or self.killed.is_set():
                return
            self.killed.set()
            self.registry.kill()
            if self.restart:
                self.registry.start()


def test_a_pull_whose_registry_dies_mid_blob_resumes_with_range(own_registry, tmp_path):
    source, name = big_model(own_registry, tmp_path)
    store = Store(tmp_path / "dest")
    since = own_registry.log_size()
    interrupt = KillMidBlob(own_registry, after=8 * 1024 * 1024, restart=True)
    result = pull_model(store, name, progress=interrupt)
    assert interrupt.killed.is_set()
    assert result.fetched == result.blobs
    assert store.manifest(name).digest == source.manifest(name).digest
    assert blob_files(store) == blob_files(source)
    assert (
        own_registry.requests("GET", r"/blobs/sha256:", status=206, since=since) >= 1
    )  # resumed, not restarted


def test_a_pull_whose_registry_stays_down_fails_cleanly_and_a_rerun_completes(
    own_registry, tmp_path, cli, monkeypatch
):
    source, name = big_model(own_registry, tmp_path)
    root = tmp_path / "dest"
    monkeypatch.setenv("OLLAMA_IMG_MODELS", str(root))
    store = Store(root)
    watcher = KillWhenPartial(own_registry, store, 8 * 1024 * 1024)
    result = cli("pull", name)
    watcher.join()
    assert watcher.killed, "the registry was never seen mid-blob"
    assert result.code == 1 and result.out == ""
    error = the_error_line(result.err)
    assert own_registry.host in error and "run the pull again" in error
    assert not store.exists(name)
    assert_store_consistent(store)
    assert not [p for p in store.blobs_dir.iterdir() if p.name.startswith(".tmp-")]  # partial blob dropped
    fetched_first = len(list(store.blobs_dir.glob("sha256-*")))

    own_registry.start()
    done = pull_model(store, name)
    assert done.present == fetched_first and done.fetched == done.blobs - fetched_first
    assert store.manifest(name).digest == source.manifest(name).digest
    assert blob_files(store) == blob_files(source)


class KillWhenPartial(threading.Thread):
    """Watches the store from outside (as a crash would see it) and kills the registry once a blob being
    downloaded has `after` bytes: the CLI's pull sees its connections drop and its registry gone."""

    def __init__(self, registry, store: Store, after: int):
        super().__init__(daemon=True)
        self.registry, self.store, self.after = registry, store, after
        self.killed = False
        self.start()

    def run(self):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            partial = self.store.blobs_dir.glob(".tmp-*") if self.store.blobs_dir.is_dir() else ()
            for path in partial:
                try:
                    size = path.stat().st_size
                except FileNotFoundError:
                    continue
                if size >= self.after:
                    self.registry.kill()
                    self.killed = True
                    return
            time.sleep(0.002)


def test_a_blob_whose_bytes_do_not_match_its_digest_is_refused(own_registry, tmp_path, cli, monkeypatch):
    source = Store(tmp_path / "source")
    name = f"{own_registry.host}/team/damaged:v1"
    write_small_model(source, name, seed=11)
    push_model(source, name)
    layer = source.manifest(name).layer("transformer/t2.weight")
    data = bytearray(own_registry.blob_data(layer.digest).read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes: only the digest can tell
    own_registry.blob_data(layer.digest).write_bytes(bytes(data))

    root = tmp_path / "dest"
    monkeypatch.setenv("OLLAMA_IMG_MODELS", str(root))
    result = cli("pull", name)
    assert result.code == 1
    error = the_error_line(result.err)
    assert "does not match its digest" in error and layer.digest[:19] in error
    store = Store(root)
    assert not store.exists(name)
    assert not store.blob_path(layer.digest).exists()
    assert_store_consistent(store)
    with pytest.raises(UserError, match="does not match its digest"):
        pull_model(store, name)  # and again: nothing was kept that would make it pass
