"""AWS Signature Version 4 for S3 requests, as botocore's ``S3SigV4Auth`` computes it.

Why not botocore's signer: it cost about a fifth of the CPU of a HEAD (building an ``AWSRequest``,
a case-insensitive header map built twice, four HMACs per request for the signing key), and a
cold ``ls -l`` is a HEAD per entry on a 2-core machine where the mount's CPU is the wall time
(bench/README.md, issue #18). This signer builds the canonical request from what ``lean`` already
has (the encoded path and query, a plain dict of headers) and derives the signing key once per
(secret, day, region). ``tests/test_sigv4.py`` checks it against botocore's signer on generated
requests: botocore stays the definition of what is right, this is only the cheaper way there.

What it signs (botocore's choices for S3): every header but the hop-by-hop and tracing ones
(``UNSIGNED_HEADERS``), ``host`` as botocore derives it from the URL (the default port left out),
the path as given (S3 is not normalised), the query pairs sorted, and the payload's SHA-256 over
plain HTTP or ``UNSIGNED-PAYLOAD`` over TLS.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

from .base import KeySet

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
UNSIGNED_HEADERS = frozenset({
    "baggage", "connection", "expect", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "te", "traceparent", "tracestate", "trailer", "transfer-encoding", "upgrade", "user-agent",
    "x-amzn-trace-id"})
"""botocore's ``SIGNED_HEADERS_BLACKLIST``: headers a proxy may change or drop on the way."""


class Signer:
    """Signs requests to one endpoint (``host`` as sent, ``region``) with the keys given per
    request; remembers the signing key of the latest (secret, day)."""

    def __init__(self, host: str, region: str, *, sign_payload: bool) -> None:
        self.host = host
        self.region = region
        self.sign_payload = sign_payload
        self._key: tuple[str, str, bytes] | None = None  # (secret, day, signing key)

    def sign(self, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes,
             keys: KeySet, now: float | None = None) -> dict[str, str]:
        """``headers`` with the date, token, payload hash and ``Authorization`` added.
        ``path`` and ``query`` are URL-encoded as sent (the query as ``k=v`` pairs joined by
        ``&``, in any order)."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        day = stamp[:8]
        out = dict(headers)
        out["X-Amz-Date"] = stamp
        if keys.session_token:
            out["X-Amz-Security-Token"] = keys.session_token
        payload = hashlib.sha256(body).hexdigest() if self.sign_payload else UNSIGNED_PAYLOAD
        out["X-Amz-Content-SHA256"] = payload
        signed = {"host": self.host}
        for name, value in out.items():
            lname = name.lower()
            if lname not in UNSIGNED_HEADERS:
                signed[lname] = " ".join(value.split())
        names = sorted(signed)
        signed_names = ";".join(names)
        pairs = sorted(p.partition("=")[::2] for p in query.split("&")) if query else []
        canonical_query = "&".join(f"{k}={v}" for k, v in pairs)
        canonical = "\n".join((
            method, path, canonical_query,
            "".join(f"{n}:{signed[n]}\n" for n in names), signed_names, payload))
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(("AWS4-HMAC-SHA256", stamp, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()))
        signature = hmac.digest(self._signing_key(keys.secret_key, day), to_sign.encode(),
                                "sha256").hex()
        out["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={keys.access_key}/{scope}, "
                                f"SignedHeaders={signed_names}, Signature={signature}")
        return out

    def _signing_key(self, secret: str, day: str) -> bytes:
        cached = self._key
        if cached is not None and cached[0] == secret and cached[1] == day:
            return cached[2]
        key = f"AWS4{secret}".encode()
        for part in (day, self.region, "s3", "aws4_request"):
            key = hmac.digest(key, part.encode(), "sha256")
        self._key = (secret, day, key)
        return key


def host_of(scheme: str, netloc: str) -> str:
    """The ``host`` botocore signs for a URL's netloc: lowercase, without user info, without
    the scheme's default port."""
    host = netloc.rpartition("@")[2].lower()
    default = {"http": ":80", "https": ":443"}.get(scheme)
    if default and host.endswith(default) and not host.endswith("]"):
        host = host[:-len(default)]
    return host
