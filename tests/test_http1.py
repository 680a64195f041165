"""The store's HTTP/1.1 connections (store/http1.py) against servers on loopback that answer with
scripted bytes: every way an answer's body can end, interim answers, connections the server
closes, answers that break off or are not HTTP, a silent server; and HTTPS through a CONNECT proxy
with credentials, to the sandbox behind a self-signed certificate."""

from __future__ import annotations

import dataclasses
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from faultlib import ConnectProxy

from s3mount.errors import S3MountError
from s3mount.sandbox.faultproxy import FaultProxy
from s3mount.store import http1
from s3mount.store.base import KeySet
from s3mount.store.lean import Attempt, LeanS3, TransportError
from s3mount.store.s3 import S3Store, StoreConfig

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@dataclass
class Raw:
    """A server that answers the n-th request (counted over all connections) with
    ``answer(n, request head)``: raw bytes, then the connection closes if ``close`` says so."""

    answer: Callable[[int, bytes], bytes]
    close: Callable[[int], bool] = lambda n: False
    heads: list[bytes] = field(default_factory=list)
    connections: int = 0


def _serve(sock: socket.socket, raw: Raw, lock: threading.Lock) -> None:
    buf = b""
    with sock:
        while True:
            while b"\r\n\r\n" not in buf:
                got = sock.recv(65536)
                if not got:
                    return
                buf += got
            head, _, buf = buf.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(buf) < length:
                buf += sock.recv(65536)
            buf = buf[length:]
            with lock:
                raw.heads.append(head)
                n = len(raw.heads)
            sock.sendall(raw.answer(n, head))
            if raw.close(n):
                return


@pytest.fixture
def raw() -> Iterator[tuple[http1.Pool, Raw]]:
    script = Raw(lambda n, head: OK)
    lock = threading.Lock()
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                if not select.select([listener], [], [], 0.1)[0]:
                    continue
                sock, _ = listener.accept()
            except (OSError, ValueError):  # closed at teardown
                return
            with lock:
                script.connections += 1
            threading.Thread(target=_serve, args=(sock, script, lock), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    pool = http1.Pool("http", "127.0.0.1", listener.getsockname()[1], size=4)
    try:
        yield pool, script
    finally:
        stop.set()
        pool.close()
        listener.close()


def _get(pool: http1.Pool, method: str = "GET", read: float = 5.0) -> http1.Response:
    return pool.request(method, "/bkt/k", {"X-Test": "1"}, b"", connect=5.0, read=read)


def test_request_line_and_host_header(raw: tuple[http1.Pool, Raw]) -> None:
    pool, script = raw
    pool.request("PUT", "/bkt/a%20b?partNumber=1", {"X-Amz-Date": "d"}, b"body", connect=5,
                 read=5)
    lines = script.heads[0].split(b"\r\n")
    assert lines[0] == b"PUT /bkt/a%20b?partNumber=1 HTTP/1.1"
    assert f"Host: 127.0.0.1:{pool.port}".encode() in lines
    assert b"X-Amz-Date: d" in lines and b"Content-Length: 4" in lines


def test_bodies_by_length_chunked_and_close(raw: tuple[http1.Pool, Raw]) -> None:
    pool, script = raw
    answers = {
        1: b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: \"e\"\r\n\r\nhello",
        2: (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;ext=1\r\nabc\r\n0A\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n"),
        3: b"HTTP/1.1 200 OK\r\n\r\nuntil the close",
        4: OK,
    }
    script.answer = lambda n, head: answers[n]
    script.close = lambda n: n == 3
    assert _get(pool).data == b"hello"
    assert _get(pool).data == b"abc0123456789"
    assert _get(pool).data == b"until the close"
    assert _get(pool).data == b"ok"
    # 1 and 2 shared a connection; 3 ended its own by closing it; 4 needed a new one.
    assert script.connections == 2


def test_head_and_bodiless_statuses_read_no_body(raw: tuple[http1.Pool, Raw]) -> None:
    """A HEAD's Content-Length is the object's, not a body's: reading it would wait for ever."""
    pool, script = raw
    script.answer = lambda n, head: {
        1: b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
        2: b"HTTP/1.1 204 No Content\r\n\r\n",
        3: b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n",
        4: OK}[n]
    r = _get(pool, "HEAD", read=2)
    assert (r.status, r.headers["content-length"], r.data) == (200, "1000", b"")
    assert _get(pool, "DELETE", read=2).status == 204
    assert _get(pool, read=2).status == 304
    assert _get(pool, read=2).data == b"ok"
    assert script.connections == 1


def test_interim_answers_are_skipped_and_headers_lowered_and_joined(
        raw: tuple[http1.Pool, Raw]) -> None:
    pool, script = raw
    script.answer = lambda n, head: (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nX-Amz-Meta-Mode: 33188\r\n"
        b"Vary: a\r\nvary: b\r\nContent-Length: 2\r\n\r\nok")
    r = _get(pool)
    assert r.status == 200 and r.data == b"ok"
    assert r.headers["x-amz-meta-mode"] == "33188" and r.headers["vary"] == "a, b"


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Le",
    b"SSH-2.0-OpenSSH_9.2\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n",
    b"",
    b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 999999999999999\r\n\r\nshort",
    b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\nshort",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\nshort",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-3\r\nshort",
], ids=["length", "chunk", "chunk-size", "headers", "not-http", "bad-length", "nothing",
        "latin-1-digit-length", "petabyte-length", "huge-length", "huge-chunk", "negative-chunk"])
