"""A log that no flood can grow without bound: the same message at most a few times a minute.

A flood of connections made asyncio log "socket.accept() out of system resource" with a traceback on
every retry: 100 MB of log in half a minute. This filter lets through `burst` records with the same
origin and message template per `window` seconds, and tells how many it held back with the next one.
"""

import logging
import time


class RepeatLimit(logging.Filter):
    def __init__(self, burst: int = 5, window: float = 60.0):
        super().__init__()
        self.burst, self.window = burst, window
        self._seen: dict[tuple, list] = {}  # key -> [window start, passed, held back]

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        entry = self._seen.get(key)
        if entry is None or now - entry[0] >= self.window:
            held = entry[2] if entry is not None else 0
            if held:
                record.msg = (
                    f"{record.msg} ({held} more like this in the previous {self.window:g} s not logged)"
                )
            self._seen[key] = [now, 1, 0]
            if len(self._seen) > 1000:  # forget the oldest messages: the table stays small too
                for old in sorted(self._seen, key=lambda k: self._seen[k][0])[:500]:
                    del self._seen[old]
            return True
        if entry[1] < self.burst:
            entry[1] += 1
            return True
        entry[2] += 1
        return False
