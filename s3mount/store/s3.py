"""The S3 ``ObjectStore``: with ``lean.py``, the only code that talks to an S3 server.

The simple requests (HEAD, DELETE, LIST pages, small GET and PUT) go through ``lean.LeanS3``; the
managed transfers (multipart, parallel ranged downloads, copies) through a boto3 client on the same
endpoint (and a second one with fewer, longer attempts for requests the server works on before
it answers). Retrying lives in botocore and urllib3 (bounded attempts and timeouts); this module
adds two things on top: a request refused because the keys expired or were revoked renews them
(single flight, through the key source) and is retried once; a multipart completion whose answer
was lost is recognised by the object's ETag. S3 errors leave here as ``s3mount.errors``.
"""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import os
import re
import threading
import warnings
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol, TypeVar

import boto3.session
import botocore.credentials
import botocore.httpsession
import botocore.session
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, SSLError
from s3transfer.exceptions import RetriesExceededError as TransferRetriesExceeded
from s3transfer.subscribers import BaseSubscriber
from urllib3.exceptions import InsecureRequestWarning

from ..credentials.base import KeySet
from ..errors import (
    AccessDenied,
    CredentialsExpired,
    FsError,
    NotFound,
    PreconditionFailed,
    S3MountError,
    Unavailable,
)
from .base import ListPage, ObjectInfo
from .lean import LeanS3

log = logging.getLogger(__name__)

T = TypeVar("T")

# Error codes that mean "these keys are no good (any more)": renew and retry once.
RENEWABLE_CODES = frozenset(
    {"ExpiredToken", "InvalidToken", "InvalidAccessKeyId", "SignatureDoesNotMatch",
     "TokenRefreshRequired", "InvalidClientTokenId"}
)
# Servers differ: RGW answers AccessDenied for expired STS keys. We renew on AccessDenied only when
# the keys are this close to (or past) their expiry, so a plain policy denial does not loop.
ACCESS_DENIED_RENEW_WINDOW = 300.0


class KeySource(Protocol):
    """What the store needs from the credential side (the refresher implements it)."""

    def current(self) -> KeySet: ...

    def renew_after_rejection(self, rejected: KeySet) -> KeySet | None: ...


@dataclass(frozen=True)
class StoreConfig:
    """Connection and transfer settings of one mount."""

    bucket: str
    endpoint_url: str | None = None
    region: str | None = None
    verify_ssl: bool = True
    timeout: float = 60.0
    """Upper bound in seconds for one store call including retries (connect + read per attempt)."""
    max_attempts: int = 6
    part_size: int = 8 * 1024 * 1024
    """Multipart part size; files up to this size go in one PUT."""
    max_concurrency: int = 8
    """Parallel parts per transfer."""
    max_pool_connections: int = 32


class _LiveCredentials(botocore.credentials.Credentials):
    """botocore credentials that read the key source's current keys on every request.

    botocore asks the credentials object for a frozen copy each time it signs, so swapping keys in
    the refresher takes effect on the next request without rebuilding the client or disturbing
    requests in flight.
    """

    def __init__(self, source: KeySource) -> None:
        self._source = source
        super().__init__("", "", None, method="s3mount")

    def get_frozen_credentials(self) -> botocore.credentials.ReadOnlyCredentials:
        k = self._source.current()
        return botocore.credentials.ReadOnlyCredentials(k.access_key, k.secret_key, k.session_token)

    # botocore reads these attributes in a few places (e.g. presigning); keep them live too.
    @property
    def access_key(self) -> str:  # type: ignore[override]
        return self._source.current().access_key

    @access_key.setter
    def access_key(self, value: str) -> None:  # the base __init__ assigns it
        pass

    @property
    def secret_key(self) -> str:  # type: ignore[override]
        return self._source.current().secret_key

    @secret_key.setter
    def secret_key(self, value: str) -> None:
        pass

    @property
    def token(self) -> str | None:  # type: ignore[override]
        return self._source.current().session_token

    @token.setter
    def token(self, value: str | None) -> None:
        pass


class _LiveProvider(botocore.credentials.CredentialProvider):
    METHOD = "s3mount"
    CANONICAL_NAME = "s3mount"

    def __init__(self, creds: _LiveCredentials) -> None:
        super().__init__()
        self._creds = creds

    def load(self) -> botocore.credentials.Credentials:
        return self._creds


