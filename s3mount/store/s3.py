"""The S3 ``ObjectStore``: the only code that talks to an S3 server.

Three modules, one path for every request:

* ``lean.py`` sends one request, one attempt (HEAD, ranged GET, PUT, DELETE, LIST pages, the
  multipart calls, copies), signed with the keys it is handed;
* ``policy.py`` decides what a failure means and runs the one retry loop, within one deadline per
  operation (the ``timeout`` option), renewing rejected keys once;
* this module composes requests into what the filesystem asks for: a file uploaded in parallel
  parts read from disk, a large object downloaded in parallel ranges pinned to its ETag, a
  large copy made of part copies, and a multipart completion whose answer was lost recognised
  by the object's ETag. S3 errors leave here as ``s3mount.errors``.

No boto3 here: its transfer manager retried on its own (a second loop that no deadline bounded)
and sent the same requests this module sends, for more CPU per request. The keys of each
request are the key source's current ones at that attempt: one source, read once per attempt.
"""

from __future__ import annotations

import logging
import mimetypes
import os
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, TypeVar

import botocore.httpsession
import botocore.session

from ..errors import AccessDenied, NotFound, S3MountError, Unavailable
from .base import KeySet, ListPage, ObjectInfo, multipart_etag
from .lean import Attempt, HttpError, LeanS3
from .policy import KeySource, RequestPolicy

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_PARTS = 10_000  # S3's limit on the parts of one multipart upload
COPY_IN_ONE = 4
"""Copies of objects up to this many parts are one CopyObject; larger ones copy parts in
parallel (a server copies a big object for long before it answers a single copy)."""


@dataclass(frozen=True)
class StoreConfig:
    """Connection and transfer settings of one mount."""

    bucket: str
    endpoint_url: str | None = None
    region: str | None = None
    verify_ssl: bool = True
    timeout: float = 60.0
    """Upper bound in seconds for one request, retries included, from its operation's start."""
    max_attempts: int = 6
    part_size: int = 8 * 1024 * 1024
    """Multipart part size; files up to this size go in one PUT."""
    max_concurrency: int = 8
    """Parallel parts per transfer."""
    max_pool_connections: int = 32
    addressing_style: str = "auto"


