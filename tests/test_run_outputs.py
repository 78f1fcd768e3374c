"""Where `run` saves, what it refuses before generating, and when it opens a viewer."""

import io
import os
import re
import socket
import stat
import threading

import pytest

from ollama_img import viewer
from ollama_img.cli import outputs
from ollama_img.cli.progress import PlainProgress, describe
from ollama_img.cli.run_command import RunOptions, build_options, should_open
from ollama_img.errors import UserError


def test_default_names_carry_model_time_and_seed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths = outputs.save([b"one", b"two"], [41, 42], "library/z-image:turbo", None)
    assert [p.read_bytes() for p in paths] == [b"one", b"two"]
    assert all(p.parent == tmp_path and p.is_absolute() for p in paths)
    assert re.fullmatch(r"z-image-\d{8}-\d{6}-41\.png", paths[0].name)
    assert paths[1].name.endswith("-42.png")


def test_a_default_name_never_replaces_a_file(tmp_path):
    first = outputs.write_new(tmp_path / "x.png", b"first")
    second = outputs.write_new(tmp_path / "x.png", b"second")
    assert first.name == "x.png" and second.name == "x-1.png"
    assert first.read_bytes() == b"first" and second.read_bytes() == b"second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x-1.png", "x.png"]  # no temporary left behind


def test_a_named_file_is_replaced_whole(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"old")
    assert outputs.save([b"new"], [1], "z-image", str(target)) == [target]
    assert target.read_bytes() == b"new"
    many = outputs.save([b"a", b"b"], [1, 2], "z-image", str(tmp_path / "many.png"))
    assert [p.name for p in many] == ["many-1.png", "many-2.png"]


def test_a_folder_gets_default_names(tmp_path):
    folder = tmp_path / "new-folder"
    (path,) = outputs.save([b"png"], [7], "z-image", str(folder) + os.sep)
    assert path.parent == folder and path.name.endswith("-7.png")
    assert (oct(path.stat().st_mode & 0o777), path.read_bytes()) == (oct(0o666 & ~_umask()), b"png")


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_impossible_outputs_fail_before_generating(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        outputs.check_output(str(tmp_path / "missing" / "x.png"), 1)
    with pytest.raises(UserError, match="-o - writes one image"):
        outputs.check_output("-", 2)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(UserError, match="file is not a folder"):
        outputs.check_output(str(tmp_path / "file" / "x.png"), 1)
    with pytest.raises(UserError, match="file is not a folder"):
        outputs.check_output(str(tmp_path / "file" / "sub") + os.sep, 1)
    outputs.check_output(str(tmp_path / "fine.png"), 1)
    outputs.check_output(str(tmp_path / "new" / "deeper") + os.sep, 2)  # created when saving


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_folder_fails_before_generating(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    with pytest.raises(UserError, match="folder .*locked is not writable"):
        outputs.check_output(str(locked / "x.png"), 1)
    with pytest.raises(UserError, match="is not writable"):
        outputs.check_output(str(locked / "sub") + os.sep, 1)
    monkeypatch.chdir(locked)
    with pytest.raises(UserError, match="is not writable"):
        outputs.check_output(None, 1)


def test_a_symlink_is_written_through(tmp_path):
    target = tmp_path / "real.png"
    target.write_bytes(b"old")
    link = tmp_path / "link.png"
    link.symlink_to(target)
    outputs.check_output(str(link), 1)
    assert outputs.save([b"new"], [1], "z-image", str(link)) == [link]
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() == b"new"
    dangling = tmp_path / "dangling.png"
    dangling.symlink_to(tmp_path / "made.png")
    outputs.save([b"made"], [1], "z-image", str(dangling))
    assert dangling.is_symlink() and (tmp_path / "made.png").read_bytes() == b"made"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling.png", "link.png", "made.png", "real.png"]


def test_a_fifo_is_written_into_not_replaced(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = tmp_path / "to-pipe.png"
    link.symlink_to(fifo)
    received = []
    for output in (fifo, link):
        reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
        reader.start()
        outputs.check_output(str(output), 1)
        assert outputs.save([b"png bytes"], [1], "z-image", str(output)) == [output]
        reader.join(timeout=10)
        assert stat.S_ISFIFO(fifo.stat().st_mode) and link.is_symlink()
    assert received == [b"png bytes", b"png bytes"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe", "to-pipe.png"]


def test_a_failed_save_is_one_error_and_leaves_nothing(tmp_path):
    """A path that cannot take a file (here a Unix socket: opening it fails) is a UserError, not a traceback."""
    sock_path = tmp_path / "s"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock_path))
    try:
        with pytest.raises(UserError, match=f"cannot save to {sock_path}: No such device or address"):
            outputs.save([b"png"], [1], "z-image", str(sock_path))
        saved_first = tmp_path / "out"
        saved_first.mkdir()
        (saved_first / "many-2.png").mkdir()  # the second of two images cannot be written
        with pytest.raises(UserError, match=r"many.png: .*\(saved: .*many-1.png\)"):
            outputs.save([b"a", b"b"], [1, 2], "z-image", str(saved_first / "many.png"))
        assert sorted(p.name for p in saved_first.iterdir()) == ["many-1.png", "many-2.png"]
    finally:
        server.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "s"]


def options(**kw):
    return build_options("z-image", **kw)


def test_a_folder_instead_of_a_name_says_to_import_it(tmp_path):
    with pytest.raises(UserError, match="import it first: ollama-img create NAME -f"):
        build_options(str(tmp_path))


def test_flags_are_checked_up_front():
    assert (options(size="64x32").fields["width"], options(size="64x32").fields["height"]) == (64, 32)
    with pytest.raises(UserError, match="not both"):
        options(size="64x64", width=64)
    with pytest.raises(UserError, match="only format is json"):
        options(format_="yaml")
    with pytest.raises(UserError, match="invalid --keepalive 'later'"):
        options(keepalive="later")
    with pytest.raises(UserError, match="both write to stdout"):
        options(output="-", format_="json")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"steps": 0}, "--steps must be at least 1, got 0"),
        ({"width": 17}, "--width must be a multiple of 16, got 17"),
        ({"height": 8}, "--height must be at least 16, got 8"),
        ({"seed": -1}, "--seed must be at least 0, got -1"),
        ({"seed": 2**63 - 1, "count": 2}, "--seed must be at most"),
        ({"guidance": -1.0}, "--guidance must be at least 0, got -1.0"),
        ({"guidance": float("inf")}, "--guidance must be a finite number, got Infinity"),
        ({"guidance": float("nan")}, "--guidance must be a finite number, got NaN"),
        ({"teacache": float("inf")}, "--teacache must be a finite number, got Infinity"),
        ({"teacache": -0.1}, "--teacache must be at least 0, got -0.1"),
        ({"keepalive": "1" + "0" * 400}, "invalid --keepalive '1000"),
    ],
)
def test_bad_values_name_the_flag(flags, message):
    with pytest.raises(UserError) as caught:
        options(**flags)
    assert str(caught.value).startswith(message)


