"""Where `run` saves, what it refuses before generating, and when it opens a viewer."""

import io
import os
import re

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
    outputs.check_output(str(tmp_path / "fine.png"), 1)


def options(**kw):
    base = dict(
        model="z-image",
        width=None,
        height=None,
        size=None,
        steps=None,
        seed=None,
        guidance=None,
        negative=None,
        output=None,
        count=1,
        no_open=False,
        keepalive=None,
        format_=None,
    )
    return build_options(**{**base, **kw})


def test_a_folder_instead_of_a_name_says_to_import_it(tmp_path):
    with pytest.raises(UserError, match="import it first: ollama-img create NAME -f"):
        options(model=str(tmp_path))


def test_flags_are_checked_up_front():
    assert (options(size="64x32").width, options(size="64x32").height) == (64, 32)
    with pytest.raises(UserError, match="not both"):
        options(size="64x64", width=64)
    with pytest.raises(UserError, match="only format is json"):
        options(format_="yaml")
    with pytest.raises(UserError, match="keep_alive"):
        options(keepalive="later")
    with pytest.raises(UserError, match="both write to stdout"):
        options(output="-", format_="json")


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
