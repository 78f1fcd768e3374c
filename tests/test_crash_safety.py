"""A `create` SIGKILLed at any moment, and creates and removals running at the same time.

The subprocesses are real `ollama-img` runs; tests/crash_harness.py kills (or pauses) them at a chosen
write, fsync, link or rename, so each state a crash can leave behind is reached on purpose.
"""

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ollama_img.store import Store, import_folder, inspect_folder
from tests.conftest import assert_store_consistent

ROOT = Path(__file__).resolve().parent.parent


def _spawn(
    store: Store, *args: str, point: str | None = None, control: Path | None = None
) -> subprocess.Popen:
    # this checkout's code (not whatever ollama_img is installed), and its tests package
    env = dict(
        os.environ,
        OLLAMA_IMG_MODELS=str(store.root),
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
    )
    if control is not None:
        control.mkdir(parents=True, exist_ok=True)
        env["HARNESS_DIR"] = str(control)
    command = [sys.executable, "-m", "tests.crash_harness", point, "--", *args] if point else [
        sys.executable, "-m", "ollama_img", *args
    ]  # fmt: skip
    return subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"exited early: {process.communicate()}"
        assert time.monotonic() < deadline, f"timed out waiting for {path}"
        time.sleep(0.01)


def _wait_until_it_opens(process: subprocess.Popen, path: Path, timeout: float = 30):
    """Wait until `process` has `path` open (Linux: /proc/PID/fd); elsewhere just give it a second."""
    fds = Path(f"/proc/{process.pid}/fd")
    if not fds.is_dir():
        time.sleep(1.0)
        return
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, f"exited early: {process.communicate()}"
        links = []
        for fd in fds.iterdir():
            with contextlib.suppress(OSError):  # closed meanwhile
                links.append(os.readlink(fd))
        if str(path) in links:
            return
        assert time.monotonic() < deadline, f"{process.args} never opened {path}"
        time.sleep(0.01)


def _new_blobs(stdout: str) -> int:
    return int(re.search(r"(\d+) new blobs", stdout).group(1))


@pytest.fixture(scope="module")
def reference_manifest(tiny_folder, tmp_path_factory) -> bytes:
    store = Store(tmp_path_factory.mktemp("reference"))
    return import_folder(store, "z", inspect_folder(tiny_folder)).manifest.raw


# The tiny folder makes 386 blobs: 386 blob fsyncs, then the blobs folder (387), then the manifest.
KILL_POINTS = [
    ("write:1", False),  # inside the very first blob
    ("write:200", False),  # inside a tensor blob, half written
    ("fsync:1", False),  # first blob complete but not named
    ("fsync:150", False),
    ("link:150", False),  # blob named, its temporary name not yet removed
    ("fsync:387", False),  # every blob in place, no manifest yet
    ("replace:1", False),  # the manifest written and synced, not yet renamed
    ("replaced:1", True),  # the manifest renamed
]


@pytest.mark.parametrize(("point", "manifest_expected"), KILL_POINTS)
def test_sigkill_then_rerun(store, tiny_folder, reference_manifest, point, manifest_expected, cli):
    process = _spawn(store, "create", "z", "-f", str(tiny_folder), point=point)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL

    assert_store_consistent(store)  # no partial blob under a blob name, no manifest missing a blob
    assert [str(n) for n in store.names()] == (["z:latest"] if manifest_expected else [])
    survivors = [p for p in store.blobs_dir.iterdir() if p.name.startswith("sha256-")]

    result = cli("create", "z", "-f", str(tiny_folder))
    assert result.code == 0, result.err
    assert re.search(rf"{386 - len(survivors)} new blobs, {len(survivors)} reused blobs", result.out)
    assert store.manifest("z").raw == reference_manifest
    assert_store_consistent(store)
    assert not list(store.root.rglob(".tmp-*")), "temporary files of the killed run were not swept"


def test_concurrent_creates_publish_each_blob_once(store, tiny_folder, tmp_path, reference_manifest):
    """Three creates (two of the same name) paused mid-import, then released together."""
    names = ["a", "b", "a"]
    controls = [tmp_path / f"control{i}" for i in range(3)]
    processes = [
        _spawn(store, "create", name, "-f", str(tiny_folder), point="fsync:40:pause", control=control)
        for name, control in zip(names, controls, strict=True)
    ]
    for process, control in zip(processes, controls, strict=True):
        _wait_for(control / "paused", process)
    for control in controls:
        (control / "resume").touch()
    outputs = [p.communicate(timeout=60) for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], outputs
    assert sum(_new_blobs(out) for out, _ in outputs) == 386  # every blob published by exactly one writer
    assert_store_consistent(store)
    assert store.manifest("a").raw == store.manifest("b").raw == reference_manifest
    assert not list(store.root.rglob(".tmp-*"))


def test_rm_waits_for_a_create_that_reuses_its_blobs(store, tiny_folder, tmp_path, cli):
    """Without the store lock, `rm old` would collect the blobs that `create new` is about to reference."""
    assert cli("create", "old", "-f", str(tiny_folder)).code == 0
    control = tmp_path / "control"
    # Every blob already exists, so the first fsync is of the blobs folder, just before the manifest.
    creating = _spawn(store, "create", "new", "-f", str(tiny_folder), point="fsync:1:pause", control=control)
    _wait_for(control / "paused", creating)
    removing = _spawn(store, "rm", "old")
    _wait_until_it_opens(removing, store.root / ".lock")  # rm is now at the lock (or past it)
    time.sleep(0.3)
    assert removing.poll() is None, "rm did not wait for the create in progress"
    assert store.exists("old")
    (control / "resume").touch()
    created, removed = creating.communicate(timeout=60), removing.communicate(timeout=60)
    assert (creating.returncode, removing.returncode) == (0, 0), (created, removed)
    assert "0 new blobs, 386 reused blobs" in created[0]
    assert removed[0].splitlines() == [
        "deleted 'old:latest'",
        "freed nothing: other models still use all of its blobs",
    ]
    assert [str(n) for n in store.names()] == ["new:latest"]
    assert_store_consistent(store)


def test_a_create_does_not_sweep_the_temporary_files_of_one_in_progress(store, tiny_folder, tmp_path, cli):
    control = tmp_path / "control"
    slow = _spawn(store, "create", "slow", "-f", str(tiny_folder), point="write:100:pause", control=control)
    _wait_for(control / "paused", slow)
    deadline = time.monotonic() + 30
    while len(partial := list(store.blobs_dir.glob(".tmp-*"))) != 1:  # sealed blobs still being published
        assert time.monotonic() < deadline, partial
        time.sleep(0.01)
    assert cli("create", "fast", "-f", str(tiny_folder)).code == 0
    assert partial[0].exists()
    (control / "resume").touch()
    out, err = slow.communicate(timeout=60)
    assert slow.returncode == 0, err
    assert_store_consistent(store)
    assert store.manifest("slow").digest == store.manifest("fast").digest
