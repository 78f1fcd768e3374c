"""Modelfiles, as ollama writes them: a model's weights plus LoRA adapters, default options and a license.

    # a style and a recipe for z-image
    FROM z-image
    ADAPTER ./style.safetensors 0.8
    PARAMETER steps 12
    PARAMETER negative_prompt "blurry, low quality"
    LICENSE \"\"\"
    multi-line text
    \"\"\"

FROM is a model in the store or a model folder (a relative path starts at the Modelfile's folder);
ADAPTER a LoRA adapter's safetensors file and its scale (default 1.0), repeatable; PARAMETER a default
for one option of a request; LICENSE the model's license text (repeatable).

One instruction a line; instruction names are case-insensitive. A value is the rest of the line, or a
quoted string ("..." on one line, with \\" \\\\ and \\n escapes), or a \"\"\"...\"\"\" string that may span
lines (taken as written). ADAPTER takes a path and a scale, so a path with blanks is quoted. A `#` only
starts a comment at the start of a line. FROM names a model folder when that path exists, and a model in the
store otherwise; `FROM sha256:<digest>` names the weights of the stored model whose manifest has that
digest (what `show --modelfile` writes when no other name reproduces the model).

The parameters are options of a generation request (`ollama_img.options`), checked as a request checks
them; which ones a model takes is its family's (`check_parameters`). Every mistake is a UserError naming
the line: `Modelfile line 3: unknown parameter "stepz"`.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ollama_img.errors import UserError
from ollama_img.options import GUIDANCE, HEIGHT, NEGATIVE_PROMPT, SEED, STEPS, STRENGTH, TEACACHE, WIDTH

if TYPE_CHECKING:
    from ollama_img.models.interface import Capabilities

FILE_NAME = "Modelfile"  # what `create -f FOLDER` looks for in a folder
INSTRUCTIONS = ("FROM", "ADAPTER", "PARAMETER", "LICENSE")
LANGUAGE_ONLY = ("TEMPLATE", "SYSTEM", "MESSAGE", "REQUIRES")  # ollama's, for language models
# The options a Modelfile may set, as the API names them; the order `show --modelfile` lists them in.
PARAMETERS = {o.field: o for o in (WIDTH, HEIGHT, STEPS, GUIDANCE, NEGATIVE_PROMPT, STRENGTH, TEACACHE, SEED)}
TEXT_PARAMETERS = {NEGATIVE_PROMPT.field}  # the rest are numbers
DEFAULT_SCALE = 1.0

_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n"}


@dataclass(frozen=True)
class AdapterLine:
    path: Path  # as written, relative paths made relative to the Modelfile's folder
    scale: float
    line: int


@dataclass(frozen=True)
class ParameterLine:
    name: str  # an option's field: "steps", "negative_prompt"
    value: object  # checked as a request's value is
    line: int


@dataclass(frozen=True)
class Modelfile:
    base: str  # FROM, as written
    base_line: int
    folder: Path  # the Modelfile's folder: where relative paths start
    adapters: tuple[AdapterLine, ...] = ()
    parameters: tuple[ParameterLine, ...] = ()
    licenses: tuple[str, ...] = ()

    @property
    def params(self) -> dict[str, object]:
        return {p.name: p.value for p in self.parameters}

    def base_path(self) -> Path:
        """FROM read as a path (relative to the Modelfile's folder)."""
        return self.folder / Path(self.base).expanduser()


def at_line(line: int, message: str) -> UserError:
    return UserError(f"Modelfile line {line}: {message}")


def read_modelfile(path: Path | str) -> Modelfile:
    """Parse the Modelfile at `path` (a UserError when it cannot be read or has a mistake)."""
    path = Path(path).expanduser()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read the Modelfile {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"the Modelfile {path} is not UTF-8 text") from None
    return parse_modelfile(text, path.parent.absolute(), where=str(path))


def parse_modelfile(text: str, folder: Path | str = ".", where: str | None = None) -> Modelfile:
    """Parse Modelfile text; `folder` is where relative paths start, `where` names it in messages."""
    scanner = _Scanner(text)
    base: tuple[str, int] | None = None
    adapters: list[AdapterLine] = []
    parameters: dict[str, ParameterLine] = {}
    licenses: list[str] = []
    folder = Path(folder)
    while scanner.next_instruction():
        line = scanner.line
        word = scanner.word()
        instruction = word.upper()
        if instruction == "FROM":
            value = scanner.value(line, rest_of_line=True, what="FROM")
            if not value.strip():
                raise at_line(line, "FROM needs a value: a model in the store or a model folder")
            if base is not None:
                raise at_line(line, f"a second FROM (the first is on line {base[1]}): a model has one base")
            base = (value, line)
        elif instruction == "ADAPTER":
            path = scanner.value(line, rest_of_line=False, what="ADAPTER")
            scale = _scale(scanner.optional_word(), line)
            scanner.end_of_line(line, "ADAPTER takes a path and a scale (quote a path with blanks)")
            adapters.append(AdapterLine(folder / Path(path).expanduser(), scale, line))
        elif instruction == "PARAMETER":
            name = scanner.optional_word()
            if name is None:
                raise at_line(line, "PARAMETER needs a name and a value, e.g. PARAMETER steps 12")
            name = name.lower()
            option = PARAMETERS.get(name)
            if option is None:
                raise at_line(line, f"unknown parameter {_quoted(name)}{_known_parameters(name)}")
            if name in parameters:
                raise at_line(
                    line, f"parameter {_quoted(name)} is already set on line {parameters[name].line}"
                )
            value = scanner.value(line, rest_of_line=True, what=f"PARAMETER {name}")
            parameters[name] = ParameterLine(name, _parameter_value(name, value, line), line)
        elif instruction == "LICENSE":
            licenses.append(scanner.value(line, rest_of_line=True, what="LICENSE"))
        elif instruction in LANGUAGE_ONLY:
            raise at_line(
                line, f"{instruction} is an ollama instruction for language models; {_instructions()}"
            )
        else:
            raise at_line(
                line, f"unknown instruction {_quoted(word)}{_did_you_mean(instruction)}; {_instructions()}"
            )
    if base is None:
        named = f"the Modelfile {where}" if where else "the Modelfile"
        raise UserError(
            f"{named} has no FROM line: say which model it builds on (FROM z-image, FROM ./folder)"
        )
    return Modelfile(base[0], base[1], folder, tuple(adapters), tuple(parameters.values()), tuple(licenses))


def check_parameters(modelfile: Modelfile, capabilities: Capabilities, model: str) -> None:
    """A UserError naming the line of the first parameter the model (FROM) cannot take: an option its
    family lacks, or a size beyond its unit and limits."""
    for parameter in modelfile.parameters:
        option = PARAMETERS[parameter.name]
        if option.capability and not getattr(capabilities, option.capability):
            raise at_line(parameter.line, f"{model} does not take parameter {_quoted(parameter.name)}")
        if option in (WIDTH, HEIGHT):
            try:
                capabilities.sizes.check(parameter.name, parameter.value)
            except ValueError as exc:
                raise at_line(parameter.line, str(exc)) from None


# -- writing one ---------------------------------------------------------------------------------


def render_modelfile(
    base: str,
    adapters: list[tuple[str, float]],
    params: dict[str, object],
    licenses: list[str],
    comment: str | None = None,
) -> str:
    """Modelfile text that `parse_modelfile` reads back as these values (what `show --modelfile` prints)."""
    lines = [f"# {line}" for line in (comment or "").splitlines()]
    lines.append(f"FROM {_path_text(base)}")
    lines += [f"ADAPTER {_path_text(path)} {scale!r}" for path, scale in adapters]
    for name in sorted(
        params, key=lambda n: list(PARAMETERS).index(n) if n in PARAMETERS else len(PARAMETERS)
    ):
        value = params[name]
        shown = _quote(value) if isinstance(value, str) else repr(value)
        lines.append(f"PARAMETER {name} {shown}")
    for text in licenses:
        triple = '"""' not in text and not text.endswith('"')  # else the closing quotes would be misread
        lines.append(f'LICENSE """{text}"""' if triple else f"LICENSE {_quote(text)}")
    return "\n".join(lines) + "\n"


def parameters_text(params: dict[str, object]) -> str:
    """The PARAMETER values as ollama's /api/show `parameters` lists them: `name value` a line, in the
    order of the options table."""
    order = list(PARAMETERS)
    names = sorted(params, key=lambda n: order.index(n) if n in order else len(order))
    return "\n".join(f"{name} {_value_text(params[name])}" for name in names)


def _value_text(value: object) -> str:
    return _quote(value) if isinstance(value, str) else repr(value)


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _path_text(text: str) -> str:
    """A path or name as written, quoted when a bare word would not read back the same."""
    if not text or text.startswith('"') or any(c.isspace() for c in text) or "\\" in text:
        return _quote(text)
    return text


# -- reading one -----------------------------------------------------------------------------------


def _scale(word: str | None, line: int) -> float:
    if word is None:
        return DEFAULT_SCALE
    scale = float(word) if _NUMBER.fullmatch(word) else math.nan
    if not math.isfinite(scale):  # not a number, or one beyond any float (1e999)
        raise at_line(
            line, f"the adapter's scale must be a number, got {_quoted(word)} (quote a path with blanks)"
        )
    return scale


def _parameter_value(name: str, text: str, line: int) -> object:
    """The value checked by its option, as a request's would be: numbers for the numeric options."""
    option = PARAMETERS[name]
    value: object = text
    if name not in TEXT_PARAMETERS and _NUMBER.fullmatch(text):
        value = int(text) if _INTEGER.fullmatch(text) else float(text)
    try:
        return option.read(value, f"parameter {_quoted(name)}")
    except UserError as exc:
        raise at_line(line, str(exc)) from None


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _instructions() -> str:
    return f"a Modelfile for an image model takes {', '.join(INSTRUCTIONS[:-1])} and {INSTRUCTIONS[-1]}"


def _did_you_mean(instruction: str) -> str:
    close = difflib.get_close_matches(instruction, INSTRUCTIONS, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _known_parameters(name: str) -> str:
    close = difflib.get_close_matches(name, PARAMETERS, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]}?)"
    return f" (known: {', '.join(PARAMETERS)})"


