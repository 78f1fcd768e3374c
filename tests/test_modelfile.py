"""The Modelfile parser: every instruction, quoting, comments, and each mistake with its line number."""

from pathlib import Path

import pytest

from ollama_img.errors import UserError
from ollama_img.modelfile import (
    PARAMETERS,
    check_parameters,
    parameters_text,
    parse_modelfile,
    read_modelfile,
    render_modelfile,
)
from ollama_img.models.interface import Capabilities, SizeLimits

FOLDER = Path("/models/here")


def parse(text: str):
    return parse_modelfile(text, FOLDER)


def fails(text: str, message: str):
    with pytest.raises(UserError) as caught:
        parse(text)
    assert str(caught.value) == message
    return caught.value


# -- instructions ----------------------------------------------------------------------------------


def test_every_instruction():
    m = parse(
        "FROM z-image\n"
        "ADAPTER ./style.safetensors 0.8\n"
        "ADAPTER /abs/detail.safetensors\n"
        "PARAMETER steps 12\n"
        "PARAMETER negative_prompt blurry, low quality\n"
        "LICENSE Apache-2.0\n"
    )
    assert (m.base, m.base_line, m.folder) == ("z-image", 1, FOLDER)
    assert [(a.path, a.scale, a.line) for a in m.adapters] == [
        (FOLDER / "style.safetensors", 0.8, 2),
        (Path("/abs/detail.safetensors"), 1.0, 3),  # the default scale; an absolute path stays
    ]
    assert m.params == {"steps": 12, "negative_prompt": "blurry, low quality"}
    assert [p.line for p in m.parameters] == [4, 5]
    assert m.licenses == ("Apache-2.0",)


def test_instruction_and_parameter_names_are_case_insensitive():
    m = parse("from z\nAdapter a.safetensors 2\nparameter STEPS 3\nLicense x\n")
    assert (m.base, m.adapters[0].scale, m.params, m.licenses) == ("z", 2.0, {"steps": 3}, ("x",))


@pytest.mark.parametrize(
    ("line", "value"),
    [
        ("steps 12", 12),
        ("guidance 3.5", 3.5),
        ("guidance 4", 4.0),
        ("width 768", 768),
        ("height 512", 512),
        ("negative_prompt 12", "12"),  # text stays text
        ('negative_prompt "fog, rain"', "fog, rain"),
        ("strength 0.45", 0.45),
        ("teacache 0.3", 0.3),
        ("teacache 0", 0.0),
        ("seed 42", 42),
        ("seed +7", 7),
        ("guidance 1e1", 10.0),
    ],
)
def test_each_parameter_is_read_as_its_option_reads_a_request(line, value):
    name = line.split()[0]
    (parameter,) = parse(f"FROM z\nPARAMETER {line}\n").parameters
    assert parameter.name == name and parameter.value == value and type(parameter.value) is type(value)


def test_the_parameters_are_the_per_request_options():
    assert set(PARAMETERS) == {
        "steps",
        "guidance",
        "width",
        "height",
        "negative_prompt",
        "strength",
        "teacache",
        "seed",
    }


def test_several_licenses_and_adapters_are_kept_in_order():
    m = parse("FROM z\nLICENSE one\nADAPTER b.st\nLICENSE two\nADAPTER a.st -0.5\n")
    assert m.licenses == ("one", "two")
    assert [(a.path.name, a.scale) for a in m.adapters] == [("b.st", 1.0), ("a.st", -0.5)]


def test_from_a_path_is_relative_to_the_modelfile():
    m = parse("FROM ../Z-Image-Turbo\n")
    assert m.base == "../Z-Image-Turbo" and m.base_path() == FOLDER / "../Z-Image-Turbo"
    assert parse('FROM "/my models/Z Image"\n').base == "/my models/Z Image"
    assert parse("FROM ./my folder\n").base == "./my folder"  # FROM takes the rest of its line


# -- comments, blanks, quoting ---------------------------------------------------------------------


