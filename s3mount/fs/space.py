"""Cache space: how much staged data the open files hold, and making room for more.

``cache_size`` bounds the data staged on the cache disk. A writer over it waits for background
uploads to free space (``wait_for_space``); a streaming writer gives back the parts the bucket
has stored already, of any file, and waits for parts in flight (``make_room``); and a full disk is
met the same way, and by waiting (up to ``timeout``) for the uploads of closed files, before a
write gives up with ENOSPC (``stage``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from .openfile import OpenFile
from .registry import NO_SPACE, OpenFiles
from .settings import FsConfig

log = logging.getLogger(__name__)


class CacheSpace:
    """The staged bytes of the open files in ``files``, against ``cfg.cache_limit``."""

    def __init__(self, files: OpenFiles, cfg: FsConfig) -> None:
        self._files = files
        self.cfg = cfg

    def staged_bytes(self) -> int:
        return sum(of.node.attrs.size - of.punched_bytes for of in self._files.open_files.values()
                   if of.staging is not None and of.dirty)

    def _punch_stored(self) -> bool:
        """Give back the staging space of every streamed part the bucket has stored (of all
        files: any of them may be what fills the cache); True if there was any."""
        freed = False
        for of in self._files.open_files.values():
            if of.stream is None or of.staging is None:
                continue
            for offset, length in of.stream.take_stored():
                try:
                    of.staging.punch(offset, length)
                except OSError as exc:
                    log.warning("cannot give back staging space of %r (%s)", of.node.path, exc)
                    continue
                if not of.punched:
                    self._files.drop_record(of)  # holes are nothing a crash recovery could upload
                of.punched.append((offset, length))
                of.punched_bytes += length
                freed = True
        return freed

    async def _wait_for_part(self, of: OpenFile) -> bool:
        """Wait for a streamed part in flight to be stored (this file's, else any file's);
        False at once if none is in flight."""
        streams = [o.stream for o in (of, *self._files.open_files.values())
                   if o.stream is not None]
        for stream in streams:
            if await stream.wait_for_part():
                return True
        return False

    async def make_room(self, of: OpenFile, n: int) -> None:
        """``cache_size`` bounds what is staged: a streaming writer over it gives back the parts
        already stored and waits for those in flight (caller holds of.lock)."""
        while of.stream is not None and self.staged_bytes() + n > self.cfg.cache_limit:
            if not self._punch_stored() and not await self._wait_for_part(of):
                return  # nothing in flight to wait for: the limit is exceeded by this write

    async def stage(self, of: OpenFile, data: bytes, offset: int) -> int:
        """Write into the staging file (caller holds of.lock). On a full disk, stored parts
        of streamed files are given back, parts in flight waited for, and for up to
        ``timeout`` the uploads of closed files that give their space back when they end,
        before giving up."""
        assert of.staging is not None
        deadline = trio.current_time() + self.cfg.timeout
        while True:
            try:
                return of.staging.pwrite(data, offset)
            except OSError as exc:
                if exc.errno not in NO_SPACE or not (self._punch_stored() or
                                                     await self._wait_for_part(of) or
                                                     await self._wait_for_closed(of, deadline)):
                    await self._files.staging_failed(of, exc)

    async def _wait_for_closed(self, of: OpenFile, deadline: float) -> bool:
        """Wait until space is given back or an upload ends, if another file's space is about
        to be given back (``OpenFiles.freeing``); False at once if none is, or at
        ``deadline``."""
        if not self._files.freeing(of):
            return False
        with trio.move_on_at(deadline):
            await self._files.wait_space()
            return True
        return False

    async def wait_for_space(self, of: OpenFile, queued: Callable[[], int]) -> None:
        """Back-pressure: while staged data is over the cache limit and background uploads are
        under way to free it, writers wait (instead of failing with ENOSPC)."""
        while (self.staged_bytes() > self.cfg.cache_limit and queued()
               and not (queued() == 1 and of.dirty)):
            await self._files.wait_space()
