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

The ``Describer`` owns the state of walks under way; what it learns it installs through the
namespace's ``Installer`` functions, handed to it with each call (the namespace asks it, so it
cannot import the namespace).
"""

from __future__ import annotations

import logging
from typing import Protocol

import trio

from ..errors import NotFound, S3MountError
from ..store.base import ObjectInfo
from .inodes import Inode, InodeTable
from .listing import DirEntry, Listing, Listings
from .paths import KeyMapper, join
from .runner import StoreRunner
from .settings import FsConfig
from .sharedindex import SharedIndex

log = logging.getLogger(__name__)

WALK_GAP = 5.0
"""Seconds between two lookups of provisional entries of a directory that make them a walk."""
CHUNK_MIN = 64
CHUNK_MAX = 512
"""Entries described by one hand-off of HEADs to the store: the first chunk of a walk is small
so its first answers come soon, the next ones double (fewer hand-offs and batch tails)."""


class Installer(Protocol):
    """How described entries become inodes (``namespace.Namespace`` is one)."""

    def install_known(self, path: str, entry: DirEntry) -> Inode | None: ...

    def install_dir(self, path: str, marker: ObjectInfo | None) -> Inode: ...

    def install_info(self, path: str, info: ObjectInfo) -> Inode: ...


class Describer:
    """Describes the provisional entries of directories being walked, in chunks."""

    def __init__(self, runner: StoreRunner, keys: KeyMapper, cfg: FsConfig, inodes: InodeTable,
                 listings: Listings, shared: SharedIndex) -> None:
        self._runner = runner
        self.keys = keys
        self.cfg = cfg
        self.inodes = inodes
        self.listings = listings
        self.shared = shared
        self._describing: dict[str, trio.Event] = {}  # provisional path -> its batch
        self._walks: dict[str, float] = {}  # dir -> time of its last provisional lookup

    async def wait(self, path: str) -> None:
        """Until the batch describing ``path`` is done, if one is under way."""
        if (busy := self._describing.get(path)) is not None:
            await busy.wait()

    async def describe_provisional(self, parent: str, name: str, installer: Installer) -> bool:
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
        if await self._from_shared_index(parent, lst, installer) and node is not None \
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
        if self._runner.nursery is not None and len(chunks) > 1:
            self._runner.nursery.start_soon(self._describe_chunks, parent, chunks[1:], installer)
            chunks = chunks[:1]
        await self._describe_chunks(parent, chunks, installer)
        return True

    async def _describe_chunks(self, parent: str,
                               chunks: list[tuple[list[tuple[str, DirEntry]], trio.Event]],
                               installer: Installer) -> None:
        """Describe ``chunks`` one after the other, each a batch of requests in parallel, and
        wake the lookups waiting for each as it is done (failures leave entries provisional:
        their lookups then ask alone)."""
        for chunk, done in chunks:
            try:
                await self._stat_listed(parent, chunk, installer)
            except Exception as exc:  # noqa: BLE001 - the waiting lookups ask again alone
                log.debug("describing %d entries of %r failed: %s", len(chunk), parent, exc)
            finally:
                for n, _ in chunk:
                    self._describing.pop(join(parent, n), None)
                done.set()

    async def _from_shared_index(self, parent: str, lst: Listing, installer: Installer) -> bool:
        """Describe what the shared index knows of ``parent``'s provisional entries (read once per
        listing); whether it was read just now."""
        files = {n: e for n, e in lst.entries.items() if not e.is_dir and e.etag is not None}
        if not await self.shared.read(
                parent, {n: (e.etag or "", e.last_modified) for n, e in files.items()}, lst):
            return False
        for n, e in files.items():
            child = self.inodes.at(join(parent, n))
            if child is not None and child.provisional:
                installer.install_known(join(parent, n), e)
        return True

    async def _stat_listed(self, path: str, todo: list[tuple[str, DirEntry]],
                           installer: Installer) -> None:
        """Attributes for listed entries no cache could give: one batch of HEADs (the file
        objects, and the directory markers when POSIX metadata is on)."""
        heads: dict[str, tuple[str, DirEntry]] = {}
        for name, e in todo:
            child = join(path, name)
            if not e.is_dir:
                heads[self.keys.file_key(child)] = (child, e)
            elif self.cfg.posix_metadata:
                heads[self.keys.dir_prefix(child)] = (child, e)
            else:
                installer.install_dir(child, None)
        if not heads:
            return
        found = await self._runner.run(self._runner.store.head_many, list(heads))
        for key, info in found.items():
            child, e = heads[key]
            if isinstance(info, NotFound):
                if e.is_dir:
                    installer.install_dir(child, None)  # a prefix without a marker object
            elif isinstance(info, S3MountError):
                log.warning("cannot stat %r while listing: %s", child, info)
            elif e.is_dir:
                installer.install_dir(child, info)
            else:
                installer.install_info(child, info)