def test_comments_and_blank_lines_are_skipped():
    m = parse(
        "# a comment\n\n   # an indented comment\n\t\nFROM z\n#PARAMETER steps 2\nPARAMETER steps 3\n  \n"
    )
    assert m.params == {"steps": 3} and m.parameters[0].line == 7


def test_a_hash_inside_a_value_is_part_of_it():
    m = parse("FROM z\nPARAMETER negative_prompt #1 blur\nLICENSE see #3\n")
    assert m.params["negative_prompt"] == "#1 blur" and m.licenses == ("see #3",)


def test_quoted_values_with_escapes():
    m = parse('FROM z\nPARAMETER negative_prompt "say \\"no\\" to \\\\ and\\nthat"\n')
    assert m.params["negative_prompt"] == 'say "no" to \\ and\nthat'


def test_a_quoted_path_may_hold_blanks():
    (adapter,) = parse('FROM z\nADAPTER "my loras/style one.safetensors" 0.7\n').adapters
    assert adapter.path == FOLDER / "my loras/style one.safetensors" and adapter.scale == 0.7


def test_triple_quoted_values_span_lines_and_keep_what_is_written():
    m = parse(
        'FROM z\nLICENSE """\nMIT License\n\n  "quoted" \\n stays\n"""\nPARAMETER negative_prompt """fog\nrain"""\n'
        "PARAMETER steps 5\n"
    )
    assert m.licenses == ('\nMIT License\n\n  "quoted" \\n stays\n',)
    assert m.params["negative_prompt"] == "fog\nrain"
    assert [p.line for p in m.parameters] == [7, 9]  # lines counted through the multi-line values


def test_windows_line_ends_and_a_byte_order_mark(tmp_path):
    path = tmp_path / "Modelfile"
    path.write_bytes('\ufeffFROM z\r\nPARAMETER steps 4\r\nLICENSE """a\r\nb"""\r\n'.encode())
    m = read_modelfile(path)
    assert (m.base, m.params, m.licenses, m.folder) == ("z", {"steps": 4}, ("a\nb",), tmp_path)


