import io

from rich.console import Console

from ollama_img.cli.progress import PlainProgress, RichProgress, make_progress


def test_the_terminal_bar_shows_status_steps_and_speed():
    out = io.StringIO()
    progress = RichProgress(Console(file=out, force_terminal=True, width=100))
    progress.update({"status": "queued", "queue_position": 1})
    progress.update({"status": "loading", "model": "z-image:latest"})
    for step in range(1, 4):
        progress.update({"status": "generating", "completed": step, "total": 9})
    progress._progress.refresh()
    text = out.getvalue()
    progress.close()
    assert "Generating" in text and "3/9" in text
    assert "it/s" in text or "s/it" in text


def test_plain_lines_when_not_a_terminal():
    assert isinstance(make_progress(io.StringIO()), PlainProgress)