class _Scanner:
    """Walks Modelfile text: instructions, words and values, counting lines."""

    def __init__(self, text: str):
        self.text = text.replace("\r\n", "\n").replace("\r", "\n")
        self.pos = 0
        self.line = 1

    def _peek(self, n: int = 1) -> str:
        return self.text[self.pos : self.pos + n]

    def _advance(self, n: int) -> str:
        chunk = self.text[self.pos : self.pos + n]
        self.line += chunk.count("\n")
        self.pos += n
        return chunk

    def _skip_blanks(self) -> None:
        """Spaces and tabs, not line ends."""
        while self._peek() in (" ", "\t") and self._peek():
            self.pos += 1

    def next_instruction(self) -> bool:
        """Skip blank lines and comment lines; whether an instruction follows."""
        while self.pos < len(self.text):
            self._skip_blanks()
            char = self._peek()
            if char == "\n":
                self._advance(1)
            elif char == "#":
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
            elif char:
                return True
        return False

    def word(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and not self.text[self.pos].isspace():
            self.pos += 1
        return self.text[start : self.pos]

    def optional_word(self) -> str | None:
        self._skip_blanks()
        if self._peek() in ("", "\n"):
            return None
        return self.word()

    def end_of_line(self, line: int, message: str) -> None:
        self._skip_blanks()
        if self._peek() not in ("", "\n"):
            raise at_line(line, f"unexpected {_quoted(self.word())}: {message}")

    def value(self, line: int, *, rest_of_line: bool, what: str) -> str:
        """A quoted or triple-quoted value, else the rest of the line (or one word); never empty."""
        self._skip_blanks()
        if self._peek(3) == '"""':
            self._advance(3)
            end = self.text.find('"""', self.pos)
            if end < 0:
                raise at_line(line, f'{what}: unterminated """ (the value that starts here never ends)')
            value = self._advance(end - self.pos)
            self._advance(3)
            self.end_of_line(line, f'nothing may follow the closing """ of {what} on its line')
            return value
        if self._peek() == '"':
            value = self._quoted_string(line, what)
            if rest_of_line:
                self.end_of_line(line, f"nothing may follow the quoted value of {what}")
            return value
        if rest_of_line:
            end = self.text.find("\n", self.pos)
            end = len(self.text) if end < 0 else end
            value = self.text[self.pos : end].strip()
            self.pos = end
        else:
            value = self.word()
        if not value:
            raise at_line(line, f"{what} needs a value")
        return value

    def _quoted_string(self, line: int, what: str) -> str:
        self.pos += 1
        out = []
        while True:
            char = self._peek()
            if char in ("", "\n"):
                raise at_line(line, f'{what}: unterminated " (close the quote on the same line, or use """)')
            self.pos += 1
            if char == '"':
                return "".join(out)
            if char == "\\":
                escaped = self._peek()
                if escaped not in _ESCAPES:
                    raise at_line(line, f'{what}: unknown escape "\\{escaped}" (use \\", \\\\ or \\n)')
                self.pos += 1
                out.append(_ESCAPES[escaped])
            else:
                out.append(char)
