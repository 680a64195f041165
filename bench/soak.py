"""The soak from issue #6: ten minutes of concurrent I/O through a provider mount whose keys expire.

    /work/venv/bin/python bench/soak.py                   # 600 s, 4 writers + 4 readers
    /work/venv/bin/python bench/soak.py --duration 60     # a quick look

A sandbox process runs the S3 server and the Cleverbase emulator with credentials that live 30 s, so
the mount renews its keys about twenty times during the run. The profile is logged in through the
provider's real login flow and mounted with ``s3mount mount p MNT`` in its own process, as a user
would. Writers create and overwrite files of 1 KiB to 4 MiB and occasionally rewrite a part of one
in place; readers read finished files and compare their SHA-256 with what the writer recorded. At
the end every file is also fetched straight from the bucket and compared. The mount's RSS is
sampled throughout.

Exit status 0 only if no operation failed, nothing mismatched, the keys were renewed (when the run
outlasts two key lifetimes) and the RSS did not keep growing (median of the last quarter at most
1.5× the first quarter's + 50 MiB). The mount and the sandbox are always stopped, also on Ctrl-C or
SIGTERM.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # mountlib: mounts with a watchdog and sure unmounting

from mountlib import S3MOUNT, Mount, Mounter, run  # noqa: E402

from s3mount.cli.demo import PROFILES  # noqa: E402
from s3mount.sandbox.client import SandboxProcess  # noqa: E402

KIB = 1024
MIB = 1024 * KIB
LIFETIME = 30.0
PROVIDER = "cleverbase"
RSS_INTERVAL = 5.0
JOIN_TIMEOUT = 300.0  # for the workers' last operations after the end (a wedged mount)
PRINT_MAX = 20  # errors and mismatches printed as they happen; all are counted
REWRITE_SHARE = 0.15  # of writer operations: rewrite part of an existing file in place


@dataclass
class Stats:
    """Counters shared by the worker threads (guarded by ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    ops: dict[str, int] = field(default_factory=lambda: {"write": 0, "rewrite": 0, "read": 0})
    bytes_written: int = 0
    bytes_read: int = 0
    errors: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)

    def count(self, op: str, nbytes: int, *, read: bool) -> None:
        with self.lock:
            self.ops[op] += 1
            if read:
                self.bytes_read += nbytes
            else:
                self.bytes_written += nbytes

    def error(self, what: str) -> None:
        with self.lock:
            self.errors.append(what)
            shown = len(self.errors) <= PRINT_MAX
        if shown:
            print(f"soak: ERROR {what}", file=sys.stderr, flush=True)

    def mismatch(self, what: str) -> None:
        with self.lock:
            self.mismatches.append(what)
            shown = len(self.mismatches) <= PRINT_MAX
        if shown:
            print(f"soak: MISMATCH {what}", file=sys.stderr, flush=True)


class Files:
    """The pool of file names with the SHA-256 each should have, and one lock per file.

    A file is read or written only under its lock, so a reader never sees a write in progress
    (which would be a false mismatch, not a bug).
    """

    def __init__(self, root: Path, count: int) -> None:
        self.names = [f"d{i % 8}/f{i:04d}" for i in range(count)]
        self.paths = {n: root / n for n in self.names}
        self.locks = {n: threading.Lock() for n in self.names}
        self.digest: dict[str, str] = {}
        self._lock = threading.Lock()

    def written(self) -> list[str]:
        with self._lock:
            return list(self.digest)

    def record(self, name: str, data: bytes) -> None:
        with self._lock:
            self.digest[name] = hashlib.sha256(data).hexdigest()

    def expected(self, name: str) -> str:
        with self._lock:
            return self.digest[name]


def writer(files: Files, stats: Stats, stop: threading.Event, rng: random.Random,
           max_size: int) -> None:
    while not stop.is_set():
        written = files.written()
        if written and rng.random() < REWRITE_SHARE:
            name = rng.choice(written)
            with files.locks[name]:
                _guard(stats, f"rewrite {name}", rewrite, files, stats, name, rng)
            continue
        name = rng.choice(files.names)
        data = rng.randbytes(rng.randint(KIB, max_size))
        with files.locks[name]:
            _guard(stats, f"write {name}", write, files, stats, name, data)


def write(files: Files, stats: Stats, name: str, data: bytes) -> None:
    files.paths[name].write_bytes(data)
    files.record(name, data)
    stats.count("write", len(data), read=False)


