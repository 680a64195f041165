"""The ``ObjectStore`` interface the filesystem core talks to.

All methods are blocking (the core runs them in worker threads) and raise only the error types of
``s3mount.errors``. Keys are full keys inside the bucket; the store knows nothing of directories,
inodes or the mount's prefix.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from ..errors import S3MountError

operation_started: ContextVar[float | None] = ContextVar("operation_started", default=None)
"""When (``time.monotonic()``) the filesystem operation that makes the store call started. The
caller sets it before handing the call to a worker thread (which copies the context), so the
call's ``timeout`` counts from there: time spent queued behind other calls counts too."""


@dataclass(frozen=True)
class KeySet:
    """One set of S3 credentials plus where to use them. Secrets never appear in ``repr``, so a
    stray log line or traceback cannot leak them.

    ``expires_at`` is wall-clock epoch seconds (not a monotonic clock: it must keep counting through a
    suspend); None means the keys do not expire on their own.
    """

    access_key: str
    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    expires_at: float | None = None
    endpoint_url: str | None = None
    region: str | None = None
    bucket: str | None = None

    def remaining(self, now: float | None = None) -> float:
        """Seconds until expiry (``inf`` for keys that do not expire)."""
        if self.expires_at is None:
            return float("inf")
        return self.expires_at - (time.time() if now is None else now)

    def expired(self, now: float | None = None) -> bool:
        return self.remaining(now) <= 0


@dataclass(frozen=True)
class ObjectInfo:
    """What we know of one object.

    ``metadata`` is the user metadata (``x-amz-meta-*`` without the prefix, lower-case names), or None
    when the info came from a listing, which does not carry it.
    """

    key: str
    size: int
    etag: str
    last_modified: float
    metadata: Mapping[str, str] | None = None
    content_type: str | None = None


@dataclass
class ListPage:
    """One page of a delimited listing."""

    objects: list[ObjectInfo] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)
    next_token: str | None = None


class ObjectStore(Protocol):
    """One bucket on an S3-compatible server."""

    def check(self) -> None:
        """Raise unless the bucket exists and the keys may list it (used once at mount)."""

    def head(self, key: str) -> ObjectInfo:
        """Metadata of ``key``; NotFound when absent."""

    def peek(self, key: str, length: int) -> tuple[ObjectInfo, bytes]:
        """``head``, and the first ``length`` bytes (all of a small object), in one request."""

    def head_many(self, keys: list[str]) -> dict[str, ObjectInfo | S3MountError]:
        """``head`` of each key, one after the other in the calling thread (a group: the caller
        runs groups in parallel): the info, or the error (NotFound when absent)."""

    def list_page(
        self, prefix: str, *, delimiter: str | None = "/", token: str | None = None,
        max_keys: int = 1000, start_after: str | None = None,
    ) -> ListPage:
        """One page of ListObjectsV2 under ``prefix``."""

    def get_range(self, key: str, start: int, length: int, *, etag: str | None = None) -> bytes:
        """``length`` bytes from ``start`` (fewer at the end); PreconditionFailed if the ETag moved."""

    def download(self, key: str, out: BinaryIO, *, size: int, etag: str | None = None) -> None:
        """The whole object, of ``size`` bytes as last seen, into ``out`` (parallel ranged GETs
        for large objects); PreconditionFailed if the ETag moved."""

    def put(self, key: str, data: bytes, *, metadata: Mapping[str, str],
            content_type: str | None = None) -> str:
        """A single PUT; returns the new ETag."""

    def upload(self, key: str, path: str, *, metadata: Mapping[str, str],
               content_type: str | None = None,
               progress: Callable[[int], None] | None = None) -> str:
        """Upload the file at ``path`` (multipart with parallel parts above the threshold);
        returns the ETag. The caller keeps the file unchanged until this returns. ``progress``
        is called (from worker threads) with each number of bytes sent."""

    def create_multipart(self, key: str, *, metadata: Mapping[str, str],
                         content_type: str | None = None) -> str:
        """Start a multipart upload; returns its id (for writers that stream parts)."""

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        """Upload part ``number`` (1-based); returns the part's ETag."""

    def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> str:
        """Assemble the parts; returns the object's ETag."""

    def abort_multipart(self, key: str, upload_id: str) -> bool:
        """Abandon a multipart upload; False if the server could not be reached (retry later).
        Never raises."""

    def copy(self, src: str, dst: str, *, metadata: Mapping[str, str] | None = None,
             size: int | None = None) -> str:
        """Server-side copy (multipart copy when large). ``metadata`` replaces the source's when
        given, otherwise it is kept."""

    def delete(self, key: str) -> None:
        """Delete ``key``; deleting a missing key is not an error (S3 semantics)."""


def multipart_etag(part_etags: list[str]) -> str:
    """The ETag S3 servers give an object completed from these parts (unencrypted)."""
    digests = b"".join(bytes.fromhex(e.strip('"')) for e in part_etags)
    return f"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{len(part_etags)}"