class S3Store:
    """``ObjectStore`` on one bucket of an S3-compatible server."""

    def __init__(self, config: StoreConfig, keys: KeySource) -> None:
        self.config = config
        self.bucket = config.bucket
        self._keys = keys
        self.policy = RequestPolicy(keys, timeout=config.timeout,
                                    max_attempts=config.max_attempts)
        self._conn_lock = threading.Lock()
        self._where: tuple[str | None, str | None] | None = None
        self._lean: LeanS3 | None = None
        self._abort_refused = False

    # -- connections -------------------------------------------------------------------------

    def _wire(self, keys: KeySet) -> LeanS3:
        """The connection pool to the keys' endpoint; rebuilt only when a provider moves it."""
        where = (keys.endpoint_url or self.config.endpoint_url, keys.region or self.config.region)
        with self._conn_lock:
            if self._lean is None or where != self._where:
                if self._lean is not None:
                    log.info("endpoint changed to %s; reconnecting", where[0])
                self._lean = self._connect(*where)
                self._where = where
            return self._lean

    def _connect(self, endpoint_url: str | None, region: str | None) -> LeanS3:
        c = self.config
        region = region or "us-east-1"
        # AWS_CA_BUNDLE / the config file's ca_bundle, else certifi's: what every AWS tool trusts.
        ca = botocore.httpsession.get_cert_path(
            botocore.session.Session().get_config_variable("ca_bundle") or True)
        return LeanS3(endpoint_url or f"https://s3.{region}.amazonaws.com", region, self.bucket,
                      ca_certs=ca if isinstance(ca, str) else None, verify=c.verify_ssl,
                      pool_size=c.max_pool_connections, addressing_style=c.addressing_style)

    def _call(self, what: str, key: str, fn: Callable[[LeanS3, KeySet, Attempt], T], *,
              slow: bool = False, deadline: float | None = None) -> T:
        return self.policy.run(what, key, lambda keys, t: fn(self._wire(keys), keys, t),
                               slow=slow, deadline=deadline)

    # -- ObjectStore -------------------------------------------------------------------------

    def check(self) -> None:
        # ListObjectsV2 with one key needs only s3:ListBucket (HeadBucket is not always allowed and
        # ListBuckets never is for scoped keys).
        self._call("check", "", lambda w, k, t: w.list_page(k, t, {"prefix": "",
                                                                    "max-keys": "1"}))

    def head(self, key: str) -> ObjectInfo:
        return self._call("head", key, lambda w, k, t: w.head(key, k, t))

    def peek(self, key: str, length: int) -> tuple[ObjectInfo, bytes]:
        def get(w: LeanS3, k: KeySet, t: Attempt) -> tuple[ObjectInfo, bytes]:
            try:
                return w.peek(key, k, t, length)
            except HttpError as exc:
                # An empty object has no byte 0; an archived one (Glacier) can be HEADed but
                # not read: either way what a HEAD says is still the answer.
                if exc.code not in ("InvalidRange", "InvalidObjectState"):
                    raise
                return w.head(key, k, t), b""

        return self._call("get", key, get)

    def head_many(self, keys: list[str]) -> dict[str, ObjectInfo | S3MountError]:
        """HEADs of a few keys one after the other in the calling thread, under one deadline:
        one hand-off from the event loop for a group (handing each HEAD to a thread and back
        costs the loop as much CPU as the request). Parallelism is the caller's: it runs many
        groups at once (fs/listedattrs.py)."""
        deadline = self.policy.deadline()
        out: dict[str, ObjectInfo | S3MountError] = {}
        for key in keys:
            try:
                out[key] = self._call("head", key, lambda w, k, t, key=key: w.head(key, k, t),
                                      deadline=deadline)
            except S3MountError as exc:
                out[key] = exc
        return out

    def list_page(
        self, prefix: str, *, delimiter: str | None = "/", token: str | None = None,
        max_keys: int = 1000, start_after: str | None = None,
    ) -> ListPage:
        params = {"prefix": prefix, "max-keys": str(max_keys)}
        if delimiter:
            params["delimiter"] = delimiter
        if token:
            params["continuation-token"] = token
        if start_after:
            params["start-after"] = start_after
        return self._call("list", prefix, lambda w, k, t: w.list_page(k, t, params))

    def get_range(self, key: str, start: int, length: int, *, etag: str | None = None) -> bytes:
        if length <= 0:
            return b""

        def get(w: LeanS3, k: KeySet, t: Attempt) -> bytes:
            try:
                return w.get(key, k, t, byte_range=(start, start + length - 1), etag=etag)
            except HttpError as exc:
                if exc.code == "InvalidRange":  # reading at or past the end
                    return b""
                raise

        return self._call("get", key, get)

    def download(self, key: str, out: BinaryIO, *, size: int, etag: str | None = None) -> None:
        out.seek(0)
        out.truncate()
        if size <= self.config.part_size:
            out.write(self._call("get", key, lambda w, k, t: w.get(key, k, t, etag=etag)))
            return
        # Parallel ranges, each pinned to the ETag (a change meanwhile is a 412, never a mix),
        # written in place: the caller's descriptor stays the file's.
        fd = out.fileno()

        def part(first: int) -> None:
            length = min(self.config.part_size, size - first)
            data = self.get_range(key, first, length, etag=etag)
            if len(data) != length:
                raise Unavailable(f"download {key!r}: {len(data)} of {length} bytes at {first} "
                                  "(the object is shorter than listed)")
            os.pwrite(fd, data, first)

        self._parallel(part, range(0, size, self.config.part_size))

    def put(self, key: str, data: bytes, *, metadata: Mapping[str, str],
            content_type: str | None = None) -> str:
        return self._call("put", key, lambda w, k, t: w.put(
            key, k, t, data, metadata=metadata, content_type=content_type or _guess_type(key)))

    def upload(self, key: str, path: str, *, metadata: Mapping[str, str],
               content_type: str | None = None,
               progress: Callable[[int], None] | None = None) -> str:
        size = os.path.getsize(path)
        if size <= self.config.part_size:
            with open(path, "rb") as f:
                etag = self.put(key, f.read(), metadata=metadata, content_type=content_type)
            if progress is not None:
                progress(size)
            return etag
        part_size = max(self.config.part_size, -(-size // MAX_PARTS))
        upload_id = self.create_multipart(key, metadata=metadata, content_type=content_type)
        # Each part is read from disk as it is sent: memory holds at most max_concurrency parts.
        with open(path, "rb") as f:
            fd = f.fileno()

            def send(n: int) -> tuple[int, str]:
                data = os.pread(fd, part_size, (n - 1) * part_size)
                etag = self.upload_part(key, upload_id, n, data)
                if progress is not None:
                    progress(len(data))
                return n, etag

            return self._assemble(key, upload_id, -(-size // part_size), send)

    def create_multipart(self, key: str, *, metadata: Mapping[str, str],
                         content_type: str | None = None) -> str:
        return self._call("create-multipart", key, lambda w, k, t: w.create_multipart(
            key, k, t, metadata=metadata, content_type=content_type or _guess_type(key)))

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        return self._call("upload-part", key, lambda w, k, t: w.upload_part(
            key, k, t, upload_id, number, data))

    def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> str:
        try:
            return self._call("complete-multipart", key, lambda w, k, t: w.complete_multipart(
                key, k, t, upload_id, parts), slow=True)
        except (Unavailable, NotFound) as exc:
            # An attempt that timed out may have been completed by the server all the same;
            # AWS answers the retry with the same success, but moto, MinIO and radosgw no
            # longer know the upload (404 or 500). The object tells: made of our parts, its
            # ETag is the MD5 of their MD5s and their count.
            try:
                want = multipart_etag([e for _, e in sorted(parts)])
                done = self.head(key).etag == want
            except (ValueError, S3MountError):  # a part ETag that is no MD5; no answer
                done = False
            if not done:
                raise
            log.info("complete-multipart %r: the retry failed (%s) but the object is ours",
                     key, exc)
            return want

    def abort_multipart(self, key: str, upload_id: str) -> bool:
        """Abandon a multipart upload; False when the server could not be reached (try again
        later). Refusals count as done: some providers (Cleverbase) do not allow aborting, and
        the parts are then left to the bucket's lifecycle rules."""
        try:
            self._call("abort-multipart", key, lambda w, k, t: w.abort_multipart(
                key, k, t, upload_id))
        except Unavailable:
            return False
        except NotFound:
            pass  # already gone: aborted, or completed after all
        except AccessDenied as exc:
            if not self._abort_refused:  # a policy, not a passing fault: say it once
                self._abort_refused = True
                log.warning("these keys may not abort multipart uploads (%s): unfinished ones "
                            "stay in the bucket until a lifecycle rule "
                            "(AbortIncompleteMultipartUpload) removes them", exc)
        except S3MountError as exc:
            log.info("could not abort multipart upload of %r (%s); its parts are left to expire",
                     key, exc)
        return True

    def copy(self, src: str, dst: str, *, metadata: Mapping[str, str] | None = None,
             size: int | None = None) -> str:
        content_type = _guess_type(dst) if metadata is not None else None
        if size is None or size <= self.config.part_size * COPY_IN_ONE:
            return self._call("copy", src, lambda w, k, t: w.copy(
                src, dst, k, t, metadata=metadata, content_type=content_type), slow=True)
        if metadata is None:  # kept: the new upload carries the source's
            info = self.head(src)
            metadata, content_type = info.metadata or {}, info.content_type
        part_size = max(self.config.part_size, -(-size // MAX_PARTS))
        upload_id = self.create_multipart(dst, metadata=metadata, content_type=content_type)

        def one(n: int) -> tuple[int, str]:
            first = (n - 1) * part_size
            last = min(first + part_size, size) - 1
            return n, self._call("copy-part", src, lambda w, k, t: w.upload_part_copy(
                src, dst, k, t, upload_id, n, first, last), slow=True)

        return self._assemble(dst, upload_id, -(-size // part_size), one)

    def delete(self, key: str) -> None:
        self._call("delete", key, lambda w, k, t: w.delete(key, k, t))

    # -- helpers -----------------------------------------------------------------------------

    def _assemble(self, key: str, upload_id: str, count: int,
                  part: Callable[[int], tuple[int, str]]) -> str:
        """Parts 1..count made by ``part`` in parallel, then completed; a failed part abandons
        the upload (its parts would otherwise stay in the bucket, billed)."""
        try:
            parts = self._parallel(part, range(1, count + 1))
        except S3MountError:
            self.abort_multipart(key, upload_id)
            raise
        return self.complete_multipart(key, upload_id, parts)

    def _parallel(self, fn: Callable[[int], T], items: range) -> list[T]:
        """``fn`` of every item, ``max_concurrency`` at a time; the first error stops the rest."""
        failed = threading.Event()

        def guarded(i: int) -> T:
            if failed.is_set():
                raise Unavailable("stopped: another part failed")
            try:
                return fn(i)
            except BaseException:
                failed.set()
                raise

        # The pool's threads start with an empty context: each part's requests get a timeout
        # of their own (a long transfer is many operations, not one).
        with ThreadPoolExecutor(max(1, min(self.config.max_concurrency, len(items)))) as pool:
            return list(pool.map(guarded, items))


def _guess_type(key: str) -> str:
    return mimetypes.guess_type(key)[0] or "application/octet-stream"
