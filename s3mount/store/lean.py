"""The simple S3 requests, signed by botocore's signer and sent on a urllib3 pool.

Through a botocore client a HEAD costs about 1 ms of this process's CPU (parameter handling, event
hooks, response parsing), and HEAD, DELETE and LIST pages are the unit cost of ``ls -l``, ``rm -r``
and small-file reads: on radosgw over loopback the mount, not the server, was the bottleneck
(bench/README.md). Here the same requests are signed by botocore's own SigV4 signer and sent on a
urllib3 connection pool with urllib3's retry policy, for about a third of the CPU. Only requests
with small, in-memory bodies come here: HEAD, DELETE, GET of a bounded range, PUT of bytes, and
ListObjectsV2 pages; multipart uploads, managed transfers and copies stay on boto3.

Failures are raised as the botocore exceptions a client would raise (``ClientError`` with the
S3 error code and HTTP status, ``EndpointConnectionError``, ``SSLError``), so one translation in
``s3.py`` serves both paths, including renewing rejected keys.
"""

from __future__ import annotations

import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime
from urllib.parse import quote, unquote_plus, urlencode, urlsplit

import urllib3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import ReadOnlyCredentials
from botocore.exceptions import ClientError, EndpointConnectionError, SSLError
from urllib3.util.retry import Retry

from ..credentials.base import KeySet
from .base import ListPage, ObjectInfo

# What botocore's standard retry mode retries on besides connection errors.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
META = "x-amz-meta-"


class LeanS3:
    """Path-style requests to one bucket at one endpoint."""

    def __init__(self, endpoint_url: str, region: str, bucket: str, *, ca_certs: str | None,
                 verify: bool, connect_timeout: float, read_timeout: float, max_attempts: int,
                 pool_size: int) -> None:
        parts = urlsplit(endpoint_url)
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._bucket_path = f"{parts.path.rstrip('/')}/{quote(bucket, safe='')}"
        self._region = region
        # Bodies go unsigned over TLS, signed over plain HTTP: the rule s3.py gives boto3, told
        # to the signer the way a client's config tells it.
        self._signing = Config(s3={"payload_signing_enabled": parts.scheme != "https"})
        retry = Retry(
            total=max_attempts - 1, backoff_factor=0.5, backoff_max=20, backoff_jitter=0.5,
            status_forcelist=RETRY_STATUSES, raise_on_status=False, redirect=False,
            # Ignored: urllib3 would sleep a Retry-After in full, however long, past the
            # mount's timeout; the backoff above is what bounds a call.
            respect_retry_after_header=False,
        )
        kw: dict[str, object] = {
            "maxsize": pool_size, "retries": retry,
            "timeout": urllib3.Timeout(connect=connect_timeout, read=read_timeout),
        }
        if parts.scheme == "https":
            kw.update(cert_reqs="CERT_REQUIRED" if verify else "CERT_NONE", ca_certs=ca_certs)
        proxy = _proxy_for(parts.scheme, parts.hostname or "")
        manager = (urllib3.ProxyManager(proxy, num_pools=1, **kw) if proxy
                   else urllib3.PoolManager(num_pools=1, **kw))  # type: ignore[arg-type]
        self._pool = manager.connection_from_url(self._origin)
        # A plain-HTTP proxy wants the absolute URL in the request line (HTTPS goes through a
        # CONNECT tunnel and takes the path), as urllib3's ProxyManager itself does.
        self._absolute_target = bool(proxy) and parts.scheme == "http"

    # -- requests ----------------------------------------------------------------------------

    def head(self, key: str, keys: KeySet) -> ObjectInfo:
        r = self._send("HEAD", key, keys, "HeadObject")
        return _info(key, r.headers, int(r.headers.get("content-length", 0)))

    def peek(self, key: str, keys: KeySet, length: int) -> tuple[ObjectInfo, bytes]:
        """What ``head`` tells, and the object's first ``length`` bytes: one ranged GET. The
        size is the total of Content-Range (a server that ignores Range sends it all, 200)."""
        r = self._send("GET", key, keys, "GetObject", headers={"Range": f"bytes=0-{length - 1}"})
        total = r.headers.get("content-range", "").rpartition("/")[2] if r.status == 206 else ""
        return _info(key, r.headers, int(total) if total.isdigit() else len(r.data)), r.data

    def get(self, key: str, keys: KeySet, *, byte_range: tuple[int, int] | None = None,
            etag: str | None = None) -> bytes:
        """The object's bytes, or the inclusive ``byte_range`` of them."""
        headers = {}
        if byte_range is not None:
            headers["Range"] = f"bytes={byte_range[0]}-{byte_range[1]}"
        if etag:
            headers["If-Match"] = f'"{etag}"'
        return self._send("GET", key, keys, "GetObject", headers=headers).data

    def put(self, key: str, keys: KeySet, data: bytes, *, metadata: Mapping[str, str],
            content_type: str) -> str:
        headers = {"Content-Type": content_type, "Content-Length": str(len(data))}
        headers.update({META + k: v for k, v in metadata.items()})
        r = self._send("PUT", key, keys, "PutObject", headers=headers, body=data)
        return r.headers.get("etag", "").strip('"')

    def delete(self, key: str, keys: KeySet) -> None:
        self._send("DELETE", key, keys, "DeleteObject")

    def list_page(self, keys: KeySet, params: Mapping[str, str]) -> ListPage:
        """One ListObjectsV2 page; ``params`` are its query parameters (prefix, delimiter, ...).

        Keys are asked URL-encoded (as botocore does), so names with characters XML 1.0 cannot
        carry still arrive intact."""
        query = {"list-type": "2", "encoding-type": "url", **params}
        r = self._send("GET", None, keys, "ListObjectsV2", query=query)
        return _parse_listing(r.data)

    # -- plumbing ----------------------------------------------------------------------------

    def _send(self, method: str, key: str | None, keys: KeySet, op: str, *,
              headers: Mapping[str, str] | None = None, body: bytes = b"",
              query: Mapping[str, str] | None = None) -> urllib3.BaseHTTPResponse:
        target = self._bucket_path + ("/" + quote(key, safe="/~") if key is not None else "")
        if query:
            # Encoded as the canonical request wants it: the signer takes the query verbatim.
            target += "?" + urlencode(sorted(query.items()), quote_via=quote, safe="-_.~")
        req = AWSRequest(method=method, url=self._origin + target, headers=dict(headers or {}),
                         data=body)
        req.context["client_config"] = self._signing
        creds = ReadOnlyCredentials(keys.access_key, keys.secret_key, keys.session_token)
        S3SigV4Auth(creds, "s3", self._region).add_auth(req)
        try:
            # A connection pool takes the target verbatim (a PoolManager would normalise
            # "a/../b" in keys); the body is read whole here, so a body that breaks off is
            # retried like any other read error.
            r = self._pool.urlopen(method, self._origin + target if self._absolute_target
                                   else target, body=body or None,
                                   headers=dict(req.headers.items()), redirect=False,
                                   assert_same_host=False, preload_content=True,
                                   decode_content=False)
        except urllib3.exceptions.MaxRetryError as exc:
            if isinstance(exc.reason, urllib3.exceptions.SSLError):
                raise SSLError(endpoint_url=self._origin + target, error=exc.reason) from None
            raise EndpointConnectionError(endpoint_url=self._origin) from None
        except urllib3.exceptions.HTTPError:
            raise EndpointConnectionError(endpoint_url=self._origin) from None
        if r.status >= 300:
            raise _client_error(r, op)
        return r


