import math

import pytest

from ollama_img.errors import UserError
from ollama_img.keepalive import FOREVER, default_keepalive, parse_keepalive


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("5m", 300),
        ("10s", 10),
        ("1h", 3600),
        ("1h30m", 5400),
        ("1.5h", 5400),
        ("250ms", 0.25),
        ("300", 300),
        (300, 300),
        (2.5, 2.5),
        ("0", 0),
        (0, 0),
        (" 5m ", 300),
    ],
)
def test_durations_as_ollama_spells_them(value, seconds):
    assert parse_keepalive(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["-1", -1, "-5m", -0.5])
def test_negative_means_forever(value):
    assert parse_keepalive(value) == FOREVER
    assert math.isinf(parse_keepalive(value))


@pytest.mark.parametrize(
    "value",
    [
        "",
        "5 minutes",
        "m5",
        "5d",
        "abc",
        None,
        True,
        [1],
        "1h-5m",
        "inf",
        float("inf"),
        float("-inf"),
        float("nan"),
        10**400,
        -(10**400),
        "1" + "0" * 400,
        "9" * 400 + "h",
    ],
)
def test_nonsense_is_a_user_error_naming_the_value(value):
    with pytest.raises(UserError, match="keep_alive"):
        parse_keepalive(value)


def test_default_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("OLLAMA_IMG_KEEP_ALIVE", raising=False)
    assert default_keepalive() == 300
    monkeypatch.setenv("OLLAMA_IMG_KEEP_ALIVE", "10m")
    assert default_keepalive() == 600
    monkeypatch.setenv("OLLAMA_IMG_KEEP_ALIVE", "soon")
    with pytest.raises(UserError, match="OLLAMA_IMG_KEEP_ALIVE"):
        default_keepalive()
