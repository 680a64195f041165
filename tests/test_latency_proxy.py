"""The bench's latency proxy (bench/latency.py) on real loopback sockets: an exchange through it
takes at least the RTT (two on a new connection: the TCP handshake), bytes pass unchanged both ways,
a big transfer is not slowed to one chunk per RTT, and bad input gets a clear error.

The proxy runs as its own process, as in the bench; the upstream is an echo server in a thread.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

LATENCY_PY = Path(__file__).resolve().parents[1] / "bench" / "latency.py"
RTT = 0.2
SLACK = 0.01  # clock granularity between the proxy's loop and time.monotonic here


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_latency", LATENCY_PY)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


latency = _load()


@pytest.fixture
def echo() -> Iterator[int]:
    """A TCP echo server on a free loopback port; each connection echoes until EOF."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.2)
    stop = threading.Event()

    def handle(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join(5)
        srv.close()


@pytest.fixture
def proxy(echo: int) -> Iterator[tuple[str, int]]:
    with latency.LatencyProxy(f"http://127.0.0.1:{echo}", rtt_ms=RTT * 1000) as p:
        port = int(p.url.rsplit(":", 1)[1])
        yield p, port


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise AssertionError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def test_exchange_takes_the_rtt_and_bytes_pass_unchanged(proxy: tuple) -> None:
    p, port = proxy
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        msg = os.urandom(100)
        t0 = time.monotonic()
        s.sendall(msg)
        assert _recv_exactly(s, len(msg)) == msg
        first = time.monotonic() - t0
        # A new connection: handshake (1 RTT) + request (RTT/2) + response (RTT/2).
        assert first >= 2 * RTT - SLACK, first

        msg = bytes(range(256)) * 4
        t0 = time.monotonic()
        s.sendall(msg)
        assert _recv_exactly(s, len(msg)) == msg
        again = time.monotonic() - t0
        assert again >= RTT - SLACK, again
        assert again < 2 * RTT + 1.0, again  # an open connection pays no handshake again


def test_big_transfer_is_pipelined_not_one_chunk_per_rtt(proxy: tuple) -> None:
    p, port = proxy
    payload = os.urandom(4 << 20)  # 64 of the proxy's chunks: 12.8 s if each waited an RTT
    got = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        t0 = time.monotonic()
        sender = threading.Thread(target=s.sendall, args=(payload,), daemon=True)
        sender.start()
        got += _recv_exactly(s, len(payload))
        took = time.monotonic() - t0
        sender.join(10)
    assert bytes(got) == payload
    assert 2 * RTT - SLACK <= took < 10 * RTT, took
    p.stop()
    assert "connections 1 " in p.totals and f"bytes_up {len(payload)} " in p.totals, p.totals


def test_dead_upstream_closes_the_client_connection() -> None:
    dead = socket.create_server(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()  # nothing listens there now
    with latency.LatencyProxy(f"http://127.0.0.1:{port}", rtt_ms=10) as p, \
            socket.create_connection(("127.0.0.1", int(p.url.rsplit(":", 1)[1])),
                                     timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\n\r\n")
        with contextlib.suppress(ConnectionResetError):
            assert s.recv(10) == b""


@pytest.mark.parametrize("argv, says", [
    (["--upstream", "ftp://127.0.0.1:1", "--rtt", "5"], "--upstream must be http://HOST:PORT"),
    (["--upstream", "http://127.0.0.1:1", "--rtt", "-5"], "--rtt must be >= 0"),
])
def test_bad_arguments_get_one_line_and_exit_2(argv: list[str], says: str) -> None:
    r = subprocess.run([sys.executable, str(LATENCY_PY), *argv], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2
    assert says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    with pytest.raises(ValueError):
        latency.LatencyProxy("http://127.0.0.1:1", rtt_ms=-1)
