"""An ``ObjectStore`` held in memory, for tests that need a bucket but not a server.

It keeps S3's rules where the filesystem depends on them, so a test that passes here passes on a
real server for the same reasons (``tests/test_store_contract.py`` holds both to one set of
tests): ETags as S3 computes them (the body's MD5; ``md5-of-the-parts'-md5s-N`` after a multipart
upload), whole-second ``LastModified``, user metadata with lower-case names, ``If-Match`` on reads,
listings in key order with a delimiter, ``start_after`` and opaque continuation tokens, copies
that keep or replace the metadata, and multipart uploads whose parts (all but the last at least
``min_part_size``) are completed with their ETags (in part-number order, as the S3 store sends
them whatever order it is given).

One lock guards the whole bucket, so calls from the core's worker threads see each other
atomically, as requests to one server do.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import mimetypes
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import BinaryIO

from ..errors import NotFound, PreconditionFailed, S3MountError
from .base import ListPage, ObjectInfo, multipart_etag

MiB = 1024 * 1024
S3_MIN_PART = 5 * MiB
"""S3 refuses a multipart upload whose parts but the last are smaller (EntityTooSmall)."""


@dataclass(frozen=True)
class _Object:
    data: bytes
    etag: str
    last_modified: float
    metadata: Mapping[str, str]
    content_type: str

    def info(self, key: str, *, listed: bool = False) -> ObjectInfo:
        """As HEAD describes it, or (``listed``) as a listing does: without the metadata."""
        return ObjectInfo(key=key, size=len(self.data), etag=self.etag,
                          last_modified=self.last_modified,
                          metadata=None if listed else dict(self.metadata),
                          content_type=None if listed else self.content_type)


@dataclass
class _Upload:
    key: str
    metadata: Mapping[str, str]
    content_type: str
    parts: dict[int, tuple[bytes, str]] = field(default_factory=dict)


class MemoryStore:
    """One bucket in memory (see module docstring)."""

    def __init__(self, *, part_size: int = 8 * MiB, min_part_size: int = S3_MIN_PART,
                 clock: Callable[[], float] = time.time) -> None:
        self.part_size = part_size
        """``upload`` of a larger file goes in parts of this size, as the S3 store's does."""
        self.min_part_size = min_part_size
        self._clock = clock
        self._lock = threading.Lock()
        self._objects: dict[str, _Object] = {}
        self._uploads: dict[str, _Upload] = {}
        self._ids = itertools.count(1)

    # -- for tests: the bucket as another client sees it ---------------------------------------

    def objects(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object under ``prefix``, in key order, as HEAD describes it."""
        with self._lock:
            return [self._objects[k].info(k) for k in sorted(self._objects)
                    if k.startswith(prefix)]

    def body(self, key: str) -> bytes:
        """The content of ``key`` (NotFound when absent)."""
        with self._lock:
            return self._get(key, "get").data

    # -- ObjectStore -----------------------------------------------------------------------------

    def check(self) -> None:
        """The bucket always exists and may be listed."""

    def head(self, key: str) -> ObjectInfo:
        with self._lock:
            return self._get(key, "head").info(key)

    def peek(self, key: str, length: int) -> tuple[ObjectInfo, bytes]:
        with self._lock:
            obj = self._get(key, "get")
            return obj.info(key), obj.data[:max(length, 0)]

    def head_many(self, keys: list[str]) -> dict[str, ObjectInfo | S3MountError]:
        out: dict[str, ObjectInfo | S3MountError] = {}
        for key in keys:
            try:
                out[key] = self.head(key)
            except S3MountError as exc:
                out[key] = exc
        return out

    def list_page(
        self, prefix: str, *, delimiter: str | None = "/", token: str | None = None,
        max_keys: int = 1000, start_after: str | None = None,
    ) -> ListPage:
        """ListObjectsV2: keys under ``prefix`` in order, those sharing a part up to
        ``delimiter`` rolled into one common prefix; a page of at most ``max_keys`` entries
        (objects and prefixes together); the token continues after the page's last entry."""
        after, rolled = _untoken(token) if token else (start_after or "", False)
        with self._lock:
            keys = sorted(k for k in self._objects if k.startswith(prefix) and k > after)
            page = ListPage()
            for key in keys:
                if rolled and key.startswith(after):
                    continue  # inside the common prefix listed last
                if len(page.objects) + len(page.prefixes) >= max(max_keys, 1):
                    page.next_token = _token(after, rolled)
                    break
                cut = key.find(delimiter, len(prefix)) if delimiter else -1
                rolled = cut >= 0
                if rolled:
                    after = key[:cut + len(delimiter or "")]
                    page.prefixes.append(after)
                else:
                    after = key
                    page.objects.append(self._objects[key].info(key, listed=True))
            return page

    def get_range(self, key: str, start: int, length: int, *, etag: str | None = None) -> bytes:
        with self._lock:
            obj = self._get(key, "get", etag)
            return obj.data[start:start + length] if length > 0 else b""

    def download(self, key: str, out: BinaryIO, *, size: int, etag: str | None = None) -> None:
        with self._lock:
            data = self._get(key, "download", etag).data
        out.seek(0)
        out.truncate()
        out.write(data)

    def put(self, key: str, data: bytes, *, metadata: Mapping[str, str],
            content_type: str | None = None) -> str:
        return self._store(key, bytes(data), _md5(data), metadata, content_type)

    def upload(self, key: str, path: str, *, metadata: Mapping[str, str],
               content_type: str | None = None,
               progress: Callable[[int], None] | None = None) -> str:
        with open(path, "rb") as f:
            data = f.read()
        if len(data) <= self.part_size:
            etag = self.put(key, data, metadata=metadata, content_type=content_type)
        else:
            parts = [data[i:i + self.part_size] for i in range(0, len(data), self.part_size)]
            etag = self._store(key, data, multipart_etag([_md5(p) for p in parts]), metadata,
                               content_type)
        if progress is not None:
            progress(len(data))
        return etag

    def create_multipart(self, key: str, *, metadata: Mapping[str, str],
                         content_type: str | None = None) -> str:
        with self._lock:
            upload_id = f"upload-{next(self._ids)}"
            self._uploads[upload_id] = _Upload(key, _lower(metadata),
                                               content_type or _guess_type(key))
            return upload_id

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        if not 1 <= number <= 10000:
            raise S3MountError(f"upload-part {key!r}: part number {number} out of 1..10000")
        with self._lock:
            up = self._upload(key, upload_id, "upload-part")
            etag = _md5(data)
            up.parts[number] = (bytes(data), etag)
            return f'"{etag}"'  # as S3 sends it, quoted; complete accepts it either way

    def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> str:
        where = f"complete-multipart {key!r}"
        with self._lock:
            up = self._upload(key, upload_id, "complete-multipart")
            parts = sorted(parts)
            numbers = [n for n, _ in parts]
            if not parts or len(set(numbers)) != len(numbers):
                raise S3MountError(f"{where}: InvalidPartOrder (each part once)")
            chunks = []
            for i, (n, etag) in enumerate(parts):
                have = up.parts.get(n)
                if have is None or have[1] != etag.strip('"'):
                    raise S3MountError(f"{where}: InvalidPart {n}")
                if i < len(parts) - 1 and len(have[0]) < self.min_part_size:
                    raise S3MountError(f"{where}: EntityTooSmall (part {n})")
                chunks.append(have[0])
            del self._uploads[upload_id]
            return self._put_locked(key, b"".join(chunks),
                                    multipart_etag([e for _, e in parts]), up.metadata,
                                    up.content_type)

    def abort_multipart(self, key: str, upload_id: str) -> bool:
        with self._lock:
            self._uploads.pop(upload_id, None)  # an unknown upload is no error: it is gone
        return True

    def copy(self, src: str, dst: str, *, metadata: Mapping[str, str] | None = None,
             size: int | None = None) -> str:
        with self._lock:
            obj = self._get(src, "copy")
            etag = obj.etag if "-" not in obj.etag else _md5(obj.data)
            if metadata is None:
                return self._put_locked(dst, obj.data, etag, obj.metadata, obj.content_type)
            return self._put_locked(dst, obj.data, etag, _lower(metadata), _guess_type(dst))

    def delete(self, key: str) -> None:
        with self._lock:
            self._objects.pop(key, None)

    # -- inside ----------------------------------------------------------------------------------

    def _get(self, key: str, what: str, etag: str | None = None) -> _Object:
        """The object at ``key`` (caller holds the lock); NotFound, or PreconditionFailed when
        ``etag`` is given and is not the object's (If-Match)."""
        obj = self._objects.get(key)
        if obj is None:
            raise NotFound(f"{what} {key!r}: no such object")
        if etag is not None and etag.strip('"') != obj.etag:
            raise PreconditionFailed(f"{what} {key!r}: object changed meanwhile")
        return obj

    def _upload(self, key: str, upload_id: str, what: str) -> _Upload:
        up = self._uploads.get(upload_id)
        if up is None or up.key != key:
            raise NotFound(f"{what} {key!r}: no such upload")
        return up

    def _store(self, key: str, data: bytes, etag: str, metadata: Mapping[str, str],
               content_type: str | None) -> str:
        with self._lock:
            return self._put_locked(key, data, etag, _lower(metadata),
                                    content_type or _guess_type(key))

    def _put_locked(self, key: str, data: bytes, etag: str, metadata: Mapping[str, str],
                    content_type: str) -> str:
        # LastModified in whole seconds, as HEAD reports it.
        self._objects[key] = _Object(data, etag, float(int(self._clock())), dict(metadata),
                                     content_type)
        return etag


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _lower(metadata: Mapping[str, str]) -> dict[str, str]:
    """User metadata as S3 hands it back: names in lower case."""
    return {k.lower(): v for k, v in metadata.items()}


def _guess_type(key: str) -> str:
    return mimetypes.guess_type(key)[0] or "application/octet-stream"


def _token(after: str, rolled: bool) -> str:
    """An opaque continuation token (S3's are too: callers must not build them): the last entry
    of the page, and whether it was a common prefix (then everything under it is done)."""
    return base64.urlsafe_b64encode(("P" if rolled else "O").encode() + after.encode()).decode()


def _untoken(token: str) -> tuple[str, bool]:
    try:
        raw = base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        raw = ""
    if raw[:1] not in ("P", "O"):
        raise S3MountError("list: the continuation token is not valid")
    return raw[1:], raw[0] == "P"
