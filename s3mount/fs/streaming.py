"""Streaming uploads: a sequential writer's parts go out while it is still writing.

A file created (or truncated to zero) and then written strictly front to back is uploaded as a
multipart upload whose parts leave as soon as each ``part_size`` slice is complete in the staging
file, a few at a time, so ``close()`` only waits for the tail instead of for the whole file. The
staging file still holds everything (it stays the truth until the object is confirmed), so memory
holds only the parts in flight: at most ``parallel`` per file, and across all files no more than
the mount's upload ``Budget`` (a writer whose next part finds it spent waits for parts in flight
to be stored). A write anywhere but at the end, a truncation or a rename cancels the stream: the
upload is abandoned and ``close()`` uploads the staging file the ordinary way.

The staging file holds everything only while the cache has room: when it has not (``cache_size``
reached, or the disk full), the core takes the parts already stored (``take_stored``) and punches
them out of the staging file, and a writer that still finds no room waits for the next part in
flight to be stored (``wait_for_part``). That is what lets a file larger than the cache disk be
written front to back; such a file can no longer fall back to an ordinary upload.

Metadata is fixed when a multipart upload starts, so the stream records mode, owner and any
explicitly set mtime then; if they differ at completion, one server-side copy rewrites them. An
mtime that only moved because of the writes themselves is left to the object's own time.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import trio

from ..errors import S3MountError
from ..store.base import ObjectStore
from .budget import Budget
from .progress import Progress
from .staging import StagingFile

log = logging.getLogger(__name__)


class StreamingUpload:
    """The multipart upload of one sequentially written file."""

    def __init__(self, store: ObjectStore, run: Callable[..., Awaitable[Any]],
                 nursery: trio.Nursery, staging: StagingFile, budget: Budget, key: str,
                 metadata: Mapping[str, str], *, part_size: int, parallel: int,
                 on_orphan: Callable[[str, str], None], progress: Progress | None = None
                 ) -> None:
        self._store = store
        self._run = run
        self._nursery = nursery
        self._staging = staging
        self._budget = budget
        self.key = key
        self.metadata = dict(metadata)
        self._part_size = part_size
        self._slots = trio.Semaphore(parallel)
        self._upload_id: str | None = None
        self._parts: dict[int, str] = {}
        self._next_offset = 0  # bytes handed to part uploads so far
        self._inflight = 0
        self._idle = trio.Event()
        self._idle.set()
        self._error: BaseException | None = None
        self._stored: list[tuple[int, int]] = []  # (offset, length) of parts stored, not taken
        self._part_done = trio.Event()
        self._on_orphan = on_orphan
        self._progress = progress
        self.cancelled = False

    async def advance(self, written_to: int) -> None:
        """The file is complete up to ``written_to``: send every full part below it."""
        while not self.cancelled and written_to - self._next_offset >= self._part_size:
            if self._upload_id is None:
                self._upload_id = await self._run(self._store.create_multipart, self.key,
                                                  metadata=self.metadata)
                self._staging.upload_started(self._upload_id)  # for recovery to abort
            await self._slots.acquire()  # back-pressure: at most `parallel` parts in memory
            try:
                await self._budget.take(self._part_size)  # and the mount's bound across files
            except BaseException:
                self._slots.release()
                raise
            number = self._next_offset // self._part_size + 1
            offset = self._next_offset
            self._next_offset += self._part_size
            self._inflight += 1
            self._idle = trio.Event()
            self._nursery.start_soon(self._send, number, offset, self._part_size)

    async def _send(self, number: int, offset: int, length: int) -> None:
        upload_id = self._upload_id
        assert upload_id is not None
        try:
            if not self.cancelled:
                etag = await self._run(self._upload_part, upload_id, number, offset, length)
                self._parts[number] = etag
                self._stored.append((offset, length))
        except Exception as exc:  # noqa: BLE001 - reported by finish()
            self._error = exc
        finally:
            self._budget.give(length)
            self._slots.release()
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()
            self._part_done.set()
            self._part_done = trio.Event()

    def take_stored(self) -> list[tuple[int, int]]:
        """The ranges of parts stored in the bucket since the last call: the staging file need
        not keep them (they are part of the upload now, whatever happens to the file)."""
        stored, self._stored = self._stored, []
        return stored

    async def wait_for_part(self) -> bool:
        """Wait until a part in flight is stored (or failed); False at once if none is."""
        if self._inflight == 0:
            return False
        await self._part_done.wait()
        return True

    def _upload_part(self, upload_id: str, number: int, offset: int, length: int) -> str:
        data = self._staging.pread(length, offset)
        self._staging.drop_cached(offset, length)  # starts writeback while the part is sent
        etag = self._store.upload_part(self.key, upload_id, number, data)
        if self._progress is not None:
            self._progress.add(length)
        self._staging.drop_cached(offset, length)  # written back by now: free the pages
        return etag

    @property
    def started(self) -> bool:
        return self._upload_id is not None

    async def finish(self, size: int) -> str:
        """Send the tail, wait for every part, complete; returns the ETag. Raises on failure
        (the caller then uploads the staging file the ordinary way)."""
        assert self._upload_id is not None and not self.cancelled
        await self._idle.wait()
        if self._error is None and size > self._next_offset:
            number = self._next_offset // self._part_size + 1
            tail = size - self._next_offset
            await self._budget.take(tail)
            try:
                self._parts[number] = await self._run(
                    self._upload_part, self._upload_id, number, self._next_offset, tail)
                self._next_offset = size
            except S3MountError as exc:
                self._error = exc
            finally:
                self._budget.give(tail)
        if self._error is not None:
            error, self._error = self._error, None
            await self.cancel()
            raise error
        etag: str = await self._run(self._store.complete_multipart, self.key, self._upload_id,
                                    sorted(self._parts.items()))
        self._staging.upload_ended(self._upload_id)
        return etag

    async def cancel(self) -> None:
        """Abandon the upload (parts in flight finish and are dropped)."""
        if self.cancelled:
            return
        self.cancelled = True
        if self._upload_id is not None:
            await self._idle.wait()
            if await self._run(self._store.abort_multipart, self.key, self._upload_id):
                self._staging.upload_ended(self._upload_id)
            else:
                # Server unreachable: its parts would stay stored (and billed) for good. (The
                # record keeps naming it, so a crash before the retry leaves it to recovery.)
                self._on_orphan(self.key, self._upload_id)
