"""Background uploads: the ``async_upload`` queue, retries of failed uploads, crash recovery.

Nothing written is dropped. A file whose upload failed (server down, keys expired) stays dirty in
its staging file and is queued here; the queue retries it with exponential backoff until it is
stored or the file is deleted. With ``-o async_upload`` a closed file is queued at once instead of
being uploaded before close() returns. Either way the staging file and its record are on disk, so
after a crash (``kill -9``, reboot) the next mount of the same bucket finds them
(``recover``) and uploads them — unless the object changed in the bucket meanwhile, in which case
the local version is stored beside it under ``lost+found/`` and a warning is logged, so neither
version is lost.

Concurrency: one trio task (``run``) owns the queue and starts at most ``parallel`` uploads at
once; each upload goes through ``Filesystem._upload`` and so takes the file's lock like any
other writer.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING

import trio

from ..errors import NotFound, S3MountError
from .staging import Record, StagingFile

if TYPE_CHECKING:
    from .core import Filesystem, OpenFile

log = logging.getLogger(__name__)

BACKOFF_INITIAL = 1.0
BACKOFF_MAX = 60.0
LOST_AND_FOUND = "lost+found"
ORPHAN_RETRY = 5.0


class Writeback:
    """Uploads that happen after (or instead of before) close() returns."""

    def __init__(self, fs: Filesystem, *, parallel: int = 8) -> None:
        self.fs = fs
        self.parallel = parallel
        self._due: dict[int, float] = {}  # inode -> trio time when to (re)try
        self._failures: dict[int, int] = {}
        self._running: set[int] = set()
        self._wake = trio.Event()
        self.idle = trio.Event()
        self.idle.set()
        self._orphans: list[tuple[str, str]] = []  # (key, upload id) whose abort must be retried

    # -- queue ---------------------------------------------------------------------------------

    def submit(self, of: OpenFile, *, failed: bool = False) -> None:
        """Queue ``of`` for upload: now, or after a backoff when its last attempt ``failed``."""
        ino = of.node.ino
        delay = 0.0
        if failed:
            n = self._failures.get(ino, 0) + 1
            self._failures[ino] = n
            delay = min(BACKOFF_MAX, BACKOFF_INITIAL * 2 ** (n - 1))
        self._due[ino] = trio.current_time() + delay
        self.idle = trio.Event() if self.idle.is_set() else self.idle
        self._wake.set()

    def abandon(self, key: str, upload_id: str) -> None:
        """A multipart upload that could not be aborted (server down): abort it later."""
        self._orphans.append((key, upload_id))

    async def _abort_orphans(self) -> None:
        """Retry the aborts of abandoned multipart uploads while any are left."""
        while True:
            await trio.sleep(ORPHAN_RETRY)
            left = []
            for key, upload_id in self._orphans:
                if not await self.fs._run(self.fs.store.abort_multipart, key, upload_id):
                    left.append((key, upload_id))
            self._orphans = left

    def queued(self, of: OpenFile) -> bool:
        return of.node.ino in self._due or of.node.ino in self._running

    def pending(self) -> int:
        return len(self._due) + len(self._running)

    def failing(self) -> int:
        """Files whose last upload attempt failed and that are waiting for a retry."""
        return sum(1 for ino in self._due if self._failures.get(ino))

    async def run(self) -> None:
        """The queue's task; runs for the life of the mount."""
        sem = trio.Semaphore(self.parallel)
        async with trio.open_nursery() as n:
            n.start_soon(self._abort_orphans)
            while True:
                now = trio.current_time()
                due = [ino for ino, t in self._due.items() if t <= now]
                for ino in due:
                    del self._due[ino]
                    self._running.add(ino)
                    await sem.acquire()
                    n.start_soon(self._one, ino, sem)
                self._check_idle()
                next_due = min(self._due.values(), default=math.inf)
                self._wake = trio.Event()
                with trio.move_on_at(next_due):
                    await self._wake.wait()

    async def _one(self, ino: int, sem: trio.Semaphore) -> None:
        try:
            of = self.fs.open_files.get(ino)
            if of is None or not of.dirty or of.node.path is None:
                return
            try:
                await self.fs._upload(of)
            except S3MountError as exc:
                log.warning("background upload of %r failed (%s); retrying later",
                            of.node.path, exc)
                await self.fs._persist(of)
                self.submit(of, failed=True)
                return
            self._failures.pop(ino, None)
            await self.fs._settle(of)
        finally:
            self._running.discard(ino)
            sem.release()
            self._check_idle()
            self.fs.space_freed()

    def _check_idle(self) -> None:
        if not self._due and not self._running:
            self.idle.set()

    async def drain(self, timeout: float) -> bool:
        """Retry everything now and wait up to ``timeout`` seconds; True when nothing is left."""
        for ino in list(self._due):
            self._due[ino] = trio.current_time()
        self._wake.set()
        with trio.move_on_after(timeout):
            while self.pending():
                await self.idle.wait()
                if self.pending():  # a retry was re-queued with a backoff: wait for it
                    for ino in list(self._due):
                        self._due[ino] = min(self._due[ino], trio.current_time() + 1.0)
                    self._wake.set()
                    await trio.sleep(0.5)
        return not self.pending()

    # -- crash recovery ------------------------------------------------------------------------

    async def recover(self) -> int:
        """Upload what an earlier run of this mount left dirty; returns how many were found."""
        found = 0
        for staging, rec in list(self.fs.staging.leftovers()):
            if not rec.dirty:
                staging.discard()
                continue
            found += 1
            try:
                await self._recover_one(staging, rec)
            except S3MountError as exc:
                log.error("could not upload %r left by an earlier run (%s); it stays in %s and is "
                          "tried again at the next mount", rec.key, exc, staging.path)
                staging.close()
        return found

    async def _recover_one(self, staging: StagingFile, rec: Record) -> None:
        fs = self.fs
        try:
            current = await fs._run(fs.store.head, rec.key)
            etag: str | None = current.etag
        except NotFound:
            etag = None
        key = rec.key
        if etag != rec.base_etag:
            stamp = time.strftime("%Y%m%dT%H%M%S")
            key = f"{fs.keys.prefix}{LOST_AND_FOUND}/{rec.key[len(fs.keys.prefix):]}.{stamp}"
            log.warning("%r changed in the bucket since this mount wrote it before a crash; the "
                        "local version is kept as %r", rec.key, key)
        await fs._upload_staged(key, staging, rec.metadata)
        log.info("uploaded %r left by an earlier run", key)
        staging.discard()
        fs.invalidate_key(key)