@dataclass(frozen=True)
class _Conn:
    """What one store call runs with: both request paths to the endpoint, and the keys to sign
    with (those the retry-after-renewal logic in ``_call`` reasons about)."""

    client: Any  # a boto3 S3 client (its type is generated at run time)
    slow: Any
    """The same client with fewer, longer attempts, for requests where the server does the work
    before it answers (completing a multipart upload, server-side copies): those may take
    seconds per hundred MiB on some servers (moto, MinIO) that send nothing meanwhile."""
    lean: LeanS3
    keys: KeySet


class _KnownObject(BaseSubscriber):  # type: ignore[misc]  # s3transfer has no type hints
    """Tells the transfer manager the size and ETag of the object we mean: it then skips its own
    HEAD and sends every ranged GET with If-Match, so a download of an object changed meanwhile
    fails (412) instead of bringing another version (it refuses IfMatch in ExtraArgs)."""

    def __init__(self, size: int, etag: str | None) -> None:
        self.size = size
        self.etag = etag

    def on_queued(self, future: Any, **kwargs: Any) -> None:
        future.meta.provide_transfer_size(self.size)
        if self.etag is not None:
            future.meta.provide_object_etag(f'"{self.etag}"')


class S3Store:
    """``ObjectStore`` on one bucket of an S3-compatible server."""

    def __init__(self, config: StoreConfig, keys: KeySource) -> None:
        self.config = config
        self.bucket = config.bucket
        self._keys = keys
        self._creds = _LiveCredentials(keys)
        self._conn_lock = threading.Lock()
        self._conn_key: tuple[str | None, str | None] | None = None
        self._paths: tuple[Any, Any, LeanS3] | None = None
        self._transfer_config = TransferConfig(
            multipart_threshold=config.part_size,
            multipart_chunksize=config.part_size,
            max_concurrency=config.max_concurrency,
            use_threads=True,
        )

    # -- connections -------------------------------------------------------------------------

    def _conn_for(self, keys: KeySet) -> _Conn:
        """Connections to the keys' endpoint; rebuilt only when a provider moves the endpoint."""
        where = (keys.endpoint_url or self.config.endpoint_url, keys.region or self.config.region)
        with self._conn_lock:
            if self._paths is None or where != self._conn_key:
                if self._paths is not None:
                    log.info("endpoint changed to %s; reconnecting", where[0])
                self._paths = self._connect(*where)
                self._conn_key = where
            return _Conn(*self._paths, keys)

    def _connect(self, endpoint_url: str | None, region: str | None) -> tuple[Any, Any, LeanS3]:
        c = self.config
        session = botocore.session.Session()
        session.get_component("credential_provider").insert_before(
            "env", _LiveProvider(self._creds)
        )
        per_attempt = max(c.timeout / max(c.max_attempts, 1), 1.0)
        connect_timeout = min(5.0, per_attempt)
        cfg = Config(
            region_name=region or "us-east-1",
            signature_version="s3v4",
            # Over TLS the body is already protected in transit, so requests go UNSIGNED-PAYLOAD
            # (as rclone and mountpoint-s3 send uploads): neither we nor the server hash every
            # byte with SHA-256. Over plain HTTP the signature is the body's only protection.
            s3={"addressing_style": "path",
                "payload_signing_enabled": (endpoint_url or "https:").lower().startswith("http:")},
            retries={"mode": "standard", "total_max_attempts": c.max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=per_attempt,
            max_pool_connections=c.max_pool_connections,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            tcp_keepalive=True,
            parameter_validation=False,  # our calls are well-formed; saves CPU per request
        )
        # A boto3 client (not a bare botocore one) for the managed transfers (upload_file,
        # copy, the transfer manager's downloads) that do parallel multipart.
        boto = boto3.session.Session(botocore_session=session)
        client = boto.client("s3", endpoint_url=endpoint_url, verify=_verify(c.verify_ssl),
                             config=cfg)
        # Both clients stay within ``timeout`` when the server says nothing at all: the slow one
        # splits it into at most 3 attempts (boto3's default count) instead of max_attempts.
        slow_attempts = min(c.max_attempts, 3)
        slow = boto.client("s3", endpoint_url=endpoint_url, verify=_verify(c.verify_ssl),
                           config=cfg.merge(Config(
                               read_timeout=max(c.timeout / max(slow_attempts, 1), 1.0),
                               retries={"mode": "standard",
                                        "total_max_attempts": slow_attempts})))
        # The lean path goes where the client goes (botocore resolves a missing endpoint from
        # the region) and trusts the same CAs (AWS_CA_BUNDLE / ca_bundle, else certifi's).
        lean = LeanS3(
            client.meta.endpoint_url, client.meta.region_name, self.bucket,
            ca_certs=botocore.httpsession.get_cert_path(
                session.get_config_variable("ca_bundle") or True),
            verify=c.verify_ssl, connect_timeout=connect_timeout, read_timeout=per_attempt,
            max_attempts=c.max_attempts, pool_size=c.max_pool_connections,
        )
        return client, slow, lean

    # -- the one wrapper every call goes through ----------------------------------------------

    def _call(self, what: str, key: str, fn: Callable[[_Conn], T]) -> T:
        """Run ``fn(conn)``; map errors; renew keys and retry once when they were rejected."""
        log.debug("%s %s", what, key)
        keys = self._keys.current()
        if keys.expired():
            renewed = self._keys.renew_after_rejection(keys)
            if renewed is None:
                raise CredentialsExpired(f"{what} {key!r}: credentials expired and renewal failed")
            keys = renewed
        try:
            return fn(self._conn_for(keys))
        except (ClientError, BotoCoreError) as exc:
            err = _translate(exc, what, key, keys)
            if not isinstance(err, CredentialsExpired):
                raise err from None
            log.info("%s %s: keys rejected (%s); renewing and retrying once", what, key or "/",
                     _code(exc) if isinstance(exc, ClientError) else type(exc).__name__)
            renewed = self._keys.renew_after_rejection(keys)
            if renewed is None:
                raise AccessDenied(f"{what} {key!r}: credentials rejected and not renewable") \
                    from None
        try:
            return fn(self._conn_for(renewed))
        except (ClientError, BotoCoreError) as exc:
            err = _translate(exc, what, key, renewed)
            if isinstance(err, CredentialsExpired):
                err = AccessDenied(str(err))
            raise err from None

    # -- ObjectStore -------------------------------------------------------------------------

    def check(self) -> None:
        # ListObjectsV2 with one key needs only s3:ListBucket (HeadBucket is not always allowed and
        # ListBuckets never is for scoped keys).
        self._call("check", "", lambda c: c.lean.list_page(c.keys, {"prefix": "",
                                                                     "max-keys": "1"}))

    def head(self, key: str) -> ObjectInfo:
        return self._call("head", key, lambda c: c.lean.head(key, c.keys))

    def peek(self, key: str, length: int) -> tuple[ObjectInfo, bytes]:
        def get(c: _Conn) -> tuple[ObjectInfo, bytes]:
            try:
                return c.lean.peek(key, c.keys, length)
            except ClientError as exc:
                # An empty object has no byte 0; an archived one (Glacier) can be HEADed but
                # not read: either way what a HEAD says is still the answer.
                if _code(exc) not in ("InvalidRange", "InvalidObjectState"):
                    raise
                return c.lean.head(key, c.keys), b""

        return self._call("get", key, get)

    def head_many(self, keys: list[str]) -> dict[str, ObjectInfo | S3MountError]:
        """One hand-off for a directory's worth of HEADs (``ls -l`` of a fresh directory): the
        caller's event loop would otherwise spend as much CPU per HEAD on handing each one to a
        thread and back as the request itself costs."""
        def one(key: str) -> ObjectInfo | S3MountError:
            try:
                return self.head(key)
            except S3MountError as exc:
                return exc

        if len(keys) <= 1:
            return {k: one(k) for k in keys}
        with ThreadPoolExecutor(min(len(keys), self.config.max_pool_connections)) as pool:
            return dict(zip(keys, pool.map(one, keys), strict=True))

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
        return self._call("list", prefix, lambda c: c.lean.list_page(c.keys, params))

    def get_range(self, key: str, start: int, length: int, *, etag: str | None = None) -> bytes:
        if length <= 0:
            return b""

        def get(c: _Conn) -> bytes:
            try:
                return c.lean.get(key, c.keys, byte_range=(start, start + length - 1), etag=etag)
            except ClientError as exc:
                if _code(exc) == "InvalidRange":  # reading at or past the end
                    return b""
                raise

        return self._call("get", key, get)

    def download(self, key: str, out: BinaryIO, *, size: int, etag: str | None = None) -> None:
        if size <= self.config.part_size:
            data = self._call("get", key, lambda c: c.lean.get(key, c.keys, etag=etag))
            out.seek(0)
            out.truncate()
            out.write(data)
            return
        known = [_KnownObject(size, etag)]

        def big(c: _Conn) -> None:
            # The transfer manager writes ranges into ``out`` in place (download_file would
            # write a temporary file and rename it over the path, orphaning the caller's
            # descriptor).
            out.seek(0)
            out.truncate()
            try:
                with create_transfer_manager(c.client, self._transfer_config) as manager:
                    manager.download(self.bucket, key, out, subscribers=known).result()
            except TransferRetriesExceeded as exc:
                # s3transfer fetches a range whose body broke off again by itself, then gives
                # up with its own error (not botocore's).
                raise Unavailable(f"download {key!r}: "
                                  f"{type(exc.last_exception).__name__} after retries") from None
        self._call("download", key, big)

    def put(self, key: str, data: bytes, *, metadata: Mapping[str, str],
            content_type: str | None = None) -> str:
        return self._call("put", key, lambda c: c.lean.put(
            key, c.keys, data, metadata=metadata, content_type=content_type or _guess_type(key)))

    def upload(self, key: str, path: str, *, metadata: Mapping[str, str],
               content_type: str | None = None) -> str:
        size = os.path.getsize(path)
        if size <= self.config.part_size:
            with open(path, "rb") as f:
                return self.put(key, f.read(), metadata=metadata, content_type=content_type)
        extra = {"Metadata": dict(metadata), "ContentType": content_type or _guess_type(key)}
        # By file name, the transfer manager streams each part from disk as it sends it, so
        # memory stays at a few buffers however large the file (a file object is read into
        # memory part by part, up to ten parts at a time).
        def send(c: _Conn) -> None:
            try:
                c.slow.upload_file(path, self.bucket, key, ExtraArgs=extra,
                                   Config=self._transfer_config)
            except S3UploadFailedError as exc:
                # The transfer manager wraps the request's error in its own; unwrapped, it is
                # mapped (and rejected keys renewed) like any other.
                if isinstance(exc.__context__, (ClientError, BotoCoreError)):
                    raise exc.__context__ from None
                raise

        self._call("upload", key, send)
        # The transfer manager does not hand back the ETag; one HEAD gets it.
        return self.head(key).etag

    def create_multipart(self, key: str, *, metadata: Mapping[str, str],
                         content_type: str | None = None) -> str:
        r = self._call("create-multipart", key, lambda c: c.client.create_multipart_upload(
            Bucket=self.bucket, Key=key, Metadata=dict(metadata),
            ContentType=content_type or _guess_type(key)))
        return str(r["UploadId"])

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        r = self._call("upload-part", key, lambda c: c.client.upload_part(
            Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data))
        return str(r["ETag"])

    def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> str:
        try:
            r = self._call("complete-multipart", key, lambda c: c.slow.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in parts]}))
            return str(r["ETag"]).strip('"')
        except (Unavailable, NotFound) as exc:
            # An attempt that timed out may have been completed by the server all the same;
            # AWS answers the retry with the same success, but moto, MinIO and radosgw no
            # longer know the upload (404 or 500). The object tells: made of our parts, its
            # ETag is the MD5 of their MD5s and their count.
            try:
                want = _multipart_etag([e for _, e in sorted(parts)])
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
            self._call("abort-multipart", key, lambda c: c.client.abort_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id))
        except Unavailable:
            return False
        except S3MountError as exc:
            log.info("could not abort multipart upload of %r (%s); its parts are left to expire",
                     key, exc)
        return True

    def copy(self, src: str, dst: str, *, metadata: Mapping[str, str] | None = None,
             size: int | None = None) -> str:
        extra: dict[str, object] = {}
        if metadata is not None:
            extra = {"Metadata": dict(metadata), "MetadataDirective": "REPLACE",
                     "ContentType": _guess_type(dst)}
        if size is not None and size <= self.config.part_size * 4:
            r = self._call("copy", src, lambda c: c.slow.copy_object(
                Bucket=self.bucket, Key=dst, CopySource={"Bucket": self.bucket, "Key": src},
                **extra))
            return r["CopyObjectResult"]["ETag"].strip('"')
        self._call("copy", src, lambda c: c.slow.copy(
            {"Bucket": self.bucket, "Key": src}, self.bucket, dst, ExtraArgs=extra or None,
            Config=self._transfer_config))
        return self.head(dst).etag

    def delete(self, key: str) -> None:
        self._call("delete", key, lambda c: c.lean.delete(key, c.keys))


