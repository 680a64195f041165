"""One S3 request, one attempt: signed (``sigv4``, botocore's rules), sent on a pool of connections
(``http1``).

Every request the mount makes goes through ``LeanS3``, from a HEAD to a part of a multipart upload
or a server-side copy: one path, so one place decides how a request is addressed, signed, timed
and what its failure means. It makes exactly one attempt within the timeouts it is given and
raises what went wrong (``HttpError`` for an S3 error answer, ``TransportError`` when no answer
came, ``TlsError`` when the server could not be trusted); whether and when to try again is the
request policy's business (``policy.py``), which alone knows the operation's deadline.

Why not a botocore client: through one, a HEAD costs about three times the CPU (parameter
handling, event hooks, response parsing), and HEAD, DELETE and LIST pages are the unit cost of
``ls -l``, ``rm -r`` and small-file reads (bench/README.md). What SigV4 means is still botocore's
(``sigv4`` is checked against its signer), and botocore resolves the CA bundle. What a client did
besides, done here:

* addressing: ``path`` (``host/bucket/key``), ``virtual`` (``bucket.host/key``) or ``auto`` with
  botocore's rule (virtual for a bucket that is a plain DNS label, path for other names and for
  endpoints that are IP addresses);
* proxies from the environment (``HTTPS_PROXY``, ``NO_PROXY``...), with the user and password of
  the proxy URL sent as ``Proxy-Authorization``; a proxy is spoken to in plain HTTP (``http://``;
  an ``https://`` one is refused in one line), HTTPS to the endpoint goes through it in a tunnel;
* a bucket in another region answers 301 with ``x-amz-bucket-region``: ``HttpError`` carries it,
  and the policy reports it as one line naming the region to use;
* bodies unsigned over TLS (``UNSIGNED-PAYLOAD``: TLS protects them, and neither side hashes every
  byte uploaded), signed over plain HTTP, where nothing else protects them.
"""

from __future__ import annotations

import base64
import calendar
import ipaddress
import math
import re
import ssl
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from urllib.parse import quote, unquote, unquote_plus, urlencode, urlsplit

from ..errors import S3MountError
from . import http1
from .base import KeySet, ListPage, ObjectInfo
from .sigv4 import Signer, host_of

META = "x-amz-meta-"
ADDRESSING_STYLES = ("auto", "path", "virtual")
_DNS_LABEL = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


