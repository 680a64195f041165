"""The open-files registry: one ``OpenFile`` per file with open handles or data still owed to the
bucket, and the handles (file descriptors) on them.

An open file lives here from its first open until nobody has it open and its data is stored (or
no longer wanted): a file closed with ``async_upload``, or whose upload failed, stays with its
staging file until the writeback stores it (``uploads.Uploader.settle`` takes it out). Its
staging file on local disk holds the data being written (``staging``); this module keeps it
loaded, marked dirty, recorded for crash recovery, and spoiled (its changes dropped) when the cache
disk cannot hold a change.

Locking: ``OpenFile.lock`` serialises loading, writes, truncation and uploads of one file (the
callers of ``load``, ``spoil`` and ``staging_failed`` hold it).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
from collections.abc import Iterator
from typing import NoReturn

import trio

from ..errors import FsError
from .attrs import metadata_for
from .inodes import Inode
from .openfile import Handle, OpenFile
from .paths import KeyMapper, split
from .runner import StoreRunner
from .settings import FsConfig
from .staging import Record, StagingArea

log = logging.getLogger(__name__)

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class OpenFiles:
    """Open files by inode, handles by number, and the staging files behind them."""

    def __init__(self, runner: StoreRunner, keys: KeyMapper, cfg: FsConfig,
                 staging: StagingArea) -> None:
        self._runner = runner
        self.keys = keys
        self.cfg = cfg
        self._staging = staging
        self.open_files: dict[int, OpenFile] = {}
        self.handles: dict[int, Handle] = {}
        self._next_fh = 1
        self._space = trio.Event()

    def holds(self, ino: int) -> bool:
        """Whether an open file of inode ``ino`` is still here (open, or owing an upload)."""
        return ino in self.open_files

    def add_handle(self, node: Inode, of: OpenFile) -> Handle:
        """A new descriptor on ``of`` (which ``open`` counted already)."""
        h = Handle(self._next_fh, node, of)
        self._next_fh += 1
        self.handles[h.fh] = h
        return h

    def handle(self, fh: int) -> Handle:
        h = self.handles.get(fh)
        if h is None:
            raise FsError("bad file handle", errno=errno.EBADF)
        return h

    def pending_children(self, path: str) -> list[tuple[str, OpenFile]]:
        """(name, file) of the files made in directory ``path`` and not stored yet."""
        out = []
        for of in self.open_files.values():
            p = of.node.path
            if p is not None and of.node.etag is None and split(p)[0] == path:
                out.append((split(p)[1], of))
        return out

    def discard(self, of: OpenFile) -> bool:
        """Take ``of`` out if nobody has it open and nothing of it is owed to the bucket, giving
        back its staging space; whether it was."""
        if of.handles > 0 or of.dirty or self.open_files.get(of.node.ino) is not of:
            return False
        del self.open_files[of.node.ino]
        if of.staging is not None:
            of.staging.discard()
            of.staging = None
            self.space_freed()
        return True

    def space_freed(self) -> None:
        """Staging space was given back, or a background upload ended: writers waiting for
        space look again (``wait_space``)."""
        self._space.set()
        self._space = trio.Event()

    async def wait_space(self) -> None:
        await self._space.wait()

    @contextlib.contextmanager
    def storing(self, of: OpenFile) -> Iterator[None]:
        """An upload of ``of`` is in flight for the block's duration (the caller holds
        of.lock). When it ends, stored or not, writers waiting for space look again, and the
        attempt's progress is over (a failed one no longer shows as under way)."""
        of.storing = True
        try:
            yield
        finally:
            of.storing = False
            of.progress = None
            self.space_freed()

    def freeing(self, of: OpenFile) -> bool:
        """Whether the staging space of a file other than ``of`` is about to be given back
        without any writer's help: closed (or in its close()) and being stored, or stored and
        its close() about to release it. Files open for writing do not count: waiting for
        them could wait for a writer that waits for this one."""
        return any(o is not of and o.staging is not None and (o.handles == 0 or o.closing)
                   and (o.storing or not o.dirty) for o in self.open_files.values())

    def open(self, node: Inode) -> OpenFile:
        of = self.open_files.get(node.ino)
        if of is None:
            of = OpenFile(node, base_etag=node.etag, base_size=node.attrs.size)
            self.open_files[node.ino] = of
        of.handles += 1
        node.open_count += 1
        return of

    def fresh_staging(self, of: OpenFile) -> None:
        if of.staging is None:
            of.staging = self._staging.new()
        of.staging.truncate(0)
        of.loaded = True
        of.spoiled = None
        of.punched, of.punched_bytes = [], 0

    def no_space(self, of: OpenFile) -> FsError:
        if of.spoiled:
            why = f"{of.spoiled}: the changes were dropped, the bucket keeps its version"
        else:
            why = "the cache cannot hold the whole file: it can only be written front to back"
        return FsError(f"{of.node.path or 'removed file'}: {why}", errno=errno.ENOSPC)

    async def staging_failed(self, of: OpenFile, exc: OSError) -> NoReturn:
        """Turn a staging file's failure (caller holds of.lock) into the errno the user gets:
        EFBIG for a size the disk cannot hold, ENOSPC (dropping the file's changes) for a full
        disk; anything else stays an internal error."""
        if exc.errno == errno.EFBIG:
            raise FsError(f"{of.node.path}: the cache disk cannot hold a file this large",
                          errno=errno.EFBIG) from None
        if exc.errno not in NO_SPACE:
            raise exc
        await self.spoil(of, "the cache disk is full")
        raise self.no_space(of) from None

    async def spoil(self, of: OpenFile, why: str) -> None:
        """Drop the unstored changes of a file one of whose changes could not be staged (caller
        holds of.lock). Storing what was staged would replace the object with a partial file,
        so the bucket keeps its version; the staging space is given back at once."""
        log.warning("%r: %s; its changes since it was last stored are dropped and the bucket "
                    "keeps its version", of.node.path, why)
        await self.stop_stream(of)
        of.spoiled = why
        of.dirty = False
        of.loaded = False
        of.punched, of.punched_bytes = [], 0
        self.drop_record(of)
        if of.staging is not None:
            of.staging.discard()
            of.staging = None
        of.node.attrs.size = of.base_size
        of.node.valid_until = -math.inf
        self.space_freed()

    async def load(self, of: OpenFile) -> None:
        """Make the staging file hold the object's current content (caller holds of.lock)."""
        if of.loaded:
            return
        node = of.node
        if of.staging is None:
            of.staging = self._staging.new()
        if node.etag is not None and node.attrs.size > 0 and node.path is not None:
            try:
                with open(of.staging.path, "r+b") as out:
                    await self._runner.run(self._runner.store.download,
                                           self.keys.file_key(node.path), out, etag=node.etag,
                                           size=node.attrs.size)
            except OSError as exc:
                await self.staging_failed(of, exc)
        of.loaded = True

    def mark_dirty(self, of: OpenFile) -> None:
        """A change: the record must exist, and say the data is no longer what was closed."""
        if not of.dirty or of.confirmed:
            of.confirmed = False
            self.save_record(of)
        of.dirty = True
        of.closing = False  # changed through another descriptor: no longer only being closed

    def save_record(self, of: OpenFile, *, durable: bool = False) -> None:
        """Record what the staging file belongs to, so a crash cannot orphan its data.

        The record is replaced atomically, which a killed process cannot tear; ``durable`` also
        fsyncs data and record, so they survive a power cut (see ``uploads.Uploader.persist``)."""
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

    def drop_record(self, of: OpenFile) -> None:
        """Nothing of the staging file is owed to the bucket any more (stored, or unwanted)."""
        if of.staging is not None:
            of.staging.drop_record()

    async def stop_stream(self, of: OpenFile) -> None:
        """The file is no longer written front to back: upload it the ordinary way at close."""
        of.seq_end = None
        if of.stream is not None:
            stream, of.stream = of.stream, None
            await stream.cancel()