# -- mistakes, each with its line ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "FROM z\n\nPARAMETER stepz 3\n",
            'Modelfile line 3: unknown parameter "stepz" (did you mean steps?)',
        ),
        (
            "FROM z\nPARAMETER temperature 0.7\n",
            'Modelfile line 2: unknown parameter "temperature" (known: width, height, steps, guidance, '
            "negative_prompt, strength, teacache, seed)",
        ),
        (
            "FROM z\nFORM y\n",
            'Modelfile line 2: unknown instruction "FORM" (did you mean FROM?); a Modelfile for an image '
            "model takes FROM, ADAPTER, PARAMETER and LICENSE",
        ),
        (
            "# hi\nFROM z\nBOGUS\n",
            'Modelfile line 3: unknown instruction "BOGUS"; a Modelfile for an image model takes FROM, '
            "ADAPTER, PARAMETER and LICENSE",
        ),
        (
            'FROM z\nSYSTEM """You are\nhelpful"""\n',
            "Modelfile line 2: SYSTEM is an ollama instruction for language models; a Modelfile for an image "
            "model takes FROM, ADAPTER, PARAMETER and LICENSE",
        ),
        ("FROM z\nPARAMETER steps 0\n", 'Modelfile line 2: parameter "steps" must be at least 1, got 0'),
        ("FROM z\nPARAMETER steps 4.5\n", 'Modelfile line 2: parameter "steps" must be an integer, got 4.5'),
        (
            "FROM z\nPARAMETER steps nine\n",
            'Modelfile line 2: parameter "steps" must be an integer, got "nine"',
        ),
        (
            "FROM z\nPARAMETER guidance high\n",
            'Modelfile line 2: parameter "guidance" must be a number, got "high"',
        ),
        (
            "FROM z\nPARAMETER guidance -1\n",
            'Modelfile line 2: parameter "guidance" must be at least 0, got -1',
        ),
        (
            "FROM z\nPARAMETER guidance 1e999\n",
            'Modelfile line 2: parameter "guidance" must be a finite number, got Infinity',
        ),
        (
            "FROM z\nPARAMETER width 100\n",
            'Modelfile line 2: parameter "width" must be a multiple of 16, got 100',
        ),
        (
            "FROM z\nPARAMETER strength 1.5\n",
            'Modelfile line 2: parameter "strength" must be more than 0 and at most 1, got 1.5',
        ),
        ("FROM z\nPARAMETER seed -1\n", 'Modelfile line 2: parameter "seed" must be at least 0, got -1'),
        (
            "FROM z\nPARAMETER teacache -0.1\n",
            'Modelfile line 2: parameter "teacache" must be at least 0, got -0.1',
        ),
        ("FROM z\nPARAMETER steps\n", "Modelfile line 2: PARAMETER steps needs a value"),
        (
            "FROM z\nPARAMETER\n",
            "Modelfile line 2: PARAMETER needs a name and a value, e.g. PARAMETER steps 12",
        ),
        (
            "FROM z\nPARAMETER steps 3\nPARAMETER Steps 4\n",
            'Modelfile line 3: parameter "steps" is already set on line 2',
        ),
        ("FROM\n", "Modelfile line 1: FROM needs a value"),
        ('FROM ""\n', "Modelfile line 1: FROM needs a value: a model in the store or a model folder"),
        (
            "FROM a\n\nFROM b\n",
            "Modelfile line 3: a second FROM (the first is on line 1): a model has one base",
        ),
        ("FROM z\nADAPTER\n", "Modelfile line 2: ADAPTER needs a value"),
        (
            "FROM z\nADAPTER my style.safetensors\n",
            'Modelfile line 2: the adapter\'s scale must be a number, got "style.safetensors" (quote a path with '
            "blanks)",
        ),
        (
            "FROM z\nADAPTER a.st nan\n",
            'Modelfile line 2: the adapter\'s scale must be a number, got "nan" (quote a path with blanks)',
        ),
        (
            "FROM z\nADAPTER a.st 0.5 extra\n",
            'Modelfile line 2: unexpected "extra": ADAPTER takes a path and a scale (quote a path with blanks)',
        ),
        (
            'FROM z\nPARAMETER negative_prompt "fog\n',
            'Modelfile line 2: PARAMETER negative_prompt: unterminated " (close the quote on the same line, or use """)',
        ),
        (
            'FROM z\nLICENSE """MIT\nno end\n',
            'Modelfile line 2: LICENSE: unterminated """ (the value that starts here never ends)',
        ),
        (
            'FROM z\nPARAMETER negative_prompt "fog" rain\n',
            'Modelfile line 2: unexpected "rain": nothing may follow the quoted value of PARAMETER negative_prompt',
        ),
        (
            'FROM z\nLICENSE """a\nb""" c\n',
            'Modelfile line 2: unexpected "c": nothing may follow the closing """ of LICENSE on its line',
        ),
        (
            'FROM z\nPARAMETER negative_prompt "a\\tb"\n',
            'Modelfile line 2: PARAMETER negative_prompt: unknown escape "\\t" (use \\", \\\\ or \\n)',
        ),
        (
            "PARAMETER steps 4\n",
            "the Modelfile has no FROM line: say which model it builds on (FROM z-image, FROM ./folder)",
        ),
        ("", "the Modelfile has no FROM line: say which model it builds on (FROM z-image, FROM ./folder)"),
    ],
)
def test_each_mistake_names_its_line(text, message):
    fails(text, message)


def test_a_huge_number_is_not_echoed_whole():
    with pytest.raises(UserError) as caught:
        parse(f"FROM z\nPARAMETER steps {'9' * 500}\n")
    assert str(caught.value).startswith('Modelfile line 2: parameter "steps" must be at most 10000')
    assert len(str(caught.value)) < 120