def test_the_request_carries_only_what_was_asked():
    opts = options(size="64x32", steps=3, seed=5, negative="fog", count=2, keepalive="0")
    assert opts.request("a cat") == {
        "model": "z-image:latest",
        "prompt": "a cat",
        "width": 64,
        "height": 32,
        "steps": 3,
        "seed": 5,
        "negative_prompt": "fog",
        "n": 2,
        "keep_alive": "0",
        "raw_images": True,  # the PNGs as bytes after the final line (engine.raw_images)
    }
    assert options().request(None) == {"model": "z-image:latest"}  # load only


@pytest.fixture
def display(monkeypatch):
    """The viewer boundary: pretend there is (or is not) a display, without starting any program."""
    monkeypatch.delenv(viewer.NOOPEN_ENV, raising=False)
    state = {"display": True}
    monkeypatch.setattr(viewer, "has_display", lambda: state["display"])
    return state


def test_the_viewer_opens_only_for_a_person_with_a_display(display, monkeypatch):
    assert should_open(RunOptions(model="m"), stdout_is_tty=True)
    assert not should_open(RunOptions(model="m"), stdout_is_tty=False)
    assert not should_open(RunOptions(model="m", no_open=True), stdout_is_tty=True)
    assert not should_open(RunOptions(model="m", json=True), stdout_is_tty=True)
    assert not should_open(RunOptions(model="m", output="-"), stdout_is_tty=True)
    display["display"] = False
    assert not should_open(RunOptions(model="m"), stdout_is_tty=True)
    display["display"] = True
    monkeypatch.setenv(viewer.NOOPEN_ENV, "1")
    assert not should_open(RunOptions(model="m"), stdout_is_tty=True)
    monkeypatch.setenv(viewer.NOOPEN_ENV, "0")
    assert should_open(RunOptions(model="m"), stdout_is_tty=True)


def test_no_display_means_no_viewer_on_linux(monkeypatch):
    monkeypatch.setattr(viewer.sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert not viewer.has_display()
    assert viewer.open_image("/nonexistent.png") is False


def test_plain_progress_prints_each_change_once():
    out = io.StringIO()
    progress = PlainProgress(out)
    for event in [
        {"status": "queued", "queue_position": 2},
        {"status": "queued", "queue_position": 2},
        {"status": "queued", "queue_position": 1},
        {"status": "loading", "model": "z-image:latest"},
        {"status": "generating", "completed": 1, "total": 2},
        {"status": "generating", "completed": 2, "total": 2},
    ]:
        progress.update(event)
    assert out.getvalue().splitlines() == [
        "Waiting: position 2 in the queue",
        "Waiting: position 1 in the queue",
        "Loading z-image:latest",
        "Generating: step 1/2",
        "Generating: step 2/2",
    ]
    assert describe({"done": True}) is None
