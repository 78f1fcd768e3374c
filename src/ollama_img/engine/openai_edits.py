"""`POST /v1/images/edits`: OpenAI's image edit, as multipart/form-data (what OpenAI's clients and Open
WebUI send) or as JSON.

Multipart: the file `image` (or `image[]`, repeated, for several) and the file `mask`; text fields
`model`, `prompt`, `n`, `size`, `response_format`, `stream`, and this engine's extras (`seed`, `steps`,
`strength`, `guidance`, `negative_prompt`, `teacache`, `keep_alive`), numbers and booleans written as
text. JSON: the same fields, with images as base64 or data: URLs: `image` (one, or a list), or `images`
(a list of those or of `{"image_url": ...}` objects, as OpenAI's JSON edits send them), and `mask`
likewise. The answer is the generations route's: one ImagesResponse, or SSE with `stream`.

Everything is bounded before it is parsed: the body's bytes, the number of files and of fields, the
bytes of a text field; then every image as everywhere (`ollama_img.image_input`).
"""

import json

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from ollama_img.engine.handling import parse_off_the_loop
from ollama_img.engine.limits import MAX_BODY_BYTES
from ollama_img.engine.openai_api import answer, checked
from ollama_img.errors import UserError
from ollama_img.image_input import (
    MAX_FORM_FIELD_BYTES,
    MAX_FORM_FIELDS,
    MAX_INPUT_IMAGES,
)
from ollama_img.options import IMAGES, Option, api_name

IMAGE_FIELDS = ("image", "image[]")
TEXT_FIELDS = {"model", "prompt", "negative_prompt", "size", "response_format", "output_format", "keep_alive"}


class BodyTooLarge(UserError):
    status = 413


def edit_name(option: Option) -> str:
    """Fields as this route spells them: the images are OpenAI's `image`."""
    return "'image'" if option is IMAGES else api_name(option)


async def images_edits(request: Request):
    content_type = request.headers.get("content-type", "")
    raw = await bounded_body(request, MAX_BODY_BYTES)
    if content_type.lower().startswith("multipart/form-data"):
        body = await form_body(request, raw)
    else:
        body = json_body(await parse_off_the_loop(raw))
    if not body.get("images"):
        raise UserError("missing 'image': send the image to edit (a file upload, base64 or a data: URL)")
    params, response_format, stream = checked(body, edit_name)
    return await answer(request, params, response_format, stream, edit_name)


async def bounded_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) once it passes `limit` bytes: never more is read."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"request body too large: {declared} bytes, at most {limit}")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise BodyTooLarge(f"request body too large: more than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def form_body(request: Request, raw: bytes) -> dict:
    """A multipart form as the JSON body it stands for: files as bytes, numbers and booleans typed."""

    async def stream():
        yield raw

    parser = MultiPartParser(
        request.headers,
        stream(),
        max_files=MAX_INPUT_IMAGES + 1,  # the images and a mask
        max_fields=MAX_FORM_FIELDS,
        max_part_size=MAX_FORM_FIELD_BYTES,
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise UserError(f"invalid multipart form: {exc.message}") from None
    try:
        body: dict = {"images": []}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                value = await value.read()
            if key in IMAGE_FIELDS:
                body["images"].append(value)
            elif key == "mask":
                body["mask"] = value
            elif isinstance(value, bytes):
                raise UserError(f"'{key}' must be a text field, not a file")
            else:
                body[key] = value if key in TEXT_FIELDS else typed(value)
        return body
    finally:
        await form.close()


def typed(text: str):
    """A form field's text as the JSON value it spells (42, 0.6, true), else the text itself."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if value is None or isinstance(value, bool | int | float) else text


def json_body(body: dict) -> dict:
    """A JSON edit request with its images gathered under `images` (base64 or data: URLs)."""
    one, many = body.get("image"), body.get("images")
    if one is not None and many is not None:
        raise UserError("send 'image' or 'images', not both")
    if many is not None:
        if not isinstance(many, list):
            raise UserError("'images' must be a list of images (base64, data: URLs or {\"image_url\": ...})")
        images = [image_url(item, "'images'") for item in many]
    elif one is not None:
        images = [image_url(item, "'image'") for item in (one if isinstance(one, list) else [one])]
    else:
        images = []
    out = {key: value for key, value in body.items() if key not in ("image", "images")}
    out["images"] = images
    if body.get("mask") is not None:
        out["mask"] = image_url(body["mask"], "'mask'")
    return out


def image_url(item, name: str):
    """OpenAI's `{"image_url": ...}` reference as the text it holds (a `file_id` is not something this
    engine has); plain text is the image already."""
    if isinstance(item, dict):
        if "image_url" in item:
            return item["image_url"]
        raise UserError(f'{name}: only {{"image_url": <base64 or data: URL>}} is supported (no file ids)')
    return item
