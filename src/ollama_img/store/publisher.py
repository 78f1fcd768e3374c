"""Publish sealed blobs (fsync, then link under their name) in a background thread.

Copying a tensor is CPU-bound (page allocation, hashing) and flushing it is disk-bound; done in turn,
the import waits for one while the other idles. A publisher flushes blob k while blob k+1 is copied.
It holds at most `max_pending_bytes` (and `max_pending_blobs` open files) of sealed, unflushed blobs,
so memory and file descriptors stay bounded. Crash safety is unchanged: the manifest is written only
after `drain()`, when every blob it names is durable under its name.
"""

import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait

from ollama_img.store.blobs import BlobWriter, WrittenBlob


class BlobPublisher:
    def __init__(self, max_pending_bytes: int = 1 << 30, max_pending_blobs: int = 256):
        self.max_pending_bytes = max_pending_bytes
        self.max_pending_blobs = max_pending_blobs
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="publish")
        self._room = threading.Condition()
        self._pending_bytes = 0
        self._pending_blobs = 0
        self._futures: list[Future] = []
        self._failure: BaseException | None = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._executor.shutdown(wait=True)  # blobs already handed over still get published or removed

    def submit(self, writer: BlobWriter) -> None:
        """Take over a sealed writer; waits while too much is pending, raises an earlier failure."""
        writer.hand_off()
        with self._room:
            while self._pending_blobs and (
                self._pending_bytes + writer.size > self.max_pending_bytes
                or self._pending_blobs >= self.max_pending_blobs
            ):
                self._room.wait()
            if self._failure is not None:
                writer.abort()
                raise self._failure
            self._pending_bytes += writer.size
            self._pending_blobs += 1
        self._futures.append(self._executor.submit(self._publish, writer))

    def _publish(self, writer: BlobWriter) -> WrittenBlob:
        try:
            if self._failure is not None:  # no point flushing more after a failure
                writer.abort()
                raise self._failure
            return writer.publish()
        except BaseException as exc:
            with self._room:
                self._failure = self._failure or exc
            raise
        finally:
            with self._room:
                self._pending_bytes -= writer.size
                self._pending_blobs -= 1
                self._room.notify_all()

    def drain(self) -> list[WrittenBlob]:
        """Wait until every submitted blob is published; return them, or raise the first failure."""
        wait(self._futures)
        if self._failure is not None:
            raise self._failure
        results = [future.result() for future in self._futures]
        self._futures.clear()
        return results
