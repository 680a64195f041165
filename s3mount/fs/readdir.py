"""Reading directories: opendir lists the directory and takes a snapshot of its entries, readdir
hands them to the kernel (readdirplus: with attributes, each counting as a lookup).

opendir installs every listed entry: files whose metadata a cache knows as they are, the rest
*provisional* (attributes guessed from the listing, described when somebody asks: see
``listedattrs``), so a names-only readdir costs LISTs, and the shared index's GETs when some
file's metadata is in no cache: read before those entries are installed, what it knows goes to
the kernel with the readdirplus reply, real attributes with full timeouts, and ``ls -l`` from a
second machine needs no FUSE request per entry. Cached inodes the listing no longer shows were
removed behind our back and are detached.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass

import trio

from ..errors import FsError
from .inodes import Inode, InodeTable
from .listedattrs import Describer
from .listing import DirEntry, Listings
from .metacache import MetaCache
from .namespace import Namespace
from .paths import KeyMapper, join, split
from .settings import FsConfig


@dataclass
class DirHandle:
    node: Inode
    entries: list[tuple[str, Inode]]
    seq: int
    """``Listings.seq`` when the entries were taken: our changes of a name after it count."""


class DirReader:
    """Open directory handles and what they hand out."""

    def __init__(self, keys: KeyMapper, cfg: FsConfig, meta: MetaCache, names: Namespace,
                 listings: Listings, inodes: InodeTable, describer: Describer) -> None:
        self.keys = keys
        self.cfg = cfg
        self.meta = meta
        self._names = names
        self._describer = describer
        self._listings = listings
        self._inodes = inodes
        self._handles: dict[int, DirHandle] = {}
        self._next_fh = 1

    async def opendir(self, ino: int) -> int:
        path = self._names.dir_path(ino)
        self._listings.expire(path)  # each opendir sees a current listing (the old one guides it)
        lst = await self._listings.list_dir(path)
        entries: list[tuple[str, Inode]] = []
        todo: list[tuple[str, DirEntry]] = []
        now = trio.current_time()
        for child in self._inodes.children(path):
            assert child.path is not None
            if split(child.path)[1] not in lst.entries and not child.open_count:
                self._inodes.detach(child)  # gone from the bucket behind our back
        for name in sorted(lst.entries):
            e = lst.entries[name]
            child = join(path, name)
            node = self._inodes.at(child)
            # Files are re-read only when their version moved; directories (whose marker has no
            # version in a listing) when their attributes are older than attr_timeout. A file
            # open or owing an upload is as we have it (``InodeTable.local``).
            if node is not None and (self._inodes.local(node) or self._names.unchanged(node, e) and
                                     (not node.is_dir or node.valid_until > now)):
                node.valid_until = self._names.fresh_until()
                continue
            todo.append((name, e))
        # Entries whose metadata is known (cached by version, or not wanted) are installed here
        # and now. When some file's is in no cache, the shared index is read into the cache, and
        # those are tried again; the rest get attributes guessed from the listing, and their
        # metadata is fetched when something asks for it (listedattrs): a names-only readdir
        # costs LISTs.
        self.meta.load([self.keys.file_key(join(path, name)) for name, e in todo if not e.is_dir])
        unknown = [(name, e) for name, e in todo if not self._install_known(join(path, name), e)]
        files_unknown = any(not e.is_dir and e.etag is not None for _, e in unknown)
        if files_unknown and await self._describer.read_index(path, lst):
            unknown = [(name, e) for name, e in unknown
                       if not self._install_known(join(path, name), e)]
        for name, e in unknown:
            self._names.install_provisional(join(path, name), e)
        for name in sorted(lst.entries):
            node = self._inodes.at(join(path, name))
            if node is not None:
                entries.append((name, node))
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = DirHandle(self._names.node(ino), entries, self._listings.seq)
        return fh

    def _install_known(self, path: str, e: DirEntry) -> bool:
        """Install a listed entry if that needs no request (``Namespace.install_known``; a
        directory when POSIX metadata is off); whether it was."""
        if e.is_dir:
            if self.cfg.posix_metadata:
                return False  # its marker's metadata is fetched when asked for (listedattrs)
            self._names.install_dir(path, None)
            return True
        return self._names.install_known(path, e) is not None

    def readdir(self, fh: int, start: int, reply: Callable[[str, Inode, int], bool]) -> None:
        """Hand ``reply`` the entries from index ``start`` on, each with the index to continue
        after it, until it takes no more (the kernel takes a buffer's worth per call). Each
        entry it took is a lookup the kernel will forget (readdirplus). An entry whose inode was
        dropped since opendir (the kernel had forgotten it) is registered again first: the
        kernel must never hold a number we do not know."""
        dh = self._handles.get(fh)
        if dh is None:
            raise FsError("bad directory handle", errno=errno.EBADF)
        changed = self._listings.changed_names(dh.node.path or "", dh.seq)
        for i in range(start, len(dh.entries)):
            name, node = dh.entries[i]
            where = join(dh.node.path, name) if dh.node.path is not None else None
            if node.path != where or name in changed:
                # Removed or renamed away since opendir: POSIX lets readdir leave it out or
                # not, but readdirplus would give the kernel an entry for the name, and lookups
                # of it would find it after the unlink or rename returned (a renamed inode
                # under both names; an inode dropped meanwhile registered again at a path
                # another inode was removed from). A file made at the name since is handed
                # out instead.
                current = self._inodes.at(where) if where is not None else None
                if current is None:
                    continue
                node = current
            node = self._inodes.remember(node, where)
            if not reply(name, node, i + 1):
                break
            node.lookups += 1

    def releasedir(self, fh: int) -> None:
        self._handles.pop(fh, None)
