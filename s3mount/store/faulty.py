"""An ``ObjectStore`` wrapper that fails on purpose, after mountpoint-s3's failure client.

Tests use it to put faults where a fault proxy cannot aim them: the third ``upload_part`` of a
file, the ``delete`` half of a rename, every call once the keys are "expired". It fails calls
with the ``s3mount.errors`` types the real store raises after its own retries, so what the
filesystem sees is what it would see from a real server that keeps failing.

Calls are counted by kind (the Protocol's method names). A kind can

* ``fail(kind, error, nth=N, times=T)``: the Nth call from now and the T-1 after it raise
  ``error`` (the call does not reach the store);
* ``slow(kind, seconds)``: every call waits first;
* ``expire_keys()``: every call of every kind raises what the store raises when the keys were
  rejected and could not be renewed (``AccessDenied``, EACCES), until ``renew_keys()``.

``abort_multipart`` never raises (the Protocol says so): failed, it answers False, as the S3 store
does when the server cannot be reached.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import BinaryIO, TypeVar

from ..errors import AccessDenied, S3MountError
from .base import ListPage, ObjectInfo, ObjectStore

T = TypeVar("T")

KINDS = ("check", "head", "peek", "head_many", "list_page", "get_range", "download", "put",
         "upload", "create_multipart", "upload_part", "complete_multipart", "abort_multipart",
         "copy", "delete")
"""The kinds of call, as the Protocol names them."""


@dataclass
class _Fault:
    skip: int
    """Calls still to pass before the first that fails."""
    times: int
    error: S3MountError


class FaultyStore:
    """``store`` with faults switched on and off by the test (see module docstring)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.calls: Counter[str] = Counter()
        """How many calls of each kind were made (failed ones included)."""
        self.failed: Counter[str] = Counter()
        """How many calls of each kind were failed on purpose."""
        self._lock = threading.Lock()
        self._faults: dict[str, _Fault] = {}
        self._delays: dict[str, float] = {}
        self._expired = False

    # -- switches --------------------------------------------------------------------------------

    def fail(self, kind: str, error: S3MountError, *, nth: int = 1, times: int = 1) -> None:
        """Fail the ``nth`` call of ``kind`` from now on, and the ``times - 1`` after it."""
        _check_kind(kind)
        if nth < 1 or times < 1:
            raise ValueError("nth and times count from 1")
        with self._lock:
            self._faults[kind] = _Fault(nth - 1, times, error)

    def slow(self, kind: str, seconds: float) -> None:
        """Delay every call of ``kind`` by ``seconds`` (0: no more delay)."""
        _check_kind(kind)
        with self._lock:
            self._delays[kind] = seconds

    def expire_keys(self) -> None:
        """Every call fails as with keys rejected and not renewable, until ``renew_keys``."""
        self._expired = True

    def renew_keys(self) -> None:
        self._expired = False

    def clear(self) -> None:
        """No more faults, delays or expired keys (the counters stay)."""
        with self._lock:
            self._faults.clear()
            self._delays.clear()
            self._expired = False

    def armed(self, kind: str) -> bool:
        """True while a ``fail`` of ``kind`` has calls left to fail."""
        with self._lock:
            return kind in self._faults

    # -- the gate every call passes ------------------------------------------------------------

    def _enter(self, kind: str, what: str) -> None:
        """Count the call, wait if it is slowed, raise if it is to fail."""
        with self._lock:
            self.calls[kind] += 1
            delay = self._delays.get(kind, 0.0)
            error: S3MountError | None = None
            if self._expired:
                error = AccessDenied(f"{kind} {what!r}: credentials rejected and not renewable")
            elif (fault := self._faults.get(kind)) is not None:
                if fault.skip:
                    fault.skip -= 1
                else:
                    fault.times -= 1
                    if not fault.times:
                        del self._faults[kind]
                    error = fault.error
            if error is not None:
                self.failed[kind] += 1
        if delay > 0:
            time.sleep(delay)
        if error is not None:
            raise error

    def _call(self, kind: str, what: str, fn: Callable[[], T]) -> T:
        self._enter(kind, what)
        return fn()

    # -- ObjectStore -----------------------------------------------------------------------------

    def check(self) -> None:
        self._call("check", "", self.store.check)

    def head(self, key: str) -> ObjectInfo:
        return self._call("head", key, lambda: self.store.head(key))

    def peek(self, key: str, length: int) -> tuple[ObjectInfo, bytes]:
        return self._call("peek", key, lambda: self.store.peek(key, length))

    def head_many(self, keys: list[str]) -> dict[str, ObjectInfo | S3MountError]:
        """A failed ``head_many`` fails every key (as the real store's one deadline for
        the group would, on a server that does not answer)."""
        try:
            self._enter("head_many", keys[0] if keys else "")
        except S3MountError as exc:
            return dict.fromkeys(keys, exc)
        return self.store.head_many(keys)

    def list_page(
        self, prefix: str, *, delimiter: str | None = "/", token: str | None = None,
        max_keys: int = 1000, start_after: str | None = None,
    ) -> ListPage:
        return self._call("list_page", prefix, lambda: self.store.list_page(
            prefix, delimiter=delimiter, token=token, max_keys=max_keys,
            start_after=start_after))

    def get_range(self, key: str, start: int, length: int, *, etag: str | None = None) -> bytes:
        return self._call("get_range", key,
                          lambda: self.store.get_range(key, start, length, etag=etag))

    def download(self, key: str, out: BinaryIO, *, size: int, etag: str | None = None) -> None:
        self._call("download", key, lambda: self.store.download(key, out, size=size, etag=etag))

    def put(self, key: str, data: bytes, *, metadata: Mapping[str, str],
            content_type: str | None = None) -> str:
        return self._call("put", key, lambda: self.store.put(
            key, data, metadata=metadata, content_type=content_type))

    def upload(self, key: str, path: str, *, metadata: Mapping[str, str],
               content_type: str | None = None,
               progress: Callable[[int], None] | None = None) -> str:
        return self._call("upload", key, lambda: self.store.upload(
            key, path, metadata=metadata, content_type=content_type, progress=progress))

    def create_multipart(self, key: str, *, metadata: Mapping[str, str],
                         content_type: str | None = None) -> str:
        return self._call("create_multipart", key, lambda: self.store.create_multipart(
            key, metadata=metadata, content_type=content_type))

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        return self._call("upload_part", key,
                          lambda: self.store.upload_part(key, upload_id, number, data))

    def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> str:
        return self._call("complete_multipart", key,
                          lambda: self.store.complete_multipart(key, upload_id, parts))

    def abort_multipart(self, key: str, upload_id: str) -> bool:
        try:
            self._enter("abort_multipart", key)
        except S3MountError:
            return False
        return self.store.abort_multipart(key, upload_id)

    def copy(self, src: str, dst: str, *, metadata: Mapping[str, str] | None = None,
             size: int | None = None) -> str:
        return self._call("copy", src,
                          lambda: self.store.copy(src, dst, metadata=metadata, size=size))

    def delete(self, key: str) -> None:
        self._call("delete", key, lambda: self.store.delete(key))


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown kind of store call {kind!r}; one of {', '.join(KINDS)}")
