"""A TCP proxy on loopback that adds a network round-trip time (RTT), for the WAN profile.

Users reach their provider 5-50 ms away, where what decides a metadata-bound operation is how many
requests are needed and how many are in flight, not the CPU per request that loopback shows. Kernel
netem is not available on these machines, so every contender (boto3, s3mount, s3fs, rclone) reaches
radosgw through this proxy instead, and all pay the same delays.

The model is a delay line, as netem's: every chunk of bytes read from one side is written to the
other side RTT/2 after it arrived, in order, without waiting for earlier chunks' answers (so
pipelining and many connections in flight are not penalised, and bandwidth is loopback's). A request
and its response therefore take one RTT on an open connection. A new connection also pays the TCP
handshake: nothing is passed upstream before one RTT after the connection was accepted (the client's
``connect()`` returns at once on loopback; its first request then arrives upstream 1.5 RTT later,
as it would over a real network). TLS is not modelled (radosgw speaks plain HTTP here).

Run alone: ``python bench/latency.py --upstream http://127.0.0.1:PORT --rtt 20`` prints the proxy's
URL on its first line, serves until SIGTERM or SIGINT, then prints one line of totals to stderr.
``LatencyProxy`` runs it that way as a child process, so its CPU time is its own (``cpu_seconds``)
and does not share the GIL with an in-process contender.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

CHUNK = 64 * 1024
QUEUE_CHUNKS = 256
"""Chunks held per direction and connection (16 MiB): bounds memory when the far side is slow."""
START_TIMEOUT = 30.0
TICK = os.sysconf("SC_CLK_TCK")


class Stats:
    """Totals over the proxy's life, printed when it stops."""

    def __init__(self) -> None:
        self.connections = 0
        self.up = 0
        self.down = 0

    def line(self) -> str:
        return f"connections {self.connections} bytes_up {self.up} bytes_down {self.down}"


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float,
                not_before: float, count: list[int]) -> None:
    """Copy ``reader`` to ``writer``, each chunk ``delay`` s after it arrived (or after
    ``not_before``, the end of the simulated handshake), then pass the EOF on the same way."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)

    async def read() -> None:
        try:
            while data := await reader.read(CHUNK):
                await queue.put((max(loop.time(), not_before) + delay, data))
        except OSError:
            pass  # a reset is passed on as an EOF: the other side sees the connection end
        await queue.put((max(loop.time(), not_before) + delay, b""))

    reading = asyncio.create_task(read())
    try:
        while True:
            due, data = await queue.get()
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            count[0] += len(data)
            await writer.drain()
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading


async def _serve_one(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter,
                     upstream: tuple[str, int], rtt: float, stats: Stats) -> None:
    loop = asyncio.get_running_loop()
    established = loop.time() + rtt
    stats.connections += 1
    try:
        up_r, up_w = await asyncio.open_connection(*upstream)
    except OSError:
        client_w.close()
        return
    up, down = [0], [0]
    try:
        pumps = [asyncio.create_task(_pump(client_r, up_w, rtt / 2, established, up)),
                 asyncio.create_task(_pump(up_r, client_w, rtt / 2, established, down))]
        # One side failing (a write to a closed socket) ends the connection both ways.
        done, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
    finally:
        stats.up += up[0]
        stats.down += down[0]
        for w in (client_w, up_w):
            w.close()
            with contextlib.suppress(OSError):
                await w.wait_closed()


async def serve(upstream: tuple[str, int], rtt: float, ready: object, stats: Stats) -> None:
    """Serve on a free loopback port until cancelled; ``ready(port)`` is called once listening."""
    server = await asyncio.start_server(
        lambda r, w: _serve_one(r, w, upstream, rtt, stats), "127.0.0.1", 0)
    ready(server.sockets[0].getsockname()[1])  # type: ignore[operator]
    async with server:
        await server.serve_forever()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, from /proc (0.0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


class LatencyProxyError(RuntimeError):
    """The proxy process did not start."""


class LatencyProxy:
    """The proxy as a child process: ``with LatencyProxy(url, rtt_ms=20) as p: p.url``."""

    def __init__(self, upstream_url: str, rtt_ms: float) -> None:
        if rtt_ms < 0:
            raise ValueError(f"RTT {rtt_ms} ms is negative")
        self.upstream_url = upstream_url
        self.rtt_ms = rtt_ms
        self.url = ""
        self.totals = ""
        """The proxy's closing line (connections, bytes each way), after ``stop()``."""
        self._proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def cpu_seconds(self) -> float:
        return cpu_seconds(self._proc.pid) if self._proc else 0.0

    def __enter__(self) -> LatencyProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, __file__, "--upstream", self.upstream_url, "--rtt", str(self.rtt_ms)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], START_TIMEOUT)
        line = self._proc.stdout.readline().strip() if ready else ""
        if not line.startswith("http://"):
            self.stop()
            raise LatencyProxyError(f"latency proxy did not start: {line or 'no output'}")
        self.url = line

    def stop(self) -> None:
        """End the proxy (SIGTERM, then SIGKILL after 10 s) and keep its totals line."""
        p, self._proc = self._proc, None
        if p is None:
            return
        if p.poll() is None:
            p.terminate()
        try:
            _, err = p.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate(timeout=10)
        self.totals = (err or "").strip().splitlines()[-1] if (err or "").strip() else ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--upstream", required=True, help="http://HOST:PORT of the server")
    ap.add_argument("--rtt", type=float, required=True, help="round-trip time to add, ms")
    args = ap.parse_args()
    u = urlparse(args.upstream)
    if u.scheme != "http" or not u.hostname or not u.port:
        print(f"latency.py: --upstream must be http://HOST:PORT, not {args.upstream!r}",
              file=sys.stderr)
        return 2
    if args.rtt < 0:
        print(f"latency.py: --rtt must be >= 0, not {args.rtt}", file=sys.stderr)
        return 2
    stats = Stats()

    def ready(port: int) -> None:
        print(f"http://127.0.0.1:{port}", flush=True)

    async def run() -> None:
        task = asyncio.create_task(serve((u.hostname, u.port), args.rtt / 1000, ready, stats))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    t0 = time.monotonic()
    asyncio.run(run())
    print(f"{stats.line()} seconds {time.monotonic() - t0:.1f}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
