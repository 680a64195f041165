"""A fault-injecting HTTP proxy to put between a mount and the sandbox S3 server.

The mount's ``--endpoint-url`` points at the proxy, which passes each request through to the upstream
server byte for byte (SigV4 signs the Host header and the payload, so nothing may be rewritten) and,
when told to, breaks one exchange in a way real networks and servers do:

``drop``      close the client's connection instead of forwarding the request
``slowdown``  answer ``503 SlowDown`` with S3's XML error body (not forwarded)
``internal``  answer ``500 InternalError`` (not forwarded)
``delay``     forward, then hold the response back for ``delay`` seconds
``hold``      forward, then hold the response back until the test calls ``release()`` (at most
              ``delay`` seconds when that is set, else ``IDLE_TIMEOUT``): a moment a test must
              reach while a request is in flight is then certain, not a race against the server
``cut``       forward, send the response head with its full Content-Length, then close the
              connection after half of the body (only responses with a Content-Length body)
``dribble``   forward, then send the response head one byte every ``delay`` seconds (a
              slowloris server: never silent for long, yet its answer never ends)

Each ``Fault`` hits either the next ``count`` matching requests, or each matching request with
``probability`` (one seeded RNG for the proxy, so a single-threaded client sees the same faults on
every run). ``spare_last_attempt`` leaves alone a request the SDK marks as its last try (botocore's
``amz-sdk-request: attempt=N; max=N``), so every fault is one a client with retries can absorb: a
test then proves that retrying works, and not that it can beat the dice.

``down`` mode is the server gone: every open connection is closed and every new request is closed
unanswered (admin calls excepted), until the proxy is set up again.

Control is from Python (``FaultProxy`` in-process, ``FaultProxyClient`` for one in another process)
or over HTTP under ``/_faultproxy/`` (no S3 bucket name has an underscore), guarded by a token in the
``X-Faultproxy-Token`` header. ``python -m s3mount.sandbox.faultproxy --upstream URL --state-file F``
runs it as its own process and writes its URL and token to F (mode 0600). With ``tls=(cert, key)``
the proxy speaks HTTPS to its clients (and plain HTTP upstream): a TLS-terminating front for the
sandbox.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import re
import secrets
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any
from urllib.parse import urlparse

import requests

from . import procs
from .httpwire import Head, Wire, WireError, request_framing, response_framing

log = logging.getLogger(__name__)

ADMIN_PREFIX = "/_faultproxy/"
TOKEN_HEADER = "X-Faultproxy-Token"
KINDS = ("drop", "slowdown", "internal", "delay", "hold", "cut", "dribble")
IDLE_TIMEOUT = 120.0
"""Seconds a connection may sit idle (or an upstream may stay silent) before the proxy closes it."""
DRAIN_TIMEOUT = 5.0

_ERRORS = {  # kind -> (status line, S3 error code, message)
    "slowdown": ("503 Slow Down", "SlowDown", "Please reduce your request rate."),
    "internal": ("500 Internal Server Error", "InternalError",
                 "We encountered an internal error. Please try again."),
}
_ATTEMPT_RE = re.compile(r"attempt=(\d+).*?max=(\d+)")


@dataclass
class Fault:
    """One kind of fault and which requests it hits."""

    kind: str
    probability: float = 0.0
    count: int | None = None
    """When set, the next ``count`` matching requests get the fault (probability is then unused)."""
    delay: float = 0.0
    methods: tuple[str, ...] = ()
    """Only requests with one of these methods (empty: any)."""
    path: str = ""
    """Only requests whose target matches this regular expression (empty: any)."""
    spare_last_attempt: bool = False
    _path_re: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r} (one of {', '.join(KINDS)})")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability {self.probability} is not between 0 and 1")
        if self.count is not None and self.count < 0:
            raise ValueError(f"count {self.count} is negative")
        if self.delay < 0:
            raise ValueError(f"delay {self.delay} is negative")
        self.methods = tuple(m.upper() for m in self.methods)
        self._path_re = re.compile(self.path) if self.path else None

    def matches(self, req: Head) -> bool:
        if self.methods and req.method not in self.methods:
            return False
        if self._path_re is not None and not self._path_re.search(req.target):
            return False
        if self.spare_last_attempt:
            m = _ATTEMPT_RE.search(req.header("amz-sdk-request"))
            if m and int(m.group(1)) >= int(m.group(2)):
                return False
        return True

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("_path_re")
        d["methods"] = list(self.methods)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Fault:
        d = dict(d)
        d["methods"] = tuple(d.get("methods") or ())
        return cls(**d)


_DOWN = Fault("drop")
"""What every request gets while the proxy is down."""


class _Conn:
    """One client connection and the upstream connection serving it."""

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.upstream: socket.socket | None = None

    def sever(self) -> None:
        """Shut both sockets down from another thread; the serving thread then ends."""
        for s in (self.client, self.upstream):
            if s is not None:
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(s, socket.SHUT_RDWR)  # not SSLSocket's: no TLS state


class FaultProxy:
    """The proxy, in this process: ``FaultProxy(upstream_url).start()``, then ``.url``."""

    def __init__(self, upstream_url: str, *, host: str = "127.0.0.1", port: int = 0,
                 seed: int = 0, token: str | None = None,
                 tls: tuple[str, str] | None = None) -> None:
        u = urlparse(upstream_url)
        if u.scheme != "http" or not u.hostname or not u.port:
            raise ValueError(f"upstream must be http://HOST:PORT, not {upstream_url!r}")
        self.upstream = (u.hostname, u.port)
        self.token = token or secrets.token_urlsafe(24)
        self._tls: ssl.SSLContext | None = None
        if tls is not None:
            self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._tls.load_cert_chain(*tls)
        self._host, self._port = host, port
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._faults: list[Fault] = []
        self._down = False
        self._stats: Counter[str] = Counter()
        self._conns: set[_Conn] = set()
        self._stopped = threading.Event()
        self._released = threading.Event()
        self._threads: set[threading.Thread] = set()

    # -- lifetime ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._listener is not None, "start() first"
        port = self._listener.getsockname()[1]
        return f"{'https' if self._tls else 'http'}://{self._host}:{port}"

    def start(self) -> FaultProxy:
        self._listener = socket.create_server((self._host, self._port))
        self._spawn(self._accept_loop, "faultproxy-accept")
        log.info("fault proxy on %s -> http://%s:%d", self.url, *self.upstream)
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._released.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(self._listener, socket.SHUT_RDWR)
            self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            c.sever()
        for t in list(self._threads):
            t.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- control -------------------------------------------------------------------------------

    def set_faults(self, faults: Iterable[Fault], *, seed: int | None = None) -> None:
        """Replace the fault list (first matching fault wins); reseed the RNG if ``seed`` given.
        A ``hold`` in the new list holds its responses until the next ``release()``.

        The proxy counts ``count`` down on copies: a fault kept in a constant and given again
        (by the next test) hits its ``count`` requests again."""
        faults = [replace(f) for f in faults]
        with self._lock:
            self._faults = faults
            if seed is not None:
                self._rng.seed(seed)
            if any(f.kind == "hold" for f in faults):
                self._released.clear()

    def release(self) -> None:
        """Let every response a ``hold`` keeps back go on (and later ones pass unheld)."""
        self._released.set()

    def clear(self) -> None:
        """No faults, nothing held, and up."""
        self.set_faults([])
        self.release()
        self.set_down(False)

    def set_down(self, down: bool, *, keep: _Conn | None = None) -> None:
        """Down: close every open connection (but ``keep``) and every new one; or back up."""
        with self._lock:
            self._down = down
            conns = [c for c in self._conns if c is not keep] if down else []
        for c in conns:
            c.sever()
        log.info("fault proxy %s", "down" if down else "up")

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until no client connection is open (True), or ``timeout`` seconds (False).

        A client killed with requests already sent leaves them in the proxy's socket: they are
        read, and get the faults in force, when the proxy's thread comes to them. Clearing the
        faults before that would forward a request of a client that is gone (a test that
        refused a mount's uploads until its kill -9 then found one stored)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if not self._conns and not self._backlog():
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def stats(self) -> dict[str, int]:
        """Counts: ``requests`` seen, ``forwarded``, ``refused_down``, one per fault kind,
        ``unsigned_payload`` (requests whose body the signature does not cover), and one per
        kind of request seen (``req HEAD``, ``req GET``, ``req LIST`` for a ListObjects GET,
        ``req PUT``...)."""
        with self._lock:
            return dict(self._stats)

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {"down": self._down, "faults": [f.to_json() for f in self._faults],
                    "stats": dict(self._stats)}

    # -- serving -------------------------------------------------------------------------------

    def _spawn(self, target: Any, name: str, *args: Any) -> None:
        def run() -> None:
            try:
                target(*args)
            finally:
                self._threads.discard(threading.current_thread())

        t = threading.Thread(target=run, name=name, daemon=True)
        self._threads.add(t)
        t.start()

    def _accept_loop(self) -> None:
        """Accept under the lock, so a connection is always either waiting in the listener's
        backlog or in ``_conns`` (``wait_idle`` sees both)."""
        listener = self._listener
        assert listener is not None
        listener.setblocking(False)
        while not self._stopped.is_set():
            try:
                select.select([listener], [], [], 0.5)
                with self._lock:
                    sock, _ = listener.accept()
                    conn = _Conn(sock)
                    self._conns.add(conn)
            except BlockingIOError:
                continue
            except (OSError, ValueError):  # the listener was shut down or closed by stop()
                return
            self._spawn(self._serve, "faultproxy-conn", conn)

    def _backlog(self) -> bool:
        """Whether a connection waits to be accepted."""
        if self._listener is None:
            return False
        try:
            readable, _, _ = select.select([self._listener], [], [], 0)
        except (OSError, ValueError):  # closed by stop()
            return False
        return bool(readable)

    def _serve(self, conn: _Conn) -> None:
        sock = conn.client
        sock.settimeout(IDLE_TIMEOUT)
        upstream: Wire | None = None
        try:
            if self._tls is not None:
                conn.client = sock = self._tls.wrap_socket(sock, server_side=True)
            client = Wire(sock)
            while not self._stopped.is_set():
                req = client.read_head()
                if req is None:
                    return
                if req.target.startswith(ADMIN_PREFIX):
                    if not self._admin(client, req, conn):
                        return
                    continue
                fault = self._pick(req)
                if fault is not None and fault.kind == "drop":
                    return
                if fault is not None and fault.kind in _ERRORS:
                    self._reply_error(client, req, fault.kind)
                    return
                if upstream is None or not _idle_and_open(upstream):
                    if upstream is not None:
                        upstream.sock.close()
                    upstream = Wire(socket.create_connection(self.upstream, timeout=IDLE_TIMEOUT))
                    conn.upstream = upstream.sock
                if not self._exchange(client, upstream, req, fault):
                    return
        except (OSError, WireError, ssl.SSLError) as exc:
            log.debug("fault proxy connection ended: %s", exc)
        finally:
            with self._lock:
                self._conns.discard(conn)
            for s in (conn.client, conn.upstream):
                if s is not None:
                    s.close()

    def _pick(self, req: Head) -> Fault | None:
        """The fault for this request (None: forward it), counting what happens."""
        with self._lock:
            self._stats["requests"] += 1
            listing = req.method == "GET" and "list-type=" in req.target.partition("?")[2]
            self._stats[f"req {'LIST' if listing else req.method}"] += 1
            if req.header("x-amz-content-sha256") == "UNSIGNED-PAYLOAD":
                self._stats["unsigned_payload"] += 1
            if self._down:
                self._stats["refused_down"] += 1
                return _DOWN
            for f in self._faults:
                if not f.matches(req):
                    continue
                if f.count is not None:
                    if f.count == 0:
                        continue
                    f.count -= 1
                elif not self._rng.random() < f.probability:
                    continue
                if f.kind != "cut":  # counted when it really cuts a body
                    self._stats[f.kind] += 1
                return f
            return None

    def _count(self, what: str) -> None:
        with self._lock:
            self._stats[what] += 1

    def _exchange(self, client: Wire, upstream: Wire, req: Head, fault: Fault | None) -> bool:
        """Forward one request and its response; False when the connection must close after."""
        self._count("forwarded")
        framing = request_framing(req)
        upstream.sock.sendall(req.raw)
        resp: Head | None = None
        if framing.kind != "none" and req.header("expect").lower() == "100-continue":
            resp = _await_continue(client, upstream)
        answered_early = resp is not None
        if resp is None:
            client.copy_body(framing, upstream.sock)
            resp = _final_response(client, upstream)
        if fault is not None and fault.kind == "delay":
            self._stopped.wait(fault.delay)
        elif fault is not None and fault.kind == "hold":
            self._released.wait(fault.delay or IDLE_TIMEOUT)
        if fault is not None and fault.kind == "dribble":
            for i in range(len(resp.raw)):
                if self._stopped.wait(fault.delay):
                    return False
                client.sock.sendall(resp.raw[i:i + 1])
        else:
            client.sock.sendall(resp.raw)
        body = response_framing(resp, req.method)
        if fault is not None and fault.kind == "cut" and body.kind == "length" and body.length > 1:
            upstream.copy(body.length // 2, client.sock)
            self._count("cut")
            return False
        upstream.copy_body(body, client.sock)
        return not (answered_early or body.kind == "eof" or resp.wants_close()
                    or req.wants_close())

    def _reply_error(self, client: Wire, req: Head, kind: str) -> None:
        status, code, message = _ERRORS[kind]
        body = b"" if req.method == "HEAD" else _error_xml(code, message)
        if req.header("expect").lower() != "100-continue":
            # The client sends its body before it reads; take it, so closing sends no RST.
            client.sock.settimeout(DRAIN_TIMEOUT)
            client.copy_body(request_framing(req), None)
        client.sock.sendall(
            f"HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {len(body)}"
            f"\r\nx-amz-request-id: faultproxy\r\nConnection: close\r\n\r\n".encode() + body)

    # -- admin API -----------------------------------------------------------------------------

    def _admin(self, client: Wire, req: Head, conn: _Conn) -> bool:
        """Serve one admin request; False when the connection must close after."""
        framing = request_framing(req)
        if framing.kind not in ("none", "length") or framing.length > 1 << 20:
            _send_json(client, 400, {"error": "admin bodies are small and have a Content-Length"})
            return False
        raw = client.read_exact(framing.length) if framing.kind == "length" else b""
        if not secrets.compare_digest(req.header(TOKEN_HEADER).encode(), self.token.encode()):
            _send_json(client, 403, {"error": f"{TOKEN_HEADER} missing or wrong"})
            return not req.wants_close()
        action = req.target[len(ADMIN_PREFIX):].split("?", 1)[0]
        try:
            body = json.loads(raw) if raw else {}
            if action == "state" and req.method == "GET":
                pass
            elif action == "faults" and req.method == "PUT":
                self.set_faults([Fault.from_json(f) for f in body.get("faults", [])],
                                seed=body.get("seed"))
            elif action == "down" and req.method == "PUT":
                self.set_down(bool(body["down"]), keep=conn)
            elif action == "release" and req.method == "PUT":
                self.release()
            else:
                _send_json(client, 404, {"error": f"no admin call {req.method} {action}"})
                return not req.wants_close()
        except (ValueError, KeyError, TypeError, re.error) as exc:
            _send_json(client, 400, {"error": f"bad request: {exc}"})
            return not req.wants_close()
        _send_json(client, 200, self.state())
        return not req.wants_close()


def _idle_and_open(upstream: Wire) -> bool:
    """An idle keep-alive upstream connection that has anything to say has closed (or broken)."""
    if upstream.has_buffered():
        return False
    readable, _, _ = select.select([upstream.sock], [], [], 0)
    return not readable


def _await_continue(client: Wire, upstream: Wire) -> Head | None:
    """With ``Expect: 100-continue``: pass on the server's 100 and return None (the body follows),
    or return the server's final answer given before the body. A client that stops waiting and
    sends its body anyway also gets None."""
    while not client.has_buffered():
        readable, _, _ = select.select([client.sock, upstream.sock], [], [], IDLE_TIMEOUT)
        if not readable:
            raise WireError("neither client nor server said anything after Expect: 100-continue")
        if upstream.sock in readable:
            head = upstream.read_head()
            if head is None:
                raise WireError("server closed the connection without an answer")
            if head.status >= 200:
                return head
            client.sock.sendall(head.raw)
            return None
        if client.sock in readable:
            return None
    return None


def _final_response(client: Wire, upstream: Wire) -> Head:
    """The next non-1xx response head, passing interim ones (100 Continue) on to the client."""
    while True:
        head = upstream.read_head()
        if head is None:
            raise WireError("server closed the connection without an answer")
        if head.status >= 200 or head.status == 101:
            return head
        client.sock.sendall(head.raw)


def _send_json(client: Wire, status: int, body: Any) -> None:
    data = json.dumps(body).encode()
    reason = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found"}[status]
    client.sock.sendall(f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(data)}\r\n\r\n".encode() + data)


def _error_xml(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{message}</Message><RequestId>faultproxy</RequestId></Error>").encode()


# -- control from another process -------------------------------------------------------------


class FaultProxyClient:
    """Controls a proxy through its admin API (same methods as ``FaultProxy``)."""

    def __init__(self, url: str, token: str, *, verify: bool | str = True) -> None:
        self.url = url
        self.token = token
        self._verify = verify

    def _call(self, method: str, action: str, body: dict[str, Any] | None = None
              ) -> dict[str, Any]:
        r = requests.request(method, f"{self.url}{ADMIN_PREFIX}{action}", json=body, timeout=30,
                             headers={TOKEN_HEADER: self.token}, verify=self._verify)
        r.raise_for_status()
        return r.json()

    def set_faults(self, faults: Iterable[Fault], *, seed: int | None = None) -> None:
        self._call("PUT", "faults", {"faults": [f.to_json() for f in faults], "seed": seed})

    def release(self) -> None:
        self._call("PUT", "release")

    def clear(self) -> None:
        self.set_faults([])
        self.release()
        self.set_down(False)

    def set_down(self, down: bool) -> None:
        self._call("PUT", "down", {"down": down})

    def state(self) -> dict[str, Any]:
        return self._call("GET", "state")

    def stats(self) -> dict[str, int]:
        return self.state()["stats"]


class FaultProxyProcess(FaultProxyClient):
    """``python -m s3mount.sandbox.faultproxy`` in a subprocess; a context manager."""

    def __init__(self, upstream_url: str, *, seed: int = 0, startup_timeout: float = 30) -> None:
        self._dir = tempfile.mkdtemp(prefix="s3mount-faultproxy-")
        state_file = os.path.join(self._dir, "state.json")
        self.proc, state = procs.start(
            [sys.executable, "-m", "s3mount.sandbox.faultproxy", "--upstream", upstream_url,
             "--state-file", state_file, "--seed", str(seed)],
            state_file, timeout=startup_timeout, what="the fault proxy process",
            stdout=subprocess.DEVNULL)
        super().__init__(state["url"], state["token"])

    def stop(self) -> None:
        procs.stop(self.proc)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> FaultProxyProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    from .server import write_state

    p = argparse.ArgumentParser(prog="python -m s3mount.sandbox.faultproxy",
                                description="Run a fault-injecting HTTP proxy in front of an S3 "
                                            "server.")
    p.add_argument("--upstream", required=True, help="http://HOST:PORT of the S3 server")
    p.add_argument("--state-file", required=True, help="where to write the URL and admin token "
                                                       "(mode 0600)")
    p.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault RNG")
    p.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--tls-key", help="private key of --tls-cert (PEM)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="faultproxy %(levelname)s: %(message)s")
    tls = (args.tls_cert, args.tls_key) if args.tls_cert else None
    proxy = FaultProxy(args.upstream, port=args.port, seed=args.seed, tls=tls).start()
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    write_state(args.state_file, {"url": proxy.url, "token": proxy.token, "pid": os.getpid()})
    done.wait()
    proxy.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