def rewrite(files: Files, stats: Stats, name: str, rng: random.Random) -> None:
    """Overwrite a random range of an existing file in place (possibly extending it)."""
    path = files.paths[name]
    with open(path, "r+b") as f:
        old = f.read()
        if hashlib.sha256(old).hexdigest() != files.expected(name):
            stats.mismatch(f"{name}: content before an in-place rewrite")
        offset = rng.randint(0, len(old))
        patch = rng.randbytes(rng.randint(1, 256 * KIB))
        f.seek(offset)
        f.write(patch)
    new = old[:offset] + patch + old[offset + len(patch):]
    files.record(name, new)
    stats.count("rewrite", len(patch), read=False)


def reader(files: Files, stats: Stats, stop: threading.Event, rng: random.Random) -> None:
    while not stop.is_set():
        written = files.written()
        if not written:
            stop.wait(0.1)
            continue
        name = rng.choice(written)
        with files.locks[name]:
            _guard(stats, f"read {name}", read, files, stats, name)


def read(files: Files, stats: Stats, name: str) -> None:
    data = files.paths[name].read_bytes()
    if hashlib.sha256(data).hexdigest() != files.expected(name):
        stats.mismatch(f"{name}: read {len(data)} bytes that are not what was written")
    stats.count("read", len(data), read=True)


def _guard(stats: Stats, what: str, fn: Callable[..., None], *args: Any) -> None:
    """Run one operation; an OSError from the mount is counted, and the run goes on."""
    try:
        fn(*args)
    except OSError as exc:
        stats.error(f"{what}: {exc}")


def join_all(threads: list[threading.Thread], timeout: float) -> list[str]:
    """Join ``threads`` within ``timeout`` seconds in all; the names of those still running."""
    deadline = time.monotonic() + timeout
    for t in threads:
        if t.is_alive():
            t.join(max(0.0, deadline - time.monotonic()))
    return [t.name for t in threads if t.is_alive()]


def rss_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * KIB
    except OSError:
        return None
    return None


def sample_rss(pid: int, out: list[int], stop: threading.Event) -> None:
    while True:
        rss = rss_of(pid)
        if rss is not None:
            out.append(rss)
        if stop.wait(RSS_INTERVAL):
            return


