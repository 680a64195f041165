"""``s3mount status [MOUNTPOINT] [--json]``: what each live mount is doing.

Reads the entries mount daemons publish (``s3mount.runtime``): which bucket and provider, when the
credentials expire and how often they were renewed, how many uploads are still pending, and files
an earlier run left for this bucket that the mount cannot upload itself (``stranded_uploads``).
``--json`` prints the entries as they are, for scripts and monitoring.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from .. import runtime
from . import CliError

COLUMNS = ("MOUNTPOINT", "PROVIDER", "BUCKET", "ENDPOINT", "CREDENTIALS", "RENEWALS", "PENDING",
           "FAILED", "CACHE")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="show live mounts, their credentials and pending uploads",
                       description="Show live s3mount mounts of the current user: bucket, provider,"
                                   " credential expiry and renewals, pending uploads. A mount whose"
                                   " process died is pointed out on stderr.")
    p.add_argument("mountpoint", nargs="?", metavar="MOUNTPOINT",
                   help="show only this mount (exit 1 if it is not an s3mount mount)")
    p.add_argument("--json", action="store_true",
                   help="print a JSON list of objects (one per mount) instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    entries = runtime.read_all()
    # Mounted, but no live process publishes for it: crashed (or still starting).
    silent = [mp for mp in runtime.our_fuse_mounts()
              if mp not in {e["mountpoint"] for e in entries}]
    if args.mountpoint is not None:
        key = runtime.mountpoint_key(args.mountpoint)
        if key in silent:
            raise CliError(_silent_note(key))
        entries = [e for e in entries if e["mountpoint"] == key]
        if not entries:
            raise CliError(f"{args.mountpoint} is not an s3mount mount")
        silent = []
    if args.json:
        print(json.dumps(entries, indent=2, sort_keys=True))
    elif entries:
        print(format_table(entries, now=time.time()))
    elif not silent:
        print("no s3mount mounts")
    for mp in silent:
        print(_silent_note(mp), file=sys.stderr)
    return 0


def _silent_note(mountpoint: str) -> str:
    return (f"{mountpoint} is mounted but no s3mount process reports for it (crashed, or still "
            f"starting); if it stays so, detach it: fusermount3 -uz {mountpoint}")


def format_table(entries: list[dict[str, Any]], now: float) -> str:
    rows = [COLUMNS] + [_row(e, now) for e in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    for e in entries:
        if e.get("last_error"):
            lines.append(f"{e['mountpoint']}: last error: {e['last_error']}")
        for stranded in e.get("stranded_uploads") or []:  # see s3mount/recovery.py
            lines.append(f"{e['mountpoint']}: warning: {stranded['message']}")
        for refused in e.get("refused_uploads") or []:  # see s3mount/fs/writeback.py
            lines.append(f"{e['mountpoint']}: warning: the server refused {refused['path']!r} "
                         f"({refused['reason']}); its data is kept as {refused['kept_as']!r}")
        lines += [f"{e['mountpoint']}: {_upload(u)}" for u in e.get("uploads") or []]
    return "\n".join(lines)


def _upload(u: dict[str, Any]) -> str:
    """``uploading big.iso: 120.0MiB of 300.0MiB (40%), 12.5MiB/s`` for one pending file."""
    total = int(u.get("total") or 0)
    stored = int(u.get("stored") or 0)
    if u.get("open"):
        state = "being written"
    elif u.get("rate") is None:
        state = "waiting"
    else:
        state = "uploading"
    line = f"{state} {u.get('path')}: {_size(stored)} of {_size(total)}"
    if total:
        line += f" ({100 * stored // total}%)"
    if u.get("rate") is not None:
        line += f", {_size(int(u['rate']))}/s"
    return line


def _row(e: dict[str, Any], now: float) -> tuple[str, ...]:
    bucket = str(e.get("bucket") or "-")
    if e.get("prefix"):
        bucket += "/" + str(e["prefix"]).strip("/")
    provider = str(e.get("provider") or "-")
    if e.get("profile"):
        provider += f" ({e['profile']})"
    mountpoint = str(e.get("mountpoint")) + (" (detached)" if e.get("detached") else "")
    return (mountpoint, provider, bucket, str(e.get("endpoint") or "-"),
            _expiry(e.get("credentials_expire_at"), now), str(e.get("renewals", 0)),
            str(e.get("pending_uploads", 0)), str(e.get("failed_uploads", 0)),
            _size(e.get("cache_bytes")))


def _expiry(expire_at: float | None, now: float) -> str:
    if expire_at is None:
        return "no expiry"
    left = expire_at - now
    return f"expired {_duration(-left)} ago" if left <= 0 else f"expire in {_duration(left)}"


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{size:.1f}TiB"
