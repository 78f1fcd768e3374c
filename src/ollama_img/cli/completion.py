"""Shell completion: the committed scripts in `completions/` and the model-name completer.

The scripts are what Typer generates for this app; they call `ollama-img` back to complete, so commands,
options and model names always match the installed version. Regenerate them with

    python -m ollama_img.cli.completion [FOLDER]      (default: ./completions)
"""

import sys
from pathlib import Path

PROG = "ollama-img"
COMPLETE_VAR = "_OLLAMA_IMG_COMPLETE"
SCRIPT_FILES = {"bash": "ollama-img.bash", "zsh": "_ollama-img", "fish": "ollama-img.fish"}


def complete_model_names(incomplete: str) -> list[str]:
    """Model names from the store that start with what was typed (nothing if the store is unreadable)."""
    try:
        from ollama_img.engine import catalog

        names = [m["name"] for m in catalog.tags()]
    except Exception:  # completion must never print a traceback into the user's shell
        return []
    return [name for name in names if name.startswith(incomplete)]


def script(shell: str) -> str:
    from typer._completion_shared import get_completion_script

    return get_completion_script(prog_name=PROG, complete_var=COMPLETE_VAR, shell=shell) + "\n"


def write_scripts(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for shell, name in SCRIPT_FILES.items():
        path = folder / name
        path.write_text(script(shell))
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_scripts(Path(sys.argv[1] if len(sys.argv) > 1 else "completions")):
        print(path)
