"""Background publishing of blobs: bounded, ordered, and a failure (a full disk) loses nothing."""

import errno
import os
import threading

import pytest

from ollama_img.errors import UserError
from ollama_img.store.blobs import BlobWriter, blob_file_name
from ollama_img.store.publisher import BlobPublisher
from tests.conftest import snapshot


def _sealed(directory, data: bytes) -> BlobWriter:
    writer = BlobWriter(directory)
    writer.write(data)
    writer.seal()
    return writer


def test_publishes_every_blob_and_reports_new_and_reused(tmp_path):
    with BlobPublisher(max_pending_blobs=1) as publisher:
        for data in (b"one", b"two", b"one"):
            publisher.submit(_sealed(tmp_path, data))
        results = publisher.drain()
    assert [r.new for r in results] == [True, True, False]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({blob_file_name(r.digest) for r in results})


def test_submit_waits_while_too_much_is_pending(tmp_path, monkeypatch):
    release = threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd):
        release.wait(10)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    with BlobPublisher(max_pending_bytes=10) as publisher:
        publisher.submit(_sealed(tmp_path, b"12345678"))  # 8 bytes pending: room for nothing more
        third = _sealed(tmp_path, b"abcdefgh")
        submitted = threading.Event()
        thread = threading.Thread(target=lambda: (publisher.submit(third), submitted.set()))
        thread.start()
        assert not submitted.wait(0.3), "submit did not wait for room"
        release.set()
        assert submitted.wait(10)
        thread.join()
        assert len(publisher.drain()) == 2


def test_a_full_disk_is_one_clear_error_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with BlobPublisher() as publisher:
        publisher.submit(_sealed(tmp_path, b"first"))
        with pytest.raises(UserError, match="no space left"):
            for i in range(50):  # a later submit or the drain reports the failure
                publisher.submit(_sealed(tmp_path, b"more %d" % i))
            publisher.drain()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("variant", ["new blobs", "every blob reused"])
def test_create_on_a_full_disk_changes_nothing(
    store, cli, tiny_folder, tiny_folder_f32, monkeypatch, variant
):
    """New blobs fail in the publisher; with every blob reused, the flush before the manifest fails."""
    assert cli("create", "before", "-f", str(tiny_folder)).code == 0
    before = snapshot(store.root)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    folder = tiny_folder_f32 if variant == "new blobs" else tiny_folder
    result = cli("create", "after", "-f", str(folder))
    monkeypatch.undo()
    assert result.code == 1
    assert result.err.splitlines()[-1].startswith(
        "Error: no space left on the device holding the model store"
    )
    assert "Traceback" not in result.err
    assert snapshot(store.root) == before


def test_a_store_path_that_is_a_file(tmp_path, cli, tiny_folder, monkeypatch):
    (tmp_path / "models").write_text("not a folder")
    monkeypatch.setenv("OLLAMA_IMG_MODELS", str(tmp_path / "models"))
    result = cli("create", "x", "-f", str(tiny_folder))
    assert result.code == 1
    expected = f"Error: cannot write to the model store ({tmp_path / 'models'}): File exists"
    assert result.err.splitlines()[-1] == expected
    assert (tmp_path / "models").read_text() == "not a folder"
