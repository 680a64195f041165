"""The request policy: what a failed attempt means, and the one retry loop, with one deadline.

Every store call runs its requests through ``RequestPolicy.run``. Lower layers make exactly one
attempt (``lean.LeanS3``), so this module alone decides, for every request the mount sends:

* **what a failure means** (``classify``): try again (no answer, a 5xx, throttling), renew the
  keys and try again once (the keys expired or were revoked), or give up with the error the
  filesystem turns into an errno (404 ENOENT, 412 ESTALE, a refusal EACCES, ...);
* **when to stop**: ``timeout`` seconds after the operation started, however many attempts that
  allows. The start is when the filesystem asked (``base.operation_started``), not when a worker
  thread got to it, so an operation queued behind others on a silent server still ends within
  ``timeout`` of its own start (issue #16: before this, urllib3's, botocore's and s3transfer's
  retries stacked and three operations at once ended after 36, 72 and 108 s for ``timeout=20``).

Each attempt waits at most a sixth of ``timeout`` for an answer (a third for requests on which
servers work before answering: completing a multipart upload, copies), never past the deadline,
so a connection that went silent costs one attempt, not the whole budget. Between attempts it
backs off with full jitter, at most ``MAX_BACKOFF``.
"""

from __future__ import annotations

import enum
import errno
import logging
import random
import re
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from ..errors import (
    AccessDenied,
    CredentialsExpired,
    FsError,
    NotFound,
    PreconditionFailed,
    Refused,
    S3MountError,
    Unavailable,
)
from .base import KeySet, operation_started
from .lean import Attempt, HttpError, TlsError, TransportError

log = logging.getLogger(__name__)

T = TypeVar("T")

CONNECT_MAX = 5.0
"""Seconds an attempt may spend connecting (less when the deadline is nearer)."""
BASE_BACKOFF = 0.1
MAX_BACKOFF = 2.0
MIN_ATTEMPT = 0.05
"""An attempt that would have less than this before the deadline is not started."""

# Error codes that mean "these keys are no good (any more)": renew and retry once.
RENEWABLE_CODES = frozenset(
    {"ExpiredToken", "InvalidToken", "InvalidAccessKeyId", "SignatureDoesNotMatch",
     "TokenRefreshRequired", "InvalidClientTokenId"}
)
# Servers differ: RGW answers AccessDenied for expired STS keys. We renew on AccessDenied only when
# the keys are this close to (or past) their expiry, so a plain policy denial does not loop.
ACCESS_DENIED_RENEW_WINDOW = 300.0
RETRY_CODES = frozenset({"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout",
                         "RequestTimeoutException", "Throttling", "ThrottlingException",
                         "TooManyRequestsException"})
CREATES = frozenset({"put", "create-multipart"})
"""Requests that name a new object: an answer below that means the server will not hold it."""
REFUSED_STATUSES = frozenset({400, 404, 411, 413, 414})
OBJECT_ERRNOS = {"KeyTooLongError": errno.ENAMETOOLONG, "EntityTooLarge": errno.EFBIG}
"""What the server says about an object it cannot hold, as the errno the caller gets."""
# Answers to a request in CREATES that do not mean "this object cannot be stored": a missing
# bucket (it may be made again), a region to use, keys to renew (above), and a body that arrived
# damaged or short (the next attempt sends it again).
NOT_REFUSALS = frozenset({"NoSuchBucket", "AuthorizationHeaderMalformed", "PermanentRedirect",
                          "BadDigest", "InvalidDigest", "IncompleteBody",
                          "XAmzContentSHA256Mismatch"})


class Verdict(enum.Enum):
    RETRY = "retry"
    RENEW = "renew keys and retry once"
    FAIL = "give up"


class KeySource(Protocol):
    """What the store needs from the credential side (the refresher implements it)."""

    def current(self) -> KeySet: ...

    def renew_after_rejection(self, rejected: KeySet) -> KeySet | None: ...


