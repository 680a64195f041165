"""Staging files: where written data lives on local disk until the bucket has it.

Dirty data is never only in memory. Each file being written has a data file in
``<cache_dir>/staging/`` and, beside it, a small JSON record saying which key it belongs to, with
what metadata and on which ETag it was based. Until an upload is confirmed the staging file is the
truth; after a crash the next mount of the same bucket finds the records
(``StagingArea.leftovers``, ``recovery.find_leftovers``) and uploads what was left. The record is
atomically replaced whenever the file becomes dirty, is closed (it then says so: only closed data
may replace the object after a crash), is about to be uploaded, or starts or ends a multipart
upload (so recovery can abort one a crash cut off), so a ``kill -9`` at any moment leaves either
the old or the new record, never a torn one; data and record of a file whose upload failed are
also fsync'd, so a reboot keeps them.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import json
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

log = logging.getLogger(__name__)

SLOTS = 64
"""Mounts of one bucket and prefix that can run at once (each holds a slot)."""

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


@dataclass
class Record:
    """What a staging file belongs to (persisted beside it)."""

    key: str
    metadata: dict[str, str]
    base_etag: str | None
    """ETag of the object the data was based on (None for a new file): if the object has another
    ETag when we recover, someone else changed it meanwhile and we must not overwrite it."""
    closed: bool = True
    """The data is what a close() or fsync() confirmed. False while a writer is still at it: after
    a crash such data is a partial file and must never replace the object under its name.
    (Records of earlier versions lack the field and were uploaded as they were.)"""
    part_size: int | None = None
    """The mount's part size, so that recovery can tell the ETag our own upload would have."""
    uploads: list[str] = field(default_factory=list)
    """Ids of multipart uploads started for this data and not yet completed or aborted: a crash
    leaves them in the bucket (billed) until recovery aborts them."""

    @classmethod
    def load(cls, path: str) -> Record | None:
        """The record at ``path``; None for a clean one written by an earlier version (its data
        was stored). Raises OSError, ValueError or TypeError when unreadable."""
        with open(path) as f:
            raw = json.load(f)
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        if not raw.pop("dirty", True):  # versions before 2026-12 marked stored files clean
            return None
        return cls(**raw)


class StagingFile:
    """One staging data file plus its record. Not thread-safe: the core serialises access."""

    def __init__(self, area: StagingArea, name: str) -> None:
        self.area = area
        self.name = name
        self.path = os.path.join(area.dir, name + ".data")
        self.record_path = os.path.join(area.dir, name + ".json")
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        self.uploads: list[str] = []
        """Multipart uploads under way for this data (kept in every record saved)."""
        self._record: Record | None = None

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def pread(self, length: int, offset: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def pwrite(self, data: bytes, offset: int) -> int:
        return os.pwrite(self.fd, data, offset)

    def drop_cached(self, offset: int, length: int) -> None:
        """Let the kernel write ``[offset, offset+length)`` to disk and free its page cache.

        A streamed file's parts are read once, for their upload, and never again while the
        stream lasts. Without this a 10 GiB copy leaves 10 GiB of staging data in the page cache,
        and every part of it lands in pages the kernel must find anew. Dropping each part once
        it is stored keeps the cache small and recycles the same pages. The first call on a
        range starts its writeback; a later one frees it. Dirty pages are never dropped, so no
        data can be lost by this."""
        os.posix_fadvise(self.fd, offset, length, os.POSIX_FADV_DONTNEED)

    def punch(self, offset: int, length: int) -> None:
        """Give the disk space of ``[offset, offset+length)`` back, keeping the file's size.

        A streamed file's parts, once stored in the bucket, are needed here no more: punching
        them out lets a file larger than the cache disk be written front to back (the range
        then reads as zeros, so the core never reads or uploads it from here again)."""
        if _libc.fallocate(self.fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE,
                           offset, length) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), self.path)

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)

    def sync(self) -> None:
        os.fsync(self.fd)

    def save_record(self, record: Record, *, durable: bool = False) -> None:
        """Replace the record atomically; ``durable`` fsyncs it first (power-cut safe)."""
        record.uploads = list(self.uploads)
        self._record = record
        tmp = f"{self.record_path}.{uuid.uuid4().hex[:8]}.tmp"  # concurrent writers never clash
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(record), f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, self.record_path)

    def upload_started(self, upload_id: str) -> None:
        """A multipart upload of this data began: the record names it, so that after a crash
        recovery can abort it instead of leaving its parts in the bucket."""
        self.uploads.append(upload_id)
        if self._record is not None:
            self.save_record(self._record)

    def upload_ended(self, upload_id: str) -> None:
        """That upload was completed or aborted: nothing of it is left to clean up."""
        with contextlib.suppress(ValueError):
            self.uploads.remove(upload_id)
        if self._record is not None:
            self.save_record(self._record)

    def drop_record(self) -> None:
        """The data is stored (or no longer wanted): without a record, a later run deletes the
        data file instead of uploading it, as it would for a record marked clean, and one
        unlink costs less than writing and renaming such a record."""
        self._record = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.record_path)

    def close(self) -> None:
        """Close the data file but keep it (and its record) for a later run."""
        with contextlib.suppress(OSError):
            os.close(self.fd)

    def discard(self) -> None:
        """Close and delete data and record (after a confirmed upload, or when the file is gone)."""
        with contextlib.suppress(OSError):
            os.close(self.fd)
        for p in (self.path, self.record_path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)


