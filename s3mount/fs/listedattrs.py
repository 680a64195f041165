"""Attributes of listed entries: names first, POSIX metadata only when someone asks for it.

Reading a directory (``ls``, ``find -name``, a glob) needs names and types, which a LIST gives; the
mode, owner and stored mtime of a foreign object take a HEAD each. So ``opendir`` installs every
entry whose metadata no cache knows as *provisional*: attributes guessed from the listing (size,
LastModified, the mount's default mode and owner), handed to the kernel with zero timeouts so they
are never trusted there. The first ``stat`` of such an entry costs what a lookup costs (one HEAD,
or one GET for a small file, which a following read then uses); a second one in the same directory
means somebody walks it (``ls -l``, a file manager's details view), and all the provisional
entries from that name on are described by HEADs in the background, as a pipeline: groups of
``GROUP`` entries in listing order, each HEADed one after the other by one worker thread, the
connection pool's worth of groups in flight (less ``RESERVE``), the next one sent as soon as one
is answered; each lookup waits only for its own group. (Chunks described one after the other
held every entry behind a chunk's slowest HEAD.) The number in flight is fixed: a limit that
backed off when answers slowed (delay-based, like TCP Vegas) sat at the cap 20 ms away, and on
loopback backed off to 4 because the machine's other load slowed every answer, and was slower
(bench/README.md, issue #19).

The shared index in the bucket (``sharedindex``) is read before that: by ``opendir``
(``readdir.DirReader``, through ``read_index``) when some listed file's metadata is in no cache,
so the entries it knows go to the kernel in the readdirplus reply with their real attributes and
full timeouts (``ls -l`` then costs no FUSE request per entry), else at the first lookup of a
provisional entry.

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
from .paths import KeyMapper, join, split
from .runner import StoreRunner
from .settings import FsConfig
from .sharedindex import SharedIndex

log = logging.getLogger(__name__)

WALK_GAP = 5.0
"""Seconds between two lookups of provisional entries of a directory that make them a walk."""
GROUP = 4
"""Entries one worker thread HEADs one after the other: one hand-off per group, not per HEAD (a
hand-off costs the event loop about what a HEAD does), and a lookup waits for at most this many."""
RESERVE = 4
"""Store calls (connections) a walk leaves to the mount's other work: a ``cat`` during an
``ls -l`` of a big directory does not wait for the walk."""


class Installer(Protocol):
    """How described entries become inodes (``namespace.Namespace`` is one)."""

    def install_known(self, path: str, entry: DirEntry) -> Inode | None: ...

    def install_dir(self, path: str, marker: ObjectInfo | None) -> Inode: ...

    def install_info(self, path: str, info: ObjectInfo) -> Inode: ...


class Describer:
    """Describes the provisional entries of directories being walked, a group at a time; reads
    the shared index for ``opendir``."""

    def __init__(self, runner: StoreRunner, keys: KeyMapper, cfg: FsConfig, inodes: InodeTable,
                 listings: Listings, shared: SharedIndex) -> None:
        self._runner = runner
        self.keys = keys
        self.cfg = cfg
        self.inodes = inodes
        self.listings = listings
        self.shared = shared
        self._describing: dict[str, trio.Event] = {}  # provisional path -> its group
        self._walks: dict[str, float] = {}  # dir -> time of its last provisional lookup

    async def wait(self, path: str) -> None:
        """Until the group describing ``path`` is done, if one is under way."""
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
        groups = [(todo[i:i + GROUP], trio.Event()) for i in range(0, len(todo), GROUP)]
        if not groups:
            return False  # ``name`` changed while the index was read: the caller asks alone
        for group, done in groups:
            for n, _ in group:
                self._describing[join(parent, n)] = done
        if self._runner.nursery is None:
            await self._describe_groups(parent, groups, installer)
        else:
            self._runner.nursery.start_soon(self._describe_groups, parent, groups, installer)
            await groups[0][1].wait()  # the group of ``name``, the first one
        return True

    async def _describe_groups(self, parent: str,
                               groups: list[tuple[list[tuple[str, DirEntry]], trio.Event]],
                               installer: Installer) -> None:
        """Describe ``groups`` as a pipeline (see module doc), waking the lookups waiting for
        each as it is done (failures leave entries provisional: their lookups then ask alone)."""
        slots = trio.CapacityLimiter(max(1, self.cfg.store_concurrency - RESERVE))
        started = trio.current_time()

        async def one(group: list[tuple[str, DirEntry]], done: trio.Event) -> None:
            try:
                await self._stat_listed(parent, group, installer)
            except Exception as exc:  # noqa: BLE001 - the waiting lookups ask again alone
                log.debug("describing %d entries of %r failed: %s", len(group), parent, exc)
            finally:
                self._release(parent, group, done)
                slots.release_on_behalf_of(done)

        try:
            async with trio.open_nursery() as nursery:
                for group, done in groups:
                    await slots.acquire_on_behalf_of(done)
                    nursery.start_soon(one, group, done)
        finally:  # cancelled (unmount): no lookup may wait for a group never sent
            for group, done in groups:
                if not done.is_set():
                    self._release(parent, group, done)
        log.debug("described %d entries of %r in %.2f s", sum(len(g) for g, _ in groups),
                  parent, trio.current_time() - started)

    def _release(self, parent: str, group: list[tuple[str, DirEntry]],
                 done: trio.Event) -> None:
        """A group is described (or never will be): its lookups go on, with what it found."""
        for n, _ in group:
            self._describing.pop(join(parent, n), None)
        done.set()

    async def read_index(self, parent: str, lst: Listing) -> bool:
        """Put into the metadata cache what ``parent``'s shared index knows of the versions
        ``lst`` shows (one GET per shard, once per listing; see ``SharedIndex.read``); whether
        it was read just now. ``opendir`` calls it before it installs entries no cache knows."""
        return await self.shared.read(parent, _versions(lst), lst)

    async def _from_shared_index(self, parent: str, lst: Listing, installer: Installer) -> bool:
        """Describe what the shared index knows of ``parent``'s provisional entries (read once per
        listing); whether it was read just now."""
        if not await self.read_index(parent, lst):
            return False
        for n, e in lst.entries.items():
            child = self.inodes.at(join(parent, n))
            if child is not None and child.provisional and not e.is_dir:
                installer.install_known(join(parent, n), e)
        return True

    async def _stat_listed(self, path: str, todo: list[tuple[str, DirEntry]],
                           installer: Installer) -> None:
        """Attributes for listed entries no cache could give: one ``head_many`` (the file
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
        since = self.listings.seq
        found = await self._runner.run(self._runner.store.head_many, list(heads))
        for key, info in found.items():
            child, e = heads[key]
            if self.listings.changed_since(path, split(child)[1], since):
                continue  # made, removed or renamed here meanwhile: the answer is older
            if isinstance(info, NotFound):
                if e.is_dir:
                    installer.install_dir(child, None)  # a prefix without a marker object
            elif isinstance(info, S3MountError):
                log.warning("cannot stat %r while listing: %s", child, info)
            elif e.is_dir:
                installer.install_dir(child, info)
            else:
                installer.install_info(child, info)


def _versions(lst: Listing) -> dict[str, tuple[str, float]]:
    """Name -> (ETag, LastModified) of the listed files (what an index entry must match)."""
    return {n: (e.etag, e.last_modified) for n, e in lst.entries.items()
            if not e.is_dir and e.etag is not None}