class HttpError(Exception):
    """The server answered with an error status; ``code`` is S3's error code (or the status for
    answers without a body, as HEAD's are)."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str]) -> None:
        super().__init__(f"{status} {code}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


class TransportError(Exception):
    """No (whole) answer: refused, reset, timed out, or a body that broke off."""


MALFORMED = (ET.ParseError, KeyError, ValueError, TypeError)
"""What reading a success answer that is not S3's raises (XML cut short, a missing or unreadable
header or field): a failed attempt like a broken connection (``_malformed``), never an error
that escapes the policy."""


def _malformed(exc: Exception) -> TransportError:
    return TransportError(f"an answer S3 would not send ({type(exc).__name__}: {exc})"[:200])


class TlsError(Exception):
    """The TLS handshake with ``origin`` failed (an untrusted certificate, most often)."""

    def __init__(self, origin: str, detail: str) -> None:
        super().__init__(detail)
        self.origin = origin
        self.detail = detail


@dataclass(frozen=True)
class Attempt:
    """Which try of a request this is (sent as ``amz-sdk-request``, as the AWS SDKs do, so a
    server or proxy can tell a retry), and its bounds: seconds to connect, to wait for each
    read of the answer, and when (``time.monotonic()``) the whole attempt must have ended."""

    number: int
    of: int
    connect: float
    read: float
    until: float = math.inf


@dataclass
class Answer:
    status: int
    headers: Mapping[str, str]
    data: bytes = field(repr=False)


class LeanS3:
    """Requests to one bucket at one endpoint."""

    def __init__(self, endpoint_url: str, region: str, bucket: str, *, ca_certs: str | None,
                 verify: bool, pool_size: int, addressing_style: str = "auto") -> None:
        parts = urlsplit(endpoint_url)
        host = parts.hostname or ""
        if _virtual(addressing_style, bucket, host, parts.scheme):
            netloc = f"{bucket}.{parts.netloc}"
            self._bucket_path = parts.path.rstrip("/")
        else:
            netloc = parts.netloc
            self._bucket_path = f"{parts.path.rstrip('/')}/{quote(bucket, safe='')}"
        self._origin = f"{parts.scheme}://{netloc}"
        self._signer = Signer(host_of(parts.scheme, netloc), region,
                              sign_payload=parts.scheme != "https")
        self._bucket = bucket
        tls = None
        if parts.scheme == "https":
            tls = ssl.create_default_context(cafile=ca_certs)
            if not verify:  # the mount warned once
                tls.check_hostname = False
                tls.verify_mode = ssl.CERT_NONE
        proxy = _proxy_for(parts.scheme, host)
        origin = urlsplit(self._origin)
        self._pool = http1.Pool(parts.scheme, origin.hostname or "", origin.port,
                                size=pool_size, tls=tls,
                                proxy=_proxy_of(proxy) if proxy else None)

    @property
    def origin(self) -> str:
        return self._origin

    # -- objects -----------------------------------------------------------------------------

    def head(self, key: str, keys: KeySet, t: Attempt) -> ObjectInfo:
        r = self.send("HEAD", key, keys, t)
        try:
            return _info(key, r.headers, int(r.headers.get("content-length", 0)))
        except MALFORMED as exc:
            raise _malformed(exc) from None

    def peek(self, key: str, keys: KeySet, t: Attempt, length: int) -> tuple[ObjectInfo, bytes]:
        """What ``head`` tells, and the object's first ``length`` bytes: one ranged GET. The
        size is the total of Content-Range (a server that ignores Range sends it all, 200)."""
        r = self.send("GET", key, keys, t, headers={"Range": f"bytes=0-{length - 1}"})
        total = r.headers.get("content-range", "").rpartition("/")[2] if r.status == 206 else ""
        try:
            size = int(total) if total.isascii() and total.isdigit() else len(r.data)
            return _info(key, r.headers, size), r.data
        except MALFORMED as exc:
            raise _malformed(exc) from None

    def get(self, key: str, keys: KeySet, t: Attempt, *,
            byte_range: tuple[int, int] | None = None, etag: str | None = None) -> bytes:
        """The object's bytes, or the inclusive ``byte_range`` of them."""
        headers = {}
        if byte_range is not None:
            headers["Range"] = f"bytes={byte_range[0]}-{byte_range[1]}"
        if etag:
            headers["If-Match"] = f'"{etag}"'
        return self.send("GET", key, keys, t, headers=headers).data

    def put(self, key: str, keys: KeySet, t: Attempt, data: bytes, *,
            metadata: Mapping[str, str], content_type: str) -> str:
        headers = {"Content-Type": content_type, **_meta_headers(metadata)}
        return _etag(self.send("PUT", key, keys, t, headers=headers, body=data).headers)

    def delete(self, key: str, keys: KeySet, t: Attempt) -> None:
        self.send("DELETE", key, keys, t)

    def copy(self, src: str, dst: str, keys: KeySet, t: Attempt, *,
             metadata: Mapping[str, str] | None, content_type: str | None) -> str:
        """CopyObject: ``metadata`` replaces the source's when given, else it is kept."""
        headers = {"x-amz-copy-source": self._copy_source(src)}
        if metadata is not None:
            headers.update({"x-amz-metadata-directive": "REPLACE",
                            "Content-Type": content_type or "application/octet-stream",
                            **_meta_headers(metadata)})
        r = self.send("PUT", dst, keys, t, headers=headers)
        # A copy can fail after its 200 has gone out: the error is then in the body.
        root = _xml(r.data)
        if root is not None and _local(root.tag) == "Error":
            raise HttpError(500, root.findtext("Code") or "InternalError",
                            root.findtext("Message") or "", r.headers)
        return _etag_in(root) or ""

    # -- multipart ---------------------------------------------------------------------------

    def create_multipart(self, key: str, keys: KeySet, t: Attempt, *,
                         metadata: Mapping[str, str], content_type: str) -> str:
        headers = {"Content-Type": content_type, **_meta_headers(metadata)}
        r = self.send("POST", key, keys, t, headers=headers, query={"uploads": ""})
        root = _xml(r.data)
        upload_id = _find(root, "UploadId") if root is not None else None
        if not upload_id:
            raise TransportError("CreateMultipartUpload answered without an UploadId")
        return upload_id

    def upload_part(self, key: str, keys: KeySet, t: Attempt, upload_id: str, number: int,
                    data: bytes) -> str:
        r = self.send("PUT", key, keys, t, body=data,
                      query={"partNumber": str(number), "uploadId": upload_id})
        return _etag(r.headers)

    def upload_part_copy(self, src: str, dst: str, keys: KeySet, t: Attempt, upload_id: str,
                         number: int, first: int, last: int) -> str:
        headers = {"x-amz-copy-source": self._copy_source(src),
                   "x-amz-copy-source-range": f"bytes={first}-{last}"}
        r = self.send("PUT", dst, keys, t, headers=headers,
                      query={"partNumber": str(number), "uploadId": upload_id})
        return _etag_in(_xml(r.data)) or ""

    def complete_multipart(self, key: str, keys: KeySet, t: Attempt, upload_id: str,
                           parts: list[tuple[int, str]]) -> str:
        body = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>\"{e.strip(chr(34))}\"</ETag>"
                       "</Part>" for n, e in sorted(parts))
        data = f"<CompleteMultipartUpload>{body}</CompleteMultipartUpload>".encode()
        r = self.send("POST", key, keys, t, body=data, query={"uploadId": upload_id},
                      headers={"Content-Type": "application/xml"})
        # The server answers 200 at once and may still fail while it assembles the object: the
        # error then comes in the body (as for copies).
        root = _xml(r.data)
        if root is not None and _local(root.tag) == "Error":
            raise HttpError(500, root.findtext("Code") or "InternalError",
                            root.findtext("Message") or "", r.headers)
        return _etag_in(root) or ""

    def abort_multipart(self, key: str, keys: KeySet, t: Attempt, upload_id: str) -> None:
        self.send("DELETE", key, keys, t, query={"uploadId": upload_id})

    # -- listing -----------------------------------------------------------------------------

    def list_page(self, keys: KeySet, t: Attempt, params: Mapping[str, str]) -> ListPage:
        """One ListObjectsV2 page; ``params`` are its query parameters (prefix, delimiter, ...).

        Keys are asked URL-encoded (as botocore does), so names with characters XML 1.0 cannot
        carry still arrive intact."""
        query = {"list-type": "2", "encoding-type": "url", **params}
        data = self.send("GET", None, keys, t, query=query).data
        try:
            return _parse_listing(data)
        except MALFORMED as exc:
            raise _malformed(exc) from None

    # -- plumbing ----------------------------------------------------------------------------

    def send(self, method: str, key: str | None, keys: KeySet, t: Attempt, *,
             headers: Mapping[str, str] | None = None, body: bytes = b"",
             query: Mapping[str, str] | None = None) -> Answer:
        """One attempt; an answer of 300 or more is an ``HttpError``."""
        path = self._bucket_path + ("/" + quote(key, safe="/~") if key is not None else "")
        path = path or "/"
        # Encoded as the canonical request wants it: the signer takes the query verbatim.
        qs = urlencode(sorted(query.items()), quote_via=quote, safe="-_.~") if query else ""
        target = f"{path}?{qs}" if qs else path
        signed = self._signer.sign(method, path, qs, {
            **(headers or {}), "amz-sdk-request": f"attempt={t.number}; max={t.of}"}, body, keys)
        try:
            # The target goes out verbatim (a client that normalised "a/../b" in keys would ask
            # for another object); the body is read whole here, so a body that breaks off is a
            # failed attempt like any other.
            r = self._pool.request(method, target, signed, body, connect=t.connect, read=t.read,
                                   until=t.until)
        except http1.HandshakeFailed as exc:
            raise TlsError(self._origin, str(exc)) from None
        except OSError as exc:
            raise TransportError(type(exc).__name__) from None
        if r.status >= 300:
            raise _http_error(r)
        return Answer(r.status, r.headers, r.data)

    def _copy_source(self, src: str) -> str:
        return f"/{quote(self._bucket, safe='')}/{quote(src, safe='/~')}"


