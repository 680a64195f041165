"""POSIX attributes in S3 user metadata, compatible with s3fs-fuse and rclone.

s3fs-fuse writes ``x-amz-meta-mode`` (decimal, with the file-type bits), ``-uid``, ``-gid`` and
``-mtime`` (integer seconds); rclone writes ``mtime`` with a fraction and, with --metadata, ``mode``
in octal. We read all of these and write the s3fs form, with a fractional mtime only when there is
a fraction, so both tools read back what we wrote. Objects without metadata get the mount's
defaults and their ``LastModified``.
"""

from __future__ import annotations

import stat
from collections.abc import Mapping
from dataclasses import dataclass

_TYPES = (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK)


@dataclass
class Attrs:
    """The attributes of one inode that live in S3 (size and times included)."""

    mode: int  # with file-type bits
    uid: int
    gid: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @property
    def kind(self) -> int:
        return stat.S_IFMT(self.mode)


@dataclass(frozen=True)
class Defaults:
    """What the mount answers for attributes an object does not carry."""

    uid: int
    gid: int
    file_mode: int = 0o644
    dir_mode: int = 0o755


def parse_mode(value: str | None) -> int | None:
    """A mode from metadata: s3fs's decimal or rclone's octal; None when unusable."""
    if not value:
        return None
    value = value.strip()
    try:
        # A leading zero is an octal spelling ("0644"), never s3fs's decimal.
        dec = -1 if value.startswith("0") and len(value) > 1 else int(value, 10)
    except ValueError:
        dec = -1
    if 0 <= dec <= 0o177777 and (stat.S_IFMT(dec) in _TYPES or dec <= 0o7777):
        return dec
    try:
        octal = int(value, 8)
    except ValueError:
        return None
    return octal if stat.S_IFMT(octal) in _TYPES or octal <= 0o7777 else None


def parse_time_ns(value: str | None) -> int | None:
    """Seconds since the epoch (integer or with a fraction) as nanoseconds."""
    if not value:
        return None
    value = value.strip()
    try:
        whole, _, frac = value.partition(".")
        ns = int(whole) * 1_000_000_000
        if frac:
            ns += int((frac + "000000000")[:9])
        return ns
    except ValueError:
        return None


def format_time_ns(ns: int) -> str:
    whole, frac = divmod(ns, 1_000_000_000)
    return str(whole) if frac == 0 else f"{whole}.{frac:09d}"


def parse_int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def attrs_from_object(
    *, kind: int, size: int, last_modified: float, metadata: Mapping[str, str] | None,
    defaults: Defaults,
) -> Attrs:
    """Attributes of an object (or directory) from what S3 told us about it."""
    md = metadata or {}
    lm_ns = int(last_modified * 1_000_000_000)
    mode = parse_mode(md.get("mode"))
    if mode is None:
        perm = defaults.dir_mode if kind == stat.S_IFDIR else defaults.file_mode
        if kind == stat.S_IFLNK:
            perm = 0o777
        mode = kind | perm
    else:
        # The object's nature decides the type (a key ending in "/" is a directory whatever its
        # metadata says); the metadata's type bits only tell a symlink from a file.
        meta_kind = stat.S_IFMT(mode)
        if kind == stat.S_IFREG and meta_kind == stat.S_IFLNK:
            kind = stat.S_IFLNK
        mode = kind | stat.S_IMODE(mode)
    mtime = parse_time_ns(md.get("mtime")) or lm_ns
    uid = parse_int(md.get("uid"))
    gid = parse_int(md.get("gid"))
    return Attrs(
        mode=mode,
        uid=defaults.uid if uid is None else uid,
        gid=defaults.gid if gid is None else gid,
        size=size,
        mtime_ns=mtime,
        ctime_ns=parse_time_ns(md.get("ctime")) or max(mtime, lm_ns),
    )


def metadata_for(attrs: Attrs) -> dict[str, str]:
    """The user metadata that stores ``attrs`` (s3fs names and formats)."""
    return {
        "mode": str(attrs.mode),
        "uid": str(attrs.uid),
        "gid": str(attrs.gid),
        "mtime": format_time_ns(attrs.mtime_ns),
        "ctime": format_time_ns(attrs.ctime_ns),
    }
