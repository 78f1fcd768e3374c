"""Images as raw bytes after the final line of a streamed `/api/generate`: what the CLI asks for.

ollama's API sends each PNG base64 inside the final JSON line. For our own CLI that is a third more
bytes over the socket, a base64 encode and a JSON dump of megabytes on the engine's event loop, and a
line scan, a JSON parse and a decode in the CLI, per image. A request with `raw_images: true` (and
`stream`) gets the final line without `images` but with `image_bytes`, the size of each PNG, and the
PNGs right after that line, in order. Any other client gets ollama's format.
"""

FIELD = "raw_images"  # in the request: true asks for the PNGs after the final line
SIZES = "image_bytes"  # in the final line: each PNG's size in bytes, in the order they follow
