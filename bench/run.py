"""Benchmark s3mount against boto3, s3fs-fuse and rclone on a throwaway Ceph radosgw.

    python bench/run.py                 # full run: 3 runs, 1 GiB, 1,000 small files, 10,000 objects
    python bench/run.py --quick         # smoke run: 1 run, everything 16× smaller
    python bench/run.py --rtt 20        # the WAN profile: the metadata rows, 20 ms from the server

Every contender talks to the same gateway, each in its own bucket. What is timed (see README.md):
a write counts as done when the object is in the bucket (polled with HEAD/LIST, so write-back caches
are not flattered), reads go through a fresh mount (no local cache from the write), ``ls -l`` of a big
directory is timed on a fresh mount and, for s3mount, again on the next mount of the unchanged
directory, and from a "second machine" (a mount with another, empty cache dir). A contender's failure
becomes a note in the table, never a crash; every mount is unmounted in a ``finally``.

With ``--rtt MS`` every contender reaches the gateway through ``latency.py``'s proxy (the bench's
own checks of the bucket do not: they observe, they are not timed work). boto3 and s3mount run the
sequential rows in alternating pairs first (``--pairs``), so that their ratio is settled within one
run.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import mounts
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError
from fsops import small_content, small_name
from latency import LatencyProxy, LatencyProxyError
from mounts import Mount, MountError, Server
from radosgw import Radosgw, RadosgwError, interrupt_on_signal
from report import MIB, Results, Row, render

log = logging.getLogger("bench")

HERE = Path(__file__).resolve().parent
FSOPS = HERE / "fsops.py"
GIB = 1 << 30

ALL_TESTS = frozenset({"seq_write", "seq_read", "rss", "small_create", "small_read", "ls_cold",
                       "ls_warm", "ls_fresh", "rm", "mv"})
SEQ_TESTS = frozenset({"seq_write", "seq_read", "rss"})
META_TESTS = ALL_TESTS - SEQ_TESTS
"""The rows run by default under ``--rtt``: the proxy is Python, built for request latency, not for
moving GiB (its CPU would decide a throughput row)."""
SHARED_INDEX_OPTION = "no_shared_index"
"""The mount option of issue #19's shared attribute index: while s3mount has no such option, it has
no index, and the second-machine row is reported as n/a instead of timing another cold listing."""


@dataclass(frozen=True)
class Sizes:
    big: int = GIB
    small_count: int = 1000
    small_size: int = 4096
    many: int = 10_000
    rename: int = 256 * MIB

    @classmethod
    def scaled(cls, f: float) -> Sizes:
        d = cls()
        return cls(big=max(int(d.big * f) // MIB, 1) * MIB,
                   small_count=max(int(d.small_count * f), 10), small_size=d.small_size,
                   many=max(int(d.many * f), 100),
                   rename=max(int(d.rename * f) // MIB, 1) * MIB)


@dataclass(frozen=True)
class Contender:
    name: str
    tool: str
    """boto3, s3mount, s3fs or rclone."""
    tests: frozenset[str]
    options: tuple[str, ...] = ()

    @property
    def slug(self) -> str:
        return "".join(ch if ch.isalnum() else "-" for ch in self.name.lower()).strip("-")


CONTENDERS = [
    Contender("boto3", "boto3", ALL_TESTS - {"ls_warm", "ls_fresh", "rss"}),
    Contender("s3mount", "s3mount", ALL_TESTS),
    Contender("s3mount no_posix_metadata", "s3mount",
              frozenset({"small_create", "small_read", "ls_cold", "ls_warm", "rm"}),
              ("no_posix_metadata",)),
    Contender("s3mount async_upload", "s3mount", frozenset({"seq_write", "small_create"}),
              ("async_upload",)),
    Contender("s3fs", "s3fs", ALL_TESTS - {"ls_warm", "ls_fresh"}),
    Contender("rclone", "rclone", ALL_TESTS - {"ls_warm", "ls_fresh"}),
]
"""The peers keep nothing across mounts: their next mount and a second machine are as cold as their
first mount, so those rows compare s3mount with the peers' cold time."""


