"""The namespace half of the core: what a path is, answered from listings where possible.

A lookup asks S3 as little as it can. A directory that fits in one LIST page is listed whole, and
that one listing answers every lookup in it, hit or miss, for ``dir_timeout`` seconds (our own
changes update it in place). A larger directory is asked name by name (a HEAD of the key and a
LIST of ``key/`` together tell file from directory; one HEAD for a name its last listing showed as
a file) and listed again, in parallel ranges, only once many of its names have been asked; a scan
up through its names is answered by LISTs that look ahead of it. File metadata comes from the
metadata cache by (key, ETag) when it can, else from a HEAD (a GET, for a small file looked up by
name: see ``_describe_listed``). An object that is both a file and a prefix is shown as the
directory, with one warning. Other tools' directory objects count as directories: old s3fs's
empty ``dir`` with Content-Type ``application/x-directory`` (or a directory mode) and
Hadoop/s3n's ``dir_$folder$`` (see ``legacy_markers``).

This is a mixin of ``core.Filesystem`` (it uses the store, inode table and caches set up there).
"""

from __future__ import annotations

import functools
import logging
import stat
import time
from dataclasses import dataclass

import trio

from ..errors import NotFound
from ..store.base import ListPage, ObjectInfo
from .attrs import parse_mode
from .concurrency import gather
from .inodes import Inode
from .metacache import same_time
from .openfile import OpenFile
from .paths import join, split
from .sharedindex import hidden

log = logging.getLogger(__name__)

FOLDER_SUFFIX = "_$folder$"
"""Hadoop/s3n's directory marker: an empty object ``dir_$folder$`` beside the directory's keys."""
LEGACY_DIR_TYPE = "application/x-directory"

RELIST_RATIO = 10
RELIST_MIN = 20
"""A big directory is listed again after lookups of a tenth of its names, or of 20 names."""

LIST_PARALLELISM = 16
"""Ranges of one directory listed at once (see ``_list_dir``)."""

PEEK_MAX = 64 * 1024
"""A listed file up to this size is looked up with a GET of its first ``PEEK_MAX`` bytes instead
of a HEAD (see ``_describe_listed``)."""

JOURNAL_MAX = 10_000
"""Changes remembered per directory; a listing that takes longer than this many of our own
changes to it may miss the oldest (they are then seen at the next listing)."""


@dataclass
class DirEntry:
    """One name in a directory listing, as S3 (or our own pending work) reports it."""

    name: str
    is_dir: bool
    size: int = 0
    etag: str | None = None
    last_modified: float = 0.0


@dataclass
class Listing:
    entries: dict[str, DirEntry]
    expires: float


WINDOW_MIN = 32
"""Names in the first look-ahead LIST of an ascending scan (see ``_window_for``)."""


@dataclass
class Window:
    """A stretch of a big directory listed again by a look-ahead LIST: the keys in
    (``after``, ``upto``] (``upto`` None: to the end) are fresh in the listing until ``expires``."""

    after: str
    upto: str | None
    expires: float
    size: int
    served: int = 0
    """Lookups answered from it: how many names the scan takes per ``dir_timeout``."""

    def covers(self, file_key: str, dir_key: str) -> bool:
        return file_key > self.after and (self.upto is None or dir_key <= self.upto)


@dataclass
class Scan:
    """The last name looked up in a big directory, and how many lookups in a row went up."""

    last_key: str
    ascending: int = 0