def test_an_unreadable_or_binary_modelfile(tmp_path):
    with pytest.raises(UserError, match=r"cannot read the Modelfile .*nowhere: No such file"):
        read_modelfile(tmp_path / "nowhere")
    (tmp_path / "bin").write_bytes(b"FROM z\n\xff\xfe\x00")
    with pytest.raises(UserError, match=r"the Modelfile .*bin is not UTF-8 text"):
        read_modelfile(tmp_path / "bin")
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(UserError, match=r"^the Modelfile .*empty has no FROM line"):
        read_modelfile(tmp_path / "empty")


# -- the family's capabilities ---------------------------------------------------------------------

SIZES = SizeLimits(unit=16, max_width=2048, max_height=1024)
EVERYTHING = Capabilities(sizes=SIZES, guidance=True, negative_prompt=True, image_input=True, teacache=True)
PLAIN = Capabilities(sizes=SIZES, reference_images=4)  # no guidance, negative prompt, start image, TeaCache


def test_parameters_a_family_takes_pass():
    m = parse(
        "FROM z\nPARAMETER guidance 2\nPARAMETER negative_prompt x\nPARAMETER strength 0.5\n"
        "PARAMETER teacache 0.2\nPARAMETER width 2048\nPARAMETER height 1024\n"
    )
    check_parameters(m, EVERYTHING, "z-image:latest")  # no error


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("guidance 2", 'Modelfile line 3: klein:latest does not take parameter "guidance"'),
        ("negative_prompt fog", 'Modelfile line 3: klein:latest does not take parameter "negative_prompt"'),
        ("strength 0.5", 'Modelfile line 3: klein:latest does not take parameter "strength"'),
        ("teacache 0.3", 'Modelfile line 3: klein:latest does not take parameter "teacache"'),
        ("width 4096", "Modelfile line 3: width must be at most 2048 for this model, got 4096"),
        ("height 2048", "Modelfile line 3: height must be at most 1024 for this model, got 2048"),
    ],
)
def test_a_parameter_the_family_lacks_names_its_line(line, message):
    m = parse(f"FROM klein\nPARAMETER steps 4\nPARAMETER {line}\n")
    with pytest.raises(UserError) as caught:
        check_parameters(m, PLAIN, "klein:latest")
    assert str(caught.value) == message


def test_steps_seed_and_size_suit_every_family():
    check_parameters(parse("FROM k\nPARAMETER steps 4\nPARAMETER seed 1\nPARAMETER width 512\n"), PLAIN, "k")


# -- writing a Modelfile that reads back ----------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "plain",
        "with blanks and, commas",
        ' "leading quote',
        'ends with a quote"',
        'inner """ triple',
        "back\\slash",
        "line\nbreak",
        "",
        "  padded  ",
        "#hash",
    ],
)
def test_rendered_values_read_back_the_same(text):
    params = {"steps": 7, "guidance": 2.5, "negative_prompt": text, "seed": 3, "teacache": 0.0}
    rendered = render_modelfile(
        f"/my models/{text}" if text else "z-image:latest",
        [(f"/blobs/{text}.st", 0.25), ("/b/x.st", -1.0)],
        params,
        [text, f"MIT\n{text}"],
        comment="made by a test\nsecond line",
    )
    m = parse(rendered)
    assert m.base == (f"/my models/{text}" if text else "z-image:latest")
    assert [(str(a.path), a.scale) for a in m.adapters] == [(f"/blobs/{text}.st", 0.25), ("/b/x.st", -1.0)]
    assert m.params == params
    assert m.licenses == (text, f"MIT\n{text}")
    assert rendered.startswith("# made by a test\n# second line\nFROM ")


def test_parameters_text_is_ollamas_name_value_lines_in_table_order():
    text = parameters_text({"seed": 1, "negative_prompt": 'a "b"', "steps": 4, "guidance": 3.0})
    assert text == 'steps 4\nguidance 3.0\nnegative_prompt "a \\"b\\""\nseed 1'
