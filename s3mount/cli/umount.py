"""``s3mount umount [--lazy] MOUNTPOINT``: unmount, then wait until pending uploads are stored.

The kernel decides whether the mount is in use: an ordinary unmount (``fusermount3 -u``) is refused
while a file is open or a process works in the mount, and so is this command, with the reason and a
non-zero exit, like umount(8); detaching it anyway would turn the next write of every program
holding a file into ENOTCONN and leave half the data in the bucket. Once unmounted, the mount
process uploads what is still pending and exits; we wait for that (with a live progress line on a
terminal), so when this command returns everything closed before it is in the bucket. When some
files could not be stored (the server is down), the mount process says how many as it exits
(``runtime.leave_outcome``), and we say so in one line and exit 1: they stay in the cache for the
next mount.

``--lazy`` detaches at once even while files are open: they keep working, each is stored when its
last descriptor is closed, and the mount process exits after the last one (``s3mount status``
lists it as detached meanwhile). We tell the process with SIGUSR1 so it publishes that at once.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time

from .. import runtime
from . import CliError

POLL = 0.2
ACK_TIMEOUT = 5.0
PROGRESS_EVERY = 0.5


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("umount", help="unmount and wait for pending uploads",
                       description="Unmount MOUNTPOINT (refused while it is in use, unless "
                                   "--lazy), then wait until pending uploads are stored.")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("-l", "--lazy", action="store_true",
                   help="detach now even if files are open; each is stored when it is closed")
    p.add_argument("--timeout", type=float, default=3600.0,
                   help="seconds to wait for pending uploads (default 3600)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    mp = os.path.realpath(args.mountpoint)
    if mp not in runtime.mounted_paths():
        raise CliError(f"{args.mountpoint} is not mounted")
    if mp not in runtime.fuse_mounts():
        # fusermount3 run by root unmounts whatever is there (a tmpfs, /home): not ours to touch.
        raise CliError(f"{args.mountpoint} is not an s3mount mount; use umount(8) for it")
    entry = runtime.find(mp)
    pid = int(entry["pid"]) if entry and entry.get("pid") else None
    if args.lazy:
        _fusermount(mp, "-u", "-z")
        if pid is not None:
            with contextlib.suppress(OSError):  # gone, or not ours: it finds out by itself
                os.kill(pid, signal.SIGUSR1)
            # Until it says so, so a `status` right after this lists it as detached.
            deadline = time.monotonic() + ACK_TIMEOUT
            while time.monotonic() < deadline and _alive(pid):
                if (runtime.find_pid(pid) or {}).get("detached"):
                    break
                time.sleep(POLL / 4)
        return 0
    try:
        _fusermount(mp, "-u")
    except CliError as exc:
        if "busy" not in str(exc).lower():
            raise
        raise CliError(f"{mp} is busy ({_users(mp)}); close them, or use --lazy to detach it "
                       "now and store each file when it is closed") from None
    if pid is not None:
        _wait(pid, mp, args.timeout)
        failed = runtime.take_outcome(pid, mp)
        if failed:
            raise CliError(f"{mp} is unmounted, but {failed} file(s) could not be stored in the "
                           "bucket; they are kept in the cache directory and the next mount of "
                           "this bucket uploads them (the mount's log says why)")
    return 0


def _fusermount(mp: str, *flags: str) -> None:
    # LC_ALL=C: "busy" is recognised in its message (strerror(EBUSY)).
    r = subprocess.run(["fusermount3", *flags, "--", mp], capture_output=True, text=True,
                       timeout=60, env=dict(os.environ, LC_ALL="C"))
    if r.returncode != 0:
        reason = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "fusermount3 failed"
        raise CliError(f"cannot unmount {mp}: {reason.removeprefix('fusermount3: ')}")


def _users(mp: str) -> str:
    """What keeps ``mp`` busy, as far as /proc shows us: open files and working directories.

    Read from the links in /proc (they name paths without touching the file system), so it is
    exact at this moment, unlike the open-file count the mount process publishes every few
    seconds. Processes of other users are invisible to a user: then we say only that it is busy.
    """
    files = cwds = 0
    inside = mp.rstrip("/") + "/"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if (os.readlink(f"/proc/{pid}/cwd") + "/").startswith(inside):
                cwds += 1
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if (os.readlink(f"/proc/{pid}/fd/{fd}") + "/").startswith(inside):
                        files += 1
    parts = ([f"{files} open file(s)"] if files else []) + \
        ([f"{cwds} process(es) working in it"] if cwds else [])
    return ", ".join(parts) or "in use"


def _wait(pid: int, mp: str, timeout: float) -> None:
    """Wait for the mount process to exit; on a terminal show how its uploads progress."""
    tty = sys.stderr.isatty()
    start = time.monotonic()
    shown = ""
    last = 0.0
    try:
        while _alive(pid):
            now = time.monotonic()
            if now - start > timeout:
                raise CliError(f"the mount process {pid} is still uploading after {timeout:.0f}s; "
                               f"it goes on in the background (see s3mount status)")
            if tty and now - last >= PROGRESS_EVERY:
                last = now
                entry = runtime.find_pid(pid)
                if entry is not None and entry.get("uploads"):
                    line = f"s3mount: {mp}: {runtime.progress_line(entry['uploads'])}"
                    sys.stderr.write("\r" + line.ljust(len(shown)))
                    sys.stderr.flush()
                    shown = line
            time.sleep(POLL)
    finally:
        if shown:
            sys.stderr.write("\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is gone for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False
