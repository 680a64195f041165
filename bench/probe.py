"""Count the S3 requests and CPU time behind ``ls -l`` and ``rm -r`` of one big directory.

Where ``run.py`` says *how long*, this says *why*: it reads the gateway's request log (one ``beast:``
line per request) and the CPU time of the mount process and of radosgw around each step.

    python bench/probe.py --objects 10000                      # s3mount, default options
    python bench/probe.py --objects 10000 -o no_posix_metadata
    python bench/probe.py --objects 2000 --tool s3fs

Steps: ``ls -l`` on a fresh mount (empty cache dir), ``ls -l`` on the next mount (same cache dir;
s3mount only), then ``rm -r`` in that mount, cut off after ``--rm-seconds`` (files gone are counted).
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
from pathlib import Path

from mounts import Mount, MountError, Server, mounts_under
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
         timeout: float) -> dict[str, object]:
    reqs.mark()
    c0, g0 = cpu_seconds(m.pid), cpu_seconds(gw_pid)
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
            "mount_cpu": cpu_seconds(m.pid) - c0, "gateway_cpu": cpu_seconds(gw_pid) - g0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objects", type=int, default=10_000)
    ap.add_argument("--tool", default="s3mount", choices=["s3mount", "s3fs", "rclone"])
    ap.add_argument("-o", dest="options", default="", help="mount options (comma-separated)")
    ap.add_argument("--rm-seconds", type=float, default=60.0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    signal.signal(signal.SIGTERM, interrupt_on_signal)
    options = tuple(o for o in args.options.split(",") if o)
    work = Path(tempfile.mkdtemp(prefix="s3mount-probe-"))
    rows: list[dict[str, object]] = []
    try:
        with Radosgw(block_gib=4) as gw:
            s3 = gw.client()
            bucket = "probe"
            s3.create_bucket(Bucket=bucket)
            with ThreadPoolExecutor(32) as pool:
                list(pool.map(lambda i: s3.put_object(
                    Bucket=bucket, Key=f"many/f{i:05d}", Body=b"x" * 64), range(args.objects)))
            server = Server(gw.url, gw.tester.access_key, gw.tester.secret_key)
            reqs = RequestLog(gw.request_log)
            gw_pid = gw.gateway_pid or 0

            def mount() -> Mount:
                return Mount(args.tool, server, bucket, work / "mnt", options=options,
                             cache_dir=work / "cache", log_dir=work)

            ls = ["ls", "-l", str(work / "mnt" / "many")]
            with mount() as m:
                rows.append(step("ls -l, fresh mount", ls, m, gw_pid, reqs, 600))
            with mount() as m:
                if args.tool == "s3mount":
                    rows.append(step("ls -l, next mount", ls, m, gw_pid, reqs, 600))
                rows.append(step("rm -r", ["rm", "-r", str(work / "mnt" / "many")], m, gw_pid,
                                 reqs, args.rm_seconds))
            left = sum(len(p.get("Contents", ())) for p in s3.get_paginator(
                "list_objects_v2").paginate(Bucket=bucket, Prefix="many/"))
            rows[-1]["note"] = f"{rows[-1]['note']}; {args.objects - left} files gone".strip("; ")
    except (RadosgwError, MountError) as exc:
        print(f"probe: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if not mounts_under(str(work)):
            subprocess.run(["rm", "-rf", str(work)], timeout=120)
    what = f"{args.tool} {','.join(options)}".strip()
    print(f"\n{what}, directory of {args.objects:,} plain objects\n")
    print("| step | wall | requests | mount CPU | radosgw CPU | note |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        req = ", ".join(f"{n} {k}" for k, n in r["requests"].items())  # type: ignore[union-attr]
        print(f"| {r['step']} | {r['wall']:.2f} s | {req} | {r['mount_cpu']:.2f} s | "
              f"{r['gateway_cpu']:.2f} s | {r['note']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
