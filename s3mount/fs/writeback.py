"""Background uploads: the ``async_upload`` queue, retries of failed uploads, the uploads owed at
unmount (``flush_all``), crash recovery.

Nothing written is dropped. A file whose upload failed (server down, keys expired) stays dirty in
its staging file and is queued here; the queue retries it with exponential backoff until it is
stored or the file is deleted. With ``-o async_upload`` a closed file is queued at once instead of
being uploaded before close() returns. Either way the staging file and its record are on disk, so
after a crash (``kill -9``, reboot) the next mount of the same bucket finds them
(``recovery.find_leftovers``) and uploads them (``recover``) — unless the object changed in the
bucket meanwhile, in which case the local version is stored beside it under ``lost+found/`` and a
warning is logged, so neither version is lost. Data a writer never closed goes to ``lost+found/``
too: a partial file never replaces the last closed version. A file the server refuses for good
(``Refused``: a key or object it cannot hold) is not retried, whether at close, in the queue or
at unmount: ``rescue`` stores its closed data under ``lost+found/`` with the characters servers
choke on percent-encoded, says so once in the log and in ``refused`` (``s3mount status``), and the
name that could not be stored goes away.
Data the bucket already holds (the crash came between a completed upload and the deletion of its
record) is recognised by its ETag and dropped, and multipart uploads the crash cut off are
aborted.

Concurrency: one trio task (``run``) owns the queue and starts at most ``parallel`` uploads at
once; each upload goes through the uploader (``uploads.Uploader.upload``) and so takes the
file's lock like any other writer.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import time
from typing import Any, Protocol
from urllib.parse import quote

import trio

from ..errors import NotFound, Refused, S3MountError
from ..store.base import ObjectInfo, multipart_etag
from .attrs import metadata_for
from .concurrency import gather
from .listing import Listings
from .openfile import OpenFile
from .paths import KeyMapper
from .registry import OpenFiles
from .runner import StoreRunner
from .staging import Record, StagingFile

log = logging.getLogger(__name__)


class UploadHost(Protocol):
    """What the queue needs of the uploader (``uploads.Uploader`` is one): to store a file,
    make it durable in the cache, forget it once stored, and send a staging file whole (each
    taking the file's lock like any other writer)."""

    async def upload(self, of: OpenFile, *, closed_only: bool = False) -> None: ...

    async def persist(self, of: OpenFile) -> None: ...

    async def settle(self, of: OpenFile) -> None: ...

    async def upload_staged(self, key: str, staging: StagingFile,
                            md: dict[str, str]) -> str: ...


BACKOFF_INITIAL = 1.0
BACKOFF_MAX = 60.0
LOST_AND_FOUND = "lost+found"
ORPHAN_RETRY = 5.0
CHUNK = 1024 * 1024
RESCUED_NAME_MAX = 200
"""Characters of a refused file's path kept in its lost+found/ name (its end: the file name)."""


class Writeback:
    """Uploads that happen after (or instead of before) close() returns."""

    def __init__(self, uploader: UploadHost, files: OpenFiles, listings: Listings,
                 runner: StoreRunner, keys: KeyMapper, part_size: int, *,
                 parallel: int = 8) -> None:
        self._uploader = uploader
        self._files = files
        self._listings = listings
        self._runner = runner
        self.keys = keys
        self.part_size = part_size
        self.parallel = parallel
        self._due: dict[int, float] = {}  # inode -> trio time when to (re)try
        self._failures: dict[int, int] = {}
        self._running: set[int] = set()
        self._wake = trio.Event()
        self.idle = trio.Event()
        self.idle.set()
        self._orphans: list[tuple[str, str]] = []  # (key, upload id) whose abort must be retried
        self.refused: list[dict[str, Any]] = []
        """Files the server refused for good in this run: path, reason, and where the data is
        (``kept_as``: a path in the mount, or in the cache directory). For ``s3mount status``."""

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
                if not await self._runner.run(self._runner.store.abort_multipart, key,
                                              upload_id):
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
            of = self._files.open_files.get(ino)
            if of is None or not of.dirty or of.node.path is None or not of.confirmed:
                return  # stored meanwhile, gone, or being written again: its close() queues it
            try:
                await self._uploader.upload(of, closed_only=True)
            except Refused as exc:
                await self.rescue(of, exc)
                if of.dirty:
                    return
            except S3MountError as exc:
                log.warning("background upload of %r failed (%s); retrying later",
                            of.node.path, exc)
                await self._uploader.persist(of)
                self.submit(of, failed=True)
                return
            self._failures.pop(ino, None)
            await self._uploader.settle(of)
        finally:
            self._running.discard(ino)
            sem.release()
            self._check_idle()
            self._files.space_freed()

    async def rescue(self, of: OpenFile, refusal: Refused) -> None:
        """The server refused the closed version of ``of`` for good: store it under
        ``lost+found/`` instead, and stop trying its own name. If the server takes no copy
        either, the data stays in the cache with its record (the next mount tries again); if
        it cannot be reached now, the file is queued to be tried again like any failure."""
        async with of.lock:
            path = of.node.path
            if not (of.dirty and of.confirmed) or of.staging is None or path is None \
                    or of.punched:
                return  # stored, gone, or changed meanwhile: its next close() tries again
            key = self._rescue_key(self.keys.file_key(path))
            try:
                await self._uploader.upload_staged(
                    key, of.staging, {**of.node.extra, **metadata_for(of.node.attrs)})
            except Refused as exc:
                log.error("the server refuses to store %r (%s), and a copy as %r too (%s): it "
                          "is not retried; its data stays in %s, and the next mount tries again",
                          path, refusal, key, exc, of.staging.path)
                await self._uploader.persist(of)
                self.refused.append({"path": path, "reason": str(refusal),
                                     "kept_as": of.staging.path})
                return
            except S3MountError as exc:
                log.warning("the server refuses to store %r (%s); a copy under lost+found/ "
                            "failed too (%s): retrying later", path, refusal, exc)
                await self._uploader.persist(of)
                self.submit(of, failed=True)
                return
            kept_as = key[len(self.keys.prefix):]
            log.error("the server refuses to store %r (%s): it is not retried; its data is "
                      "stored as %r instead", path, refusal, kept_as)
            self.refused.append({"path": path, "reason": str(refusal), "kept_as": kept_as})
            self._listings.invalidate_key(key)
            of.dirty = False
            self._files.drop_record(of)
            of.node.valid_until = -math.inf  # the name shows the bucket's version, if any

    async def flush_all(self) -> int:
        """Store every dirty file (unmount, SIGTERM); returns how many could not be stored.

        A closed file the server refuses for good goes to lost+found/ (``rescue``), as in the
        queue. What cannot be stored stays in the cache directory with its record, and the next
        mount of the same bucket uploads it. Uploads run here directly (not through the queue's
        task), so this works while the mount is being torn down.
        """
        async def one(of: OpenFile) -> None:
            try:
                await self._uploader.upload(of)
            except S3MountError as exc:
                if not (isinstance(exc, Refused) and of.confirmed):
                    log.error("could not upload %r before unmount (%s); it stays in %s for the "
                              "next mount", of.node.path, exc,
                              of.staging.path if of.staging else "?")
                    return
                await self.rescue(of, exc)  # it says where the data went
            await self._uploader.settle(of)

        dirty = [of for of in self._files.open_files.values() if of.dirty]
        await gather([functools.partial(one, of) for of in dirty], limit=8)
        return sum(1 for of in self._files.open_files.values() if of.dirty)

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

    async def recover(self, files: list[tuple[StagingFile, Record]]) -> int:
        """Upload what earlier runs left staged (``recovery.find_leftovers`` found it); returns
        how many files that was."""
        for staging, rec in files:
            try:
                await self._recover_one(staging, rec)
            except S3MountError as exc:
                log.error("could not upload %r left by an earlier run (%s); it stays in %s and is "
                          "tried again at the next mount", rec.key, exc, staging.path)
                staging.close()
        return len(files)

    async def _recover_one(self, staging: StagingFile, rec: Record) -> None:
        run, store = self._runner.run, self._runner.store
        for upload_id in rec.uploads:  # cut off by the crash: their parts would stay, billed
            if not await run(store.abort_multipart, rec.key, upload_id):
                self.abandon(rec.key, upload_id)
        try:
            current: ObjectInfo | None = await run(store.head, rec.key)
        except NotFound:
            current = None
        if current is not None and current.size == staging.size() and current.etag in \
                await trio.to_thread.run_sync(_our_etags, staging, rec.part_size or
                                              self.part_size):
            # The upload was complete when the crash came, before the record was dropped.
            log.info("%r left by an earlier run is already stored", rec.key)
            staging.discard()
            return
        key = rec.key
        if not rec.closed and staging.size() == 0:
            log.info("%r was being created, never closed or written, when an earlier run "
                     "stopped: nothing to keep", rec.key)
            staging.discard()
            return
        if not rec.closed:
            key = self._lost_and_found(rec.key)
            log.warning("%r was being written, never closed, when an earlier run stopped: the "
                        "bucket keeps its last closed version and the partial data is kept as %r",
                        rec.key, key)
        elif (current.etag if current else None) != rec.base_etag:
            key = self._lost_and_found(rec.key)
            log.warning("%r changed in the bucket since this mount wrote it before a crash; the "
                        "local version is kept as %r", rec.key, key)
        try:
            await self._uploader.upload_staged(key, staging, rec.metadata)
        except Refused as exc:
            key = self._rescue_key(rec.key)
            log.error("the server refuses to store %r left by an earlier run (%s); it is "
                      "stored as %r instead", rec.key, exc, key)
            await self._uploader.upload_staged(key, staging, rec.metadata)
        log.info("uploaded %r left by an earlier run", key)
        staging.discard()
        self._listings.invalidate_key(key)

    def _lost_and_found(self, key: str) -> str:
        prefix = self.keys.prefix
        rest = key[len(prefix):] if key.startswith(prefix) else key
        return f"{prefix}{LOST_AND_FOUND}/{rest}.{time.strftime('%Y%m%dT%H%M%S')}"

    def _rescue_key(self, key: str) -> str:
        """Where a file whose own key the server refused goes: under lost+found/, with ``%``
        and characters that print as nothing (a newline) percent-encoded, and at most
        ``RESCUED_NAME_MAX`` characters of its path, so a server that refused the key takes
        this one."""
        prefix = self.keys.prefix
        rest = key[len(prefix):] if key.startswith(prefix) else key
        safe = "".join(quote(c, safe="") if c == "%" or not c.isprintable() else c
                       for c in rest)
        return self._lost_and_found(prefix + safe[-RESCUED_NAME_MAX:])


def _our_etags(staging: StagingFile, part_size: int) -> set[str]:
    """The ETags our own upload of the staging file gives: the body's MD5 (one PUT) and, from
    parts of ``part_size``, the MD5 of the parts' MD5s and their count (multipart)."""
    whole = hashlib.md5(usedforsecurity=False)
    parts = []
    offset = 0
    while True:
        part = hashlib.md5(usedforsecurity=False)
        n = 0
        while n < part_size:
            chunk = staging.pread(min(CHUNK, part_size - n), offset)
            if not chunk:
                break
            part.update(chunk)
            whole.update(chunk)
            n += len(chunk)
            offset += len(chunk)
        if n == 0:
            break
        parts.append(part.hexdigest())
    return {whole.hexdigest(), multipart_etag(parts)}