def rows_for(s: Sizes) -> list[Row]:
    big, ren = _size(s.big), _size(s.rename)
    return [
        Row("seq_write", f"sequential write {big} (until stored)", s.big),
        Row("seq_read", f"sequential read {big} (fresh mount)", s.big),
        Row("rss", f"peak RSS of the mount process, {big} in and out", unit="MiB"),
        Row("small_create", f"create {s.small_count:,} × {s.small_size // 1024} KiB "
                            "(until stored)"),
        Row("small_read", f"read {s.small_count:,} × {s.small_size // 1024} KiB (fresh mount)"),
        Row("ls_cold", f"ls -l of {s.many:,} objects, fresh mount"),
        Row("ls_warm", f"ls -l of {s.many:,} objects, next mount"),
        Row("ls_fresh", f"ls -l of {s.many:,} objects, second machine (empty cache dir)"),
        Row("rm", f"rm -r of {s.many:,} objects (until gone)"),
        Row("mv", f"mv of a {ren} file (until moved)"),
    ]


def shared_index_available() -> bool:
    """Whether the s3mount under test has the shared attribute index (issue #19 part 3)."""
    return mounts.s3mount_has_option(SHARED_INDEX_OPTION)


def _size(n: int) -> str:
    return f"{n // GIB} GiB" if n % GIB == 0 else f"{n // MIB} MiB"


class OpError(RuntimeError):
    """One measured operation failed; the message is one line for the notes."""


class NullSink(io.RawIOBase):
    """A seekable sink for boto3's parallel ranged download: the data is dropped, as ``> /dev/null``
    does for the mounts."""

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        return len(b)

    def seek(self, offset: int, whence: int = 0) -> int:
        return offset