def _proxy_for(scheme: str, host: str) -> str | None:
    """The proxy the environment names for this endpoint (HTTPS_PROXY, NO_PROXY...), as botocore
    would use it."""
    proxy = urllib.request.getproxies().get(scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        return proxy
    return None


def _client_error(r: urllib3.BaseHTTPResponse, op: str) -> ClientError:
    """The ClientError botocore would raise: the XML error's code, or the status for bodiless
    answers (HEAD)."""
    code, message = str(r.status), ""
    if r.data:
        try:
            root = ET.fromstring(r.data)
            code = root.findtext("Code") or code
            message = root.findtext("Message") or ""
        except ET.ParseError:
            pass
    return ClientError({"Error": {"Code": code, "Message": message},
                        "ResponseMetadata": {"HTTPStatusCode": r.status,
                                             "HTTPHeaders": dict(r.headers)}}, op)


def _info(key: str, h: Mapping[str, str], size: int) -> ObjectInfo:
    return ObjectInfo(
        key=key, size=size, etag=h.get("etag", "").strip('"'),
        last_modified=parsedate_to_datetime(h["last-modified"]).timestamp(),
        metadata={k[len(META):].lower(): v for k, v in h.items() if k.lower().startswith(META)},
        content_type=h.get("content-type"),
    )


def _parse_listing(data: bytes) -> ListPage:
    root = ET.fromstring(data)
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    page = ListPage()
    for c in root.iterfind(ns + "Contents"):
        page.objects.append(ObjectInfo(
            key=unquote_plus(c.findtext(ns + "Key") or ""),
            size=int(c.findtext(ns + "Size") or 0),
            etag=(c.findtext(ns + "ETag") or "").strip('"'),
            last_modified=datetime.fromisoformat(c.findtext(ns + "LastModified") or "")
            .timestamp(),
        ))
    page.prefixes = [unquote_plus(p.findtext(ns + "Prefix") or "")
                     for p in root.iterfind(ns + "CommonPrefixes")]
    if (root.findtext(ns + "IsTruncated") or "").lower() == "true":
        page.next_token = root.findtext(ns + "NextContinuationToken")
    return page
