"""The file-data half of the core: open files, staging, reads, writes and uploads.

Every open file has one ``OpenFile`` (shared by its handles) whose staging file on local disk holds
the data being written; the object in the bucket is replaced from it on flush, fsync and close
(close-to-open), or in the background with ``async_upload``. A file written front to back streams
its parts while being written (``streaming``). Reads of a file nobody is writing go to S3 through
a per-handle ``Reader`` with read-ahead.

Locking: ``OpenFile.lock`` serialises loading, writes, truncation and uploads of one file.

This is a mixin of ``core.Filesystem`` (it uses the store, inode table and caches set up there).
"""

from __future__ import annotations

import errno
import functools
import logging
import math
import os
import time
from typing import Any, NoReturn

import trio

from ..errors import FsError, PreconditionFailed, S3MountError
from .attrs import metadata_for
from .concurrency import gather
from .inodes import Inode
from .namespace import DirEntry
from .openfile import Handle, OpenFile
from .paths import split
from .progress import Progress
from .reader import Reader
from .staging import Record, StagingFile
from .streaming import StreamingUpload

log = logging.getLogger(__name__)

STREAM_PARALLEL = 6
MAX_OBJECT_SIZE = 5 * 1024**4
"""S3's largest object: a file cannot grow beyond it (EFBIG)."""
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class FileData:
    async def _truncate(self, node: Inode, size: int) -> None:
        if size > MAX_OBJECT_SIZE:
            raise FsError(f"{size} bytes is more than an S3 object can hold", errno=errno.EFBIG)
        own = node.ino not in self.open_files
        of = self._open_file(node)  # counts as a handle until the finally gives it back
        try:
            await self._store_confirmed(of)
            async with of.lock:
                if of.punched and size == node.attrs.size:
                    return  # nothing changes (and the stream must go on)
                if size != 0 and (of.spoiled or of.punched):
                    raise self._no_space(of)
                await self._stop_stream(of)
                if size == 0:
                    self._fresh_staging(of)
                else:
                    await self._load(of)
                assert of.staging is not None
                try:
                    of.staging.truncate(size)
                except OSError as exc:
                    await self._staging_failed(of, exc)
                node.attrs.size = size
                node.attrs.mtime_ns = node.attrs.ctime_ns = time.time_ns()
                self._mark_dirty(of)
            if own:
                of.confirmed = True  # truncate(2) of a file nobody has open is complete
                await self._upload(of)
        finally:
            await self._close_file(of)

    def _open_file(self, node: Inode) -> OpenFile:
        of = self.open_files.get(node.ino)
        if of is None:
            of = OpenFile(node, base_etag=node.etag, base_size=node.attrs.size)
            self.open_files[node.ino] = of
        of.handles += 1
        node.open_count += 1
        return of

    async def _close_file(self, of: OpenFile) -> None:
        of.handles -= 1
        of.node.open_count -= 1
        await self._settle(of)

    async def _settle(self, of: OpenFile) -> None:
        """Forget a file nobody has open once its data is safely stored (or no longer wanted);
        a dirty one stays, with its staging file, until the writeback stores it."""
        if of.node.path is None:
            of.dirty = False  # unlinked: whatever was written has nowhere to go
        if of.handles > 0 or of.dirty or self.open_files.get(of.node.ino) is not of:
            return
        del self.open_files[of.node.ino]
        if of.staging is not None:
            of.staging.discard()
            of.staging = None
            self.space_freed()
        path = of.node.path
        if of.spoiled and of.node.etag is None and path is not None:
            # A new file none of whose content could be staged: nothing of it exists anywhere.
            self._listing_remove(*split(path))
            self.negative[path] = True
            self.inodes.detach(of.node)
        elif path is None:
            self.inodes.detach(of.node)

    def _fresh_staging(self, of: OpenFile) -> None:
        if of.staging is None:
            of.staging = self.staging.new()
        of.staging.truncate(0)
        of.loaded = True
        of.spoiled = None
        of.punched, of.punched_bytes = [], 0

    def _no_space(self, of: OpenFile) -> FsError:
        if of.spoiled:
            why = f"{of.spoiled}: the changes were dropped, the bucket keeps its version"
        else:
            why = "the cache cannot hold the whole file: it can only be written front to back"
        return FsError(f"{of.node.path or 'removed file'}: {why}", errno=errno.ENOSPC)

    async def _staging_failed(self, of: OpenFile, exc: OSError) -> NoReturn:
        """Turn a staging file's failure (caller holds of.lock) into the errno the user gets:
        EFBIG for a size the disk cannot hold, ENOSPC (dropping the file's changes) for a full
        disk; anything else stays an internal error."""
        if exc.errno == errno.EFBIG:
            raise FsError(f"{of.node.path}: the cache disk cannot hold a file this large",
                          errno=errno.EFBIG) from None
        if exc.errno not in NO_SPACE:
            raise exc
        await self._spoil(of, "the cache disk is full")
        raise self._no_space(of) from None

    async def _spoil(self, of: OpenFile, why: str) -> None:
        """Drop the unstored changes of a file one of whose changes could not be staged (caller
        holds of.lock). Storing what was staged would replace the object with a partial file,
        so the bucket keeps its version; the staging space is given back at once."""
        log.warning("%r: %s; its changes since it was last stored are dropped and the bucket "
                    "keeps its version", of.node.path, why)
        await self._stop_stream(of)
        of.spoiled = why
        of.dirty = False
        of.loaded = False
        of.punched, of.punched_bytes = [], 0
        self._drop_record(of)
        if of.staging is not None:
            of.staging.discard()
            of.staging = None
        of.node.attrs.size = of.base_size
        of.node.valid_until = -math.inf
        self.space_freed()

    async def _load(self, of: OpenFile) -> None:
        """Make the staging file hold the object's current content (caller holds of.lock)."""
        if of.loaded:
            return
        node = of.node
        if of.staging is None:
            of.staging = self.staging.new()
        if node.etag is not None and node.attrs.size > 0 and node.path is not None:
            try:
                with open(of.staging.path, "r+b") as out:
                    await self._run(self.store.download, self.keys.file_key(node.path), out,
                                    etag=node.etag, size=node.attrs.size)
            except OSError as exc:
                await self._staging_failed(of, exc)
        of.loaded = True

    def _mark_dirty(self, of: OpenFile) -> None:
        """A change: the record must exist, and say the data is no longer what was closed."""
        if not of.dirty or of.confirmed:
            of.confirmed = False
            self._save_record(of)
        of.dirty = True

    async def _store_confirmed(self, of: OpenFile) -> None:
        """A file closed (or fsync'd) whose upload is still queued is about to change: store the
        closed version first. Its staging file is rewritten in place, so otherwise a crash before
        the next close() would leave only a mix of both, which must not replace the object."""
        if not (of.dirty and of.confirmed):
            return
        try:
            await self._upload(of)
        except S3MountError as exc:
            log.warning("could not store the closed version of %r before it changes (%s); if "
                        "the mount stops before its next close(), it goes to lost+found/",
                        of.node.path, exc)

    def _save_record(self, of: OpenFile, *, durable: bool = False) -> None:
        """Record what the staging file belongs to, so a crash cannot orphan its data.

        The record is replaced atomically, which a killed process cannot tear; ``durable`` also
        fsyncs data and record, so they survive a power cut (see ``_persist``)."""
        if of.node.path is None or of.staging is None or of.punched:
            return  # a punched file cannot be recovered from the staging file
        try:
            if durable:
                of.staging.sync()
            of.staging.save_record(Record(self.keys.file_key(of.node.path),
                                          {**of.node.extra, **metadata_for(of.node.attrs)},
                                          of.base_etag, closed=of.confirmed,
                                          part_size=self.cfg.part_size), durable=durable)
        except OSError as exc:
            if exc.errno not in NO_SPACE:
                raise
            # The data is staged and will be stored; only a crash before that would lose it.
            log.warning("no space in the cache for the record of %r; its data would not "
                        "survive a crash before it is stored", of.node.path)

    async def _pending_metadata_changed(self, of: OpenFile) -> None:
        """Attributes or xattrs of a file whose upload is owed changed: its record carries the
        metadata that upload stores, so a crash must not recover the old ones. A closed file
        waiting in the queue had its record made durable; so is the new one."""
        if not of.dirty:
            return
        if of.confirmed:
            await self._persist(of)
        else:
            self._save_record(of)

    def _drop_record(self, of: OpenFile) -> None:
        """Nothing of the staging file is owed to the bucket any more (stored, or unwanted)."""
        if of.staging is not None:
            of.staging.drop_record()

    async def _persist(self, of: OpenFile) -> None:
        """Make a file that will wait in the cache (closed with async_upload, or whose upload
        failed) survive a reboot: fsync data and record, in a worker thread so other calls go
        on. Files uploaded before close() returns need none of it."""
        await trio.to_thread.run_sync(
            functools.partial(self._save_record, of, durable=True))

    def _staged_bytes(self) -> int:
        return sum(of.node.attrs.size - of.punched_bytes for of in self.open_files.values()
                   if of.staging is not None and of.dirty)

    def _punch_stored(self) -> bool:
        """Give back the staging space of every streamed part the bucket has stored (of all
        files: any of them may be what fills the cache); True if there was any."""
        freed = False
        for of in self.open_files.values():
            if of.stream is None or of.staging is None:
                continue
            for offset, length in of.stream.take_stored():
                try:
                    of.staging.punch(offset, length)
                except OSError as exc:
                    log.warning("cannot give back staging space of %r (%s)", of.node.path, exc)
                    continue
                if not of.punched:
                    self._drop_record(of)  # holes are nothing a crash recovery could upload
                of.punched.append((offset, length))
                of.punched_bytes += length
                freed = True
        return freed

    async def _wait_for_part(self, of: OpenFile) -> bool:
        """Wait for a streamed part in flight to be stored (this file's, else any file's);
        False at once if none is in flight."""
        streams = [o.stream for o in (of, *self.open_files.values()) if o.stream is not None]
        for stream in streams:
            if await stream.wait_for_part():
                return True
        return False

    async def _make_room(self, of: OpenFile, n: int) -> None:
        """``cache_size`` bounds what is staged: a streaming writer over it gives back the parts
        already stored and waits for those in flight (caller holds of.lock)."""
        while of.stream is not None and self._staged_bytes() + n > self.cfg.cache_limit:
            if not self._punch_stored() and not await self._wait_for_part(of):
                return  # nothing in flight to wait for: the limit is exceeded by this write

    async def _stage(self, of: OpenFile, data: bytes, offset: int) -> int:
        """Write into the staging file (caller holds of.lock). On a full disk, stored parts
        of streamed files are given back and parts in flight waited for before giving up."""
        assert of.staging is not None
        while True:
            try:
                return of.staging.pwrite(data, offset)
            except OSError as exc:
                if exc.errno not in NO_SPACE or not (self._punch_stored() or
                                                     await self._wait_for_part(of)):
                    await self._staging_failed(of, exc)

    def space_freed(self) -> None:
        self._space.set()
        self._space = trio.Event()

    def _stream_metadata(self, of: OpenFile) -> dict[str, str]:
        """What a streamed object stores: as ``metadata_for`` but without an mtime that only
        moved because of the writes (see streaming.py)."""
        md = {**of.node.extra, **metadata_for(of.node.attrs)}
        if not of.explicit_mtime:
            del md["mtime"], md["ctime"]
        return md

    async def _stream(self, of: OpenFile) -> None:
        """Send the complete parts of a sequentially written file (caller holds of.lock)."""
        assert of.seq_end is not None
        if of.seq_end <= self.cfg.part_size or of.node.path is None:
            return
        if of.stream is None:
            assert of.staging is not None and self.nursery is not None
            of.progress = Progress()
            of.stream = StreamingUpload(
                self.store, self._run, self.nursery, of.staging, self.upload_budget,
                self.keys.file_key(of.node.path), self._stream_metadata(of),
                part_size=self.cfg.part_size, parallel=STREAM_PARALLEL,
                on_orphan=self.writeback.abandon, progress=of.progress)
        await of.stream.advance(of.seq_end)

    async def _stop_stream(self, of: OpenFile) -> None:
        """The file is no longer written front to back: upload it the ordinary way at close."""
        of.seq_end = None
        if of.stream is not None:
            stream, of.stream = of.stream, None
            await stream.cancel()

    async def _wait_for_space(self, of: OpenFile) -> None:
        """Back-pressure: while staged data is over the cache limit and background uploads are
        under way to free it, writers wait (instead of failing with ENOSPC)."""
        while (self._staged_bytes() > self.cfg.cache_limit and self.writeback.pending()
               and not (self.writeback.pending() == 1 and of.dirty)):
            await self._space.wait()

    async def open(self, ino: int, flags: int) -> tuple[int, bool]:
        """Open a file; returns (fh, keep_cache)."""
        node = self._node(ino)
        if node.is_dir:
            raise FsError("is a directory", errno=errno.EISDIR)
        writing = flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC
        if writing:
            self._writable()
        keep_cache = node.open_count == 0 and node.etag is not None and \
            node.etag == node.kernel_cache_etag
        of = self._open_file(node)
        try:
            if flags & os.O_TRUNC:
                await self._store_confirmed(of)
                async with of.lock:
                    await self._stop_stream(of)
                    self._fresh_staging(of)
                    if of.handles == 1:
                        of.seq_end = 0
                    if node.attrs.size != 0 or node.etag is None:
                        node.attrs.size = 0
                        node.attrs.mtime_ns = node.attrs.ctime_ns = time.time_ns()
                    self._mark_dirty(of)
                keep_cache = False
        except BaseException:
            await self._close_file(of)
            raise
        h = Handle(self._new_fh(), node, of)
        if not writing and not of.loaded and node.etag is not None and node.path is not None:
            if keep_cache:
                # The kernel holds this version's pages and reads them itself: fetching the file
                # again would cost a GET per open of an unchanged file. A page it lacks is
                # fetched pinned to the version (ESTALE if it was replaced since, never a mix).
                h.reader = self._reader(node)
            else:
                try:
                    h.reader = await self._pinned_reader(node)
                except BaseException:
                    await self._close_file(of)
                    raise
        self.handles[h.fh] = h
        node.kernel_cache_etag = node.etag
        return h.fh, keep_cache

    def _handle(self, fh: int) -> Handle:
        h = self.handles.get(fh)
        if h is None:
            raise FsError("bad file handle", errno=errno.EBADF)
        return h

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        h = self._handle(fh)
        of = h.of
        if of.loaded and of.staging is not None:
            async with of.lock:
                if any(o < offset + size and offset < o + n for o, n in of.punched):
                    raise FsError(f"{h.node.path}: this part was stored in the bucket and no "
                                  "longer kept in the cache; it can be read once the file is "
                                  "closed", errno=errno.EIO)
                return of.staging.pread(size, offset)
        if h.reader is None:
            if h.node.etag is None:
                return b""  # nothing stored and nothing staged: an empty new file
            if h.node.path is None:
                raise FsError("the file was removed or replaced", errno=errno.ESTALE)
            h.reader = self._reader(h.node)
        return await h.reader.read(offset, size)

    async def _pinned_reader(self, node: Inode) -> Reader:
        """A reader of the object's current version. A small one is fetched whole before open
        returns, so a reader racing a rename-over gets the old or the new file, whole: when the
        version we knew was just replaced, we learn the new one and read that instead. (An
        ESTALE left over makes the kernel look the name up again and retry the open.)"""
        for _ in range(3):
            path = node.path
            if path is None or node.etag is None:
                break  # renamed over or removed meanwhile: the kernel looks the name up again
            reader = self._reader(node)
            try:
                await reader.prime()
                return reader
            except PreconditionFailed:
                pass
            info = await self._head_or_none(self.keys.file_key(path))
            if info is None or node.path != path or self.inodes.at(path) is not node:
                break
            self._install_info(path, info)
        raise FsError("the file was replaced while being opened", errno=errno.ESTALE)

    def _reader(self, node: Inode) -> Reader:
        """A reader of the object as it is now: its key and ETag are fixed here, so a handle keeps
        reading the version it opened (or fails with ESTALE once that is gone), never a mix."""
        assert self.nursery is not None and node.path is not None and node.etag is not None
        key, etag = self.keys.file_key(node.path), node.etag

        async def fetch(start: int, length: int) -> bytes:
            if start == 0 and (head := self._take_peeked(key, etag)) is not None \
                    and len(head) == length:
                return head  # fetched whole by the lookup just before
            return await self._run(self.store.get_range, key, start, length, etag=etag)

        return Reader(fetch, node.attrs.size, self.nursery, self.read_budget,
                      part_size=self.cfg.part_size)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        h = self._handle(fh)
        of = h.of
        self._writable()
        if offset + len(data) > MAX_OBJECT_SIZE:
            raise FsError("an S3 object cannot be this large", errno=errno.EFBIG)
        await self._wait_for_space(of)
        await self._store_confirmed(of)
        async with of.lock:
            if of.spoiled or of.punched and not (of.stream is not None and offset == of.seq_end):
                raise self._no_space(of)
            await self._load(of)
            await self._make_room(of, len(data))
            n = await self._stage(of, data, offset)
            node = h.node
            node.attrs.size = max(node.attrs.size, offset + n)
            node.attrs.mtime_ns = node.attrs.ctime_ns = time.time_ns()
            self._mark_dirty(of)
            if of.seq_end is not None:
                if offset == of.seq_end:
                    of.seq_end += n
                    await self._stream(of)
                else:
                    await self._stop_stream(of)
        if h.reader is not None:
            h.reader.close()
            h.reader = None
        return n

    async def flush(self, fh: int) -> None:
        """close(2) of one descriptor: store what is dirty (close-to-open), or with async_upload
        make it durable in the cache and queue it."""
        h = self._handle(fh)
        if h.of.spoiled:
            raise self._no_space(h.of)
        if not h.of.dirty:
            return
        h.of.confirmed = True
        if self.cfg.async_upload:
            await self._persist(h.of)
            self.writeback.submit(h.of)
            return
        await self._upload_or_queue(h.of)

    async def fsync(self, fh: int) -> None:
        h = self._handle(fh)
        if h.of.spoiled:
            raise self._no_space(h.of)
        if h.of.dirty:
            h.of.confirmed = True
            await self._upload_or_queue(h.of)

    async def _upload_or_queue(self, of: OpenFile) -> None:
        """Upload now; if that fails, keep the data, retry in the background, and report it."""
        try:
            await self._upload(of)
        except S3MountError:
            await self._persist(of)
            self.writeback.submit(of, failed=True)
            raise

    async def release(self, fh: int) -> None:
        h = self.handles.pop(fh, None)
        if h is None:
            return
        if h.reader is not None:
            h.reader.close()
        of = h.of
        if of.dirty and of.handles == 1:
            of.confirmed = True
            if self.cfg.async_upload:
                if not self.writeback.queued(of):  # flush() queued it already, as a rule
                    await self._persist(of)
                    self.writeback.submit(of)
            else:
                try:
                    await self._upload_or_queue(of)
                except S3MountError as exc:
                    log.error("upload of %r failed (%s); the data is kept in %s and retried in "
                              "the background", h.node.path, exc,
                              of.staging.path if of.staging else "?")
        await self._close_file(of)

    async def _upload(self, of: OpenFile) -> None:
        """Store the staging file as the object (caller must not hold of.lock)."""
        async with of.lock:
            node = of.node
            if not of.dirty or node.path is None:
                return
            if of.staging is None:
                self._fresh_staging(of)
            assert of.staging is not None
            key = self.keys.file_key(node.path)
            self._save_record(of)
            etag, md = await self._finish_stream(of, key)
            if etag is None:
                if of.punched:
                    await self._spoil(of, "its streamed upload failed and the parts it had "
                                          "stored are no longer in the cache")
                    raise FsError(f"the upload of {key!r} failed and the parts it had stored "
                                  "are no longer in the cache: the file is not stored",
                                  errno=errno.EIO)
                md = {**node.extra, **metadata_for(node.attrs)}
                of.progress = Progress()
                etag = await self._upload_staged(key, of.staging, md, of.progress)
            of.progress = None
            of.dirty = False
            of.base_etag = etag
            of.base_size = node.attrs.size
            node.etag = etag
            node.valid_until = self._fresh_until()
            node.kernel_cache_etag = etag
            node.s3_mtime = None  # a PUT does not say; the next listing does
            self.meta.put(key, etag, None, md)
            self._drop_record(of)
            parent, name = split(node.path)
            self._listing_add(parent, DirEntry(name, False, node.attrs.size, etag, time.time()))

    async def _upload_staged(self, key: str, staging: StagingFile,
                             md: dict[str, str], progress: Progress | None = None) -> str:
        """Upload a staging file whole. One of up to ``part_size`` goes in one PUT from memory,
        so it draws on the upload budget like a streamed part (larger ones are sent from disk
        part by part by the store)."""
        size = staging.size()
        held = size if size <= self.cfg.part_size else 0
        await self.upload_budget.take(held)
        try:
            return await self._run(self.store.upload, key, staging.path, metadata=md,
                                   progress=progress.add if progress else None)
        finally:
            self.upload_budget.give(held)

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
        md = self._stream_metadata(of)
        if md != stream.metadata:  # chmod, chown or utimens after the upload started
            etag = await self._run(self.store.copy, key, key, metadata=md,
                                   size=of.node.attrs.size)
        return etag, md

    async def flush_all(self) -> int:
        """Store every dirty file (unmount, SIGTERM); returns how many could not be stored.

        What cannot be stored stays in the cache directory with its record, and the next mount
        of the same bucket uploads it. Uploads run here directly (not through the writeback
        task), so this works while the mount is being torn down.
        """
        async def one(of: OpenFile) -> None:
            try:
                await self._upload(of)
            except S3MountError as exc:
                log.error("could not upload %r before unmount (%s); it stays in %s for the next "
                          "mount", of.node.path, exc, of.staging.path if of.staging else "?")
                return
            await self._settle(of)

        dirty = [of for of in self.open_files.values() if of.dirty]
        await gather([functools.partial(one, of) for of in dirty], limit=8)
        return sum(1 for of in self.open_files.values() if of.dirty)

    def pending_uploads(self) -> int:
        return sum(1 for of in self.open_files.values() if of.dirty and of.node.path is not None)

    def upload_progress(self) -> list[dict[str, Any]]:
        """Per pending file: path, bytes stored in its current upload attempt, size, bytes/s,
        and whether it is still open (being written: its upload is not due yet)."""
        return [{"path": of.node.path, "stored": min(of.progress.stored, of.node.attrs.size)
                 if of.progress else 0, "total": of.node.attrs.size,
                 "rate": round(of.progress.rate()) if of.progress else None,
                 "open": of.handles > 0}
                for of in self.open_files.values() if of.dirty and of.node.path is not None]