def _multipart_etag(part_etags: list[str]) -> str:
    """The ETag S3 servers give an object completed from these parts (unencrypted)."""
    digests = b"".join(bytes.fromhex(e.strip('"')) for e in part_etags)
    return f"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{len(part_etags)}"


def _verify(verify_ssl: bool) -> bool | None:
    """botocore's ``verify``: None (not True) when verifying, so botocore reads the CA bundle
    from AWS_CA_BUNDLE / ``ca_bundle`` like every AWS tool (True would pin certifi's bundle and
    leave no way to trust a private CA but turning verification off)."""
    if verify_ssl:
        return None
    # The mount warned once; urllib3 would otherwise print a warning for every request.
    warnings.filterwarnings("ignore", category=InsecureRequestWarning)
    return False


def _guess_type(key: str) -> str:
    return mimetypes.guess_type(key)[0] or "application/octet-stream"


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _tls_message(exc: SSLError) -> str:
    """One line for a TLS failure: which server, what OpenSSL said, what the user can do."""
    url = str(exc.kwargs.get("endpoint_url", ""))
    server = re.match(r"[a-z]+://[^/?#]+", url)
    detail = str(exc.kwargs.get("error", ""))
    reason = re.search(r"certificate verify failed: ([^(\]]+)", detail)
    if reason is None:
        return f"TLS connection to {server.group(0) if server else url} failed: {detail[:200]}"
    return (f"the TLS certificate of {server.group(0) if server else url} is not trusted "
            f"({reason.group(1).strip()}); give its CA with AWS_CA_BUNDLE=FILE, or mount with "
            "-o no_verify_ssl (insecure)")