def profile_env(sb: SandboxProcess, tmp: Path) -> dict[str, str]:
    """A private XDG_CONFIG_HOME with profile ``p`` for the emulated provider, logged in."""
    home = tmp / "config"
    (home / "s3mount").mkdir(parents=True, mode=0o700)
    os.chmod(home, 0o700)
    prof = PROFILES[PROVIDER](sb.state[PROVIDER])
    cfg = home / "s3mount" / "config.toml"
    fd = os.open(cfg, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("[profiles.p]\n" + "".join(f'{k} = "{v}"\n' for k, v in prof.items()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(XDG_CONFIG_HOME=str(home), XDG_STATE_HOME=str(tmp / "state"),
               S3MOUNT_TEST_BROWSER="http")
    r = subprocess.run([*S3MOUNT, "login", "p"], env=env, capture_output=True, text=True,
                       timeout=60, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise RuntimeError(f"login failed: {r.stderr.strip()}")
    return env


def status(m: Mount) -> dict[str, Any]:
    return json.loads(run([*S3MOUNT, "status", str(m.path), "--json"], env=m.env).stdout)[0]


def verify_bucket(sb: SandboxProcess, bucket: str, files: Files, stats: Stats) -> int:
    """Every file the run wrote is in the bucket with the recorded content; returns how many."""
    s3 = sb.s3()
    for name in files.written():
        try:
            body = s3.get_object(Bucket=bucket, Key=name)["Body"].read()
        except Exception as exc:  # noqa: BLE001 - any failure here is a finding for the table
            stats.error(f"bucket get {name}: {exc}")
            continue
        if hashlib.sha256(body).hexdigest() != files.expected(name):
            stats.mismatch(f"{name}: the bucket holds other content than was written")
    return len(files.written())


def quarter_medians(samples: list[int]) -> tuple[float, float]:
    q = max(len(samples) // 4, 1)
    return statistics.median(samples[:q]), statistics.median(samples[-q:])


def table(rows: list[tuple[str, str]]) -> str:
    return "\n".join(["| metric | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def soak(args: argparse.Namespace, workdir: Path) -> int:
    stats = Stats()
    rss: list[int] = []
    log = workdir / "sandbox.log"
    with SandboxProcess(providers=[PROVIDER], credential_lifetime=LIFETIME,
                        log_file=str(log)) as sb:
        env = profile_env(sb, workdir)
        mounter = Mounter(sb, workdir)
        try:
            m = mounter("", env=env, profile="p", deadline=args.duration + 900)
            assert m.pid is not None, "mount process not found"
            first = status(m)
            files = Files(m.path, args.files)
            for d in {n.split("/")[0] for n in files.names}:
                (m.path / d).mkdir(exist_ok=True)
            stop = threading.Event()
            rng = random.Random(args.seed)
            threads = [threading.Thread(target=sample_rss, args=(m.pid, rss, stop), daemon=True)]
            threads += [threading.Thread(target=writer, daemon=True, args=(
                files, stats, stop, random.Random(rng.random()), args.max_size))
                for _ in range(args.writers)]
            threads += [threading.Thread(target=reader, daemon=True, args=(
                files, stats, stop, random.Random(rng.random()))) for _ in range(args.readers)]
            started = time.monotonic()
            try:
                for t in threads:
                    t.start()
                while not stop.wait(min(60.0, args.duration)):
                    elapsed = time.monotonic() - started
                    with stats.lock:
                        print(f"soak: {elapsed:4.0f} s, ops {stats.ops}, errors "
                              f"{len(stats.errors)}, mismatches {len(stats.mismatches)}, RSS "
                              f"{(rss[-1] if rss else 0) / MIB:.0f} MiB", flush=True)
                    if elapsed >= args.duration:
                        stop.set()
            finally:
                # Also on Ctrl-C: the workers finish their operation before the unmount.
                stop.set()
                hung = join_all(threads, JOIN_TIMEOUT)
            if hung:
                stats.error(f"threads still blocked in the mount after {JOIN_TIMEOUT:.0f} s: "
                            f"{hung}")
            elapsed = time.monotonic() - started
            last = status(m)
            checked = verify_bucket(sb, last["bucket"], files, stats)
        finally:
            mounter.close()
    renewals = int(last["renewals"]) - int(first["renewals"])
    ops = sum(stats.ops.values())
    first_q, last_q = quarter_medians(rss) if rss else (0.0, 0.0)
    rss_ok = bool(rss) and last_q <= 1.5 * first_q + 50 * MIB
    renew_ok = renewals > 0 or args.duration < 2 * LIFETIME
    ok = not stats.errors and not stats.mismatches and rss_ok and renew_ok
    rows = [
        ("duration", f"{elapsed:.0f} s ({args.writers} writers, {args.readers} readers, "
                     f"{args.files} files of 1 KiB–{args.max_size // KIB} KiB)"),
        ("operations", f"{ops} ({stats.ops['write']} writes, {stats.ops['rewrite']} in-place "
                       f"rewrites, {stats.ops['read']} reads)"),
        ("data", f"{stats.bytes_written / MIB:.0f} MiB written, "
                 f"{stats.bytes_read / MIB:.0f} MiB read and checked"),
        ("files checked in the bucket at the end", str(checked)),
        ("errors", str(len(stats.errors))),
        ("mismatches", str(len(stats.mismatches))),
        ("credential renewals", f"{renewals} (keys live {LIFETIME:.0f} s)"),
        ("mount RSS min / median / max", " / ".join(
            f"{v / MIB:.0f} MiB" for v in (min(rss), statistics.median(rss), max(rss)))
         if rss else "no samples"),
        ("RSS median first / last quarter", f"{first_q / MIB:.0f} MiB / {last_q / MIB:.0f} MiB "
                                            f"({len(rss)} samples, every {RSS_INTERVAL:.0f} s)"),
        ("result", "PASS" if ok else "FAIL"),
    ]
    print()
    print(table(rows))
    for what in (stats.errors + stats.mismatches)[:20]:
        print(f"  {what}")
    if not rss_ok:
        print("  the mount's RSS kept growing (last-quarter median > 1.5 × first + 50 MiB)")
    if not renew_ok:
        print("  the keys were never renewed")
    return 0 if ok else 1


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of I/O (default 600)")
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--readers", type=int, default=4)
    ap.add_argument("--files", type=int, default=200, help="size of the pool of file names")
    ap.add_argument("--max-size", type=int, default=4 * MIB, help="largest file in bytes")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: fresh)")
    ap.add_argument("--workdir", help="keep mountpoint, cache and logs here (default: a temporary "
                                      "directory, removed at the end)")
    args = ap.parse_args()
    # SIGTERM ends the run like Ctrl-C, through the finally blocks that unmount and stop.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if args.workdir:
            Path(args.workdir).mkdir(parents=True, exist_ok=True)
            return soak(args, Path(args.workdir))
        with tempfile.TemporaryDirectory(prefix="s3mount-soak-") as tmp:
            return soak(args, Path(tmp))
    except KeyboardInterrupt:
        print("soak: interrupted; unmounted and stopped the sandbox", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
