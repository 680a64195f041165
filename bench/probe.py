"""Count the S3 requests and CPU time behind ``ls -l`` and ``rm -r`` of one big directory.

Where ``run.py`` says *how long*, this says *why*: it reads the gateway's request log (one ``beast:``
line per request) and the CPU time of the mount process and of radosgw around each step.

    python bench/probe.py --objects 10000                      # s3mount, default options
    python bench/probe.py --objects 10000 -o no_posix_metadata
    python bench/probe.py --objects 2000 --tool s3fs
    python bench/probe.py --objects 2000 --rtt 20              # through latency.py's proxy

Steps: ``ls -l`` on a fresh mount (empty cache dir), from a second machine (another empty cache dir;
s3mount once it has issue #19's shared index), on the next mount (same cache dir as the first;
s3mount only), then ``rm -r`` in that mount, cut off after ``--rm-seconds`` (files gone are counted).
With ``--rtt MS`` the mount reaches the gateway through the latency proxy, whose CPU is shown too
(total and per request: what the proxy costs).
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

from latency import LatencyProxy, LatencyProxyError
from mounts import Mount, MountError, Server, mounts_under, s3mount_has_option
from radosgw import Radosgw, RadosgwError, interrupt_on_signal

log = logging.getLogger("probe")

REQUEST = re.compile(r'beast: \S+: \S+ - \S+ \[[^\]]+\] "(\w+) (\S+)')
LIST_PARAMS = ("list-type=", "prefix=", "delimiter=")
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


class RequestLog:
    """Counts the gateway's requests by kind since the last ``mark()``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pos = 0

    def mark(self) -> None:
        self.pos = self.path.stat().st_size

    def counts(self) -> dict[str, int]:
        with open(self.path, "rb") as f:
            f.seek(self.pos)
            text = f.read().decode(errors="replace")
        c: collections.Counter[str] = collections.Counter()
        for method, url in REQUEST.findall(text):
            query = url.partition("?")[2]
            c["LIST" if method == "GET" and any(p in query for p in LIST_PARAMS) else method] += 1
        return dict(sorted(c.items()))


def step(name: str, argv: list[str], m: Mount, gw_pid: int, reqs: RequestLog,
         timeout: float, proxy_pid: int | None = None) -> dict[str, object]:
    reqs.mark()
    c0, g0, p0 = cpu_seconds(m.pid), cpu_seconds(gw_pid), cpu_seconds(proxy_pid)
    t0 = time.monotonic()
    try:
        rc = subprocess.run(argv, capture_output=True, timeout=timeout,
                            stdin=subprocess.DEVNULL).returncode
        note = "" if rc == 0 else f"exit {rc}"
    except subprocess.TimeoutExpired:
        note = f"cut off after {timeout:.0f}s"
    wall = time.monotonic() - t0
    time.sleep(1)  # the gateway writes its log line after answering
    return {"step": name, "wall": wall, "note": note, "requests": reqs.counts(),
            "mount_cpu": cpu_seconds(m.pid) - c0, "gateway_cpu": cpu_seconds(gw_pid) - g0,
            "proxy_cpu": cpu_seconds(proxy_pid) - p0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objects", type=int, default=10_000)
    ap.add_argument("--tool", default="s3mount", choices=["s3mount", "s3fs", "rclone"])
    ap.add_argument("-o", dest="options", default="", help="mount options (comma-separated)")
    ap.add_argument("--rm-seconds", type=float, default=60.0)
    ap.add_argument("--rtt", type=float, default=0.0, metavar="MS",
                    help="reach the gateway through a proxy adding this round-trip time")
    args = ap.parse_args()
    if args.rtt < 0:
        print("probe: --rtt must be >= 0", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    signal.signal(signal.SIGTERM, interrupt_on_signal)
    options = tuple(o for o in args.options.split(",") if o)
    work = Path(tempfile.mkdtemp(prefix="s3mount-probe-"))
    rows: list[dict[str, object]] = []
    proxy: LatencyProxy | None = None
    try:
        with Radosgw(block_gib=4) as gw, \
                (LatencyProxy(gw.url, args.rtt) if args.rtt else nullcontext()) as proxy:
            s3 = gw.client()
            bucket = "probe"
            s3.create_bucket(Bucket=bucket)
            with ThreadPoolExecutor(32) as pool:
                list(pool.map(lambda i: s3.put_object(
                    Bucket=bucket, Key=f"many/f{i:05d}", Body=b"x" * 64), range(args.objects)))
            server = Server(proxy.url if proxy else gw.url, gw.tester.access_key,
                            gw.tester.secret_key)
            reqs = RequestLog(gw.request_log)
            gw_pid = gw.gateway_pid or 0
            proxy_pid = proxy.pid if proxy else None

            def mount(cache: str = "cache") -> Mount:
                return Mount(args.tool, server, bucket, work / "mnt", options=options,
                             cache_dir=work / cache, log_dir=work)

            ls = ["ls", "-l", str(work / "mnt" / "many")]
            with mount() as m:
                rows.append(step("ls -l, fresh mount", ls, m, gw_pid, reqs, 600, proxy_pid))
            if args.tool == "s3mount" and s3mount_has_option("no_shared_index"):
                # Issue #19's shared index: another machine (empty cache dir) after the first.
                with mount(cache="cache-second-machine") as m:
                    rows.append(step("ls -l, second machine", ls, m, gw_pid, reqs, 600,
                                     proxy_pid))
            with mount() as m:
                if args.tool == "s3mount":
                    rows.append(step("ls -l, next mount", ls, m, gw_pid, reqs, 600, proxy_pid))
                rows.append(step("rm -r", ["rm", "-r", str(work / "mnt" / "many")], m, gw_pid,
                                 reqs, args.rm_seconds, proxy_pid))
            left = sum(len(p.get("Contents", ())) for p in s3.get_paginator(
                "list_objects_v2").paginate(Bucket=bucket, Prefix="many/"))
            rows[-1]["note"] = f"{rows[-1]['note']}; {args.objects - left} files gone".strip("; ")
    except (RadosgwError, MountError, LatencyProxyError) as exc:
        print(f"probe: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if not mounts_under(str(work)):
            subprocess.run(["rm", "-rf", str(work)], timeout=120)
    what = f"{args.tool} {','.join(options)}".strip()
    where = f"RTT {args.rtt:g} ms through bench/latency.py" if args.rtt else "loopback"
    print(f"\n{what}, directory of {args.objects:,} plain objects, {where}\n")
    print("| step | wall | requests | mount CPU | radosgw CPU | proxy CPU (per request) | note |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        counts: dict[str, int] = r["requests"]  # type: ignore[assignment]
        req = ", ".join(f"{n} {k}" for k, n in counts.items())
        pc = float(r["proxy_cpu"])  # type: ignore[arg-type]
        per = f"{pc:.2f} s ({pc / sum(counts.values()) * 1e6:.0f} µs)" \
            if args.rtt and counts else "—"
        print(f"| {r['step']} | {r['wall']:.2f} s | {req} | {r['mount_cpu']:.2f} s | "
              f"{r['gateway_cpu']:.2f} s | {per} | {r['note']} |")
    if proxy is not None:
        print(f"\nlatency proxy, whole run (setup direct, not through it): {proxy.totals}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
