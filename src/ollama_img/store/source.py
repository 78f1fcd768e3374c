"""Read a source safetensors file (a checkpoint shard) as a stream: header first, then each tensor's bytes.

Nothing is memory-mapped or loaded whole: tensor bytes are copied in bounded chunks into a reused
buffer, in file order, so each byte is read exactly once and memory stays flat however big the shard.
"""

import os
from collections.abc import Iterator
from pathlib import Path

from ollama_img.errors import UserError
from ollama_img.store.safetensors_format import HEADER_LENGTH_SIZE, Header, TensorInfo, parse_header

CHUNK_SIZE = 8 * 1024 * 1024


def read_header(path: Path, where: str | None = None) -> Header:
    """Parse and validate the header of `path` (a UserError naming the file if it is unreadable or corrupt)."""
    where = where or str(path)
    try:
        with open(path, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            return parse_header(f.read(HEADER_LENGTH_SIZE), f.read, size, where)
    except OSError as exc:
        raise UserError(f"cannot read {where}: {exc.strerror or exc}") from None


class SafetensorsReader:
    """An open source file whose tensors are read front to back with `chunks(tensor)`."""

    def __init__(self, path: Path, header: Header, where: str | None = None, chunk_size: int = CHUNK_SIZE):
        self.path = path
        self.header = header
        self.where = where or str(path)
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115 (closed by close()/__exit__)
        self._position = 0
        self._buffers = (bytearray(chunk_size), bytearray(chunk_size))
        self._turn = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self._file.close()

    def chunks(self, tensor: TensorInfo) -> Iterator[memoryview]:
        """The bytes of `tensor` as consecutive views into two alternating reusable buffers.

        A view stays valid until the iterator yields the view after next, so a consumer may hand one
        chunk to another thread while the next is being read.
        """
        if self._position != tensor.begin:
            self._file.seek(tensor.begin)
            self._position = tensor.begin
        remaining = tensor.nbytes
        while remaining:
            buffer = self._buffers[self._turn]
            self._turn ^= 1
            view = memoryview(buffer)[: min(remaining, len(buffer))]
            filled = 0
            while filled < len(view):
                n = self._file.readinto(view[filled:])
                if not n:
                    raise UserError(
                        f"corrupt safetensors file {self.where}: it ended inside tensor {tensor.name!r} "
                        "(truncated while importing?)"
                    )
                filled += n
            self._position += filled
            remaining -= filled
            yield view
