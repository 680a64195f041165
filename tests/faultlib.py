"""Mounts that reach the sandbox through a proxy (the fault proxy, or a TLS front)."""

from __future__ import annotations

import base64
import contextlib
import socket
import threading

from mountlib import Mount, Mounter

from s3mount.sandbox.client import SandboxProcess
from s3mount.sandbox.faultproxy import Fault, FaultProxy
from s3mount.store.base import KeySet

NO_PUTS = Fault("internal", probability=1.0, methods=("PUT",))
"""Every upload fails (lookups and listings still work): async uploads stay pending, so a crash
finds them pending however fast the machine would have stored them."""


class ThroughProxy:
    """The sandbox as the mounts see it: keys from the sandbox, the S3 endpoint at ``url``."""

    def __init__(self, sandbox: SandboxProcess, url: str) -> None:
        self._sandbox = sandbox
        self.url = url

    def issue_keys(self, buckets: list[str] | str, **kw: object) -> KeySet:
        return self._sandbox.issue_keys(buckets, **kw)  # type: ignore[arg-type]


def through(mounter: Mounter, sandbox: SandboxProcess, url: str) -> Mounter:
    """Make ``mounter`` (the fixture, with its teardown) mount with ``--endpoint-url url``."""
    mounter.sandbox = ThroughProxy(sandbox, url)  # type: ignore[assignment]
    return mounter


def crash(m: Mount, proxy: FaultProxy) -> None:
    """kill -9 ``m``, then clear ``proxy``'s faults once the dead mount's connections are closed:
    a request it sent just before the kill still gets the faults it was sent under (cleared at
    once, a refused upload could be forwarded and stored after the crash)."""
    m.kill9()
    assert proxy.wait_idle(30), "the killed mount's connections to the proxy stayed open"
    proxy.clear()


class ConnectProxy:
    """An HTTP proxy that only tunnels (``CONNECT``); with ``auth`` (``user:password``) only for
    those credentials. While ``cuts`` is above zero, each new tunnel is broken, in turn: closed
    right after the 200, closed after the client's first bytes (the ClientHello: the handshake
    breaks off), or cut after 3,000 bytes of the server's (the end of the handshake, or an
    answer, breaks off)."""

    def __init__(self, auth: str | None = None) -> None:
        self.auth = "Basic " + base64.b64encode(auth.encode()).decode() if auth else None
        self.asked: list[str] = []
        self.cuts = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                how = self.cuts % 3 + 1 if self.cuts > 0 else 0
                self.cuts = max(self.cuts - 1, 0)
            threading.Thread(target=self._tunnel, args=(client, how), daemon=True).start()

    def _tunnel(self, client: socket.socket, how: int) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            got = client.recv(4096)
            if not got:
                client.close()
                return
            head += got
        lines = head.decode().split("\r\n")
        self.asked.append(lines[0])
        if self.auth and f"Proxy-Authorization: {self.auth}" not in lines:
            client.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                           b"Content-Length: 0\r\n\r\n")
            client.close()
            return
        host, _, port = lines[0].split()[1].rpartition(":")
        upstream = socket.create_connection((host, int(port)), timeout=10)
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        if how in (1, 2):
            if how == 2:
                client.recv(65536)
            for s in (client, upstream):
                s.close()
            return
        threading.Thread(target=_pipe, args=(client, upstream, None), daemon=True).start()
        threading.Thread(target=_pipe, args=(upstream, client, 3000 if how == 3 else None),
                         daemon=True).start()


def _pipe(a: socket.socket, b: socket.socket, limit: int | None) -> None:
    """Copy ``a`` to ``b`` (at most ``limit`` bytes), then shut both down."""
    sent = 0
    try:
        while data := a.recv(65536):
            if limit is not None and sent + len(data) >= limit:
                b.sendall(data[:limit - sent])
                break
            b.sendall(data)
            sent += len(data)
    except OSError:
        pass
    for s in (a, b):
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
