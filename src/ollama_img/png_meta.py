"""PNG files that carry their recipe: prompt, seed, steps and the rest, in PNG text chunks.

Anyone holding the file can see (and reproduce) how it was made, with any PNG tool (`exiftool`, PIL's
`Image.open(f).text`). Keys are plain words; values are text.
"""

import io
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, PngImagePlugin

from ollama_img import __version__

SOFTWARE = f"ollama-img {__version__}"
# zlib's run-length strategy: after PNG's row filters an image is mostly short runs and small values,
# which it codes as well as the default strategy's (level 6) searching does, in a third of the time
# (bench/png_encode.py: 1024x1024, 1.82 MB both, 0.08 s against 0.24 s).
PNG_OPTIONS = {"compress_level": 1, "compress_type": zlib.Z_RLE}


@dataclass(frozen=True)
class Recipe:
    """How one image was made."""

    prompt: str
    negative_prompt: str | None  # None: the model takes no negative prompt ("": it takes one, none was given)
    seed: int
    steps: int
    guidance: float | None  # None: the model takes no guidance scale
    width: int
    height: int
    model: str
    digest: str | None
    teacache: float | None = None
    images: tuple[str, ...] = ()  # sha256 of each input image's bytes as sent
    mask: str | None = None  # sha256 of the mask's bytes
    strength: float | None = None  # from a start image
    loras: tuple[tuple[str, float], ...] = ()  # (sha256 digest of the adapter file, scale), as asked

    def text_chunks(self) -> dict[str, str]:
        chunks = {
            "prompt": self.prompt,
            "seed": str(self.seed),
            "steps": str(self.steps),
            "size": f"{self.width}x{self.height}",
            "model": self.model,
            "model_digest": self.digest or "",
            "version": __version__,
            "Software": SOFTWARE,
        }
        if self.negative_prompt is not None:
            chunks["negative_prompt"] = self.negative_prompt
        if self.guidance is not None:
            chunks["guidance"] = repr(float(self.guidance))
        if self.teacache is not None:
            chunks["teacache"] = repr(float(self.teacache))
        if self.images:
            chunks["image_sha256"] = ",".join(self.images)
        if self.mask is not None:
            chunks["mask_sha256"] = self.mask
        if self.strength is not None:
            chunks["strength"] = repr(float(self.strength))
        if self.loras:
            chunks["loras"] = json.dumps([{"digest": d, "scale": float(s)} for d, s in self.loras])
        return chunks


def encode_png(image: Image.Image, recipe: Recipe, *, options: dict | None = None) -> bytes:
    """The image as PNG bytes with the recipe in text chunks (iTXt where the text is not Latin-1).

    An RGB image is written by `png_writer` (Paeth rows, level 1 with the run-length strategy, in
    bands on several threads: a third of Pillow's time on two cores). `options`, Pillow's PNG save
    options (`compress_level`, `compress_type`, `optimize`), have Pillow write it instead, as do other
    modes (PNG_OPTIONS)."""
    if options is None and image.mode == "RGB":
        import numpy as np

        from ollama_img.png_writer import encode_rgb

        return encode_rgb(np.asarray(image), recipe.text_chunks())
    info = PngImagePlugin.PngInfo()
    for key, value in recipe.text_chunks().items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, **(PNG_OPTIONS if options is None else options))
    return buffer.getvalue()


def read_png_text(source: bytes | str | Path) -> dict[str, str]:
    """The text chunks of a PNG file or PNG bytes."""
    if isinstance(source, bytes | bytearray):
        source = io.BytesIO(source)
    with Image.open(source) as image:
        image.load()
        return dict(image.text)
