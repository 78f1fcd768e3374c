"""`ps`, `stop` and `serve`: what the engine holds, unloading a model, and running the engine in front.

`ps` and `stop` never start an engine: with none running nothing is loaded, which is the answer.
"""

import typer

from ollama_img.cli.app import app
from ollama_img.cli.completion import complete_model_names
from ollama_img.formatting import human_bytes, human_until, table
from ollama_img.names import ModelName

PS_HEADERS = ["NAME", "ID", "SIZE", "PROCESSOR", "UNTIL"]


def ps_rows(models: list[dict]) -> list[list[str]]:
    rows = []
    for m in models:
        left = m.get("expires_in")  # None: kept until stopped
        rows.append(
            [
                m["name"],
                m.get("id") or "",
                human_bytes(int(m.get("size") or 0)),
                m.get("processor") or "",
                human_until(None if left is None else float(left)),
            ]
        )
    return rows


@app.command("ps")
def ps():
    """List the models the engine has loaded."""
    from ollama_img.engine.client import connect

    client = connect(start=False)
    models = []
    if client is not None:
        with client:
            models = client.ps()
    print(table([PS_HEADERS, *ps_rows(models)]))


@app.command("stop")
def stop(
    model: str = typer.Argument(
        ..., metavar="MODEL", help="Model to unload.", autocompletion=complete_model_names
    ),
):
    """Unload a model from the engine now."""
    from ollama_img.engine.client import connect

    name = str(ModelName.parse(model))
    client = connect(start=False)
    if client is None:
        from ollama_img.engine import catalog

        catalog.resolve(name)  # an unknown name is still an error; a known one is simply not loaded
        return
    with client:
        client.stop(name)


@app.command("serve")
def serve(
    host: str | None = typer.Option(
        None,
        "--host",
        help="Also answer HTTP on HOST[:PORT] (default 127.0.0.1:11434, env OLLAMA_IMG_HOST).",
    ),
    socket_only: bool = typer.Option(
        False, "--socket-only", help="Listen on the Unix socket only, not on TCP."
    ),
    gpu_memory: str | None = typer.Option(
        None,
        "--gpu-memory",
        metavar="SIZE",
        help="Memory the engine may use, e.g. 12GB (RAM on the CPU back end; env OLLAMA_IMG_GPU_MEMORY; "
        "default: what the device has free).",
    ),
):
    """Run the engine in the foreground: the Unix socket for the CLI, and the HTTP API on TCP."""
    from ollama_img.engine.listen import default_host, parse_host
    from ollama_img.engine.main import configure_logging, run_engine
    from ollama_img.memory.budget import Budget, parse_bytes

    budget = None if gpu_memory is None else Budget(parse_bytes(gpu_memory, "--gpu-memory"), "--gpu-memory")
    tcp = None if socket_only else (parse_host(host) if host is not None else default_host())
    configure_logging()
    run_engine(tcp=tcp, idle_exit=None, gpu_memory=budget)
