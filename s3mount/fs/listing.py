"""Directory listings: what names a directory holds, asked of S3 as rarely as possible.

A directory that fits in one LIST page is listed whole, and that one listing answers every lookup
in it, hit or miss, for ``dir_timeout`` seconds (our own changes update it in place, and a
journal of them is replayed onto a LIST that was under way while they happened). A larger
directory is asked name by name (by ``namespace``) and listed again, in parallel ranges, only once
many of its names have been asked; a scan up through its names is answered by LISTs that look
ahead of it (``Window``). Other tools' directory objects count as directories: Hadoop/s3n's
``dir_$folder$`` (and old s3fs's ``dir`` object, which ``namespace`` recognises by its HEAD) are
remembered in ``legacy_markers`` and deleted with the directory.

``Listings`` owns the cache of listings and everything kept per directory to answer from it: the
journal, the state of big directories, the legacy markers. The files created here but not
uploaded yet come from the open-files registry (``pending``), which it does not import.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

from ..store.base import ListPage
from .concurrency import gather
from .openfile import OpenFile
from .paths import KeyMapper, PathTree, join, split
from .runner import StoreRunner
from .settings import FsConfig
from .sharedindex import hidden

log = logging.getLogger(__name__)

FOLDER_SUFFIX = "_$folder$"
"""Hadoop/s3n's directory marker: an empty object ``dir_$folder$`` beside the directory's keys."""

RELIST_RATIO = 10
RELIST_MIN = 20
"""A big directory is listed again after lookups of a tenth of its names, or of 20 names."""

LIST_PARALLELISM = 16
"""Ranges of one directory listed at once (see ``list_dir``)."""

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


class Listings:
    """The listing cache of one mount and what is kept per directory to answer from it."""

    LIST_PAGE = 1000
    """Names per LIST page (S3's maximum); a class attribute so tests can make pages small."""

    def __init__(self, runner: StoreRunner, keys: KeyMapper, cfg: FsConfig,
                 pending: Callable[[str], list[tuple[str, OpenFile]]]) -> None:
        self._runner = runner
        self.keys = keys
        self.cfg = cfg
        self._pending = pending
        """Files created in a directory and not uploaded yet (they are listed: close-to-open)."""
        self._cache: dict[str, Listing] = {}
        self._listed = PathTree()
        """The paths of ``_cache``: what a rename of a directory invalidates below it."""
        self._warned: set[str] = set()
        self._seq = 0  # counts our own directory changes (see _journal)
        self._changes: dict[str, list[tuple[int, str, DirEntry | None]]] = {}
        self.large_dirs: set[str] = set()  # directories larger than one LIST page
        self.large_dir_lookups: dict[str, int] = {}  # names looked up singly since listed
        self.windows: dict[str, Window] = {}  # big directory -> its latest look-ahead LIST
        self.scans: dict[str, Scan] = {}  # big directory -> its latest lookup
        self.legacy_markers: dict[str, str] = {}
        """Directory path -> key of another tool's marker for it (``dir`` or ``dir_$folder$``),
        deleted with the directory."""

    def get(self, path: str) -> Listing | None:
        """The latest listing of ``path``, expired or not (what guides the next one)."""
        return self._cache.get(path)

    def _put(self, path: str, lst: Listing) -> None:
        self._cache[path] = lst
        self._listed.add(path)

    def empty(self, path: str) -> None:
        """``path`` was just made here: it is empty, and lookups in it need not ask S3."""
        self._put(path, Listing({}, trio.current_time() + self.cfg.dir_timeout))

    def expire(self, path: str) -> None:
        """The next use lists ``path`` again (the old listing still guides it)."""
        if (old := self._cache.get(path)) is not None:
            old.expires = -math.inf

    def drop(self, path: str) -> None:
        """Forget the listing of ``path`` (removed, or changed behind the usual paths)."""
        self._cache.pop(path, None)
        self._listed.discard(path)

    def drop_tree(self, path: str) -> None:
        """Forget the listings of ``path`` and of every directory below it (it was renamed)."""
        for p in self._listed.under(path):
            self.drop(p)

    def subdirs(self, path: str) -> int:
        """Subdirectories of ``path`` in its latest listing (0 if it was never listed)."""
        lst = self._cache.get(path)
        return sum(1 for e in lst.entries.values() if e.is_dir) if lst else 0

    def invalidate_key(self, key: str) -> None:
        """Something changed ``key`` outside the normal paths (crash recovery): forget what we
        knew about its directory so the next lookup asks the bucket."""
        if key.startswith(self.keys.prefix):
            self.drop(split(key[len(self.keys.prefix):])[0])

    def cached(self, path: str) -> Listing | None:
        lst = self._cache.get(path)
        if lst is not None and lst.expires > trio.current_time():
            return lst
        return None

    def add(self, parent: str, entry: DirEntry) -> None:
        self._journal(parent, entry.name, entry)
        lst = self._cache.get(parent)
        if lst is not None:
            lst.entries[entry.name] = entry

    def remove(self, parent: str, name: str) -> None:
        self._journal(parent, name, None)
        lst = self._cache.get(parent)
        if lst is not None:
            lst.entries.pop(name, None)

    @property
    def seq(self) -> int:
        """Counts our own directory changes: taken before a question to the bucket, it tells
        (``changed_since``) whether one of ours overtook the answer."""
        return self._seq

    def changed_since(self, parent: str, name: str, since: int) -> bool:
        """Whether we made, removed or renamed ``parent/name`` after ``seq`` was ``since``."""
        return name in self.changed_names(parent, since)

    def changed_names(self, parent: str, since: int) -> set[str]:
        """The names in ``parent`` we made, removed or renamed after ``seq`` was ``since``."""
        changed: set[str] = set()
        for seq, name, _ in reversed(self._changes.get(parent, ())):
            if seq <= since:
                break
            changed.add(name)
        return changed

    def _journal(self, parent: str, name: str, entry: DirEntry | None) -> None:
        """Remember our own change to ``parent``: a LIST under way may have missed it (an upload
        that completes while the directory is being listed is in neither the listing nor the
        pending files), so ``_remember`` replays what happened since the LIST began."""
        self._seq += 1
        changes = self._changes.setdefault(parent, [])
        changes.append((self._seq, name, entry))
        if len(changes) > JOURNAL_MAX:
            del changes[: len(changes) - JOURNAL_MAX]

    async def list_dir(self, path: str) -> Listing:
        """The entries of directory ``path`` (all pages), cached for ``dir_timeout``.

        A directory listed before is listed again in parallel: the previous listing's page
        boundaries split the names into ranges, each listed from its start (StartAfter) up to
        the next boundary, so 10,000 names cost the latency of one page instead of ten in a row.
        Each range is followed until it passes its end, so names added since are not missed."""
        cached = self.cached(path)
        if cached is not None:
            return cached
        prefix = self.keys.dir_prefix(path)
        since = self._seq
        starts: list[str | None] = [None, *self._page_bounds(path, self._cache.get(path))]
        ranges: list[list[ListPage]] = [[] for _ in starts]

        async def list_range(i: int) -> None:
            ranges[i] = await self._list_range(
                prefix, starts[i], starts[i + 1] if i + 1 < len(starts) else None)

        await gather([functools.partial(list_range, i) for i in range(len(starts))],
                     limit=LIST_PARALLELISM)
        return self._remember(path, [p for pages in ranges for p in pages], since)

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
            page = await self._runner.run(self._runner.store.list_page, prefix, token=token,
                                          start_after=None if token else after,
                                          max_keys=self.LIST_PAGE)
            pages.append(page)
            if not page.next_token or upto is not None and any(
                    k > upto for k in (*(o.key for o in page.objects), *page.prefixes)):
                break  # the listing, or the range, is complete
            token = page.next_token
        return pages

    async def for_lookup(self, path: str, name: str) -> Listing | None:
        """A listing of ``path`` fresh enough to answer a lookup of ``name`` from, if one LIST
        page holds the directory or the lookup is part of an ascending scan.

        One LIST answers a lookup (hit or miss) and refreshes every sibling at once. A directory
        larger than one page is looked up name by name (``Namespace._stat_name``) until a tenth
        of its names have been: then it is listed whole again. Each re-listing of a big
        directory costs a LIST per thousand names and parsing them all, so doing it every
        ``dir_timeout`` would cost more than the lookups it saves. Lookups that go up name after name (``rm -r``,
        ``cp -r`` or ``rsync`` walking it after its listing expired) are answered by LISTs that
        look ahead instead (``_window_for``): one request per stretch of names, not one each.
        """
        cached = self.cached(path)
        if cached is not None:
            return cached
        if path in self.large_dirs:
            old = self._cache.get(path)
            if old is not None and (window := await self._window_for(path, name, old)):
                return window
            allowance = max(len(old.entries) // RELIST_RATIO if old else 0, RELIST_MIN)
            self.large_dir_lookups[path] = spent = self.large_dir_lookups.get(path, 0) + 1
            if spent <= allowance:
                return None
            return await self.list_dir(path)
        since = self._seq
        page = await self._runner.run(self._runner.store.list_page, self.keys.dir_prefix(path))
        if page.next_token:
            self.large_dirs.add(path)
            return None
        return self._remember(path, [page], since)

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
        page = await self._runner.run(self._runner.store.list_page, self.keys.dir_prefix(path),
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

    def _remember(self, path: str, pages: list[ListPage], since: int) -> Listing:
        if len(pages) > 1:
            self.large_dirs.add(path)
            self.large_dir_lookups[path] = 0
        self.windows.pop(path, None)
        entries = self._entries_from(path, pages)
        self._replay(path, entries, since)
        lst = Listing(entries, trio.current_time() + self.cfg.dir_timeout)
        self._put(path, lst)
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
                        self.warn_conflict(join(path, name))
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
                        self.warn_conflict(join(path, name))
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
        for name, of in self._pending(path):
            entries.setdefault(name, DirEntry(name, False, of.node.attrs.size, None, time.time()))

    def warn_conflict(self, path: str) -> None:
        if path not in self._warned:
            self._warned.add(path)
            log.warning("%r is both a file and a directory in the bucket; showing the directory "
                        "(the file object is hidden)", path)
