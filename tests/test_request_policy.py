"""The store's request policy (store/policy.py) and its one request path (store/lean.py), against
a scripted S3 server on loopback: what each answer means, how often and how long a request is
tried, and what the hand-built path does that a botocore client did (addressing styles, proxy
credentials, region redirects)."""

from __future__ import annotations

import base64
import http.server
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from s3mount.errors import AccessDenied, NotFound, Refused, S3MountError, Unavailable
from s3mount.store.base import KeySet
from s3mount.store.s3 import S3Store, StoreConfig

LAST_MODIFIED = "Wed, 02 Dec 2026 10:00:00 GMT"


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]


@dataclass
class Script:
    """What the server answers: ``answer(request number, request)`` -> (status, headers, body),
    or None to say nothing at all."""

    answer: Callable[[int, Seen], tuple[int, dict[str, str], bytes] | None]
    seen: list[Seen] = field(default_factory=list)


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script(lambda n, r: (200, {}, b""))
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            req = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
            with lock:
                script.seen.append(req)
                n = len(script.seen)
            got = script.answer(n, req)
            if got is None:
                time.sleep(30)  # accepted, never answered
                return
            status, headers, body = got
            self.send_response(status)
            for k, v in {"Last-Modified": LAST_MODIFIED, "ETag": '"e1"', **headers}.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _any

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}", script
    finally:
        httpd.shutdown()
        httpd.server_close()


class Keys:
    """A key source whose renewals are counted (and may fail)."""

    def __init__(self, renewable: bool = True) -> None:
        self.keys = KeySet("AKIDEXAMPLE", "secret", expires_at=time.time() + 3600)
        self.renewals = 0
        self.renewable = renewable

    def current(self) -> KeySet:
        return self.keys

    def renew_after_rejection(self, rejected: KeySet) -> KeySet | None:
        self.renewals += 1
        if not self.renewable:
            return None
        self.keys = KeySet(f"AKIDRENEWED{self.renewals}", "secret2",
                           expires_at=time.time() + 3600)
        return self.keys


def _store(url: str, keys: Keys | None = None, **kw: object) -> S3Store:
    return S3Store(StoreConfig(bucket="bkt", endpoint_url=url, **kw),  # type: ignore[arg-type]
                   keys or Keys())


def _error(code: str) -> bytes:
    return f"<Error><Code>{code}</Code><Message>m</Message></Error>".encode()


def test_server_errors_are_retried_with_the_attempt_numbered(server: tuple[str, Script]) -> None:
    url, script = server
    script.answer = lambda n, r: (503, {}, _error("SlowDown")) if n <= 2 else (200, {}, b"")
    info = _store(url).head("k")
    assert info.etag == "e1"
    assert [s.headers["amz-sdk-request"] for s in script.seen] == [
        "attempt=1; max=6", "attempt=2; max=6", "attempt=3; max=6"]


def test_final_answers_are_not_retried(server: tuple[str, Script]) -> None:
    url, script = server
    script.answer = lambda n, r: (404, {}, _error("NoSuchKey"))
    with pytest.raises(NotFound):
        _store(url).get_range("k", 0, 10)
    script.answer = lambda n, r: (403, {}, _error("AccessDenied"))
    with pytest.raises(AccessDenied):
        _store(url).get_range("k", 0, 10)
    assert len(script.seen) == 2


@pytest.mark.parametrize("status, code, errno_", [(404, "", 5), (400, "InvalidArgument", 5),
                                                 (400, "KeyTooLongError", 36),
                                                 (400, "EntityTooLarge", 27)])
