"""The `ollama-img` command: one Typer app; each group of commands lives in its own module."""

import sys

import typer

from ollama_img import __version__
from ollama_img.errors import UserError

try:  # typer >= 0.26 ships its own copy of click: importing click itself too would double the start-up
    from typer._click.exceptions import ClickException as _ClickException

    _ABORTS: tuple[type[BaseException], ...] = (typer.Abort,)
except ImportError:  # pragma: no cover (older typer uses click itself)
    from click.exceptions import Abort as _ClickAbort
    from click.exceptions import ClickException as _ClickException

    _ABORTS = (_ClickAbort, typer.Abort)

_USAGE_ERRORS = (_ClickException,)

app = typer.Typer(
    name="ollama-img",
    help="Run local text-to-image models: pull, create, run, list, show, ps, stop, rm, cp, push, verify, serve.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version_callback(value: bool):
    if value:
        print(f"ollama-img version {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", "-v", help="Show the version and exit.", callback=_version_callback, is_eager=True
    ),
):
    """Run local text-to-image models: pull, create, run, list, show, ps, stop, rm, cp, push, verify, serve."""


def fail(message: str):
    """Print one clear line on stderr and exit non-zero: how every user error ends."""
    print(f"Error: {message}", file=sys.stderr)
    raise SystemExit(1)


# Options whose value may be left out (`run --teacache` or `run --teacache 0.3`), with the value they get
# then. Click's own optional values take any next word as the value; here only a number is.
OPTIONAL_VALUES: dict[str, str] = {}


def fill_optional_values(args: list[str]) -> list[str]:
    """Insert the default value after an optional-value option that is not followed by a number."""
    out = []
    for i, arg in enumerate(args):
        out.append(arg)
        if arg == "--":
            return out + args[i + 1 :]
        if arg in OPTIONAL_VALUES:
            following = args[i + 1] if i + 1 < len(args) else None
            try:
                float(following)
            except (TypeError, ValueError):
                out.append(OPTIONAL_VALUES[arg])
    return out


def main(argv: list[str] | None = None):
    """Console-script entry point: user errors end in one line, never a traceback."""
    _register_commands()
    args = fill_optional_values(sys.argv[1:] if argv is None else list(argv))
    try:
        code = app(args=args, prog_name="ollama-img", standalone_mode=False)
        sys.stdout.flush()  # here, where a closed pipe can still be told apart from a failure
    except UserError as exc:
        fail(str(exc))
    except _ABORTS:
        print(file=sys.stderr)
        raise SystemExit(130) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except _USAGE_ERRORS as exc:
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except BrokenPipeError:
        _end_quietly()
    except SystemExit:
        if _click_saw_broken_pipe():
            _end_quietly()
        raise
    raise SystemExit(code if isinstance(code, int) else 0)


def _click_saw_broken_pipe() -> bool:
    """Click answers a write to a closed stdout by wrapping stdout in its PacifyFlushWrapper and exiting 1."""
    return type(sys.stdout).__name__ == "PacifyFlushWrapper"


def _end_quietly():
    """The reader of stdout went away (`ollama-img list | head -1`): stop, quietly and successfully, as
    Unix tools do; what is still buffered goes nowhere instead of raising again at exit."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    raise SystemExit(0)


def _register_commands():
    """Import the command modules; each adds its commands to `app` (imported here to keep start-up lean)."""
    from ollama_img.cli import (  # noqa: F401
        engine_commands,
        run_command,
        store_commands,
        transfer_commands,
        verify_command,
    )
