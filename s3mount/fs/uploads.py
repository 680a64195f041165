"""The uploader: storing a file's staged data as its object, and what is owed until then.

A file is stored on flush, fsync and close (close-to-open), or in the background by the writeback
(``async_upload``, retries). ``upload`` completes the file's streamed upload if it was written
front to back (``streaming``), else sends the staging file whole; either way the listing, the
metadata cache and the file's record learn the new version. A file that will wait in the cache is
made durable there first (``persist``), and forgotten once stored (``settle``).

Locking: ``upload`` takes the file's ``OpenFile.lock``, like any other writer.
"""

from __future__ import annotations

import errno
import functools
import logging
import time
from typing import Any

import trio

from ..errors import FsError, S3MountError
from .attrs import metadata_for
from .budget import Budget
from .inodes import InodeTable
from .listing import DirEntry, Listings
from .metacache import MetaCache
from .namespace import Namespace
from .openfile import OpenFile
from .paths import KeyMapper, split
from .progress import Progress
from .registry import OpenFiles
from .runner import StoreRunner
from .settings import FsConfig
from .staging import StagingFile

log = logging.getLogger(__name__)


class Uploader:
    """Stores the open files' staged data (see module docstring)."""

    def __init__(self, runner: StoreRunner, keys: KeyMapper, cfg: FsConfig, meta: MetaCache,
                 files: OpenFiles, names: Namespace, listings: Listings, inodes: InodeTable,
                 budget: Budget) -> None:
        self._runner = runner
        self.keys = keys
        self.cfg = cfg
        self.meta = meta
        self._files = files
        self._names = names
        self._listings = listings
        self._inodes = inodes
        self._budget = budget
        """Bytes of upload data in memory (shared with the streamed parts)."""

    async def upload(self, of: OpenFile, *, closed_only: bool = False) -> None:
        """Store the staging file as the object (caller must not hold of.lock).

        ``closed_only``: only if it still holds what a close() or fsync() handed over. Callers
        that decided to upload a closed file before waiting for its lock (the retry queue,
        a writer storing the closed version first) say so: a writer may have got the lock
        first and changed the file, and a partial write must never replace the object."""
        async with of.lock:
            node = of.node
            if not of.dirty or node.path is None or closed_only and not of.confirmed:
                return
            if of.staging is None:
                self._files.fresh_staging(of)
            assert of.staging is not None
            path = node.path  # (a listing taken during the upload may detach the inode)
            key = self.keys.file_key(path)
            self._files.save_record(of)
            with self._files.storing(of):
                etag, md = await self._send(of, key)
            of.dirty = False
            of.base_etag = etag
            of.base_size = node.attrs.size
            node.etag = etag
            node.valid_until = self._names.fresh_until()
            node.kernel_cache_etag = etag
            node.s3_mtime = None  # a PUT does not say; the next listing does
            self.meta.put(key, etag, None, md)
            self._files.drop_record(of)
            parent, name = split(path)
            self._listings.add(parent, DirEntry(name, False, node.attrs.size, etag, time.time()))

    async def _send(self, of: OpenFile, key: str) -> tuple[str, dict[str, str]]:
        """Complete the file's stream, or send its staging file whole (caller holds of.lock);
        its ETag and the metadata stored."""
        assert of.staging is not None
        etag, md = await self._finish_stream(of, key)
        if etag is not None:
            return etag, md
        if of.punched:
            await self._files.spoil(of, "its streamed upload failed and the parts it had "
                                    "stored are no longer in the cache")
            raise FsError(f"the upload of {key!r} failed and the parts it had stored "
                          "are no longer in the cache: the file is not stored", errno=errno.EIO)
        md = {**of.node.extra, **metadata_for(of.node.attrs)}
        of.progress = Progress()
        return await self.upload_staged(key, of.staging, md, of.progress), md

    async def upload_staged(self, key: str, staging: StagingFile,
                            md: dict[str, str], progress: Progress | None = None) -> str:
        """Upload a staging file whole. One of up to ``part_size`` goes in one PUT from memory,
        so it draws on the upload budget like a streamed part (larger ones are sent from disk
        part by part by the store)."""
        size = staging.size()
        held = size if size <= self.cfg.part_size else 0
        await self._budget.take(held)
        try:
            return await self._runner.run(self._runner.store.upload, key, staging.path, metadata=md,
                                          progress=progress.add if progress else None)
        finally:
            self._budget.give(held)

    async def _finish_stream(self, of: OpenFile, key: str
                             ) -> tuple[str | None, dict[str, str]]:
        """Complete a streamed upload if it still describes the file; (None, {}) otherwise."""
        # A writer that goes on appending after this upload (a flush from dup2+close, an fsync)
        # keeps streaming: a later stream starts again from offset 0, as the object must be whole.
        stream, of.stream = of.stream, None
        done_sequentially = of.seq_end == of.node.attrs.size
        if stream is None:
            return None, {}
        if not (done_sequentially and stream.key == key and stream.started):
            await stream.cancel()
            return None, {}
        try:
            etag = await stream.finish(of.node.attrs.size)
        except S3MountError as exc:
            log.warning("streamed upload of %r failed (%s)%s", key, exc,
                        "" if of.punched else "; uploading it whole")
            return None, {}
        md = self.stream_metadata(of)
        if md != stream.metadata:  # chmod, chown or utimens after the upload started
            etag = await self._runner.run(self._runner.store.copy, key, key, metadata=md,
                                          size=of.node.attrs.size)
        return etag, md

    async def persist(self, of: OpenFile) -> None:
        """Make a file that will wait in the cache (closed with async_upload, or whose upload
        failed) survive a reboot: fsync data and record, in a worker thread so other calls go
        on. Files uploaded before close() returns need none of it."""
        await trio.to_thread.run_sync(
            functools.partial(self._files.save_record, of, durable=True))

    async def settle(self, of: OpenFile) -> None:
        """Forget a file nobody has open once its data is safely stored (or no longer wanted);
        a dirty one stays, with its staging file, until the writeback stores it."""
        if of.node.path is None:
            of.dirty = False  # unlinked: whatever was written has nowhere to go
        if not self._files.discard(of):
            return
        path = of.node.path
        if of.node.etag is None and path is not None:
            # A new file none of whose content was stored (it could not be staged, or the
            # server refused it and it went to lost+found/): nothing of it has this name.
            self._listings.remove(*split(path))
            self._names.negative[path] = True
            self._inodes.detach(of.node)
        elif path is None:
            self._inodes.detach(of.node)
        else:
            self._inodes.release(of.node)  # the kernel may have forgotten it meanwhile

    async def metadata_changed(self, of: OpenFile) -> None:
        """Attributes or xattrs of a file whose upload is owed changed: its record carries the
        metadata that upload stores, so a crash must not recover the old ones. A closed file
        waiting in the queue had its record made durable; so is the new one."""
        if not of.dirty:
            return
        if of.confirmed:
            await self.persist(of)
        else:
            self._files.save_record(of)

    def stream_metadata(self, of: OpenFile) -> dict[str, str]:
        """What a streamed object stores: as ``metadata_for`` but without an mtime that only
        moved because of the writes (see streaming.py)."""
        md = {**of.node.extra, **metadata_for(of.node.attrs)}
        if not of.explicit_mtime:
            del md["mtime"], md["ctime"]
        return md

    def pending_uploads(self) -> int:
        return sum(1 for of in self._files.open_files.values()
                   if of.dirty and of.node.path is not None)

    def upload_progress(self) -> list[dict[str, Any]]:
        """Per pending file: path, bytes stored in its current upload attempt, size, bytes/s,
        and whether it is still open (being written: its upload is not due yet)."""
        return [{"path": of.node.path, "stored": min(of.progress.stored, of.node.attrs.size)
                 if of.progress else 0, "total": of.node.attrs.size,
                 "rate": round(of.progress.rate()) if of.progress else None,
                 "open": of.handles > 0}
                for of in self._files.open_files.values() if of.dirty and of.node.path is not None]
