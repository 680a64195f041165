"""Peak memory and time when many files move at once: written side by side, then read side by side.

``run.py``'s RSS row copies one file at a time; this shows whether a mount's memory stays bounded
when many files are open together (parallel ``cp``, backup tools, several users):

    python bench/many_at_once.py                                  # 8 files of 256 MiB
    python bench/many_at_once.py --files 16 --mib 64 --tools s3mount,s3fs,rclone
    python bench/many_at_once.py --tools s3mount -o buffer_size=256

Contenders: ``s3mount`` with its defaults; ``s3mount-per-file``, the baseline that bounds each file
on its own only (``buffer_size`` too large to matter, glibc's default 8 malloc arenas per core), as
s3mount was before the mount-wide bound; s3fs and rclone where installed. Each contender writes
the files at once (``dd bs=1M`` from local copies; timed until all are stored in the bucket), then
reads them at once on a fresh mount with an emptied cache dir. RSS is the mount process's VmHWM.
The files are stored and deleted once with boto3 first, so that no contender pays for the new
OSD's first writes.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mounts import Mount, MountError, Server, availability, mounts_under, peak_rss_mib
from radosgw import Radosgw, RadosgwError, interrupt_on_signal

log = logging.getLogger("many_at_once")

MIB = 1024 * 1024
TIMEOUT = 1800.0
CONTENDERS = {
    "s3mount": ("s3mount", (), {}),
    "s3mount-per-file": ("s3mount", ("buffer_size=1048576",),
                         {"MALLOC_ARENA_MAX": str(8 * (os.cpu_count() or 1))}),
    "s3fs": ("s3fs", (), {}),
    "rclone": ("rclone", (), {}),
}


def dd_all(pairs: list[tuple[Path, Path]]) -> None:
    """Copy every (source, target) pair at once with dd; raise if any fails."""
    procs = [subprocess.Popen(["dd", f"if={s}", f"of={t}", "bs=1M", "status=none"],
                              stdin=subprocess.DEVNULL) for s, t in pairs]
    deadline = time.monotonic() + TIMEOUT
    failed = []
    for p in procs:
        try:
            if p.wait(timeout=max(deadline - time.monotonic(), 1)) != 0:
                failed.append(p.args[1])
        except subprocess.TimeoutExpired:
            p.kill()
            failed.append(p.args[1])
    if failed:
        raise MountError(f"dd failed: {', '.join(failed)}")


def stored(s3, bucket: str, names: list[str], size: int) -> bool:
    for n in names:
        try:
            if s3.head_object(Bucket=bucket, Key=n)["ContentLength"] != size:
                return False
        except s3.exceptions.ClientError:
            return False
    return True


def warm_up(gw: Radosgw, sources: list[Path]) -> None:
    """Store and delete the files once: a new OSD's first writes allocate its disk and are much
    slower, which would handicap whichever contender comes first."""
    s3 = gw.client()
    s3.create_bucket(Bucket="warmup")
    for i, src in enumerate(sources):
        s3.upload_file(str(src), "warmup", f"f{i}")
    for i in range(len(sources)):
        s3.delete_object(Bucket="warmup", Key=f"f{i}")


def run_one(name: str, gw: Radosgw, work: Path, sources: list[Path], size: int,
            extra_options: tuple[str, ...]) -> dict[str, float]:
    tool, options, env = CONTENDERS[name]
    if name == "s3mount":
        options = extra_options
    s3 = gw.client()
    bucket = name.replace("-", "")
    s3.create_bucket(Bucket=bucket)
    server = Server(gw.url, gw.tester.access_key, gw.tester.secret_key)
    names = [f"f{i}" for i in range(len(sources))]
    out: dict[str, float] = {}
    base = work / name

    def mount(cache: str) -> Mount:
        return Mount(tool, server, bucket, base / "mnt", options=options,
                     cache_dir=base / cache, log_dir=base, env=env)

    with mount("cache1") as m:
        t0 = time.monotonic()
        dd_all([(src, Path(m.path) / n) for src, n in zip(sources, names, strict=True)])
        while not stored(s3, bucket, names, size):
            if time.monotonic() - t0 > TIMEOUT:
                raise MountError("the files were not all stored in time")
            time.sleep(0.1)
        out["write"] = time.monotonic() - t0
        out["write_rss"] = peak_rss_mib(m.pid or 0) or float("nan")
    with mount("cache2") as m:
        t0 = time.monotonic()
        dd_all([(Path(m.path) / n, Path("/dev/null")) for n in names])
        out["read"] = time.monotonic() - t0
        out["read_rss"] = peak_rss_mib(m.pid or 0) or float("nan")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--mib", type=int, default=256, help="size of each file")
    ap.add_argument("--tools", default="s3mount,s3mount-per-file,s3fs",
                    help=f"comma-separated, of: {', '.join(CONTENDERS)}")
    ap.add_argument("-o", dest="options", default="",
                    help="more mount options for the s3mount contender (comma-separated)")
    args = ap.parse_args()
    extra = tuple(o for o in args.options.split(",") if o)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    signal.signal(signal.SIGTERM, interrupt_on_signal)
    tools = [t for t in args.tools.split(",") if t]
    for t in tools:
        if t not in CONTENDERS:
            print(f"many_at_once: unknown tool {t!r}", file=sys.stderr)
            return 2
    size = args.mib * MIB
    work = Path(tempfile.mkdtemp(prefix="s3mount-many-"))
    results: dict[str, dict[str, float] | str] = {}
    try:
        sources = []
        for i in range(args.files):
            sources.append(work / f"src{i}.bin")
            with open(sources[-1], "wb") as f:
                for _ in range(args.mib):
                    f.write(os.urandom(MIB))
        gib = max(4, 2 * args.files * args.mib * len(tools) // 1024 + 2)
        with Radosgw(block_gib=gib) as gw:
            warm_up(gw, sources)
            for t in tools:
                why = availability(CONTENDERS[t][0])
                if why is not None:
                    results[t] = why
                    continue
                log.info("%s: %d files of %d MiB", t, args.files, args.mib)
                try:
                    results[t] = run_one(t, gw, work, sources, size, extra)
                except MountError as exc:
                    results[t] = str(exc)
    except RadosgwError as exc:
        print(f"many_at_once: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if not mounts_under(str(work)):
            subprocess.run(["rm", "-rf", str(work)], timeout=300)
    print(f"\n{args.files} files of {args.mib} MiB at once, radosgw on loopback\n")
    print("| contender | write (until stored) | peak RSS | read (fresh mount) | peak RSS |")
    print("|---|---|---|---|---|")
    for t, r in results.items():
        if isinstance(r, str):
            print(f"| {t} | {r} | | | |")
        else:
            print(f"| {t} | {r['write']:.1f} s | {r['write_rss']:.0f} MiB | {r['read']:.1f} s | "
                  f"{r['read_rss']:.0f} MiB |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
