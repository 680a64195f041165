"""POSIX attributes in S3 user metadata, compatible with s3fs-fuse and rclone.

s3fs-fuse writes ``x-amz-meta-mode`` (decimal, with the file-type bits: FIFOs, sockets and
devices are empty objects whose mode says what they are, with ``-rdev`` for devices), ``-uid``,
``-gid``, ``-mtime``, ``-ctime``, ``-atime`` (seconds) and ``-xattr`` (see ``encode_xattrs``);
rclone writes ``mtime`` with a fraction and, with --metadata, ``mode`` in octal. We read all of
these and write the s3fs form, with a fraction only when there is one, so both tools read back
what we wrote. Objects without metadata get the mount's defaults and their ``LastModified``.
"""

from __future__ import annotations

import base64
import binascii
import json
import stat
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

SPECIAL_TYPES = (stat.S_IFLNK, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK)
"""Kinds stored as a file object whose metadata mode names the kind (s3fs does the same)."""
_TYPES = (stat.S_IFREG, stat.S_IFDIR, *SPECIAL_TYPES)
USER_METADATA_MAX = 2048
"""S3's limit on the user metadata of one object: the bytes of every name and value, together."""


@dataclass
class Attrs:
    """The attributes of one inode that live in S3 (size and times included)."""

    mode: int  # with file-type bits
    uid: int
    gid: int
    size: int
    mtime_ns: int
    ctime_ns: int
    atime_ns: int | None = None
    """Set explicitly (utimens); None reads as the mtime (the mount is ``noatime``)."""
    rdev: int = 0

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
    """Seconds since the epoch (integer or with a fraction) as nanoseconds. The fraction adds
    to the seconds, also before 1970: s3fs writes a ``timespec`` as ``tv_sec.tv_nsec``, so half a
    second before the epoch is ``-1.500000000``."""
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
    """The inverse of ``parse_time_ns`` (s3fs's spelling), with a fraction only if there is one."""
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
        # metadata says); the metadata's type bits only tell a special file from a plain one.
        meta_kind = stat.S_IFMT(mode)
        if kind == stat.S_IFREG and meta_kind in SPECIAL_TYPES:
            kind = meta_kind
        mode = kind | stat.S_IMODE(mode)
    mtime = _or(parse_time_ns(md.get("mtime")), lm_ns)
    uid = parse_int(md.get("uid"))
    gid = parse_int(md.get("gid"))
    rdev = parse_int(md.get("rdev")) if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else None
    return Attrs(
        mode=mode,
        uid=defaults.uid if uid is None else uid,
        gid=defaults.gid if gid is None else gid,
        size=size,
        mtime_ns=mtime,
        ctime_ns=_or(parse_time_ns(md.get("ctime")), max(mtime, lm_ns)),
        atime_ns=parse_time_ns(md.get("atime")),
        rdev=rdev or 0,
    )


def _or(value: int | None, default: int) -> int:
    """``value`` unless absent (a time of 0, the epoch itself, is a time)."""
    return default if value is None else value


def metadata_for(attrs: Attrs) -> dict[str, str]:
    """The user metadata that stores ``attrs`` (s3fs names and formats)."""
    md = {
        "mode": str(attrs.mode),
        "uid": str(attrs.uid),
        "gid": str(attrs.gid),
        "mtime": format_time_ns(attrs.mtime_ns),
        "ctime": format_time_ns(attrs.ctime_ns),
    }
    if attrs.atime_ns is not None:
        md["atime"] = format_time_ns(attrs.atime_ns)
    if attrs.rdev:
        md["rdev"] = str(attrs.rdev)
    return md


def metadata_size(md: Mapping[str, str]) -> int:
    """How S3 counts user metadata against ``USER_METADATA_MAX`` (names as sent, with their
    ``x-amz-meta-`` prefix left off, and values, in UTF-8)."""
    return sum(len(k.encode()) + len(v.encode()) for k, v in md.items())


def decode_xattrs(value: str | None) -> dict[str, bytes]:
    """s3fs's ``x-amz-meta-xattr``: URL-encoded JSON of {name: base64 value}. Anything we cannot
    read is treated as no attributes (it is kept as it is until one is set)."""
    if not value:
        return {}
    try:
        raw = json.loads(urllib.parse.unquote(value))
        if not isinstance(raw, dict):
            return {}
        return {str(k): base64.b64decode(v or "", validate=True) for k, v in raw.items()}
    except (ValueError, TypeError, binascii.Error):
        return {}


def encode_xattrs(xattrs: Mapping[str, bytes]) -> str:
    """The inverse of ``decode_xattrs``, spelt as s3fs spells it (compact JSON, then escaped)."""
    raw = {k: base64.b64encode(v).decode() for k, v in sorted(xattrs.items())}
    return urllib.parse.quote(json.dumps(raw, separators=(",", ":")), safe="")


def acl_mode(value: bytes) -> tuple[int, bool] | None:
    """The permission bits a POSIX access ACL (the kernel's xattr form) gives, and whether it
    says more than they can (named users or groups, a mask); None if it is not such an ACL.

    ``cp -a`` and ``setfacl`` set a file's mode by setting this attribute; as on a local
    filesystem, an ACL that says no more than a mode is stored as that mode alone."""
    if len(value) < 4 or (len(value) - 4) % 8 or int.from_bytes(value[:4], "little") != 2:
        return None
    perms: dict[int, int] = {}
    extended = False
    for i in range(4, len(value), 8):
        tag = int.from_bytes(value[i:i + 2], "little")
        perm = int.from_bytes(value[i + 2:i + 4], "little") & 0o7
        if tag in (_ACL_USER_OBJ, _ACL_GROUP_OBJ, _ACL_MASK, _ACL_OTHER):
            perms[tag] = perm
        extended = extended or tag not in (_ACL_USER_OBJ, _ACL_GROUP_OBJ, _ACL_OTHER)
    if not {_ACL_USER_OBJ, _ACL_GROUP_OBJ, _ACL_OTHER} <= perms.keys():
        return None
    group = perms.get(_ACL_MASK, perms[_ACL_GROUP_OBJ])  # with a mask, the group bits are its
    return perms[_ACL_USER_OBJ] << 6 | group << 3 | perms[_ACL_OTHER], extended


_ACL_USER_OBJ, _ACL_GROUP_OBJ, _ACL_MASK, _ACL_OTHER = 0x01, 0x04, 0x10, 0x20


def new_attrs(kind: int, mode: int, uid: int, gid: int, size: int = 0) -> Attrs:
    """The attributes of an entry made now (mkdir, create, symlink, mknod)."""
    now = time.time_ns()
    return Attrs(kind | (mode & 0o7777), uid, gid, size, now, now)
