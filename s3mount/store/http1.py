"""HTTP/1.1 for the store's requests: persistent connections to one origin, one request at a time.

Why not urllib3 (used until issue #18's last measurements): every request the mount makes is a
small, fully buffered exchange (a HEAD, a ranged GET, a PUT of a part), and for those urllib3 and
http.client cost more than the rest of the request together: a HEAD took ~170 µs of CPU in
them (wrapper objects on both sides, and response headers parsed by the ``email`` package) of
~250 µs in all, held under the GIL the FUSE loop also needs; a cold ``ls -l`` is a HEAD per
file (bench/README.md). This module does only what these requests need, and each step once:

* connections are kept and reused, the most recently used first (a warm one), up to ``size``
  idle ones; one found closed by the server while idle (readable before any request: an EOF) is
  dropped before it is used, as urllib3 does;
* a request is written with one ``sendall`` (two for a large body: no copy of a part), and the
  answer read through the socket's buffered reader: status line, header lines (names lowered,
  repeated ones joined with ", "), then a body of Content-Length bytes, chunked, or up to the
  close; HEAD, 1xx, 204 and 304 answers have none. A body cut short is ``Broken``;
* TLS verifies the certificate and host name (against ``ca_certs`` or the system's store) unless
  told not to; a failed handshake is ``HandshakeFailed``, so it is never mistaken for a network
  failure worth retrying (one the connection's close cut short is ``Broken``, as any other);
* through a proxy: plain HTTP asks it with the absolute URL in the request line, HTTPS opens a
  ``CONNECT`` tunnel first; either way with the proxy's ``Proxy-Authorization`` when it has one.

It makes one attempt and says what went wrong; whether to try again is the policy's business.
"""

from __future__ import annotations

import io
import math
import select
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

MAX_LINE = 65536
"""Longest status or header line read: an answer with longer ones is ``Broken``."""
MAX_HEADERS = 1000
"""Most header lines in one answer (S3's metadata is at most 2 KiB; this only bounds a bad one)."""
WHOLE_WRITE = 65536
"""Bodies up to this size go out with the request head in one ``sendall``."""
READ_STEP = 16 << 20
"""A body (or chunk) longer than this is read this much at a time: the memory it takes follows
the bytes that arrive, not the length the answer claims (a petabyte was a MemoryError)."""


class Broken(ConnectionError):
    """The answer broke off or was not HTTP: no (whole) answer came."""


class HandshakeFailed(Exception):
    """The TLS handshake failed: the server could not be trusted (or spoke no TLS)."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class Proxy:
    """A proxy every connection goes through; ``auth`` is its Proxy-Authorization value."""

    host: str
    port: int
    auth: str | None = None


class _Timed(io.RawIOBase):
    """A socket's reading side where each wait is bounded by ``wait`` seconds and all of them
    together end at ``until`` (``time.monotonic()``): a server that sends its answer a byte at a
    time (each wait short) must still not hold the request past its operation's deadline."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.wait: float | None = None
        self.until = math.inf

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self.sock.settimeout(_bound(self.wait, self.until))
        return self.sock.recv_into(buffer)


def _bound(wait: float | None, until: float) -> float | None:
    """The timeout for one wait: ``wait``, or less when ``until`` is nearer (past: TimeoutError)."""
    if until == math.inf:
        return wait
    left = until - time.monotonic()
    if left <= 0:
        raise TimeoutError("the answer did not end before the deadline")
    return left if wait is None else min(wait, left)


