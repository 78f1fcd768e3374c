"""Request checks shared by both APIs: every rejection names the field and says what is allowed."""

import pytest

from ollama_img.engine.params import generate_params, model_name, parse_json_object, parse_size
from ollama_img.errors import UserError
from ollama_img.options import MAX_IMAGES, MAX_STEPS


def params(**body):
    return generate_params(body, "z-image:latest", body.pop("prompt", "a cat"))


def test_a_full_request():
    p = params(
        width=512, height=768, steps=4, guidance=1.5, negative_prompt="fog", seed=7, n=3, keep_alive="1m"
    )
    assert (p.width, p.height, p.steps, p.guidance, p.negative_prompt, p.seed, p.n, p.keep_alive) == (
        512,
        768,
        4,
        1.5,
        "fog",
        7,
        3,
        60,
    )


def test_teacache_is_off_unless_asked_for():
    assert params().teacache is None
    assert params(teacache=0.3).teacache == 0.3


def test_defaults_are_left_to_the_model():
    p = params()
    assert (p.width, p.height, p.steps, p.guidance, p.seed, p.n, p.keep_alive) == (None,) * 5 + (1, None)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"width": 100}, "'width' must be a multiple of 16, got 100"),
        ({"height": 0}, "'height' must be at least 16"),
        ({"steps": -3}, "'steps' must be at least 1, got -3"),
        ({"steps": 0}, "'steps' must be at least 1"),
        ({"steps": "nine"}, "'steps' must be an integer"),
        ({"steps": True}, "'steps' must be an integer"),
        ({"seed": -1}, "'seed' must be at least 0"),
        ({"n": MAX_IMAGES + 1}, f"'n' must be at most {MAX_IMAGES}"),
        ({"guidance": -1}, "'guidance' must be at least 0"),
        ({"guidance": "high"}, "'guidance' must be a number"),
        ({"negative_prompt": 3}, "'negative_prompt' must be a string"),
        ({"keep_alive": "soon"}, "invalid 'keep_alive' 'soon'"),
        ({"teacache": -0.1}, "'teacache' must be at least 0"),
        ({"teacache": "yes"}, "'teacache' must be a number"),
        ({"prompt": "   "}, "empty prompt"),
        ({"guidance": float("inf")}, "'guidance' must be a finite number, got Infinity"),
        ({"guidance": float("-inf")}, "'guidance' must be a finite number, got -Infinity"),
        ({"guidance": float("nan")}, "'guidance' must be a finite number, got NaN"),
        ({"teacache": float("inf")}, "'teacache' must be a finite number"),
        ({"guidance": 10**400}, "'guidance' must be a finite number, got 1000"),
        ({"teacache": 10**400}, "'teacache' must be a finite number"),
        ({"keep_alive": 10**400}, "invalid 'keep_alive'"),
        ({"keep_alive": float("inf")}, "invalid 'keep_alive'"),
        ({"steps": float("inf")}, "'steps' must be an integer, got Infinity"),
        ({"steps": 10**400}, "'steps' must be at most 10000, got 1000"),
        ({"steps": MAX_STEPS + 1}, f"'steps' must be at most {MAX_STEPS}"),
    ],
)
def test_bad_fields_are_named(body, message):
    with pytest.raises(UserError, match=message):
        params(**body)


def test_huge_values_are_not_echoed_whole():
    with pytest.raises(UserError) as caught:
        params(guidance=10**400)
    assert len(str(caught.value)) < 100


def test_integral_floats_are_integers():
    assert params(steps=4.0).steps == 4
    with pytest.raises(UserError, match="'steps' must be an integer"):
        params(steps=4.5)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "empty request body"),
        (b"{nope", "invalid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"\xff", "invalid JSON"),
        (b'{"seed": ' + b"9" * 5000 + b"}", "invalid JSON"),  # beyond Python's int-from-text limit
    ],
)
def test_bodies_that_are_not_json_objects(raw, message):
    with pytest.raises(UserError, match=message):
        parse_json_object(raw)


def test_model_names_are_canonical_and_required():
    assert model_name({"model": "Z-Image"}) == "z-image:latest"
    with pytest.raises(UserError, match="missing 'model'"):
        model_name({})
    with pytest.raises(UserError, match="invalid model name"):
        model_name({"model": "a/b/c/d"})


def test_sizes_are_width_by_height():
    assert parse_size("1024x768") == (1024, 768)
    assert parse_size(" 64 X 32 ") == (64, 32)
    for bad in ("1024", "axb", "1000x1000", "16x0"):
        with pytest.raises(UserError):
            parse_size(bad)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run", "m", "--teacache"], ["run", "m", "--teacache", "0.4"]),
        (["run", "m", "--teacache", "0.25", "a cat"], ["run", "m", "--teacache", "0.25", "a cat"]),
        (["run", "m", "--teacache", "a cat"], ["run", "m", "--teacache", "0.4", "a cat"]),
        (["run", "m", "--teacache", "--seed", "3"], ["run", "m", "--teacache", "0.4", "--seed", "3"]),
        (["run", "m", "--", "--teacache"], ["run", "m", "--", "--teacache"]),
    ],
)
def test_teacache_value_is_optional_on_the_command_line(argv, expected):
    from ollama_img.cli import run_command  # noqa: F401  (registers --teacache's default)
    from ollama_img.cli.app import fill_optional_values

    assert fill_optional_values(argv) == expected


def test_every_option_is_one_flag_of_run_and_one_field_of_a_request():
    """The table is the one declaration: run's flags (names, help) and the request's fields follow it."""
    import dataclasses

    import typer.main

    from ollama_img.cli.app import app
    from ollama_img.cli.run_command import run  # noqa: F401  (registers the command)
    from ollama_img.engine.params import GenerateParams
    from ollama_img.options import OPTIONS

    command = typer.main.get_command(app).commands["run"]
    flags = {name: param for param in command.params for name in param.opts}
    fields = {f.name for f in dataclasses.fields(GenerateParams)}
    for option in OPTIONS:
        param = flags[option.flag]
        assert param.name == option.param and param.help == option.help
        assert option.short is None or flags[option.short] is param
        assert option.field in fields