def _translate(exc: Exception, what: str, key: str, keys: KeySet) -> S3MountError:
    """Map a botocore error to ours. Messages name the operation and key, never a secret."""
    where = f"{what} {key!r}" if key else what
    if isinstance(exc, SSLError):
        return S3MountError(_tls_message(exc))
    if isinstance(exc, BotoCoreError):
        return Unavailable(f"{where}: {type(exc).__name__}: server unreachable or not answering")
    assert isinstance(exc, ClientError)
    code = _code(exc)
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    message = str(exc.response.get("Error", {}).get("Message", "") or "")
    if code in ("NoSuchKey", "404", "NotFound"):
        return NotFound(f"{where}: no such object")
    if code == "NoSuchBucket":
        return NotFound(f"{where}: bucket does not exist")
    if code in ("PreconditionFailed", "412"):
        return PreconditionFailed(f"{where}: object changed meanwhile")
    if code in RENEWABLE_CODES:
        return CredentialsExpired(f"{where}: {code}")
    if code == "400" and what == "head":  # HEAD errors have no body; an expired token looks so
        return CredentialsExpired(f"{where}: HTTP 400 on HEAD")
    if code == "RequestTimeTooSkewed":
        return AccessDenied(f"{where}: the local clock is off by more than 15 minutes")
    if code in ("AccessDenied", "403", "AllAccessDisabled"):
        if keys.remaining() < ACCESS_DENIED_RENEW_WINDOW or "expired" in message.lower():
            return CredentialsExpired(f"{where}: AccessDenied near key expiry")
        return AccessDenied(f"{where}: access denied")
    if code in ("EntityTooLarge",):
        return FsError(f"{where}: object too large for the server", errno=27)  # EFBIG
    if code in ("KeyTooLongError",):
        return FsError(f"{where}: key too long", errno=36)  # ENAMETOOLONG
    if status >= 500 or code in ("SlowDown", "ServiceUnavailable", "InternalError"):
        return Unavailable(f"{where}: server error {code or status} after retries")
    return S3MountError(f"{where}: {code or status}: {message[:200]}")
