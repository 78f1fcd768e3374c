"""The engine's HTTP API (ollama style): generate with NDJSON progress, ps, tags, show, version.

The same Starlette app answers on the Unix socket and, under `serve`, on TCP. Every error a client can
cause is a 4xx with `{"error": "..."}`; anything else is logged and answered 500, and the engine goes on.
"""

import asyncio
import base64
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from ollama_img import __version__
from ollama_img.engine import catalog, openai_api, raw_images, utc_iso
from ollama_img.engine.guard import over_unix_socket
from ollama_img.engine.handling import (
    SHUTTING_DOWN,
    error_message,
    error_status,
    events_until_disconnect,
    json_body,
    outcome_unless_disconnected,
    submit,
)
from ollama_img.engine.jobs import CANCELLED, FAILED, LOADING, QUEUED, STEP, Event, Job
from ollama_img.engine.params import (
    GenerateParams,
    generate_params,
    keepalive,
    model_name,
    optional_bool,
    optional_str,
)
from ollama_img.engine.scheduler import Scheduler
from ollama_img.errors import UserError

log = logging.getLogger("ollama_img.engine")
NS = 1_000_000_000


# -- POST /api/generate ----------------------------------------------------------------------------


def _progress_line(model: str, event: Event) -> dict | None:
    base = {"model": model, "created_at": utc_iso(), "done": False}
    if event.kind == QUEUED:
        return {**base, "status": "queued", "queue_position": event.position}
    if event.kind == LOADING:
        return {**base, "status": "loading"}
    if event.kind == STEP:
        return {**base, "status": "generating", "completed": event.completed, "total": event.total}
    return None


def _final_line(model: str, event: Event, raw: bool = False) -> dict:
    """The last object of a response; `raw`: the PNGs' sizes instead of the PNGs (`raw_images`)."""
    if event.kind == FAILED:
        return {"error": error_message(event.error)}
    if event.kind == CANCELLED:
        return {"error": SHUTTING_DOWN}
    result = event.result
    t = result.timings
    body = {
        "model": model,
        "created_at": utc_iso(),
        "done": True,
        "done_reason": "stop" if result.pngs else "load",
    }
    if result.pngs:
        if raw:
            body[raw_images.SIZES] = [len(png) for png in result.pngs]
        else:
            body["images"] = [base64.b64encode(png).decode() for png in result.pngs]
        body.update(
            seeds=result.seeds,
            width=result.width,
            height=result.height,
            steps=result.steps,
            guidance=result.guidance,
        )
    body.update(
        digest=result.digest,
        total_duration=int(t.total * NS),
        load_duration=int(t.load * NS),
        queue_duration=int(t.queue * NS),
        generate_duration=int(t.generate * NS),
        encode_duration=int(t.encode * NS),
    )
    return body


async def api_generate(request: Request):
    body = await json_body(request)
    # Image options may also come in ollama's `options` object; top-level fields win.
    options = body.get("options")
    if options is not None and not isinstance(options, dict):
        raise UserError("'options' must be a JSON object")
    merged = {**(options or {}), **body}
    model = model_name(merged)
    stream = optional_bool(merged, "stream", True)
    prompt = optional_str(merged, "prompt")
    if prompt is None:
        return await _load_or_unload(request, model, keepalive(merged), stream)
    params = generate_params(merged, model, prompt)
    raw = optional_bool(merged, raw_images.FIELD, False) and stream  # checked whether streamed or not
    scheduler, job = await submit(request, params)
    return await respond(request, scheduler, job, model, stream, raw)


async def _load_or_unload(request: Request, model: str, keep: float | None, stream: bool):
    """ollama's convention: no prompt loads the model; no prompt and keep_alive 0 unloads it (`stop`)."""
    digest = await run_in_threadpool(catalog.resolve, model)
    scheduler: Scheduler = request.app.state.scheduler
    if keep == 0:
        await scheduler.stop(model)
        return JSONResponse({"model": model, "created_at": utc_iso(), "done": True, "done_reason": "unload"})
    job = scheduler.submit(GenerateParams(model=model, prompt="", keep_alive=keep), digest)
    return await respond(request, scheduler, job, model, stream)


async def respond(
    request: Request, scheduler: Scheduler, job: Job, model: str, stream: bool, raw: bool = False
):
    """NDJSON progress then the final object, or (stream false) just the final object; `raw`: the
    final object's PNGs follow it as bytes (`engine.raw_images`)."""
    if stream:

        async def lines():
            async for event in events_until_disconnect(request, scheduler, job):
                progress = _progress_line(model, event)
                if progress is not None:
                    yield json.dumps(progress) + "\n"
                    continue
                yield await _final_json(model, event, raw) + b"\n"
                if raw and event.result is not None:
                    for png in event.result.pngs:
                        yield png

        return StreamingResponse(lines(), media_type="application/x-ndjson")
    event = await outcome_unless_disconnected(request, scheduler, job)
    if event is None:
        return JSONResponse({"error": "cancelled: the client disconnected"}, status_code=499)
    if event.kind == CANCELLED:
        return JSONResponse(_final_line(model, event), status_code=503)
    status = error_status(event.error) if event.kind == FAILED else 200
    return Response(await _final_json(model, event), status_code=status, media_type="application/json")