def test_a_put_refused_for_its_object_is_final(server: tuple[str, Script], status: int,
                                               code: str, errno_: int) -> None:
    """A 4xx to a PUT about the object itself is ``Refused`` (the writeback does not retry
    it); a missing bucket is not (it may be made again), and a 404 to a GET stays NotFound."""
    url, script = server
    script.answer = lambda n, r: (status, {}, _error(code) if code else b"")
    with pytest.raises(Refused) as err:
        _store(url).put("k", b"x", metadata={})
    assert err.value.errno == errno_ and len(script.seen) == 1
    script.answer = lambda n, r: (404, {}, _error("NoSuchBucket"))
    with pytest.raises(NotFound) as missing:
        _store(url).put("k", b"x", metadata={})
    assert not isinstance(missing.value, Refused)
    for damaged in ("BadDigest", "IncompleteBody", "XAmzContentSHA256Mismatch"):
        script.answer = lambda n, r, c=damaged: (400, {}, _error(c))
        with pytest.raises(S3MountError) as again:
            _store(url).put("k", b"x", metadata={})
        assert not isinstance(again.value, Refused), damaged  # sent again later, not given up
    script.answer = lambda n, r: (404, {}, b"")
    with pytest.raises(NotFound):
        _store(url).get_range("k", 0, 10)


def test_rejected_keys_are_renewed_once(server: tuple[str, Script]) -> None:
    url, script = server
    script.answer = lambda n, r: (400, {}, _error("ExpiredToken")) if n == 1 else (200, {}, b"x")
    keys = Keys()
    assert _store(url, keys).get_range("k", 0, 1) == b"x"
    assert keys.renewals == 1
    assert "AKIDRENEWED1" in script.seen[1].headers["authorization"]
    # Rejected again after the renewal: refused, not renewed in a loop.
    script.seen.clear()
    script.answer = lambda n, r: (400, {}, _error("ExpiredToken"))
    with pytest.raises(AccessDenied):
        _store(url, keys).get_range("k", 0, 1)
    assert keys.renewals == 2 and len(script.seen) == 2
    # Keys that cannot be renewed: EACCES at once.
    script.seen.clear()
    with pytest.raises(AccessDenied):
        _store(url, Keys(renewable=False)).get_range("k", 0, 1)
    assert len(script.seen) == 1


def test_a_silent_server_costs_timeout_not_more(server: tuple[str, Script]) -> None:
    url, script = server
    script.answer = lambda n, r: None
    store = _store(url, timeout=2.0)
    started = time.monotonic()
    with pytest.raises(Unavailable, match="timeout=2s"):
        store.head("k")
    elapsed = time.monotonic() - started
    assert 1.5 < elapsed < 2.5, elapsed
    assert len(script.seen) >= 2  # a silent connection costs one attempt, not the budget


def test_region_redirect_names_the_region(server: tuple[str, Script]) -> None:
    url, script = server
    script.answer = lambda n, r: (301, {"x-amz-bucket-region": "eu-west-3"},
                                  _error("PermanentRedirect"))
    with pytest.raises(S3MountError, match=r"-o region=eu-west-3"):
        _store(url).check()
    assert len(script.seen) == 1


@pytest.mark.parametrize(("style", "endpoint", "bucket", "host", "path"), [
    ("auto", "http://s3.example.test:9000", "bkt", "bkt.s3.example.test:9000", "/k"),
    ("auto", "http://s3.example.test:9000", "has.dots", "s3.example.test:9000", "/has.dots/k"),
    ("auto", "http://10.1.2.3:9000", "bkt", "10.1.2.3:9000", "/bkt/k"),
    ("path", "http://s3.example.test:9000", "bkt", "s3.example.test:9000", "/bkt/k"),
    ("virtual", "http://s3.example.test:9000/", "bkt", "bkt.s3.example.test:9000", "/k"),
])
def test_addressing_styles_through_a_proxy_with_credentials(
        server: tuple[str, Script], monkeypatch: pytest.MonkeyPatch, style: str, endpoint: str,
        bucket: str, host: str, path: str) -> None:
    """The proxy (the scripted server) gets the absolute URL, which shows how the bucket is
    addressed, and the user and password of HTTP_PROXY as Proxy-Authorization."""
    url, script = server
    monkeypatch.setenv("HTTP_PROXY", url.replace("http://", "http://alice:p%40ss@"))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    store = S3Store(StoreConfig(bucket=bucket, endpoint_url=endpoint, addressing_style=style),
                    Keys())
    store.head("k")
    (seen,) = script.seen
    assert seen.target == f"http://{host}{path}"
    assert seen.headers["host"] == host
    assert seen.headers["proxy-authorization"] == \
        "Basic " + base64.b64encode(b"alice:p@ss").decode()