def _virtual(style: str, bucket: str, host: str, scheme: str) -> bool:
    """Whether requests name the bucket in the host (botocore's meaning of the three styles)."""
    if style == "path":
        return False
    if style == "virtual":
        return True
    try:
        ipaddress.ip_address(host)
        return False
    except ValueError:
        pass
    return bool(_DNS_LABEL.match(bucket)) and host != "localhost"


def _proxy_for(scheme: str, host: str) -> str | None:
    """The proxy the environment names for this endpoint (HTTPS_PROXY, NO_PROXY...), as botocore
    would use it."""
    proxy = urllib.request.getproxies().get(scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        return proxy
    return None


def _proxy_of(proxy: str) -> http1.Proxy:
    """The proxy a URL names (``user:password@`` in it become its Proxy-Authorization)."""
    if "://" not in proxy:
        proxy = "http://" + proxy
    parts = urlsplit(proxy)
    if parts.scheme != "http":
        raise S3MountError(f"the proxy {parts.scheme}://{parts.hostname}:{parts.port or ''} is "
                           "not supported: give its http:// address (HTTPS still goes through "
                           "it end to end, in a CONNECT tunnel)")
    auth = None
    if parts.username is not None:
        user_pass = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        auth = "Basic " + base64.b64encode(user_pass.encode()).decode()
    return http1.Proxy(parts.hostname or "", parts.port or 80, auth)


def _http_error(r: http1.Response) -> HttpError:
    """S3's error code from the XML body, or the status for bodiless answers (HEAD)."""
    code, message = str(r.status), ""
    root = _xml(r.data)
    if root is not None:
        code = root.findtext("Code") or code
        message = root.findtext("Message") or ""
    return HttpError(r.status, code, message, r.headers)


def _xml(data: bytes) -> ET.Element | None:
    if not data:
        return None
    try:
        return ET.fromstring(data)
    except ET.ParseError:
        return None


def _ns(root: ET.Element) -> str:
    return root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _find(root: ET.Element, name: str) -> str | None:
    return root.findtext(_ns(root) + name)


def _etag_in(root: ET.Element | None) -> str | None:
    if root is None:
        return None
    found = root.find(".//" + _ns(root) + "ETag")
    return (found.text or "").strip('"') if found is not None else None


def _etag(headers: Mapping[str, str]) -> str:
    return headers.get("etag", "").strip('"')


def _meta_headers(metadata: Mapping[str, str]) -> dict[str, str]:
    return {META + k: v for k, v in metadata.items()}


def _info(key: str, h: Mapping[str, str], size: int) -> ObjectInfo:
    return ObjectInfo(
        key=key, size=size, etag=_etag(h),
        last_modified=_http_date(h["last-modified"]),
        metadata={k[len(META):].lower(): v for k, v in h.items() if k.lower().startswith(META)},
        content_type=h.get("content-type"),
    )


_MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}


def _http_date(text: str) -> float:
    """An HTTP date as seconds: the fixed form every S3 server sends ("Wed, 02 Dec 2026
    10:00:00 GMT") read by position, any other form by ``email.utils``."""
    if len(text) == 29 and text.endswith(" GMT") and text[7:12:4] == "  ":
        try:
            return float(calendar.timegm((int(text[12:16]), _MONTHS[text[8:11]], int(text[5:7]),
                                          int(text[17:19]), int(text[20:22]), int(text[23:25]))))
        except (KeyError, ValueError):
            pass
    return parsedate_to_datetime(text).timestamp()


def _parse_listing(data: bytes) -> ListPage:
    root = ET.fromstring(data)
    ns = _ns(root)
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
