"""How far the upload of one file has got, for ``s3mount status`` and a stopping ``umount``.

A large file can take minutes to store; without this, ``status`` shows only that it is pending.
Parts of a streamed upload and the parts of a whole upload (the store's ``progress`` callback) add
to ``stored`` from worker threads, and the status task reads it from the event loop, hence the
lock.
"""

from __future__ import annotations

import threading
import time


class Progress:
    """Bytes of one file stored so far in its current upload attempt, and since when."""

    def __init__(self) -> None:
        self.started_at = time.monotonic()
        self._stored = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        """``n`` more bytes reached the server."""
        with self._lock:
            self._stored += n

    @property
    def stored(self) -> int:
        return self._stored

    def rate(self) -> float:
        """Mean bytes per second since the attempt started."""
        return self._stored / max(time.monotonic() - self.started_at, 1e-3)
