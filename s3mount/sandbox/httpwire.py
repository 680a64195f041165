"""Just enough HTTP/1.1 framing to pass messages through unchanged, one at a time.

The fault proxy must forward every byte as the client sent it (SigV4 signs the Host header and the
payload hash), yet know where each request and response ends so it can inject a fault into exactly
one exchange on a keep-alive connection. ``Wire`` reads message heads and forwards bodies by their
framing (Content-Length, chunked, or until close) without parsing or re-encoding anything else.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass

HEAD_LIMIT = 64 * 1024
RECV_SIZE = 64 * 1024


class WireError(Exception):
    """The peer sent something that is not HTTP/1.1 framing we can follow."""


@dataclass(frozen=True)
class Head:
    """A request or status line plus headers, with the raw bytes to forward."""

    raw: bytes
    first: list[str]
    headers: dict[str, str]

    @property
    def method(self) -> str:
        return self.first[0].upper()

    @property
    def target(self) -> str:
        return self.first[1] if len(self.first) > 1 else ""

    @property
    def status(self) -> int:
        try:
            return int(self.first[1])
        except (IndexError, ValueError):
            raise WireError(f"bad status line {' '.join(self.first)!r}") from None

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")

    def wants_close(self) -> bool:
        """Connection: close, or HTTP/1.0 without keep-alive."""
        conn = self.header("connection").lower()
        version = self.first[0] if self.first[0].startswith("HTTP/") else self.first[-1]
        return "close" in conn or (version == "HTTP/1.0" and "keep-alive" not in conn)


def parse_head(raw: bytes) -> Head:
    lines = raw.decode("latin-1").split("\r\n")
    first = lines[0].split(" ", 2)
    if len(first) < 2:
        raise WireError(f"bad first line {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise WireError(f"bad header line {line!r}")
        headers[name.strip().lower()] = value.strip()
    return Head(raw, first, headers)


@dataclass(frozen=True)
class Framing:
    """How a body ends: ``length`` bytes, ``chunked``, at ``eof``, or there is ``none``."""

    kind: str
    length: int = 0


def request_framing(req: Head) -> Framing:
    if "chunked" in req.header("transfer-encoding").lower():
        return Framing("chunked")
    return _content_length(req)


def response_framing(resp: Head, request_method: str) -> Framing:
    status = resp.status
    if request_method == "HEAD" or 100 <= status < 200 or status in (204, 304):
        return Framing("none")
    if "chunked" in resp.header("transfer-encoding").lower():
        return Framing("chunked")
    if resp.header("content-length"):
        return _content_length(resp)
    return Framing("eof")


def _content_length(head: Head) -> Framing:
    value = head.header("content-length") or "0"
    try:
        n = int(value)
    except ValueError:
        raise WireError(f"bad Content-Length {value!r}") from None
    if n < 0:
        raise WireError(f"bad Content-Length {value!r}")
    return Framing("length", n) if n else Framing("none")


class Wire:
    """A socket with a read buffer: read heads, forward bodies byte for byte."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray()

    def _fill(self) -> bool:
        data = self.sock.recv(RECV_SIZE)
        if not data:
            return False
        self._buf += data
        return True

    def has_buffered(self) -> bool:
        """Bytes already read but not consumed (select() cannot see these, nor TLS's own)."""
        pending = self.sock.pending() if isinstance(self.sock, ssl.SSLSocket) else 0
        return bool(self._buf) or pending > 0

    def read_head(self) -> Head | None:
        """The next message head, or None when the peer closed cleanly between messages."""
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end >= 0:
                raw = bytes(self._buf[:end + 4])
                del self._buf[:end + 4]
                return parse_head(raw)
            if len(self._buf) > HEAD_LIMIT:
                raise WireError("message head too large")
            if not self._fill():
                if self._buf:
                    raise WireError("connection closed inside a message head")
                return None

    def _take(self, limit: int) -> bytes:
        if not self._buf and not self._fill():
            raise WireError("connection closed inside a message body")
        chunk = bytes(self._buf[:limit])
        del self._buf[:limit]
        return chunk

    def _line(self) -> bytes:
        while (end := self._buf.find(b"\r\n")) < 0:
            if len(self._buf) > HEAD_LIMIT or not self._fill():
                raise WireError("bad chunked framing")
        line = bytes(self._buf[:end + 2])
        del self._buf[:end + 2]
        return line

    def read_exact(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            out += self._take(n - len(out))
        return bytes(out)

    def copy(self, n: int, dst: socket.socket | None) -> None:
        """Forward exactly ``n`` body bytes to ``dst`` (None: read and discard them)."""
        while n > 0:
            chunk = self._take(min(n, RECV_SIZE))
            if dst is not None:
                dst.sendall(chunk)
            n -= len(chunk)

    def copy_body(self, framing: Framing, dst: socket.socket | None) -> None:
        """Forward one whole body as framed (the caller knows the framing from the head)."""
        if framing.kind == "length":
            self.copy(framing.length, dst)
        elif framing.kind == "chunked":
            self._copy_chunked(dst)
        elif framing.kind == "eof":
            while self._buf or self._fill():
                chunk = bytes(self._buf)
                self._buf.clear()
                if dst is not None:
                    dst.sendall(chunk)

    def _copy_chunked(self, dst: socket.socket | None) -> None:
        while True:
            line = self._line()
            if dst is not None:
                dst.sendall(line)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise WireError(f"bad chunk size line {line!r}") from None
            if size == 0:
                break
            self.copy(size + 2, dst)  # the chunk and its CRLF
        while True:  # trailers, up to the empty line
            line = self._line()
            if dst is not None:
                dst.sendall(line)
            if line == b"\r\n":
                return