class _Conn:
    """One connection: its socket and the buffered reader answers are read from."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.timed = _Timed(sock)
        self.reader: BinaryIO = io.BufferedReader(self.timed)  # type: ignore[assignment]

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def dropped(self) -> bool:
        """Whether the server closed (or wrote to) the connection while it was idle: either way
        it cannot carry the next request."""
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        return bool(poller.poll(0))


class Pool:
    """Connections to ``host``:``port`` over ``scheme``, kept for reuse; safe across threads."""

    def __init__(self, scheme: str, host: str, port: int | None, *, size: int,
                 tls: ssl.SSLContext | None = None, proxy: Proxy | None = None) -> None:
        """``port`` None: the scheme's default."""
        default = 443 if scheme == "https" else 80
        self.scheme = scheme
        self.host = host
        self.port = port or default
        self.size = size
        self._tls = tls if scheme == "https" else None
        self._proxy = proxy
        # As the signer derives ``host`` (``sigv4.host_of``): the default port left out.
        self._host = _authority(host, None if self.port == default else self.port)
        self._idle: list[_Conn] = []
        self._lock = threading.Lock()

    def request(self, method: str, target: str, headers: Mapping[str, str], body: bytes, *,
                connect: float, read: float, until: float = math.inf) -> Response:
        """One exchange: ``target`` is the path and query (made absolute for a plain-HTTP proxy);
        ``connect`` bounds a new connection's set-up, ``read`` each wait for the answer, and
        ``until`` (``time.monotonic()``) the whole exchange (TimeoutError past it)."""
        head = self._head(method, target, headers, len(body))
        conn = self._take(connect)
        try:
            conn.timed.wait, conn.timed.until = read, until
            conn.sock.settimeout(_bound(read, until))
            try:
                _send(conn.sock, head, body)
            except (BrokenPipeError, ConnectionResetError):
                # The server answered before it took the whole body (an upload it refuses by
                # its headers) and closed: its answer says why, if it came.
                answer, _ = _read_answer(conn.reader, method)
                conn.close()
                return answer
            answer, reusable = _read_answer(conn.reader, method)
        except BaseException:
            conn.close()
            raise
        if reusable:
            self._give_back(conn)
        else:
            conn.close()
        return answer

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # -- connections -------------------------------------------------------------------------

    def _take(self, connect: float) -> _Conn:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._open(connect)
            if not conn.dropped():
                return conn
            conn.close()

    def _give_back(self, conn: _Conn) -> None:
        with self._lock:
            if len(self._idle) < self.size:
                self._idle.append(conn)
                return
        conn.close()

    def _open(self, timeout: float) -> _Conn:
        where = (self._proxy.host, self._proxy.port) if self._proxy else (self.host, self.port)
        sock = socket.create_connection(where, timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is None:
                return _Conn(sock)
            if self._proxy is not None:
                self._tunnel(sock)
            try:
                tls = self._tls.wrap_socket(sock, server_hostname=self.host)
            except ssl.SSLEOFError:
                # Closed halfway (a flaky network, a restarting server): nothing was learnt
                # about the certificate, and the next connection may well get through.
                raise Broken("the connection closed during the TLS handshake") from None
            except ssl.SSLError as exc:  # a certificate not trusted among them
                raise HandshakeFailed(str(exc)) from None
            return _Conn(tls)
        except BaseException:
            sock.close()
            raise

    def _tunnel(self, sock: socket.socket) -> None:
        """Ask the proxy for a tunnel to the origin (``CONNECT``), before TLS goes through it."""
        assert self._proxy is not None
        authority = _authority(self.host, self.port)
        head = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
        if self._proxy.auth:
            head += f"Proxy-Authorization: {self._proxy.auth}\r\n"
        sock.sendall((head + "\r\n").encode("latin-1"))
        reader = sock.makefile("rb")
        try:
            status, _, _ = _read_head(reader)
        finally:
            reader.close()  # the socket stays open; nothing was read past the empty line
        if status != 200:
            raise Broken(f"the proxy refused a tunnel to {authority}: {status}")

    # -- one exchange ------------------------------------------------------------------------

    def _head(self, method: str, target: str, headers: Mapping[str, str], length: int) -> bytes:
        """The request line and headers. A line break in a header would end the request early
        and start another one with what follows (names and values come from metadata, xattrs
        included): refused, as http.client refuses it."""
        if self._proxy is not None and self._tls is None:
            target = f"http://{self._host}{target}"
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self._host}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if length or method in ("PUT", "POST"):
            lines.append(f"Content-Length: {length}")
        if self._proxy is not None and self._tls is None and self._proxy.auth:
            lines.append(f"Proxy-Authorization: {self._proxy.auth}")
        text = "\r\n".join(lines)
        if text.count("\n") != len(lines) - 1 or text.count("\r") != len(lines) - 1:
            raise ValueError("a line break in a request header")
        return (text + "\r\n\r\n").encode("latin-1")