def test_an_answer_that_breaks_off_is_an_error_and_the_connection_goes(
        raw: tuple[http1.Pool, Raw], answer: bytes) -> None:
    """Whatever the bytes, a broken answer is a connection error (``Broken``), which the policy
    tries again: any other exception (a ValueError from a Content-Length of "²", a MemoryError
    from one of a petabyte) escaped as an internal error, and one in a background upload
    stopped the mount."""
    pool, script = raw
    script.answer = lambda n, head: answer if n == 1 else OK
    script.close = lambda n: n == 1
    with pytest.raises(OSError):
        _get(pool)
    assert _get(pool).data == b"ok"  # on a new connection
    assert script.connections == 2


def test_a_connection_the_server_closed_while_idle_is_not_used(
        raw: tuple[http1.Pool, Raw]) -> None:
    """A server closes idle keep-alive connections when it likes; the next request must not
    fail for it (it would cost an attempt and a retry's wait)."""
    pool, script = raw
    script.close = lambda n: n == 1  # after answering, with keep-alive: a close while idle
    assert _get(pool).data == b"ok"
    time.sleep(0.2)
    assert _get(pool).data == b"ok"
    assert script.connections == 2


def test_connection_close_is_honoured(raw: tuple[http1.Pool, Raw]) -> None:
    pool, script = raw
    script.answer = lambda n, head: (b"HTTP/1.1 200 OK\r\nConnection: close\r\n"
                                     b"Content-Length: 2\r\n\r\nok")
    for _ in range(3):
        assert _get(pool).data == b"ok"
    assert script.connections == 3


def test_a_silent_server_costs_the_read_timeout(raw: tuple[http1.Pool, Raw]) -> None:
    pool, script = raw
    script.answer = lambda n, head: (time.sleep(3), b"")[1]
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        _get(pool, read=0.5)
    assert time.monotonic() - started < 2.0


