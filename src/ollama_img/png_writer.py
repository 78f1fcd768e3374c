"""An 8-bit RGB PNG written by several threads: filtering and deflate in bands of rows.

Pillow filters and compresses a PNG on one thread. For a 1024x1024 image that took 0.12-0.16 s on an
H200's host, about a sixth of the denoising it follows (bench/RESULTS.md, "GPU cold start"). A PNG's
pixels are one zlib stream, but deflate can be cut: each band of rows is compressed on its own and
ended with a sync flush (a byte-aligned, non-final block), the last one finished. Joined, they are
one valid stream (pigz writes gzip files this way). Each band is Paeth-filtered first, from the
image itself: the row above a band is known before anything is compressed. numpy and zlib release
the GIL, so the bands run in parallel. The bands are fixed in number, so the same image gives the
same bytes whatever the number of threads (with the same zlib).
"""

from __future__ import annotations

import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
BANDS = 8  # of rows, compressed side by side: fixed, so that the bytes do not depend on the machine
PAETH = 4  # PNG's filter type
LEVEL = 1  # zlib level, with the run-length strategy (png_meta.PNG_OPTIONS: the same trade-off)
_POOL: list[ThreadPoolExecutor] = []


def encode_rgb(pixels: np.ndarray, text: dict[str, str]) -> bytes:
    """PNG bytes of (height, width, 3) uint8 `pixels`, with `text` as tEXt chunks (iTXt where a value
    is not Latin-1, as Pillow writes them)."""
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8 or 0 in pixels.shape:
        raise ValueError(
            f"encode_rgb takes (height, width, 3) uint8 pixels, got {pixels.shape} {pixels.dtype}"
        )
    height, width, _ = pixels.shape
    rows = np.ascontiguousarray(pixels).reshape(height, width * 3)
    edges = np.linspace(0, height, min(BANDS, height) + 1).astype(int)
    bands = list(zip(edges[:-1], edges[1:], strict=True))
    last = len(bands) - 1
    parts = list(_pool().map(lambda i: _band(rows, *bands[i], final=i == last), range(len(bands))))
    checksum = 1
    for filtered, _ in parts:
        checksum = zlib.adler32(filtered, checksum)
    stream = b"\x78\x01" + b"".join(deflated for _, deflated in parts) + struct.pack(">I", checksum)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    chunks = [_chunk(b"IHDR", header), *(_text_chunk(k, v) for k, v in text.items())]
    return SIGNATURE + b"".join([*chunks, _chunk(b"IDAT", stream), _chunk(b"IEND", b"")])


def _pool() -> ThreadPoolExecutor:
    if not _POOL:
        _POOL.append(ThreadPoolExecutor(min(BANDS, os.cpu_count() or 1), thread_name_prefix="png"))
    return _POOL[0]


def _band(rows: np.ndarray, top: int, bottom: int, *, final: bool) -> tuple[bytes, bytes]:
    """Rows [top, bottom) Paeth-filtered (each with its filter byte), and their deflate segment."""
    x = rows[top:bottom].astype(np.int16)
    above = np.zeros_like(x)  # the image's first row has zeros above it
    above[1:] = x[:-1]
    if top:
        above[0] = rows[top - 1]
    left = np.zeros_like(x)
    left[:, 3:] = x[:, :-3]
    upper_left = np.zeros_like(x)
    upper_left[:, 3:] = above[:, :-3]
    guess = left + above - upper_left
    to_left, to_above, to_corner = np.abs(guess - left), np.abs(guess - above), np.abs(guess - upper_left)
    predictor = np.where(
        (to_left <= to_above) & (to_left <= to_corner),
        left,
        np.where(to_above <= to_corner, above, upper_left),
    )
    filtered = np.empty((bottom - top, rows.shape[1] + 1), np.uint8)
    filtered[:, 0] = PAETH
    filtered[:, 1:] = (x - predictor).astype(np.uint8)  # modulo 256, as PNG defines the difference
    data = filtered.tobytes()
    compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, -15, 9, zlib.Z_RLE)  # raw deflate: one stream's part
    return data, compressor.compress(data) + compressor.flush(zlib.Z_FINISH if final else zlib.Z_SYNC_FLUSH)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _text_chunk(key: str, value: str) -> bytes:
    if not 1 <= len(key) <= 79 or "\0" in key:  # PNG's rule for keywords
        raise ValueError(f"a PNG text keyword is 1-79 characters without NUL, got {key!r}")
    try:
        return _chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1"))
    except UnicodeEncodeError:  # international text: uncompressed, no language tag
        return _chunk(b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + value.encode("utf-8"))
