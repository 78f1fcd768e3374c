"""OpenAI-compatible image generation: `POST /v1/images/generations` (and `GET /v1/models`; the edits
route, `POST /v1/images/edits`, is `openai_edits`, answered by `answer` here).

Same queue, same models, same checks as the ollama-style route; only the shapes differ. Errors use
OpenAI's shape (`{"error": {"message", "type", ...}}`) so OpenAI clients show the message.
With `stream: true` the answer is Server-Sent Events: `event: progress` / `data: {"step": k, "total": N}`
for every step, then `event: done` with the usual response body.
"""

import base64
import json
import time
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from ollama_img.engine import catalog
from ollama_img.engine.handling import (
    SHUTTING_DOWN,
    error_message,
    error_status,
    events_until_disconnect,
    json_body,
    outcome_unless_disconnected,
    submit,
)
from ollama_img.engine.jobs import CANCELLED, DONE, FAILED, STEP, Result
from ollama_img.engine.params import (
    GenerateParams,
    generate_params,
    model_name,
    optional_bool,
    parse_size,
)
from ollama_img.errors import UserError
from ollama_img.options import Option, api_name

FORMATS = ("b64_json", "url")


def error_body(message: str, status: int) -> dict:
    return {
        "error": {
            "message": message,
            "type": "invalid_request_error" if status < 500 else "server_error",
            "param": None,
            "code": "model_not_found" if status == 404 else None,
        }
    }


def error_response(exc: UserError) -> JSONResponse:
    return JSONResponse(error_body(str(exc), exc.status), status_code=exc.status)


def images_body(result: Result, response_format: str) -> dict:
    """OpenAI's ImagesResponse. `url` answers are data: URLs (the engine keeps no files to link to)."""
    data = []
    for png in result.pngs:
        b64 = base64.b64encode(png).decode()
        data.append(
            {"b64_json": b64} if response_format == "b64_json" else {"url": f"data:image/png;base64,{b64}"}
        )
    return {
        "created": int(time.time()),
        "data": data,
        "output_format": "png",
        "size": f"{result.width}x{result.height}",
        "seeds": result.seeds,
    }


def checked(body: dict, name: Callable[[Option], str] = api_name) -> tuple[GenerateParams, str, bool]:
    """The request's parameters, response_format and stream flag, checked (bad values named by `name`)."""
    model = model_name(body)
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise UserError("missing 'prompt': say what the image should show")
    fields = dict(body)
    size = body.get("size")
    if size is not None and size != "auto":
        fields["width"], fields["height"] = parse_size(size)
    response_format = body.get("response_format") or "b64_json"
    if response_format not in FORMATS:
        raise UserError(f"unsupported response_format {response_format!r}: use 'b64_json' or 'url'")
    output_format = body.get("output_format")
    if output_format not in (None, "png"):
        raise UserError(f"unsupported output_format {output_format!r}: only 'png' is produced")
    stream = optional_bool(body, "stream", False)
    return generate_params(fields, model, prompt, name), response_format, stream


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


async def images_generations(request: Request):
    params, response_format, stream = checked(await json_body(request))
    return await answer(request, params, response_format, stream)


async def answer(
    request: Request,
    params: GenerateParams,
    response_format: str,
    stream: bool,
    name: Callable[[Option], str] = api_name,
):
    """Queue the job and answer as OpenAI does: one ImagesResponse, or (stream) SSE progress then it.
    An option the model lacks is named by `name`."""
    scheduler, job = await submit(request, params, name)

    def final(event) -> tuple[str, dict, int]:
        if event.kind == DONE:
            return "done", images_body(event.result, response_format), 200
        if event.kind == FAILED:
            status = error_status(event.error)
            return "error", error_body(error_message(event.error), status), status
        return "error", error_body(SHUTTING_DOWN, 503), 503

    if stream:

        async def frames():
            async for event in events_until_disconnect(request, scheduler, job):
                if event.kind == STEP:
                    yield _sse("progress", {"step": event.completed, "total": event.total})
                elif event.kind in (DONE, FAILED, CANCELLED):
                    name, data, _ = final(event)
                    yield _sse(name, data)

        return StreamingResponse(
            frames(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
    event = await outcome_unless_disconnected(request, scheduler, job)
    if event is None:
        return JSONResponse(error_body("cancelled: the client disconnected", 499), status_code=499)
    _, data, status = final(event)
    return JSONResponse(data, status_code=status)


async def list_models(request: Request):
    """OpenAI's model list; `created` is when the model was created (or copied) in the store."""
    entries = await run_in_threadpool(catalog.models)
    data = [
        {"id": str(e.name), "object": "model", "created": int(e.modified), "owned_by": "library"}
        for e in entries
    ]
    return JSONResponse({"object": "list", "data": data})


def routes() -> list[Route]:
    from ollama_img.engine.openai_edits import images_edits

    return [
        Route("/v1/images/generations", images_generations, methods=["POST"]),
        Route("/v1/images/edits", images_edits, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
    ]
