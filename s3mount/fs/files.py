"""File data: open, read, write, flush, fsync and close of regular files, and truncation.

Every open file has one ``OpenFile`` (shared by its handles, kept in the open-files registry,
``registry``) whose staging file on local disk holds the data being written; the object in the
bucket is replaced from it on flush, fsync and close (close-to-open) by the uploader
(``uploads``), or in the background with ``async_upload`` (``writeback``). A file written front to
back streams its parts while being written (``streaming``). Reads of a file nobody is writing go
to S3 through a per-handle ``Reader`` with read-ahead.

Locking: ``OpenFile.lock`` serialises loading, writes, truncation and uploads of one file.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable

import trio

from ..errors import FsError, NotFound, PreconditionFailed, Refused, S3MountError
from .attrs import new_attrs
from .budget import Budget
from .inodes import Inode, InodeTable
from .listing import DirEntry, Listings
from .namespace import Namespace
from .openfile import OpenFile
from .paths import KeyMapper, split
from .progress import Progress
from .reader import Reader
from .registry import OpenFiles
from .runner import StoreRunner
from .settings import FsConfig
from .space import CacheSpace
from .streaming import StreamingUpload
from .uploads import Uploader
from .writeback import Writeback

log = logging.getLogger(__name__)

STREAM_PARALLEL = 6
MAX_OBJECT_SIZE = 5 * 1024**4
"""S3's largest object: a file cannot grow beyond it (EFBIG)."""