class Namespace:
    LIST_PAGE = 1000
    """Names per LIST page (S3's maximum); a class attribute so tests can make pages small."""

    def _cached_listing(self, path: str) -> Listing | None:
        lst = self.listings.get(path)
        if lst is not None and lst.expires > trio.current_time():
            return lst
        return None

    def _listing_add(self, parent: str, entry: DirEntry) -> None:
        self._journal(parent, entry.name, entry)
        lst = self.listings.get(parent)
        if lst is not None:
            lst.entries[entry.name] = entry

    def _listing_remove(self, parent: str, name: str) -> None:
        self._journal(parent, name, None)
        lst = self.listings.get(parent)
        if lst is not None:
            lst.entries.pop(name, None)

    def _journal(self, parent: str, name: str, entry: DirEntry | None) -> None:
        """Remember our own change to ``parent``: a LIST under way may have missed it (an upload
        that completes while the directory is being listed is in neither the listing nor the
        pending files), so ``_remember_listing`` replays what happened since the LIST began."""
        self._seq += 1
        changes = self._changes.setdefault(parent, [])
        changes.append((self._seq, name, entry))
        if len(changes) > JOURNAL_MAX:
            del changes[: len(changes) - JOURNAL_MAX]

    async def _list_dir(self, path: str) -> Listing:
        """The entries of directory ``path`` (all pages), cached for ``dir_timeout``.

        A directory listed before is listed again in parallel: the previous listing's page
        boundaries split the names into ranges, each listed from its start (StartAfter) up to
        the next boundary, so 10,000 names cost the latency of one page instead of ten in a row.
        Each range is followed until it passes its end, so names added since are not missed."""
        cached = self._cached_listing(path)
        if cached is not None:
            return cached
        prefix = self.keys.dir_prefix(path)
        since = self._seq
        starts: list[str | None] = [None, *self._page_bounds(path, self.listings.get(path))]
        ranges: list[list[ListPage]] = [[] for _ in starts]

        async def list_range(i: int) -> None:
            ranges[i] = await self._list_range(
                prefix, starts[i], starts[i + 1] if i + 1 < len(starts) else None)

        await gather([functools.partial(list_range, i) for i in range(len(starts))],
                     limit=LIST_PARALLELISM)
        return self._remember_listing(path, [p for pages in ranges for p in pages], since)

    def _page_bounds(self, path: str, old: Listing | None) -> list[str]:
        """Every ``LIST_PAGE``-th name (as a key) of a previous listing: where ranges split."""
        if old is None or len(old.entries) <= self.LIST_PAGE:
            return []
        keys = sorted(self.keys.dir_prefix(join(path, name)) if e.is_dir else
                      self.keys.file_key(join(path, name)) for name, e in old.entries.items())
        return keys[self.LIST_PAGE - 1:len(keys) - 1:self.LIST_PAGE]

    async def _list_range(self, prefix: str, after: str | None, upto: str | None) -> list[ListPage]:
        """Pages of the listing from after ``after`` until past ``upto`` (None: the start, the
        end). They may overlap the next range's; the caller's merge by name absorbs that."""
        pages = []
        token = None
        while True:
            page = await self._run(self.store.list_page, prefix, token=token,
                                   start_after=None if token else after, max_keys=self.LIST_PAGE)
            pages.append(page)
            if not page.next_token or upto is not None and any(
                    k > upto for k in (*(o.key for o in page.objects), *page.prefixes)):
                break  # the listing, or the range, is complete
            token = page.next_token
        return pages

    async def _listing_for_lookup(self, path: str, name: str) -> Listing | None:
        """A listing of ``path`` fresh enough to answer a lookup of ``name`` from, if one LIST
        page holds the directory or the lookup is part of an ascending scan.

        One LIST answers a lookup (hit or miss) and refreshes every sibling at once. A directory
        larger than one page is looked up name by name (see ``_stat_name``) until a tenth of its
        names have been: then it is listed whole again. Each re-listing of a big directory costs
        a LIST per thousand names and parsing them all, so doing it every ``dir_timeout`` would
        cost more than the lookups it saves. Lookups that go up name after name (``rm -r``,
        ``cp -r`` or ``rsync`` walking it after its listing expired) are answered by LISTs that
        look ahead instead (``_window_for``): one request per stretch of names, not one each.
        """
        cached = self._cached_listing(path)
        if cached is not None:
            return cached
        if path in self.large_dirs:
            old = self.listings.get(path)
            if old is not None and (window := await self._window_for(path, name, old)):
                return window
            allowance = max(len(old.entries) // RELIST_RATIO if old else 0, RELIST_MIN)
            self.large_dir_lookups[path] = spent = self.large_dir_lookups.get(path, 0) + 1
            if spent <= allowance:
                return None
            return await self._list_dir(path)
        since = self._seq
        page = await self._run(self.store.list_page, self.keys.dir_prefix(path))
        if page.next_token:
            self.large_dirs.add(path)
            return None
        return self._remember_listing(path, [page], since)

    async def _window_for(self, path: str, name: str, old: Listing) -> Listing | None:
        """``old`` (the expired listing of big directory ``path``) if a look-ahead LIST has made
        its entries around ``name`` fresh, else None (the caller asks for the name alone).

        The third lookup in a row whose key is above the previous one's starts a look-ahead:
        a LIST from just after the previous name. Its answer replaces that stretch of the
        listing (names gone from the bucket go, new ones come), our own changes made while it
        was under way are replayed, and it is trusted for ``dir_timeout`` like a listing. It
        asks for 32 names; a scan that runs past the end gets twice as many next time, and one
        that outlives it (``rm -r`` takes a few milliseconds a name) twice as many as it took
        from the last, up to a full page: parsing names nobody asks for before they expire
        costs CPU and holds the interpreter's lock that every other request waits on.
        """
        file_key = self.keys.file_key(join(path, name))
        dir_key = self.keys.dir_prefix(join(path, name))
        scan = self.scans.get(path)
        ascending = scan.ascending + 1 if scan is not None and scan.last_key < file_key else 0
        self.scans[path] = Scan(file_key, ascending)
        window = self.windows.get(path)
        live = window is not None and window.expires > trio.current_time()
        if live and window is not None and window.covers(file_key, dir_key):
            window.served += 1
            return old
        if scan is None or ascending < 2:
            return None
        size = WINDOW_MIN if window is None else window.size * 2 if live else 2 * window.served
        size = min(max(size, WINDOW_MIN), self.LIST_PAGE)
        since = self._seq
        page = await self._run(self.store.list_page, self.keys.dir_prefix(path),
                               start_after=scan.last_key, max_keys=size)
        upto = max((*(o.key for o in page.objects), *page.prefixes), default=scan.last_key) \
            if page.next_token else None  # None: the listing is complete up to the end
        window = Window(scan.last_key, upto, trio.current_time() + self.cfg.dir_timeout, size,
                        served=1)
        for n in [n for n, e in old.entries.items() if self._entry_in(path, window, e)]:
            del old.entries[n]
        for n, e in self._entries_from(path, [page]).items():
            if e.is_dir or not (cur := old.entries.get(n)) or not cur.is_dir:  # a directory wins
                old.entries[n] = e
        self._replay(path, old.entries, since)
        self.windows[path] = window
        return old if window.covers(file_key, dir_key) else None

    def _entry_in(self, path: str, window: Window, entry: DirEntry) -> bool:
        key = (self.keys.dir_prefix if entry.is_dir else self.keys.file_key)(
            join(path, entry.name))
        return key > window.after and (window.upto is None or key <= window.upto)

    async def _stat_name(self, parent: str, name: str) -> Inode | None:
        """A lookup in a big directory whose listing has expired. A name that listing showed as
        a file is checked with one HEAD (a directory of the same name made since then shows at
        the next listing); anything else needs the full question (HEAD, LIST and marker HEAD)."""
        path = join(parent, name)
        old = self.listings.get(parent)
        entry = old.entries.get(name) if old is not None else None
        if entry is not None and not entry.is_dir:
            info = await self._describe_listed(self.keys.file_key(path), entry.size)
            if info is not None:
                return self._install_info(path, info)
        return await self._stat_path(path)

    def _remember_listing(self, path: str, pages: list[ListPage], since: int) -> Listing:
        if len(pages) > 1:
            self.large_dirs.add(path)
            self.large_dir_lookups[path] = 0
        self.windows.pop(path, None)
        entries = self._entries_from(path, pages)
        self._replay(path, entries, since)
        lst = Listing(entries, trio.current_time() + self.cfg.dir_timeout)
        self.listings[path] = lst
        return lst

    def _entries_from(self, path: str, pages: list[ListPage]) -> dict[str, DirEntry]:
        """The names LIST ``pages`` of directory ``path`` show (a name that is both a file and
        a directory is the directory)."""
        prefix = self.keys.dir_prefix(path)
        entries: dict[str, DirEntry] = {}
        for page in pages:
            for p in page.prefixes:
                name = self.keys.child_name(prefix, p)
                if name is not None and not hidden(self.keys, join(path, name)):
                    if name in entries and not entries[name].is_dir:
                        self._warn_conflict(join(path, name))
                    entries[name] = DirEntry(name, True)
            for o in page.objects:
                name = self.keys.child_name(prefix, o.key)
                if name is None or hidden(self.keys, join(path, name)):
                    if name is None and o.key != prefix:
                        log.debug("skipping key %r: not representable as a path", o.key)
                    continue
                if name.endswith(FOLDER_SUFFIX) and o.size == 0 and name != FOLDER_SUFFIX:
                    name = name[:-len(FOLDER_SUFFIX)]
                    self.legacy_markers[join(path, name)] = o.key
                    entries[name] = DirEntry(name, True)
                    continue
                if name in entries and entries[name].is_dir:
                    if o.size or join(path, name) not in self.legacy_markers:
                        self._warn_conflict(join(path, name))
                    continue
                entries[name] = DirEntry(name, False, o.size, o.etag, o.last_modified)
        return entries

    def _replay(self, path: str, entries: dict[str, DirEntry], since: int) -> None:
        """Apply to freshly listed ``entries`` our own changes made while the LIST was under way,
        then the files created here but not uploaded yet (close-to-open: they will be)."""
        for seq, name, change in self._changes.get(path, ()):
            if seq > since:
                if change is None:
                    entries.pop(name, None)
                else:
                    entries[name] = change
        for name, of in self._pending_children(path):
            entries.setdefault(name, DirEntry(name, False, of.node.attrs.size, None, time.time()))

    def _pending_children(self, path: str) -> list[tuple[str, OpenFile]]:
        out = []
        for of in self.open_files.values():
            p = of.node.path
            if p is not None and of.node.etag is None and split(p)[0] == path:
                out.append((split(p)[1], of))
        return out

    def _warn_conflict(self, path: str) -> None:
        if path not in self._warned_conflicts:
            self._warned_conflicts.add(path)
            log.warning("%r is both a file and a directory in the bucket; showing the directory "
                        "(the file object is hidden)", path)

    async def _head_or_none(self, key: str) -> ObjectInfo | None:
        try:
            return await self._run(self.store.head, key)
        except NotFound:
            return None

    async def _dir_exists(self, path: str) -> bool:
        page = await self._run(self.store.list_page, self.keys.dir_prefix(path), max_keys=1)
        return bool(page.objects or page.prefixes)

    async def _stat_path(self, path: str, hint: DirEntry | None = None) -> Inode | None:
        """Ask S3 what ``path`` is; install and return its inode, or None if it does not exist."""
        if hint is not None and not hint.is_dir:
            return await self._install_file(path, hint)
        file_info: ObjectInfo | None = None
        marker: ObjectInfo | None = None
        is_dir = hint is not None and hint.is_dir

        async def head_file() -> None:
            nonlocal file_info
            file_info = await self._head_or_none(self.keys.file_key(path))

        async def head_marker() -> None:
            nonlocal marker
            if self.cfg.posix_metadata or hint is None:
                marker = await self._head_or_none(self.keys.dir_prefix(path))

        async def list_dir() -> None:
            nonlocal is_dir
            is_dir = await self._dir_exists(path)

        await gather([head_marker] if hint is not None else [head_file, list_dir, head_marker])
        if is_dir or marker is not None:
            if file_info is not None:
                self._warn_conflict(path)
            return self._install_dir(path, marker)
        if file_info is None:
            return None
        return self._install_info(path, file_info)

    def _install_dir(self, path: str, marker: ObjectInfo | None) -> Inode:
        existing = self.inodes.at(path)
        if (marker is None and existing is not None and existing.is_dir
                and existing.etag is None):
            existing.valid_until = self._fresh_until()  # implicit before, implicit still
            existing.provisional = False
            return existing
        md = dict(marker.metadata or {}) if marker else None
        lm = marker.last_modified if marker else time.time()
        attrs = self._attrs_for(is_dir=True, size=0, last_modified=lm, metadata=md)
        return self._install(path, attrs, marker.etag if marker else None, md,
                             marker.last_modified if marker else None)

    def _install_info(self, path: str, info: ObjectInfo) -> Inode:
        md = dict(info.metadata or {})
        if info.size == 0 and (info.content_type == LEGACY_DIR_TYPE or stat.S_ISDIR(
                parse_mode(md.get("mode")) or 0)):
            # An old s3fs directory object (no trailing "/"): shown as the directory, never
            # cached as a file's metadata, and removed with the directory (rmdir, rename).
            self.legacy_markers[path] = info.key
            return self._install_dir(path, info)
        attrs = self._attrs_for(is_dir=False, size=info.size, last_modified=info.last_modified,
                                metadata=md)
        self.meta.put(info.key, info.etag, info.last_modified, md)
        return self._install(path, attrs, info.etag, md, info.last_modified)

    async def _install_file(self, path: str, entry: DirEntry) -> Inode | None:
        """A file seen in a listing: metadata from the cache by ETag, else one HEAD."""
        node = self._install_known(path, entry)
        if node is not None:
            return node
        info = await self._describe_listed(self.keys.file_key(path), entry.size)
        if info is None:
            return None
        return self._install_info(path, info)

    async def _describe_listed(self, key: str, listed_size: int) -> ObjectInfo | None:
        """The info of a file a listing showed (None if it is gone since).

        A small one is fetched instead of HEADed: a GET of its first ``PEEK_MAX`` bytes gives
        the same headers, and a file looked up by name is usually opened next (``cat``, ``cp``,
        a compiler), whose read then needs no request of its own (``peeked``, taken by the
        reader of that version, within ``attr_timeout``: as long as the lookup's attributes
        are trusted, so is its data). One request instead of two per small file read; a lookup
        not followed by a read costs up to 64 KiB of transfer instead of none. The size hint is
        the listing's; the answer's Content-Range is what counts."""
        if not 0 < listed_size <= PEEK_MAX or self.cfg.attr_timeout <= 0:
            return await self._head_or_none(key)
        try:
            info, head = await self._run(self.store.peek, key, PEEK_MAX)
        except NotFound:
            return None
        if len(head) == info.size:
            self.peeked[(key, info.etag)] = head
        return info

    def _take_peeked(self, key: str, etag: str | None) -> bytes | None:
        """The whole content of this version of ``key`` if a lookup fetched it lately (see
        ``_describe_listed``); it is handed out once."""
        return self.peeked.pop((key, etag), None) if etag else None

    def _install_known(self, path: str, entry: DirEntry) -> Inode | None:
        """Install a listed file if that needs no request: its metadata is cached for this
        version, or no metadata is wanted (``no_posix_metadata``). Else None."""
        if entry.etag is None:
            return None
        md = self.meta.get(self.keys.file_key(path), entry.etag, entry.last_modified)
        if md is None and not self.cfg.posix_metadata:
            md = {}
        if md is None:
            return None
        attrs = self._attrs_for(is_dir=False, size=entry.size, last_modified=entry.last_modified,
                                metadata=md)
        return self._install(path, attrs, entry.etag, md, entry.last_modified)

    def _unchanged(self, node: Inode, entry: DirEntry) -> bool:
        """Whether a listing entry shows the same object version as ``node`` (see metacache on
        versions). For a directory only whether it is still one: a listing carries nothing of
        its marker, whose attributes opendir of the parent refreshes."""
        if node.provisional:
            return False  # its metadata is still to be fetched
        if entry.is_dir or node.is_dir:
            return entry.is_dir == node.is_dir
        if entry.etag is None or entry.etag != node.etag:
            return False
        if not same_time(node.s3_mtime, entry.last_modified):
            return False
        if node.s3_mtime is None and node.path is not None:  # our own upload: known now
            self.meta.adopt(self.keys.file_key(node.path), entry.etag, entry.last_modified)
        node.s3_mtime = entry.last_modified
        return True

    async def _resolve(self, parent_path: str, name: str) -> Inode | None:
        """The inode at ``parent/name`` if it exists (fresh enough), else None."""
        path = join(parent_path, name)
        node = self.inodes.at(path)
        if node is not None and node.provisional and path in self._describing:
            await self._describing[path].wait()  # a walk is describing it (listedattrs)
        if node is not None and (node.valid_until > trio.current_time() or
                                 node.open_count or node.etag is None and not node.is_dir):
            return node
        if path in self.negative or hidden(self.keys, path):
            return None
        lst = await self._listing_for_lookup(parent_path, name)
        if lst is None:
            found = await self._stat_name(parent_path, name)
        elif (entry := lst.entries.get(name)) is None:
            found = None
        elif node is not None and self._unchanged(node, entry):
            node.valid_until = self._fresh_until()
            found = node
        elif node is not None and node.provisional and await self._describe_provisional(
                parent_path, name) and not node.provisional and node is self.inodes.at(path):
            found = node  # described by the shared index or with its neighbours
        else:
            found = await self._stat_path(path, entry)
        if found is None:
            if node is not None:
                self.inodes.detach(node)
            self.negative[path] = True
        return found