class Bench:
    """Runs every test of one contender in one bucket, recording into ``results``."""

    def __init__(self, gw: Radosgw, sizes: Sizes, work: Path, results: Results,
                 timeout_scale: float, proxy: LatencyProxy | None = None) -> None:
        self.gw = gw
        self.s3 = gw.client()
        """Direct to the gateway: setup and the checks of what is in the bucket (not timed work)."""
        url = proxy.url if proxy else gw.url
        self.s3_op = gw.client(endpoint_url=url) if proxy else self.s3
        """The boto3 contender's client: through the latency proxy under ``--rtt``."""
        self.server = Server(url, gw.tester.access_key, gw.tester.secret_key)
        self.sizes = sizes
        self.work = work
        self.results = results
        self.pair: int | None = None
        """The boto3/s3mount pair being run, if any (see ``Results.paired``)."""
        self.big_src = work / "src" / "big.bin"
        self.mv_src = work / "src" / "rename.bin"
        s = sizes
        k = timeout_scale
        rtt = proxy.rtt_ms / 1000 if proxy else 0.0
        # Generous bounds (a slow contender is a result; a hung one must not stall the run); a
        # sequential client pays a few RTTs per file.
        self.t_seq = k * (60 + s.big / (2 * MIB))
        self.t_small = k * (60 + s.small_count * (0.5 + 10 * rtt))
        self.t_many = k * (60 + s.many * (0.1 + 5 * rtt))
        self.t_mv = k * (60 + s.rename / (2 * MIB))

    # -- setup ---------------------------------------------------------------------------------

    def make_sources(self) -> None:
        for path, size in ((self.big_src, self.sizes.big), (self.mv_src, self.sizes.rename)):
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as f:
                left = size
                while left:
                    n = min(left, 16 * MIB)
                    f.write(os.urandom(n))
                    left -= n

    def warm_up(self) -> None:
        """The gateway creates its data pools on the first write, and the pool of multipart
        uploads on the first multipart upload (seconds); pay that before any contender is timed.
        The upload is multipart whatever its size: with small sizes the first timed write was
        otherwise the first multipart upload (20 MiB: 2.3 s, then 0.4-0.7 s)."""
        bucket = "bench-warm-up"
        self.s3.create_bucket(Bucket=bucket)
        self.s3.put_object(Bucket=bucket, Key="small", Body=b"x")
        self.s3.upload_file(str(self.mv_src), bucket, "big",
                            Config=TransferConfig(multipart_threshold=MIB // 2))
        self.empty_bucket(bucket)

    def populate(self, bucket: str, prefix: str, n: int) -> None:
        """``n`` small objects under ``prefix``, put in parallel (setup, not timed)."""
        def put(i: int) -> None:
            self.s3.put_object(Bucket=bucket, Key=f"{prefix}{small_name(i)}", Body=b"x" * 64)
        t0 = time.monotonic()
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(put, range(n)))
        log.info("  populated %d objects in %.1fs", n, time.monotonic() - t0)

    def empty_bucket(self, bucket: str) -> None:
        keys = [o["Key"] for page in self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket) for o in page.get("Contents", ())]
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(lambda k: self.s3.delete_object(Bucket=bucket, Key=k), keys))
        self.s3.delete_bucket(Bucket=bucket)

    # -- bucket probes ------------------------------------------------------------------------

    def size_of(self, bucket: str, key: str) -> int | None:
        try:
            return int(self.s3.head_object(Bucket=bucket, Key=key)["ContentLength"])
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise

    def count(self, bucket: str, prefix: str, size: int | None = None) -> int:
        n = 0
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                      Prefix=prefix):
            n += sum(1 for o in page.get("Contents", ()) if size is None or o["Size"] == size)
        return n

    @staticmethod
    def wait(what: str, cond: Callable[[], bool], deadline: float, every: float = 0.05) -> None:
        while not cond():
            if time.monotonic() > deadline:
                raise OpError(f"{what} not done by the timeout")
            time.sleep(every)

    # -- running one contender ----------------------------------------------------------------

    def run(self, c: Contender, bucket: str) -> None:
        self.s3.create_bucket(Bucket=bucket)
        try:
            if c.tool == "boto3":
                self._phases(c, bucket, self._boto3_phases(bucket))
            else:
                self._phases(c, bucket, self._mount_phases(c, bucket))
        finally:
            try:
                self.empty_bucket(bucket)
            except (ClientError, BotoCoreError) as exc:
                log.warning("could not empty %s: %s", bucket, exc)

    def _phases(self, c: Contender, bucket: str,
                phases: list[tuple[frozenset[str], Callable[[set[str]], dict[str, float]]]]) -> None:
        """Run each phase whose tests ``c`` has; a failure marks that phase's missing tests.

        Peak RSS is reported by both the write and the read phase (each on its own mount); the
        run's value is the larger of the two.
        """
        rss: list[float] = []
        rss_why = "the mount process was not found"
        for tests, phase in phases:
            wanted = set(tests & c.tests)
            if not wanted:
                continue
            got: dict[str, float] = {}
            try:
                got = phase(wanted)
            except (OpError, MountError, ClientError, BotoCoreError, OSError) as exc:
                why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                log.warning("  %s: %s", c.name, why)
                got = getattr(exc, "partial", {})
                rss_why = why
                for t in wanted - set(got) - {"rss"}:
                    self.results.fail(c.name, t, why)
            for t, v in got.items():
                if t == "rss":
                    rss.append(v)
                    continue
                self.results.add(c.name, t, v, self.pair)
                log.info("  %-28s %-13s %8.2f", c.name, t, v)
        if "rss" in c.tests:
            if rss:
                self.results.add(c.name, "rss", max(rss))
                log.info("  %-28s %-13s %8.0f MiB", c.name, "rss", max(rss))
            else:
                self.results.fail(c.name, "rss", rss_why)

    # -- mounts --------------------------------------------------------------------------------

    def _mount(self, c: Contender, bucket: str, *, fresh: bool, machine: str = "") -> Mount:
        """A mount of ``bucket``; ``fresh`` empties its cache dir first, ``machine`` names another
        cache dir (another machine's mount of the same bucket)."""
        cache = self.work / "cache" / f"{c.slug}{machine}"
        mp = self.work / "mnt" / c.slug
        if fresh and not mounts.mounts_under(str(mp)):
            shutil.rmtree(cache, ignore_errors=True)
        logs = self.work / "logs" / c.slug
        logs.mkdir(parents=True, exist_ok=True)
        return Mount(c.tool, self.server, bucket, mp, options=c.options, cache_dir=cache,
                     log_dir=logs)

    def fsop(self, *args: str, timeout: float) -> None:
        try:
            r = subprocess.run([sys.executable, str(FSOPS), *args], capture_output=True,
                               text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise OpError(f"{args[0]} timed out after {timeout:.0f}s") from None
        if r.returncode != 0:
            raise OpError(f"{args[0]}: {(r.stderr.strip().splitlines() or ['?'])[-1]}")

    def cmd(self, argv: list[str], timeout: float) -> str:
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                               stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise OpError(f"{argv[0]} {argv[1]} timed out after {timeout:.0f}s") from None
        if r.returncode != 0:
            raise OpError(f"{' '.join(argv[:2])}: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
        return r.stdout

    def _mount_phases(self, c: Contender, bucket: str) -> list:
        s = self.sizes

        def write(wanted: set[str]) -> dict[str, float]:
            got: dict[str, float] = {}
            with self._mount(c, bucket, fresh=True) as m:
                if "seq_write" in wanted or "rss" in wanted:
                    t0 = time.monotonic()
                    self.fsop("copy", str(self.big_src), f"{m.path}/big.bin", timeout=self.t_seq)
                    self.wait("big.bin upload", lambda: self.size_of(bucket, "big.bin") == s.big,
                              t0 + self.t_seq)
                    got["seq_write"] = time.monotonic() - t0
                    rss = mounts.peak_rss_mib(m.pid) if m.pid else None
                    if rss is not None:
                        got["rss"] = rss
                if "small_create" in wanted:
                    t0 = time.monotonic()
                    self.fsop("mkfiles", f"{m.path}/small", str(s.small_count), str(s.small_size),
                              timeout=self.t_small)
                    self.wait("small files upload",
                              lambda: self.count(bucket, "small/", s.small_size) == s.small_count,
                              t0 + self.t_small, every=0.1)
                    got["small_create"] = time.monotonic() - t0
            return {k: v for k, v in got.items() if k in wanted}

        def read(wanted: set[str]) -> dict[str, float]:
            got: dict[str, float] = {}
            with self._mount(c, bucket, fresh=True) as m:
                if "seq_read" in wanted or "rss" in wanted:
                    t0 = time.monotonic()
                    self.fsop("read", f"{m.path}/big.bin", "--verify", str(self.big_src),
                              timeout=self.t_seq)
                    got["seq_read"] = time.monotonic() - t0
                    rss = mounts.peak_rss_mib(m.pid) if m.pid else None
                    if rss is not None:
                        got["rss"] = rss
                if "small_read" in wanted:
                    t0 = time.monotonic()
                    self.fsop("readfiles", f"{m.path}/small", str(s.small_count),
                              str(s.small_size), timeout=self.t_small)
                    got["small_read"] = time.monotonic() - t0
            return {k: v for k, v in got.items() if k in wanted}

        def many(wanted: set[str]) -> dict[str, float]:
            """ls -l cold, then on the next mount (same cache dir), then from a second machine
            (another, empty cache dir: what it finds is what the first mount left in the bucket);
            rm -r in the last of these mounts."""
            self.populate(bucket, "many/", s.many)
            got: dict[str, float] = {}
            steps = [t for t in ("ls_warm", "ls_fresh") if t in wanted]
            try:
                with self._mount(c, bucket, fresh=True) as m:
                    got["ls_cold"] = self._ls(m)
                    if not steps and "rm" in wanted:
                        got["rm"] = self._rm(m, bucket)
                for t in steps:
                    machine = "-second-machine" if t == "ls_fresh" else ""
                    with self._mount(c, bucket, fresh=t == "ls_fresh", machine=machine) as m:
                        got[t] = self._ls(m)
                        if t == steps[-1] and "rm" in wanted:
                            got["rm"] = self._rm(m, bucket)
            except (OpError, MountError) as exc:
                exc.partial = got  # type: ignore[attr-defined]
                raise
            return got

        def mv(wanted: set[str]) -> dict[str, float]:
            self.s3.upload_file(str(self.mv_src), bucket, "mv-src.bin", Config=TransferConfig())
            with self._mount(c, bucket, fresh=True) as m:
                t0 = time.monotonic()
                self.cmd(["mv", f"{m.path}/mv-src.bin", f"{m.path}/mv-dst.bin"], self.t_mv)
                self.wait("mv", lambda: self.size_of(bucket, "mv-dst.bin") == s.rename
                          and self.size_of(bucket, "mv-src.bin") is None, t0 + self.t_mv)
                return {"mv": time.monotonic() - t0}

        return [(frozenset({"seq_write", "rss", "small_create"}), write),
                (frozenset({"seq_read", "rss", "small_read"}), read),
                (frozenset({"ls_cold", "ls_warm", "ls_fresh", "rm"}), many),
                (frozenset({"mv"}), mv)]

    def _ls(self, m: Mount) -> float:
        t0 = time.monotonic()
        out = self.cmd(["ls", "-l", f"{m.path}/many"], self.t_many)
        took = time.monotonic() - t0
        files = sum(1 for line in out.splitlines() if line.startswith("-"))
        if files != self.sizes.many:
            raise OpError(f"ls -l showed {files} files, expected {self.sizes.many}")
        return took

    def _rm(self, m: Mount, bucket: str) -> float:
        t0 = time.monotonic()
        self.cmd(["rm", "-r", f"{m.path}/many"], self.t_many)
        self.wait("rm -r", lambda: self.count(bucket, "many/") == 0, t0 + self.t_many, every=0.1)
        return time.monotonic() - t0

    # -- the boto3 baseline -------------------------------------------------------------------

    def _boto3_phases(self, bucket: str) -> list:
        s = self.sizes
        s3 = self.s3_op
        tc = TransferConfig()  # boto3's defaults: 8 MiB parts, 10 threads

        def write(wanted: set[str]) -> dict[str, float]:
            got: dict[str, float] = {}
            if "seq_write" in wanted:
                t0 = time.monotonic()
                s3.upload_file(str(self.big_src), bucket, "big.bin", Config=tc)
                if self.size_of(bucket, "big.bin") != s.big:
                    raise OpError("big.bin has the wrong size after upload")
                got["seq_write"] = time.monotonic() - t0
            if "small_create" not in wanted:
                return got
            t0 = time.monotonic()
            for i in range(s.small_count):
                s3.put_object(Bucket=bucket, Key=f"small/{small_name(i)}",
                              Body=small_content(i, s.small_size))
            got["small_create"] = time.monotonic() - t0
            return got

        def read(wanted: set[str]) -> dict[str, float]:
            got: dict[str, float] = {}
            if "seq_read" in wanted:
                t0 = time.monotonic()
                s3.download_fileobj(bucket, "big.bin", NullSink(), Config=tc)
                got["seq_read"] = time.monotonic() - t0
            if "small_read" not in wanted:
                return got
            t0 = time.monotonic()
            for i in range(s.small_count):
                body = s3.get_object(Bucket=bucket, Key=f"small/{small_name(i)}")["Body"].read()
                if body != small_content(i, s.small_size):
                    raise OpError(f"small/{small_name(i)}: wrong content")
            got["small_read"] = time.monotonic() - t0
            return got

        def many(wanted: set[str]) -> dict[str, float]:
            self.populate(bucket, "many/", s.many)
            t0 = time.monotonic()
            keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix="many/", Delimiter="/") for o in page.get("Contents", ())]
            got = {"ls_cold": time.monotonic() - t0}
            if len(keys) != s.many:
                raise OpError(f"listed {len(keys)} objects, expected {s.many}")
            t0 = time.monotonic()
            for i in range(0, len(keys), 1000):
                s3.delete_objects(Bucket=bucket, Delete={
                    "Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})
            if self.count(bucket, "many/"):
                raise OpError("objects left after DeleteObjects")
            got["rm"] = time.monotonic() - t0
            return got

        def mv(wanted: set[str]) -> dict[str, float]:
            self.s3.upload_file(str(self.mv_src), bucket, "mv-src.bin", Config=tc)
            t0 = time.monotonic()
            s3.copy({"Bucket": bucket, "Key": "mv-src.bin"}, bucket, "mv-dst.bin", Config=tc)
            s3.delete_object(Bucket=bucket, Key="mv-src.bin")
            return {"mv": time.monotonic() - t0}

        return [(frozenset({"seq_write", "small_create"}), write),
                (frozenset({"seq_read", "small_read"}), read),
                (frozenset({"ls_cold", "rm"}), many),
                (frozenset({"mv"}), mv)]


def _header(args: argparse.Namespace, sizes: Sizes, runs: int, pairs: int, started: datetime,
            proxy: LatencyProxy | None, proxy_cpu: float, shared_index: bool,
            tools: set[str]) -> list[str]:
    rev = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, timeout=10).stdout.strip() or "?"
    where = "loopback"
    if proxy is not None:
        where = (f"loopback through bench/latency.py with an RTT of {proxy.rtt_ms:g} ms for every "
                 f"contender (the proxy used {proxy_cpu:.1f} s of CPU; {proxy.totals or '?'})")
    lines = [
        f"## Benchmark, {started:%Y-%m-%d %H:%M} UTC, "
        + (f"RTT {args.rtt:g} ms" if args.rtt else "loopback"),
        "",
        f"- command: `{' '.join(['python', 'bench/run.py', *sys.argv[1:]])}`",
        f"- medians of {runs} run(s)"
        + (f"; boto3 and s3mount ran the sequential rows in {pairs} alternating pairs"
           if pairs else "")
        + f"; s3mount at {rev}; {os.cpu_count()} CPUs; load average "
        f"at the end {os.getloadavg()[1]:.1f} (5 min; other work on the machine shows here)",
        f"- server: Ceph radosgw ({mounts.version('ceph')}), one bluestore OSD on a sparse file, "
        f"{where}",
        "- peers: " + ("; ".join(
            mounts.version(t) + (" (`--vfs-cache-mode writes`, default 5 s write-back delay)"
                                 if t == "rclone" else "")
            for t in ("s3fs", "rclone") if t in tools) or "none"),
        f"- sizes: big file {_size(sizes.big)}, {sizes.small_count:,} small files of "
        f"{sizes.small_size:,} B, directory of {sizes.many:,} objects, rename of "
        f"{_size(sizes.rename)}",
    ]
    if not shared_index:
        lines.append("- second machine: n/a: this s3mount has no shared attribute index yet "
                     f"(issue #19 part 3; looked for its `{SHARED_INDEX_OPTION}` mount option)")
    return lines


def _run_pairs(bench: Bench, contenders: list[Contender], pairs: int,
               results: Results) -> None:
    """The sequential rows of boto3 and s3mount, back to back, ``pairs`` times; odd pairs start
    with boto3, even ones with s3mount, so a drift of the machine's speed during the run does not
    always favour the same side."""
    for i in range(pairs):
        order = contenders if i % 2 == 0 else contenders[::-1]
        bench.pair = i
        for c in order:
            log.info("pair %d/%d: %s", i + 1, pairs, c.name)
            try:
                bench.run(replace(c, tests=c.tests & SEQ_TESTS), f"bench-{c.slug}-pair{i}")
            except (ClientError, BotoCoreError) as exc:
                for t in c.tests & SEQ_TESTS:
                    results.fail(c.name, t, f"setup: {exc}")
    bench.pair = None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="runs per contender (median reported)")
    ap.add_argument("--pairs", type=int, default=None,
                    help="boto3/s3mount pairs for the sequential rows, alternating, before the "
                         "runs (default: --runs; 0: the sequential rows run within the runs)")
    ap.add_argument("--rtt", type=float, default=0.0, metavar="MS",
                    help="every contender reaches the gateway through a proxy adding this "
                         "round-trip time (default 0: straight on loopback); the default tests "
                         "are then the metadata rows")
    ap.add_argument("--size-scale", type=float, default=1.0,
                    help="multiply every size and count by this")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: --runs 1 --size-scale 0.0625 unless given")
    ap.add_argument("--only", help="comma-separated contender names (default: all)")
    ap.add_argument("--tests", help="comma-separated tests to run (default: all; with --rtt: "
                    + ", ".join(sorted(META_TESTS)) + "): " + ", ".join(sorted(ALL_TESTS)))
    ap.add_argument("--out", default=str(HERE / "results.md"), help="Markdown report file")
    ap.add_argument("--workdir", help="where sources, mount points and caches go (default: /tmp)")
    ap.add_argument("--keep-logs", metavar="DIR",
                    help="copy the mount tools' logs here at the end (default: deleted)")
    ap.add_argument("--timeout-scale", type=float, default=1.0,
                    help="multiply every operation's timeout by this")
    args = ap.parse_args()
    if args.rtt < 0 or args.runs < 1 or (args.pairs is not None and args.pairs < 0):
        print("run.py: --rtt and --pairs must be >= 0, --runs >= 1", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    signal.signal(signal.SIGTERM, interrupt_on_signal)
    runs = args.runs
    scale = args.size_scale
    if args.quick:
        runs = 1 if "--runs" not in sys.argv else runs
        scale = 1 / 16 if "--size-scale" not in sys.argv else scale
    pairs = runs if args.pairs is None else args.pairs
    sizes = Sizes.scaled(scale)
    contenders = CONTENDERS
    if args.only:
        names = {n.strip() for n in args.only.split(",")}
        contenders = [c for c in CONTENDERS if c.name in names]
        if unknown := names - {c.name for c in contenders}:
            print(f"run.py: unknown contender(s): {', '.join(sorted(unknown))}; known: "
                  f"{', '.join(c.name for c in CONTENDERS)}", file=sys.stderr)
            return 2
    wanted = META_TESTS if args.rtt else ALL_TESTS
    if args.tests:
        wanted = frozenset(t.strip() for t in args.tests.split(","))
        if unknown := wanted - ALL_TESTS:
            print(f"run.py: unknown test(s): {', '.join(sorted(unknown))}; known: "
                  f"{', '.join(sorted(ALL_TESTS))}", file=sys.stderr)
            return 2
    shown = [r for r in rows_for(sizes) if r.test in wanted]
    shared_index = shared_index_available()
    if not shared_index:
        wanted -= {"ls_fresh"}
    contenders = [replace(c, tests=c.tests & wanted) for c in contenders if c.tests & wanted]
    paired = [c for c in contenders if c.name in ("boto3", "s3mount") and c.tests & SEQ_TESTS]
    if len(paired) < 2:
        pairs = 0
    started = datetime.now(UTC)
    results = Results([c.name for c in contenders], {c.name: c.tests for c in contenders},
                      pairs=pairs, paired_tests=SEQ_TESTS - {"rss"} if pairs else frozenset())
    for c in contenders:
        if c.tool != "boto3" and (why := mounts.availability(c.tool)):
            results.skipped[c.name] = why
            log.warning("%s: skipped: %s", c.name, why)
    if pairs and any(c.name in results.skipped for c in paired):
        pairs = results.pairs = 0
        results.paired_tests = frozenset()
    work = Path(tempfile.mkdtemp(prefix="s3mount-bench-", dir=args.workdir))
    interrupted = False
    proxy: LatencyProxy | None = None
    proxy_cpu = 0.0
    try:
        with Radosgw(base_dir=args.workdir) as gw:
            if args.rtt:
                proxy = LatencyProxy(gw.url, args.rtt)
                proxy.start()
            bench = Bench(gw, sizes, work, results, args.timeout_scale, proxy)
            bench.make_sources()
            bench.warm_up()
            if pairs:
                _run_pairs(bench, paired, pairs, results)
            for run in range(runs):
                for c in contenders:
                    if c.name in results.skipped:
                        continue
                    if pairs and c in paired:
                        c = replace(c, tests=c.tests - SEQ_TESTS)
                        if not c.tests:
                            continue
                    log.info("run %d/%d: %s", run + 1, runs, c.name)
                    try:
                        bench.run(c, f"bench-{c.slug}-{run}")
                    except (ClientError, BotoCoreError) as exc:
                        for t in c.tests:
                            results.fail(c.name, t, f"setup: {exc}")
    except KeyboardInterrupt:
        interrupted = True
        log.warning("interrupted; reporting what was measured")
    except (RadosgwError, LatencyProxyError) as exc:
        print(f"run.py: {exc}", file=sys.stderr)
        return 1
    finally:
        if proxy is not None:
            proxy_cpu = proxy.cpu_seconds()
            proxy.stop()
        left = mounts.mounts_under(str(work))
        if left:
            log.error("still mounted, not deleting %s: %s", work, ", ".join(left))
        else:
            if args.keep_logs and (work / "logs").is_dir():
                shutil.copytree(work / "logs", args.keep_logs, dirs_exist_ok=True)
            shutil.rmtree(work, ignore_errors=True)
    header = _header(args, sizes, runs, pairs, started, proxy, proxy_cpu, shared_index,
                     {c.tool for c in contenders})
    if interrupted:
        header.append("- **interrupted**: incomplete")
    table = render(results, shown, runs, header, args.rtt)
    print(table)
    Path(args.out).write_text(table)
    log.info("written to %s", args.out)
    return 130 if interrupted else 0


if __name__ == "__main__":
    raise SystemExit(main())
