"""A wall clock that tests can move forward, shared by the S3 server and the emulators."""

from __future__ import annotations

import threading
import time


class SandboxClock:
    """``time.time()`` plus an offset that only ever grows (tests jump past expiry without sleeping)."""

    def __init__(self) -> None:
        self._offset = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        return time.time() + self._offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the sandbox clock only moves forward")
        with self._lock:
            self._offset += seconds
