"""``s3mount umount MOUNTPOINT``: upload what is pending, then unmount.

The mount process is asked to stop with SIGTERM (it uploads pending data, then unmounts itself), and
we wait until it has exited, so when this command returns everything closed before it is in the
bucket. A mount whose process we cannot signal (another user's, or a dead one) is unmounted with
``fusermount3 -u``, falling back to a lazy unmount only when the process is gone.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from .. import runtime
from . import CliError

WAIT_REPORT_AFTER = 2.0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("umount", help="upload pending data and unmount",
                       description="Upload pending data, then unmount MOUNTPOINT.")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--timeout", type=float, default=3600.0,
                   help="seconds to wait for pending uploads (default 3600)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    mp = os.path.realpath(args.mountpoint)
    if mp not in runtime.mounted_paths():
        raise CliError(f"{args.mountpoint} is not mounted")
    entry = runtime.find(mp)
    pid = int(entry["pid"]) if entry and entry.get("pid") else None
    if pid is not None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pid = None
        except PermissionError:
            raise CliError(f"not allowed to stop the mount process of {mp}") from None
    if pid is None:
        r = subprocess.run(["fusermount3", "-u", mp], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise CliError(f"cannot unmount {mp}: {r.stderr.strip() or 'fusermount3 failed'}")
        return 0
    start = time.monotonic()
    reported = False
    while _alive(pid):
        waited = time.monotonic() - start
        if waited > args.timeout:
            raise CliError(f"the mount process {pid} is still uploading after "
                           f"{args.timeout:.0f}s; {mp} stays mounted")
        if waited > WAIT_REPORT_AFTER and not reported:
            pending = (runtime.find(mp) or {}).get("pending_uploads")
            print(f"s3mount: waiting for pending uploads to finish ({pending or 'some'} file(s))",
                  file=sys.stderr)
            reported = True
        time.sleep(0.1)
    if mp in runtime.mounted_paths():
        subprocess.run(["fusermount3", "-u", mp], capture_output=True, timeout=60)
    return 0


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