def test_idle_connections_are_kept_up_to_the_pool_size(raw: tuple[http1.Pool, Raw]) -> None:
    """Eight requests at once open eight connections; four stay for the next eight."""
    pool, script = raw
    gate = threading.Barrier(8)
    script.answer = lambda n, head: (gate.wait(5) if n <= 8 else None, OK)[1]
    threads = [threading.Thread(target=_get, args=(pool,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert script.connections == 8
    for _ in range(4):
        _get(pool)
    assert script.connections == 8


# -- HTTPS through a CONNECT proxy with credentials ------------------------------------------


def test_https_through_a_connect_proxy_with_credentials(
        sandbox, bucket: str, self_signed: tuple[str, str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """HTTPS_PROXY=http://user:password@host: the tunnel is asked for with the credentials, the
    origin's certificate is verified through it (against AWS_CA_BUNDLE), and S3 works there."""
    proxy = ConnectProxy("alice:p@ss")
    with FaultProxy(sandbox.url, tls=self_signed) as front:
        try:
            monkeypatch.setenv("HTTPS_PROXY", f"http://alice:p%40ss@127.0.0.1:{proxy.port}")
            monkeypatch.setenv("AWS_CA_BUNDLE", self_signed[0])
            for name in ("NO_PROXY", "no_proxy"):
                monkeypatch.delenv(name, raising=False)
            # Without the sandbox's endpoint in them (keys that name one are sent there).
            keys = dataclasses.replace(sandbox.issue_keys([bucket], lifetime=3600),
                                       endpoint_url=None)
            store = S3Store(StoreConfig(bucket=bucket, endpoint_url=front.url), _Keys(keys))
            data = os.urandom(300_000)
            store.put("through/the-tunnel", data, metadata={})
            assert store.head("through/the-tunnel").size == 300_000
            assert store.get_range("through/the-tunnel", 10, 100_000) == data[10:100_010]
            assert proxy.asked and all(a == f"CONNECT 127.0.0.1:{front.url.rsplit(':', 1)[1]} "
                                       "HTTP/1.1" for a in proxy.asked)
            # Wrong credentials: the proxy's refusal is a failed request, not a hang.
            monkeypatch.setenv("HTTPS_PROXY", f"http://alice:wrong@127.0.0.1:{proxy.port}")
            bad = S3Store(StoreConfig(bucket=bucket, endpoint_url=front.url, timeout=3),
                          _Keys(keys))
            with pytest.raises(Exception, match="timeout|unreachable|proxy"):
                bad.head("through/the-tunnel")
        finally:
            proxy.close()


class _Keys:
    def __init__(self, keys: KeySet) -> None:
        self.keys = keys

    def current(self) -> KeySet:
        return self.keys

    def renew_after_rejection(self, rejected: KeySet) -> KeySet | None:
        return None


def test_tls_verification_failure_is_a_handshake_error(
        self_signed: tuple[str, str]) -> None:
    """A server whose certificate is not trusted: HandshakeFailed (the policy's one line about
    the certificate), not a network error to retry."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*self_signed)
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        sock, _ = listener.accept()
        try:
            ctx.wrap_socket(sock, server_side=True).close()
        except (ssl.SSLError, OSError):
            sock.close()

    threading.Thread(target=serve, daemon=True).start()
    pool = http1.Pool("https", "127.0.0.1", listener.getsockname()[1], size=1,
                      tls=ssl.create_default_context())
    try:
        with pytest.raises(http1.HandshakeFailed, match="certificate verify failed"):
            _get(pool)
    finally:
        listener.close()


def test_a_proxy_spoken_to_over_tls_is_refused_in_one_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "https://bob:secret@proxy.example.test:3128")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    store = S3Store(StoreConfig(bucket="bkt", endpoint_url="https://s3.example.test"),
                    _Keys(KeySet("AKID", "s", expires_at=time.time() + 3600)))
    with pytest.raises(S3MountError, match=r"https://proxy.example.test:3128 is not supported: "
                       r"give its http:// address") as e:
        store.head("k")
    assert "secret" not in str(e.value) and "\n" not in str(e.value)


def test_a_line_break_in_a_header_is_refused(raw: tuple[http1.Pool, Raw]) -> None:
    """Else what follows the break would go out as headers of its own (or a second request)."""
    pool, script = raw
    for bad in ({"x-amz-meta-a": "1\r\nX-Injected: 1"}, {"x-amz-meta-a": "1\nX: 1"},
                {"x-amz-meta-a\r\nX": "1"}, {"x-amz-meta-a": "1\r"}):
        with pytest.raises(ValueError, match="line break"):
            pool.request("PUT", "/bkt/k", bad, b"", connect=5, read=5)
    assert script.heads == []


def test_an_answer_sent_before_the_body_was_taken_is_read(raw: tuple[http1.Pool, Raw]) -> None:
    """A server may refuse an upload by its headers, answer, and close without reading the body:
    the answer is what the request gets (not a broken pipe, which would be retried until
    ``timeout`` instead of reporting the refusal)."""
    pool, script = raw
    listener = socket.create_server(("127.0.0.1", 0))
    body = b"<Error><Code>EntityTooLarge</Code></Error>"
    answer = (b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
              % (len(body), body))

    def refuse() -> None:
        sock, _ = listener.accept()
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(65536)
        sock.sendall(answer)
        sock.shutdown(socket.SHUT_WR)
        time.sleep(1)
        sock.close()  # with the body unread: a reset

    threading.Thread(target=refuse, daemon=True).start()
    early = http1.Pool("http", "127.0.0.1", listener.getsockname()[1], size=1)
    try:
        r = early.request("PUT", "/bkt/k", {}, b"x" * (64 << 20), connect=5, read=5)
        assert r.status == 400 and r.data == body
    finally:
        listener.close()


def test_a_connection_cut_during_the_tls_handshake_is_a_network_failure() -> None:
    """A connection that closes halfway through the handshake (a flaky network, a server
    restarting) says nothing about the certificate: a broken connection the policy tries again,
    not HandshakeFailed (which it reports at once as an untrusted server)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def cut() -> None:
        sock, _ = listener.accept()
        sock.recv(65536)  # the ClientHello
        sock.shutdown(socket.SHUT_WR)
        time.sleep(1)
        sock.close()

    threading.Thread(target=cut, daemon=True).start()
    pool = http1.Pool("https", "127.0.0.1", listener.getsockname()[1], size=1,
                      tls=ssl.create_default_context())
    try:
        with pytest.raises(ConnectionError):
            _get(pool)
    finally:
        listener.close()


def test_an_answer_framed_two_ways_does_not_keep_its_connection(
        raw: tuple[http1.Pool, Raw]) -> None:
    """Content-Length and chunked at once: the chunks frame the body (RFC 9112, 6.3), but a
    party on the way that went by the length reads the rest as the next answer; the
    connection is not used again, so no later request gets bytes meant as this one's."""
    pool, script = raw
    script.answer = lambda n, head: (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"
                                     b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
                                     if n == 1 else OK)
    assert _get(pool).data == b"ok"
    assert _get(pool).data == b"ok"
    assert script.connections == 2


def _ok(body: bytes, headers: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n%s" % (headers, len(body), body)


@pytest.mark.parametrize("method, answer", [
    ("list", _ok(b"<ListBucketResult><Contents><Key>")),
    ("list", _ok(b"<ListBucketResult><Contents><Key>a</Key><Size>many</Size></Contents>"
                 b"</ListBucketResult>")),
    ("head", _ok(b"")),
    ("head", _ok(b"", b"Last-Modified: yesterday\r\n")),
], ids=["cut-xml", "bad-size", "no-last-modified", "bad-date"])
def test_a_success_answer_that_is_not_s3s_is_a_failed_attempt(
        raw: tuple[http1.Pool, Raw], method: str, answer: bytes) -> None:
    """A 200 whose body or headers cannot be read (cut by a middlebox, or another server):
    TransportError, which the policy tries again and reports as EIO, not an internal error
    (a ParseError or ValueError escaped the policy, with a traceback in the log)."""
    pool, script = raw
    script.answer = lambda n, head: answer
    lean = LeanS3(f"http://127.0.0.1:{pool.port}", "us-east-1", "bkt", ca_certs=None,
                  verify=True, pool_size=1, addressing_style="path")
    keys, attempt = KeySet("AKID", "secret"), Attempt(1, 1, connect=5, read=5)
    with pytest.raises(TransportError):
        if method == "list":
            lean.list_page(keys, attempt, {"prefix": ""})
        else:
            lean.head("k", keys, attempt)