async def _final_json(model: str, event: Event, raw: bool = False) -> bytes:
    """The final object as JSON, made on a thread: base64 PNGs are megabytes, which would hold up
    every other request on the event loop while they are encoded and dumped."""
    return await run_in_threadpool(lambda: json.dumps(_final_line(model, event, raw)).encode())


# -- GET /api/ps, /api/tags, /api/version; POST /api/show ------------------------------------------


async def api_ps(request: Request):
    scheduler: Scheduler = request.app.state.scheduler
    processor = request.app.state.processor
    models = []
    for m in scheduler.loaded_models():
        left = m.seconds_left()
        try:
            expires = None if left == float("inf") else utc_iso(time.time() + left)
        except (OverflowError, ValueError, OSError):  # beyond any calendar (keep_alive "9999999h"): forever
            left, expires = float("inf"), None
        models.append(
            {
                "name": m.name,
                "model": m.name,
                "id": catalog.short_id(m.digest),
                "digest": m.digest,
                "size": m.size,
                "size_vram": m.size if processor.endswith("GPU") else 0,
                "processor": processor,
                "expires_at": expires,
                "expires_in": None if expires is None else max(0.0, left),
                "memory": None if m.plan is None else m.plan.to_json(),
            }
        )
    return JSONResponse({"models": models})


async def api_tags(request: Request):
    return JSONResponse({"models": await run_in_threadpool(catalog.tags)})


async def api_show(request: Request):
    body = await json_body(request)
    name = body.get("model") or body.get("name")
    name = model_name({"model": name})
    return JSONResponse(await run_in_threadpool(catalog.show, name))


async def api_version(request: Request):
    body = {"version": __version__}
    if over_unix_socket(request.scope):  # the CLI checks it talks to an engine on its own store
        body["models"] = str(catalog.store_root())
    return JSONResponse(body)


async def root(request: Request):
    return PlainTextResponse("ollama-img is running")


# -- errors ----------------------------------------------------------------------------------------


async def on_user_error(request: Request, exc: UserError):
    if request.url.path.startswith("/v1/"):
        return openai_api.error_response(exc)
    return JSONResponse({"error": str(exc)}, status_code=exc.status)


async def on_http_error(request: Request, exc: HTTPException):
    message = exc.detail if exc.status_code != 404 else f"not found: {request.method} {request.url.path}"
    return JSONResponse({"error": message}, status_code=exc.status_code)


async def on_unexpected(request: Request, exc: Exception):
    log.error("error answering %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"error": error_message(exc)}, status_code=500)


# -- the app ---------------------------------------------------------------------------------------


@dataclass
class Activity:
    """Requests in flight and when the last one came or went, so the idle engine knows when to leave."""

    active: int = 0
    last_seen: float = field(default_factory=time.monotonic)


class ActivityTracker:
    """ASGI middleware that keeps an `Activity` up to date."""

    def __init__(self, app, activity: Activity):
        self.app = app
        self.activity = activity

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        activity = self.activity
        activity.active += 1
        activity.last_seen = time.monotonic()
        try:
            await self.app(scope, receive, send)
        finally:
            activity.active -= 1
            activity.last_seen = time.monotonic()


async def watch_idle(scheduler: Scheduler, activity: Activity, grace: float, on_idle: Callable[[], None]):
    """Call `on_idle` once nothing has been loaded, queued or asked for during `grace` seconds."""
    idle_since = None
    while True:
        await asyncio.sleep(min(1.0, max(0.05, grace / 4)))
        now = time.monotonic()
        if not scheduler.idle or activity.active:
            idle_since = None
            continue
        idle_since = max(idle_since or now, activity.last_seen)
        if now - idle_since >= grace:
            log.info("idle for %.0f s with no model loaded: exiting", grace)
            on_idle()
            return


def create_app(scheduler: Scheduler, *, processor: str) -> Starlette:
    """The ASGI app. No lifespan: `serving.serve_all` starts and stops the scheduler once for every
    listener, and watches `app.state.activity` to leave when idle."""
    routes = [
        Route("/", root, methods=["GET", "HEAD"]),
        Route("/api/generate", api_generate, methods=["POST"]),
        Route("/api/ps", api_ps, methods=["GET"]),
        Route("/api/tags", api_tags, methods=["GET"]),
        Route("/api/show", api_show, methods=["POST"]),
        Route("/api/version", api_version, methods=["GET"]),
        *openai_api.routes(),
    ]
    activity = Activity()
    app = Starlette(
        routes=routes,
        middleware=[Middleware(ActivityTracker, activity=activity)],
        exception_handlers={UserError: on_user_error, HTTPException: on_http_error, Exception: on_unexpected},
    )
    app.state.scheduler = scheduler
    app.state.processor = processor
    app.state.activity = activity  # what the idle watch (`serving.serve_all`) reads
    return app