class FileIO:
    """The data operations on regular files (see module docstring)."""

    def __init__(self, runner: StoreRunner, keys: KeyMapper, cfg: FsConfig, names: Namespace,
                 listings: Listings, inodes: InodeTable, files: OpenFiles, space: CacheSpace,
                 uploader: Uploader, writeback: Writeback, read_budget: Budget,
                 upload_budget: Budget) -> None:
        self._runner = runner
        self.keys = keys
        self.cfg = cfg
        self._names = names
        self._listings = listings
        self._inodes = inodes
        self._files = files
        self._space = space
        self._uploader = uploader
        self._writeback = writeback
        self._read_budget = read_budget
        self._upload_budget = upload_budget
        self.forget_kernel_attrs: Callable[[int], None] = lambda ino: None
        """Makes the kernel ask for an inode's attributes again (set by the FUSE adapter)."""

    async def open(self, ino: int, flags: int) -> tuple[int, bool]:
        """Open a file; returns (fh, keep_cache)."""
        node = self._names.node(ino)
        if node.is_dir:
            raise FsError("is a directory", errno=errno.EISDIR)
        writing = flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC
        if writing:
            self.cfg.check_writable()
        # Whether other descriptors are open does not matter: the kernel's pages follow local
        # writes, and FUSE sends a close's RELEASE in the background, so "still open" is often
        # a descriptor already closed (a GET per re-read of an unchanged file, under load).
        keep_cache = node.etag is not None and node.etag == node.kernel_cache_etag
        of = self._files.open(node)
        try:
            if flags & os.O_TRUNC:
                await self._store_confirmed(of)
                async with of.lock:
                    await self._files.stop_stream(of)
                    self._files.fresh_staging(of)
                    if of.handles == 1:
                        of.seq_end = 0
                    if node.attrs.size != 0 or node.etag is None:
                        node.attrs.size = 0
                        node.attrs.mtime_ns = node.attrs.ctime_ns = time.time_ns()
                    self._files.mark_dirty(of)
                keep_cache = False
        except BaseException:
            await self.close_file(of)
            raise
        reader = None
        if not writing and not of.loaded and node.etag is not None and node.path is not None:
            if keep_cache:
                # The kernel holds this version's pages and reads them itself: fetching the file
                # again would cost a GET per open of an unchanged file. A page it lacks is
                # fetched pinned to the version (ESTALE if it was replaced since, never a mix).
                reader = self._reader(node)
            else:
                try:
                    reader = await self._pinned_reader(node)
                except BaseException:
                    await self.close_file(of)
                    raise
        h = self._files.add_handle(node, of)
        h.reader = reader
        node.kernel_cache_etag = node.etag
        if reader is not None and node.kernel_holds_other(trio.current_time()):
            # The kernel would cut reads at the size of the version it holds: the object was
            # found replaced while opening, or a listing or a lookup showed a new one. Without
            # this a file replaced by a longer one read as the new content cut to the old
            # length. (Replies to requests sent before this are ignored for attributes.)
            self.forget_kernel_attrs(node.ino)
            node.kernel_forgot_attrs()
        return h.fh, keep_cache

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        h = self._files.handle(fh)
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
            info = await self._names.head_or_none(self.keys.file_key(path))
            if info is None or node.path != path or self._inodes.at(path) is not node:
                break
            self._names.install_info(path, info)
        raise FsError("the file was replaced while being opened", errno=errno.ESTALE)

    def _reader(self, node: Inode) -> Reader:
        """A reader of the object as it is now: its key and ETag are fixed here, so a handle keeps
        reading the version it opened (or fails with ESTALE once that is gone), never a mix."""
        assert self._runner.nursery is not None and node.path is not None and node.etag is not None
        key, etag = self.keys.file_key(node.path), node.etag

        async def fetch(start: int, length: int) -> bytes:
            if start == 0 and (head := self._names.take_peeked(key, etag)) is not None \
                    and len(head) == length:
                return head  # fetched whole by the lookup just before
            try:
                return await self._runner.run(self._runner.store.get_range, key, start, length,
                                              etag=etag)
            except NotFound:
                moved = self._moved(node, key, etag)
                if moved is None:
                    raise
                return await self._runner.run(self._runner.store.get_range, moved[0], start,
                                              length, etag=moved[1])

        return Reader(fetch, node.attrs.size, self._runner.nursery, self._read_budget,
                      part_size=self.cfg.part_size)

    def _moved(self, node: Inode, key: str, etag: str) -> tuple[str, str] | None:
        """Where the version opened as ``key``/``etag`` is now if this mount renamed the file
        since (the file or a directory above it: a rename copies, then deletes the old key), as
        (key, ETag); None if it was not moved. A descriptor open across ``mv`` keeps reading
        (POSIX); if the version was replaced at the new name too, reading it fails as usual."""
        if node.path is None or (now := self.keys.file_key(node.path)) == key:
            return None
        aliases = node.copied_as or {}
        for _ in range(len(aliases)):
            if etag not in aliases:
                break
            etag = aliases[etag]
        return now, etag

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        h = self._files.handle(fh)
        of = h.of
        self.cfg.check_writable()
        if offset + len(data) > MAX_OBJECT_SIZE:
            raise FsError("an S3 object cannot be this large", errno=errno.EFBIG)
        await self._space.wait_for_space(of, self._writeback.pending)
        await self._store_confirmed(of)
        async with of.lock:
            if of.spoiled or of.punched and not (of.stream is not None and offset == of.seq_end):
                raise self._files.no_space(of)
            await self._files.load(of)
            await self._space.make_room(of, len(data))
            n = await self._space.stage(of, data, offset)
            node = h.node
            node.attrs.size = max(node.attrs.size, offset + n)
            node.attrs.mtime_ns = node.attrs.ctime_ns = time.time_ns()
            self._files.mark_dirty(of)
            if of.seq_end is not None:
                if offset == of.seq_end:
                    of.seq_end += n
                    await self._stream(of)
                else:
                    await self._files.stop_stream(of)
        if h.reader is not None:
            h.reader.close()
            h.reader = None
        return n

    async def flush(self, fh: int) -> None:
        """close(2) of one descriptor: store what is dirty (close-to-open), or with async_upload
        make it durable in the cache and queue it."""
        h = self._files.handle(fh)
        if h.of.spoiled:
            raise self._files.no_space(h.of)
        if not h.of.dirty:
            return
        h.of.confirmed = True
        if self.cfg.async_upload:
            await self._uploader.persist(h.of)
            self._writeback.submit(h.of)
            return
        h.of.closing = True
        await self._upload_or_queue(h.of)

    async def fsync(self, fh: int) -> None:
        h = self._files.handle(fh)
        if h.of.spoiled:
            raise self._files.no_space(h.of)
        if h.of.dirty:
            h.of.confirmed = True
            await self._upload_or_queue(h.of)

    async def _upload_or_queue(self, of: OpenFile) -> None:
        """Upload now; if that fails, keep the data, retry in the background, and report it
        (a version the server refuses for good goes to lost+found/ instead)."""
        try:
            await self._uploader.upload(of)
        except Refused as exc:
            await self._writeback.rescue(of, exc)
            raise
        except S3MountError:
            await self._uploader.persist(of)
            self._writeback.submit(of, failed=True)
            raise

    async def release(self, fh: int) -> None:
        h = self._files.handles.pop(fh, None)
        if h is None:
            return
        if h.reader is not None:
            h.reader.close()
        of = h.of
        if of.dirty and of.handles == 1:
            of.confirmed = True
            if self.cfg.async_upload:
                if not self._writeback.queued(of):  # flush() queued it already, as a rule
                    await self._uploader.persist(of)
                    self._writeback.submit(of)
            else:
                try:
                    await self._upload_or_queue(of)
                except Refused:
                    pass  # rescue() said where the data went
                except S3MountError as exc:
                    log.error("upload of %r failed (%s); the data is kept in %s and retried in "
                              "the background", h.node.path, exc,
                              of.staging.path if of.staging else "?")
        await self.close_file(of)

    async def create(self, parent: int, raw_name: bytes, mode: int, flags: int, uid: int,
                     gid: int) -> tuple[int, Inode]:
        parent_path, path = await self._names.check_new_name(parent, raw_name)
        attrs = new_attrs(stat.S_IFREG, mode, uid, gid)
        node = self._names.install(path, attrs, None, None)
        node.lookups += 1
        of = self._files.open(node)
        self._files.fresh_staging(of)
        of.seq_end = 0
        self._files.mark_dirty(of)  # even with no write, close() must leave an (empty) object
        fh = self._files.add_handle(node, of).fh
        self._listings.add(parent_path, DirEntry(split(path)[1], False, 0, None, time.time()))
        self._names.touch_dir(parent_path, attrs.mtime_ns)
        return fh, node

    async def truncate(self, node: Inode, size: int) -> None:
        if size > MAX_OBJECT_SIZE:
            raise FsError(f"{size} bytes is more than an S3 object can hold", errno=errno.EFBIG)
        own = node.ino not in self._files.open_files
        of = self._files.open(node)  # counts as a handle until the finally gives it back
        try:
            await self._store_confirmed(of)
            async with of.lock:
                if of.punched and size == node.attrs.size:
                    return  # nothing changes (and the stream must go on)
                if size != 0 and (of.spoiled or of.punched):
                    raise self._files.no_space(of)
                await self._files.stop_stream(of)
                if size == 0:
                    self._files.fresh_staging(of)
                else:
                    await self._files.load(of)
                assert of.staging is not None
                try:
                    of.staging.truncate(size)
                except OSError as exc:
                    await self._files.staging_failed(of, exc)
                node.attrs.size = size
                node.attrs.mtime_ns = node.attrs.ctime_ns = time.time_ns()
                self._files.mark_dirty(of)
            if own:
                of.confirmed = True  # truncate(2) of a file nobody has open is complete
                await self._uploader.upload(of)
        finally:
            await self.close_file(of)

    async def close_file(self, of: OpenFile) -> None:
        of.closing = False
        of.handles -= 1
        of.node.open_count -= 1
        await self._uploader.settle(of)

    async def _store_confirmed(self, of: OpenFile) -> None:
        """A file closed (or fsync'd) whose upload is still queued is about to change: store the
        closed version first. Its staging file is rewritten in place, so otherwise a crash before
        the next close() would leave only a mix of both, which must not replace the object."""
        if not (of.dirty and of.confirmed):
            return
        try:
            await self._uploader.upload(of, closed_only=True)
        except Refused as exc:
            await self._writeback.rescue(of, exc)
        except S3MountError as exc:
            log.warning("could not store the closed version of %r before it changes (%s); if "
                        "the mount stops before its next close(), it goes to lost+found/",
                        of.node.path, exc)

    async def _stream(self, of: OpenFile) -> None:
        """Send the complete parts of a sequentially written file (caller holds of.lock)."""
        assert of.seq_end is not None
        if of.seq_end <= self.cfg.part_size or of.node.path is None:
            return
        if of.stream is None:
            assert of.staging is not None and self._runner.nursery is not None
            of.progress = Progress()
            of.stream = StreamingUpload(
                self._runner.store, self._runner.run, self._runner.nursery, of.staging,
                self._upload_budget, self.keys.file_key(of.node.path),
                self._uploader.stream_metadata(of),
                part_size=self.cfg.part_size, parallel=STREAM_PARALLEL,
                on_orphan=self._writeback.abandon, progress=of.progress)
        await of.stream.advance(of.seq_end)
