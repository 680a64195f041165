"""Where live mounts publish their state, so ``s3mount status`` can show it without a socket.

Each mount process rewrites one small JSON file every few seconds in a per-user runtime directory;
``status`` reads them all. The file name is a hash of the mountpoint, so two mounts never collide
and a remount simply overwrites the previous entry. A mount that died without withdrawing its entry
(SIGKILL, crash) leaves a stale file behind: readers recognise it by a dead ``pid`` or a mountpoint
that is no longer mounted, and delete it. A mount process that is still uploading or serving open
files after its mountpoint was unmounted publishes ``detached`` under a name of its own (the same
mountpoint may be mounted again meanwhile), and is listed while its process lives.

A mount process that exits with files it could not store leaves a one-line outcome
(``leave_outcome``) for the ``s3mount umount`` waiting for it, which is not its parent and cannot
read its exit status.

The directory is private (0700, owned by us; checked on every use, because ``/tmp`` is shared and
somebody else could have created ``/tmp/s3mount-<uid>`` first), the files are 0600, and only the
keys in ``STATE_KEYS`` are accepted, so a secret cannot slip into a file by accident.

Mount processes started by mount(8) or fstab get an empty environment (no ``XDG_RUNTIME_DIR``),
while the user's shell has one; readers therefore look in every candidate directory, writers use
the first usable one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from .errors import S3MountError

log = logging.getLogger(__name__)

MiB = 1024 * 1024

# What a mount may publish: descriptions for the man page and for reviewers. Nothing secret.
STATE_KEYS: dict[str, str] = {
    "mountpoint": "absolute path of the mountpoint",
    "pid": "process id of the mount daemon",
    "source": "what was mounted, as given (s3://bucket/prefix or a profile name)",
    "profile": "s3mount profile name, or null",
    "provider": "credential provider name (cleverbase, clevercloud, lyvecloud, static, env)",
    "bucket": "bucket name",
    "prefix": "key prefix inside the bucket, or empty",
    "endpoint": "S3 endpoint URL",
    "read_only": "true when mounted read-only",
    "credentials_expire_at": "epoch seconds when the current keys expire, or null for no expiry",
    "next_renewal_at": "epoch seconds of the next planned renewal, or null",
    "renewals": "number of successful credential renewals since the mount started",
    "pending_uploads": "files written but not yet stored in the bucket",
    "uploads": "per pending file: path, stored (bytes of its current upload attempt), total "
               "(bytes), rate (bytes/s, or null before its upload starts), open (still being "
               "written)",
    "open_files": "open file descriptors on the mount",
    "detached": "true once unmounted while the process still uploads or serves open files",
    "failed_uploads": "uploads that failed and are kept in the cache for a retry",
    "refused_uploads": "files the server refused to store under their name for good (a key or "
                       "object it cannot hold), not retried: a list of objects with path, "
                       "reason and kept_as (where the data is: under lost+found/ in the mount, "
                       "or a file in the cache directory)",
    "cache_bytes": "bytes used in the staging area",
    "started_at": "epoch seconds when the mount started",
    "updated_at": "epoch seconds when this entry was last written",
    "last_error": "the most recent error message, or null",
    "stranded_uploads": "files an earlier run left for this bucket that this mount cannot upload "
                        "(other prefix, or an endpoint not shown to serve this bucket): a list "
                        "of objects with endpoint, bucket, prefix, files, path, reason, message",
}


class RuntimeDirError(S3MountError):
    """The runtime directory exists but is not safely ours."""


def _candidate_dirs() -> list[str]:
    """Runtime directories in order of preference (writers use the first usable one)."""
    uid = os.getuid()
    dirs = []
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg) and _owned_dir(xdg):
        dirs.append(os.path.join(xdg, "s3mount"))
    run_user = f"/run/user/{uid}"
    if _owned_dir(run_user):
        dirs.append(os.path.join(run_user, "s3mount"))
    dirs.append(os.path.join(tempfile.gettempdir(), f"s3mount-{uid}"))
    return list(dict.fromkeys(os.path.normpath(d) for d in dirs))


def _owned_dir(path: str) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()


def _check_private(path: str, st: os.stat_result) -> None:
    if not stat.S_ISDIR(st.st_mode):
        raise RuntimeDirError(f"{path} is not a directory; remove it")
    if st.st_uid != os.getuid():
        raise RuntimeDirError(f"{path} belongs to uid {st.st_uid}, not to us; remove it")
    if st.st_mode & 0o077:
        raise RuntimeDirError(f"{path} is accessible by other users (mode "
                              f"{oct(st.st_mode & 0o777)}); remove it")


def runtime_dir(create: bool = True) -> str:
    """The directory this process publishes into, created 0700 if missing."""
    path = _candidate_dirs()[0]
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
    _check_private(path, os.lstat(path))
    return path


def _existing_dirs() -> Iterator[str]:
    """Candidate directories that exist and are safely ours (others are skipped with a warning)."""
    for path in _candidate_dirs():
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        try:
            _check_private(path, st)
        except RuntimeDirError as exc:
            log.warning("ignoring runtime directory: %s", exc)
            continue
        yield path


def mountpoint_key(mountpoint: str) -> str:
    """Canonical absolute path of a mountpoint, computed without touching the mount itself.

    ``os.path.realpath(mountpoint)`` would stat the mountpoint, i.e. send a request to the FUSE
    filesystem mounted there; called from the mount daemon's own event loop that deadlocks, and on
    a hung mount it blocks ``status``. Only the parent directory is resolved.
    """
    path = os.path.abspath(mountpoint)
    if path == "/":
        return path
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def _entry_name(mountpoint: str, detached_pid: int | None = None) -> str:
    ident = mountpoint_key(mountpoint) + (f"\0{detached_pid}" if detached_pid else "")
    return hashlib.sha256(ident.encode()).hexdigest()[:16] + ".json"


def publish(mountpoint: str, state: dict[str, Any]) -> None:
    """Write (or replace) the state entry of the mount at ``mountpoint``, atomically, mode 0600."""
    unknown = set(state) - set(STATE_KEYS)
    if unknown:
        raise ValueError(f"runtime.publish: keys not in STATE_KEYS: {sorted(unknown)}")
    entry = dict(state)
    entry["mountpoint"] = mountpoint_key(mountpoint)
    entry.setdefault("pid", os.getpid())
    entry["updated_at"] = time.time()
    _write(_entry_name(mountpoint, entry["pid"] if entry.get("detached") else None), entry)


def _write(name: str, entry: dict[str, Any]) -> None:
    """Write ``entry`` as ``name`` in our runtime directory, atomically, mode 0600."""
    directory = runtime_dir()
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".", suffix=".tmp")  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(entry, f)
        os.replace(tmp, os.path.join(directory, name))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def withdraw(mountpoint: str, *, detached: bool = False) -> None:
    """Remove the entry this process published for ``mountpoint`` (on unmount), or with
    ``detached`` the one it published after the unmount; missing entries are fine.

    An entry another process published under the name is left: a mount made again at the same
    mountpoint while this one, unmounted lazily, still served its open files."""
    name = _entry_name(mountpoint, os.getpid() if detached else None)
    for directory in _existing_dirs():
        path = os.path.join(directory, name)
        if (got := _read(path)) is None:
            continue
        entry, seen = got
        if not isinstance(entry, dict) or entry.get("pid") == os.getpid():
            _remove_if_same(path, seen)


OUTCOME_SUFFIX = ".exit"
OUTCOME_TTL = 3600.0
"""Seconds an outcome nobody took is kept (``read_all`` removes older ones)."""


def leave_outcome(mountpoint: str, failed_uploads: int) -> None:
    """Say, as this mount process exits, how many files it could not store.

    ``s3mount umount`` waits for the mount process but is not its parent, so it cannot read
    its exit status; it takes this instead (``take_outcome``) and exits non-zero. Only a failure
    is written, so a clean exit leaves nothing behind.
    """
    _write(f"{os.getpid()}{OUTCOME_SUFFIX}", {"mountpoint": mountpoint_key(mountpoint),
                                              "pid": os.getpid(),
                                              "failed_uploads": failed_uploads})


def take_outcome(pid: int, mountpoint: str) -> int:
    """How many files mount process ``pid`` (of ``mountpoint``, now gone) could not store, as it
    said on its way out; 0 when it said nothing. The outcome is removed once read."""
    key = mountpoint_key(mountpoint)
    for directory in _existing_dirs():
        path = os.path.join(directory, f"{pid}{OUTCOME_SUFFIX}")
        if (got := _read(path)) is None:
            continue
        entry = got[0]
        _remove(path)
        if isinstance(entry, dict) and entry.get("mountpoint") == key \
                and isinstance(entry.get("failed_uploads"), int):
            return int(entry["failed_uploads"])
    return 0


def mounted_paths(mountinfo: str = "/proc/self/mountinfo") -> set[str]:
    """Mountpoints currently mounted in our mount namespace."""
    paths = set()
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split(" ")
            if len(fields) > 4:
                paths.add(_unescape(fields[4]))
    return paths


def devices_at(mountpoint: str, mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """The devices (``major:minor``) mounted at ``mountpoint``, the topmost last: which mount
    is there, when the path alone cannot tell (unmounted lazily, then mounted again)."""
    found = []
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split(" ")
            if len(fields) > 4 and _unescape(fields[4]) == mountpoint:
                found.append(fields[2])
    return found


def fuse_mounts(mountinfo: str = "/proc/self/mountinfo") -> dict[str, list[str]]:
    """Mountpoints of s3mount file systems (``fuse.s3mount``), of any user, with their options."""
    found = {}
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.rstrip("\n").split(" ")
            try:
                fstype, _source, options = fields[fields.index("-") + 1:][:3]
            except ValueError:
                continue
            if fstype == "fuse.s3mount":
                found[_unescape(fields[4])] = options.split(",")
    return found


def our_fuse_mounts(mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """Mountpoints of s3mount file systems mounted by this user (FUSE's ``user_id=``)."""
    return [mp for mp, options in fuse_mounts(mountinfo).items()
            if f"user_id={os.getuid()}" in options]


def _unescape(field: str) -> str:
    r"""mountinfo escapes space, tab, newline and backslash as ``\040`` etc."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but somebody else's
        return True
    return True


def read_all() -> list[dict[str, Any]]:
    """State of every live mount, sorted by mountpoint; stale entries are deleted on the way.

    The mount table is read after the entries: a mount is made before its first entry is
    written, so a table read before could lack a mount that started meanwhile, and its fresh
    entry would be deleted as stale (then a ``umount`` right after found nothing to wait for).
    """
    read: list[tuple[str, tuple[int, int], Any]] = []
    for directory in _existing_dirs():
        for name in sorted(os.listdir(directory)):
            if name.endswith(OUTCOME_SUFFIX):
                _remove_if_older(os.path.join(directory, name), OUTCOME_TTL)
            if not name.endswith(".json"):
                continue
            path = os.path.join(directory, name)
            if (got := _read(path)) is not None:
                read.append((path, got[1], got[0]))
    mounted = mounted_paths()
    found: dict[tuple[str, int], dict[str, Any]] = {}
    for path, seen, entry in read:
        if (not isinstance(entry, dict) or not _pid_alive(entry.get("pid"))
                or (entry.get("mountpoint") not in mounted and not entry.get("detached"))):
            log.debug("removing stale runtime entry %s", path)
            _remove_if_same(path, seen)
            continue
        key = (entry["mountpoint"], entry["pid"] if entry.get("detached") else 0)
        prev = found.get(key)
        if prev is None or entry.get("updated_at", 0) > prev.get("updated_at", 0):
            found[key] = entry
    return [found[k] for k in sorted(found)]


def find(mountpoint: str) -> dict[str, Any] | None:
    """State of the live mount at ``mountpoint`` (not a detached one), or None."""
    key = mountpoint_key(mountpoint)
    return next((e for e in read_all() if e["mountpoint"] == key and not e.get("detached")),
                None)


def find_pid(pid: int) -> dict[str, Any] | None:
    """The newest state published by mount process ``pid``, mounted or detached, or None."""
    return max((e for e in read_all() if e.get("pid") == pid),
               key=lambda e: e.get("updated_at", 0), default=None)


def _remove_if_older(path: str, age: float) -> None:
    """Remove ``path`` if it was last written more than ``age`` seconds ago (an outcome of a
    mount process that no ``umount`` waited for)."""
    with contextlib.suppress(OSError):
        if time.time() - os.stat(path).st_mtime > age:
            os.unlink(path)


def _read(path: str) -> tuple[Any, tuple[int, int]] | None:
    """The JSON in runtime file ``path`` and the (inode, mtime) it was read as; None when it is
    gone (withdrawn meanwhile) or unreadable, which is then removed."""
    try:
        with open(path) as f:
            st = os.fstat(f.fileno())
            return json.load(f), (st.st_ino, st.st_mtime_ns)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("removing unreadable runtime file %s: %s", path, exc)
        _remove(path)
        return None


def _remove_if_same(path: str, seen: tuple[int, int]) -> None:
    """Remove ``path`` unless it was replaced since it was read as ``seen`` (inode, mtime): a
    mount that started again at the same mountpoint has published a live entry under that name."""
    with contextlib.suppress(FileNotFoundError):
        st = os.stat(path)
        if (st.st_ino, st.st_mtime_ns) == seen:
            os.unlink(path)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def progress_line(uploads: list[dict[str, Any]]) -> str:
    """``3 file(s) to upload: 120.0 of 300.0 MiB stored, 12.5 MiB/s`` (``umount``, systemd)."""
    if not uploads:
        return "no uploads pending"
    stored = sum(u["stored"] for u in uploads)
    total = sum(u["total"] for u in uploads)
    rate = sum(u["rate"] or 0 for u in uploads)
    return (f"{len(uploads)} file(s) to upload: {stored / MiB:.1f} of {total / MiB:.1f} MiB "
            f"stored, {rate / MiB:.1f} MiB/s")