def classify(exc: Exception, where: str, keys: KeySet, *, head: bool = False,
             creates: bool = False) -> tuple[Verdict, S3MountError]:
    """What one failed attempt means, and the error to raise if it is the last.

    ``creates``: the request names a new object (PUT, CreateMultipartUpload). A 4xx answer to
    it that is about neither the keys nor the bucket is about the object itself: its key (too
    long, a character the server cannot take: moto answers 404 to a newline) or its size or
    metadata. That is ``Refused``, which the writeback does not retry (S3 itself takes any
    UTF-8 key, so such names are not refused at create time)."""
    if isinstance(exc, TlsError):
        return Verdict.FAIL, S3MountError(_tls_message(exc))
    if isinstance(exc, TransportError):
        return Verdict.RETRY, Unavailable(f"{where}: {exc}: server unreachable or not answering")
    assert isinstance(exc, HttpError)
    code, status = exc.code, exc.status
    if creates and status in REFUSED_STATUSES and code not in NOT_REFUSALS | RENEWABLE_CODES \
            | RETRY_CODES and "x-amz-bucket-region" not in exc.headers:
        number = OBJECT_ERRNOS.get(code, errno.EIO)
        detail = f"{code}: {exc.message[:200]}" if exc.message else code
        return Verdict.FAIL, Refused(f"{where}: the server refuses this object ({detail})",
                                     errno=number)
    if code in ("NoSuchKey", "404", "NotFound", "NoSuchUpload"):
        return Verdict.FAIL, NotFound(f"{where}: no such object")
    if code == "NoSuchBucket":
        return Verdict.FAIL, NotFound(f"{where}: bucket does not exist")
    if code in ("PreconditionFailed", "412"):
        return Verdict.FAIL, PreconditionFailed(f"{where}: object changed meanwhile")
    if status in (301, 307) or code in ("PermanentRedirect", "TemporaryRedirect",
                                        "AuthorizationHeaderMalformed"):
        region = exc.headers.get("x-amz-bucket-region")
        if region:
            return Verdict.FAIL, S3MountError(
                f"{where}: the bucket is in region {region}: mount with -o region={region} "
                "(and that region's endpoint)")
    if code in RENEWABLE_CODES or (code == "400" and head):
        # HEAD errors have no body; an expired token looks like a bare 400
        return Verdict.RENEW, CredentialsExpired(f"{where}: {code}")
    if code == "RequestTimeTooSkewed":
        return Verdict.FAIL, AccessDenied(f"{where}: the local clock is off by more than 15 "
                                          "minutes")
    if code in ("AccessDenied", "403", "AllAccessDisabled"):
        if keys.remaining() < ACCESS_DENIED_RENEW_WINDOW or "expired" in exc.message.lower():
            return Verdict.RENEW, CredentialsExpired(f"{where}: AccessDenied near key expiry")
        return Verdict.FAIL, AccessDenied(f"{where}: access denied")
    if code == "EntityTooLarge":
        return Verdict.FAIL, FsError(f"{where}: object too large for the server",
                                     errno=OBJECT_ERRNOS[code])
    if code == "KeyTooLongError":
        return Verdict.FAIL, FsError(f"{where}: key too long", errno=OBJECT_ERRNOS[code])
    if status >= 500 or status == 429 or code in RETRY_CODES:
        return Verdict.RETRY, Unavailable(f"{where}: server error {code or status}")
    return Verdict.FAIL, S3MountError(f"{where}: {code or status}: {exc.message[:200]}")


class RequestPolicy:
    """Runs one request to its answer or its error within ``timeout`` of the operation's start."""

    def __init__(self, keys: KeySource, *, timeout: float, max_attempts: int) -> None:
        self._keys = keys
        self.timeout = timeout
        self.max_attempts = max_attempts

    def run(self, what: str, key: str, attempt: Callable[[KeySet, Attempt], T], *,
            slow: bool = False, deadline: float | None = None) -> T:
        """``attempt(keys, bounds)`` until it returns, a failure is final, or time is up.

        ``slow`` gives each attempt a third of ``timeout`` instead of a sixth; ``deadline`` (a
        ``time.monotonic()`` value) ends it earlier, for calls made of many requests."""
        where = f"{what} {key!r}" if key else what
        log.debug("%s", where)
        end = self.deadline()
        if deadline is not None:
            end = min(end, deadline)
        per_attempt = max(self.timeout / (3 if slow else 6), 1.0)
        keys = self._usable_keys(where)
        renewed = False
        number = 0
        while True:
            number += 1
            remaining = end - time.monotonic()
            bounds = Attempt(number, self.max_attempts, connect=min(CONNECT_MAX, remaining),
                             read=min(per_attempt, remaining), until=end)
            try:
                return attempt(keys, bounds)
            except (HttpError, TransportError, TlsError) as exc:
                verdict, err = classify(exc, where, keys, head=what == "head",
                                        creates=what in CREATES)
            if verdict is Verdict.FAIL:
                raise err
            if verdict is Verdict.RENEW:
                if renewed:
                    raise AccessDenied(str(err))
                log.info("%s: keys rejected (%s); renewing and retrying once", where, err)
                fresh = self._keys.renew_after_rejection(keys)
                if fresh is None:
                    raise AccessDenied(f"{where}: credentials rejected and not renewable")
                keys, renewed = fresh, True
                if end - time.monotonic() < MIN_ATTEMPT:
                    raise Unavailable(f"{where}: no time left within timeout={self.timeout:g}s "
                                      "after renewing the keys")
                continue
            pause = random.uniform(0, min(MAX_BACKOFF, BASE_BACKOFF * 2 ** (number - 1)))
            if number >= self.max_attempts or time.monotonic() + pause > end - MIN_ATTEMPT:
                raise Unavailable(f"{err} (gave up after {number} attempt(s) within "
                                  f"timeout={self.timeout:g}s)")
            time.sleep(pause)

    def deadline(self) -> float:
        """When (``time.monotonic()``) the operation making this call runs out of time:
        ``timeout`` after it started (``base.operation_started``), or from now."""
        now = time.monotonic()
        started = operation_started.get()
        return (started if started is not None and started < now else now) + self.timeout

    def _usable_keys(self, where: str) -> KeySet:
        keys = self._keys.current()
        if keys.expired():
            renewed = self._keys.renew_after_rejection(keys)
            if renewed is None:
                raise CredentialsExpired(f"{where}: credentials expired and renewal failed")
            keys = renewed
        return keys


def _tls_message(exc: TlsError) -> str:
    """One line for a TLS failure: which server, what OpenSSL said, what the user can do."""
    reason = re.search(r"certificate verify failed: ([^(\]'\"]+)", exc.detail)
    if reason is None:
        return f"TLS connection to {exc.origin} failed: {exc.detail[:200]}"
    return (f"the TLS certificate of {exc.origin} is not trusted ({reason.group(1).strip()}); "
            "give its CA with AWS_CA_BUNDLE=FILE, or mount with -o no_verify_ssl (insecure)")