class StagingArea:
    """The staging directory of one mount.

    ``root`` is per bucket and prefix. Several mounts of the same bucket may run at once, so each
    takes the first free *slot* below it (a subdirectory held with an exclusive ``flock`` for the
    life of the mount); a slot left by a crashed mount is free again, and whoever takes it next
    recovers what it holds.
    """

    def __init__(self, root: str) -> None:
        os.makedirs(root, mode=0o700, exist_ok=True)
        os.chmod(root, 0o700)
        for slot in range(SLOTS):
            directory = os.path.join(root, f"slot-{slot}")
            os.makedirs(directory, mode=0o700, exist_ok=True)
            lock_fd = _lock(directory)
            if lock_fd is not None:
                self.dir = directory
                self._lock_fd = lock_fd
                return
        raise OSError(f"all staging slots under {root} are in use by other mounts")

    @classmethod
    def take(cls, directory: str) -> StagingArea | None:
        """The slot ``directory`` of another root (or another slot of ours), held like our own;
        None when a live mount holds it (its records are that mount's business)."""
        lock_fd = _lock(directory)
        if lock_fd is None:
            return None
        area = cls.__new__(cls)
        area.dir = directory
        area._lock_fd = lock_fd
        return area

    def close(self) -> None:
        os.close(self._lock_fd)

    def new(self) -> StagingFile:
        return StagingFile(self, uuid.uuid4().hex)

    def used_bytes(self) -> int:
        total = 0
        with os.scandir(self.dir) as it:
            for e in it:
                if e.name.endswith(".data"):
                    with contextlib.suppress(FileNotFoundError):
                        total += e.stat().st_blocks * 512
        return total

    def leftovers(self) -> Iterator[tuple[StagingFile, Record]]:
        """Dirty staging files left in this slot by an earlier run (crash, kill, reboot). Only
        before the slot's first new file: a data file without a record yet is deleted here."""
        for entry in sorted(os.listdir(self.dir)):
            if not entry.endswith(".json"):
                continue
            name = entry[: -len(".json")]
            try:
                rec = Record.load(os.path.join(self.dir, entry))
            except (OSError, ValueError, TypeError) as exc:
                log.warning("unreadable staging record %s (%s); leaving it in place", entry, exc)
                continue
            if rec is None or not os.path.exists(os.path.join(self.dir, name + ".data")):
                os.unlink(os.path.join(self.dir, entry))
                continue
            yield StagingFile(self, name), rec
        # Data files with no record were never dirty (or the record write was cut): not ours to
        # upload, and nothing promised them to anyone.
        for entry in os.listdir(self.dir):
            if entry.endswith(".tmp") or entry.endswith(".data") and not os.path.exists(
                    os.path.join(self.dir, entry[:-5] + ".json")):  # a record being written when the process died
                os.unlink(os.path.join(self.dir, entry))


def slot_dirs(root: str) -> list[str]:
    """The slot directories under a staging root (``<root>/slot-N``), whoever holds them."""
    try:
        names = os.listdir(root)
    except OSError:
        return []
    return [os.path.join(root, n) for n in sorted(names) if n.startswith("slot-")]


def _lock(directory: str) -> int | None:
    """An exclusive ``flock`` on the slot's lock file, held as long as the fd is open; None
    when another process holds it."""
    lock_fd = os.open(os.path.join(directory, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock_fd)
        return None
    return lock_fd