def _send(sock: socket.socket, head: bytes, body: bytes) -> None:
    if len(body) <= WHOLE_WRITE:
        sock.sendall(head + body)
    else:
        sock.sendall(head)
        sock.sendall(body)


def _authority(host: str, port: int | None) -> str:
    name = f"[{host}]" if ":" in host else host
    return name if port is None else f"{name}:{port}"


def _read_head(reader: BinaryIO) -> tuple[int, str, dict[str, str]]:
    """Status, HTTP version and headers of the next answer that is not an interim (1xx) one."""
    while True:
        line = reader.readline(MAX_LINE + 1)
        if not line:
            raise Broken("the connection closed before an answer")
        version, _, rest = line.partition(b" ")
        code = rest[:3]
        if not version.startswith(b"HTTP/") or not code.isdigit() or len(line) > MAX_LINE:
            raise Broken("not an HTTP answer")
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS + 1):
            line = reader.readline(MAX_LINE + 1)
            if line in (b"\r\n", b"\n"):
                break
            if not line or len(line) > MAX_LINE:
                raise Broken("the answer's headers broke off")
            name, colon, value = line.partition(b":")
            if not colon:
                raise Broken("a header line without a colon")
            k = name.strip().lower().decode("latin-1")
            v = value.strip().decode("latin-1")
            headers[k] = f"{headers[k]}, {v}" if k in headers else v
        else:
            raise Broken("too many header lines")
        status = int(code)
        if not 100 <= status < 200:
            return status, version.decode("latin-1"), headers


def _read_answer(reader: BinaryIO, method: str) -> tuple[Response, bool]:
    """The whole answer, and whether the connection can carry another request."""
    status, version, headers = _read_head(reader)
    keep = headers.get("connection", "").lower()
    reusable = keep != "close" if version != "HTTP/1.0" else keep == "keep-alive"
    if method == "HEAD" or status in (204, 304):
        return Response(status, headers, b""), reusable
    if "chunked" in headers.get("transfer-encoding", "").lower():
        # With a Content-Length too, someone on the way may frame it by that: not used again.
        reusable = reusable and "content-length" not in headers
        return Response(status, headers, _read_chunked(reader)), reusable
    length = headers.get("content-length")
    if length is None:
        return Response(status, headers, reader.read()), False  # the body ends at the close
    # ASCII digits only: str.isdigit() takes "²" too, which int() refuses.
    if not (length.isascii() and length.isdigit()):
        raise Broken("a Content-Length that is no number")
    return Response(status, headers, _read_exact(reader, int(length), "the body")), reusable


def _read_exact(reader: BinaryIO, size: int, what: str) -> bytes:
    """``size`` bytes, ``READ_STEP`` at a time (a body that fits in one step is one read, and
    the join hands back that very object: no copy)."""
    parts, got = [], 0
    while got < size:
        piece = reader.read(min(size - got, READ_STEP))
        if not piece:
            raise Broken(f"{what} broke off at {got} of {size} bytes")
        parts.append(piece)
        got += len(piece)
    return b"".join(parts)


def _read_chunked(reader: BinaryIO) -> bytes:
    parts = []
    while True:
        line = reader.readline(MAX_LINE + 1)
        size_text = line.split(b";", 1)[0].strip()
        # Hex digits only: int(..., 16) also takes a sign, "0x" and underscores.
        if not size_text or size_text.strip(b"0123456789abcdefABCDEF"):
            raise Broken("a chunk without a size")
        size = int(size_text, 16)
        if size == 0:
            break
        parts.append(_read_exact(reader, size + 2, "a chunk")[:size])
    for _ in range(MAX_HEADERS + 1):  # trailers, up to the empty line
        line = reader.readline(MAX_LINE + 1)
        if line in (b"\r\n", b"\n"):
            return b"".join(parts)
        if not line:
            raise Broken("the chunked body broke off")
    raise Broken("too many trailer lines")
