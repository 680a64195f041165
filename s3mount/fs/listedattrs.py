"""Attributes of listed entries: names first, POSIX metadata only when someone asks for it.

Reading a directory (``ls``, ``find -name``, a glob) needs names and types, which a LIST gives; the
mode, owner and stored mtime of a foreign object take a HEAD each. So ``opendir`` installs every
entry whose metadata no cache knows as *provisional*: attributes guessed from the listing (size,
LastModified, the mount's default mode and owner), handed to the kernel with zero timeouts so they
are never trusted there. The first ``stat`` of such an entry costs what a lookup costs (one HEAD,
or one GET for a small file, which a following read then uses); a second one in the same directory
means somebody walks it (``ls -l``, a file manager's details view), and all the provisional
entries from that name on are described: first from the shared index in the bucket
(``sharedindex``), the rest by HEADs in parallel, in chunks described one after the other in
the background, each lookup waiting only for its own chunk.

A mixin of ``core.Filesystem``, like ``namespace``.
"""

from __future__ import annotations

import logging
import time

import trio

from .inodes import Inode
from .namespace import DirEntry, Listing
from .paths import join

log = logging.getLogger(__name__)

WALK_GAP = 5.0
"""Seconds between two lookups of provisional entries of a directory that make them a walk."""
CHUNK_MIN = 64
CHUNK_MAX = 512
"""Entries described by one hand-off of HEADs to the store: the first chunk of a walk is small
so its first answers come soon, the next ones double (fewer hand-offs and batch tails)."""


class ListedAttrs:
    def _install_provisional(self, path: str, entry: DirEntry) -> Inode:
        """Install a listed entry with attributes guessed from the listing (see module doc).
        An inode known before keeps its mode and owner as the guess."""
        old = self.inodes.at(path)
        attrs = self._attrs_for(is_dir=entry.is_dir, size=entry.size,
                                last_modified=entry.last_modified or time.time(),
                                metadata=None)  # (a listed directory has no LastModified)
        if old is not None and old.is_dir == entry.is_dir and not old.is_symlink:
            attrs.mode, attrs.uid, attrs.gid = old.attrs.mode, old.attrs.uid, old.attrs.gid
            if entry.is_dir:
                attrs.mtime_ns, attrs.ctime_ns = old.attrs.mtime_ns, old.attrs.ctime_ns
        extra = dict(old.extra) if old is not None else {}
        node = self._install(path, attrs, old.etag if entry.is_dir and old else entry.etag,
                             None, None if entry.is_dir else entry.last_modified)
        node.extra = extra
        node.valid_until = 0.0
        node.provisional = True
        return node

    async def described(self, ino: int) -> None:
        """Make sure inode ``ino`` has its stored attributes, not a listing's guess: for what
        reads them without a lookup first (setattr, the extended attributes)."""
        if self._node(ino).provisional:
            await self.getattr(ino)

    async def _describe_provisional(self, parent: str, name: str) -> bool:
        """Called by a lookup of a provisional entry: describe it from the shared index, or
        together with the provisional entries after it when this is not the first such lookup
        in ``parent`` (see module doc). False when it did nothing (a first lookup that the
        index cannot answer): the caller describes that entry alone."""
        path = join(parent, name)
        busy = self._describing.get(path)
        if busy is not None:
            await busy.wait()
            return True
        lst = self.listings.get(parent)
        if lst is None:
            return False
        node = self.inodes.at(path)
        if await self._from_shared_index(parent, lst) and node is not None \
                and not node.provisional:
            return True
        now = trio.current_time()
        last, self._walks[parent] = self._walks.get(parent), now
        if last is None or now - last > WALK_GAP:
            return False  # a first lookup: maybe ``cat`` after ``ls``, not a walk
        todo: list[tuple[str, DirEntry]] = []
        for n in sorted(n for n in lst.entries if n >= name):
            child = self.inodes.at(join(parent, n))
            if child is not None and child.provisional and join(parent, n) not in self._describing:
                todo.append((n, lst.entries[n]))
        chunks: list[tuple[list[tuple[str, DirEntry]], trio.Event]] = []
        size = CHUNK_MIN
        while todo:
            chunks.append((todo[:size], trio.Event()))
            del todo[:size]
            size = min(size * 2, CHUNK_MAX)
        for chunk, done in chunks:
            for n, _ in chunk:
                self._describing[join(parent, n)] = done
        if self.nursery is not None and len(chunks) > 1:
            self.nursery.start_soon(self._describe_chunks, parent, chunks[1:])
            chunks = chunks[:1]
        await self._describe_chunks(parent, chunks)
        return True

    async def _describe_chunks(self, parent: str,
                               chunks: list[tuple[list[tuple[str, DirEntry]], trio.Event]]
                               ) -> None:
        """Describe ``chunks`` one after the other, each a batch of requests in parallel, and
        wake the lookups waiting for each as it is done (failures leave entries provisional:
        their lookups then ask alone)."""
        for chunk, done in chunks:
            try:
                await self._stat_listed(parent, chunk)
            except Exception as exc:  # noqa: BLE001 - the waiting lookups ask again alone
                log.debug("describing %d entries of %r failed: %s", len(chunk), parent, exc)
            finally:
                for n, _ in chunk:
                    self._describing.pop(join(parent, n), None)
                done.set()

    async def _from_shared_index(self, parent: str, lst: Listing) -> bool:
        """Describe what the shared index knows of ``parent``'s provisional entries (read once per
        listing); whether it was read just now."""
        files = {n: e for n, e in lst.entries.items() if not e.is_dir and e.etag is not None}
        if not await self.shared.read(
                parent, {n: (e.etag or "", e.last_modified) for n, e in files.items()}, lst):
            return False
        for n, e in files.items():
            child = self.inodes.at(join(parent, n))
            if child is not None and child.provisional:
                self._install_known(join(parent, n), e)
        return True
