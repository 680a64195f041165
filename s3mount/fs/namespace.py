"""The namespace: what a path is, answered from listings where possible, and the inodes the
kernel is handed for it.

A lookup asks S3 as little as it can. Listed names are answered from the directory's listing
(``listing``); a name in a big directory whose listing has expired is asked alone (a HEAD of the
key and a LIST of ``key/`` together tell file from directory; one HEAD for a name its last listing
showed as a file). File metadata comes from the metadata cache by (key, ETag) when it can, else
from a HEAD (a GET, for a small file looked up by name: see ``_describe_listed``). An object that
is both a file and a prefix is shown as the directory, with one warning. Old s3fs's empty ``dir``
object with Content-Type ``application/x-directory`` (or a directory mode) counts as the
directory (see ``listing.Listings.legacy_markers``).

Entries a directory listing installed without their metadata (*provisional*, see
``listedattrs``) are described when a lookup asks for one: alone, or with the rest of a walk by the
``Describer``, which gets this namespace to install what it learns.

Each lookup counts one reference of the kernel's on the inode (``Inode.lookups``); ``forget``
gives them back, and the inode table drops what nobody holds any more (``inodes``).
"""

from __future__ import annotations

import errno
import logging
import stat
import time

import trio
from cachetools import TTLCache

from ..errors import FsError, NotFound, Unavailable
from ..store.base import ObjectInfo
from .attrs import Attrs, attrs_from_object, parse_mode
from .concurrency import gather
from .inodes import ROOT_INODE, Inode, InodeTable
from .listedattrs import Describer
from .listing import DirEntry, Listings
from .metacache import MetaCache, same_time
from .paths import KeyMapper, decode_name, join, split
from .runner import StoreRunner
from .settings import FsConfig
from .sharedindex import hidden

log = logging.getLogger(__name__)

LEGACY_DIR_TYPE = "application/x-directory"

PEEK_MAX = 64 * 1024
"""A listed file up to this size is looked up with a GET of its first ``PEEK_MAX`` bytes instead
of a HEAD (see ``_describe_listed``)."""
PEEKED_BYTES = 8 * 1024 * 1024
"""Bound of ``Namespace.peeked``: a body dropped costs its reader the GET it would have made."""
UNREACHABLE_MEMO = 1.0
"""Seconds a lookup that gave up on the server (past ``timeout``) answers the same for its path
(at most ``neg_timeout``: who sets it to 0 wants every lookup to ask the server).
The kernel lets one lookup of a name run at a time: callers waiting for the same name (every
path walk through a directory whose entry expired) look it up again once it failed, so without
this each would wait out the timeout after the one before it (ten ``stat``s through one
directory: EIO after 4, 8, ... 40 s with ``timeout=4``). They get the failure at once."""
SYMLINK_MAX = 4096

OWN_METADATA = frozenset({"mode", "uid", "gid", "mtime", "ctime", "atime", "rdev"})
"""Metadata names we interpret; everything else on an object is carried along untouched."""


class Namespace:
    """Paths to inodes: lookups, attributes, the negative cache and the bodies lookups fetched."""

    def __init__(self, runner: StoreRunner, keys: KeyMapper, cfg: FsConfig, meta: MetaCache,
                 inodes: InodeTable, listings: Listings, describer: Describer) -> None:
        self._runner = runner
        self.keys = keys
        self.cfg = cfg
        self.meta = meta
        self.inodes = inodes
        self.listings = listings
        self.describer = describer
        self.negative: TTLCache[str, bool] = TTLCache(maxsize=65536, ttl=cfg.neg_timeout,
                                                      timer=trio.current_time)
        self.unreachable: TTLCache[str, str] | None = TTLCache(
            maxsize=4096, ttl=min(UNREACHABLE_MEMO, cfg.neg_timeout),
            timer=trio.current_time) if cfg.neg_timeout > 0 else None
        """Paths whose lookup just gave up on the server (see ``UNREACHABLE_MEMO``)."""
        # Small files fetched whole by a lookup, until their reader takes them (by key and ETag),
        # for as long as the attributes that lookup gave are trusted.
        self.peeked: TTLCache[tuple[str, str], bytes] = TTLCache(
            maxsize=PEEKED_BYTES, ttl=cfg.attr_timeout, timer=trio.current_time, getsizeof=len)

    def node(self, ino: int) -> Inode:
        node = self.inodes.get(ino)
        if node is None:
            raise FsError(f"stale inode {ino}", errno=errno.ESTALE)
        return node

    def dir_path(self, ino: int) -> str:
        node = self.node(ino)
        if not node.is_dir:
            raise FsError("not a directory", errno=errno.ENOTDIR)
        if node.path is None:
            raise FsError("directory was removed", errno=errno.ENOENT)
        return node.path

    def fresh_until(self) -> float:
        return trio.current_time() + self.cfg.attr_timeout

    def _attrs_for(self, *, is_dir: bool, size: int, last_modified: float,
                   metadata: dict[str, str] | None) -> Attrs:
        return attrs_from_object(kind=stat.S_IFDIR if is_dir else stat.S_IFREG, size=size,
                                 last_modified=last_modified, metadata=metadata,
                                 defaults=self.cfg.defaults)

    def install(self, path: str, attrs: Attrs, etag: str | None,
                metadata: dict[str, str] | None, last_modified: float | None = None) -> Inode:
        kept = self.meta.dir_times(self.keys.dir_prefix(path)) \
            if attrs.kind == stat.S_IFDIR else None
        if kept is not None and kept[0] >= attrs.mtime_ns:
            # Changes made in it here are newer than its marker says (see touch_dir), unless
            # the marker was written since.
            attrs.mtime_ns, attrs.ctime_ns = kept[0], max(kept[1], attrs.ctime_ns)
        old = self.inodes.at(path)
        if old is not None and old.etag != etag:
            old.symlink_target = None  # another object now: read its target again
        node = self.inodes.put(path, attrs, etag=etag)
        node.s3_mtime = last_modified
        node.valid_until = self.fresh_until()
        node.extra = {k: v for k, v in (metadata or {}).items() if k not in OWN_METADATA}
        node.provisional = False
        if not node.is_symlink:
            node.symlink_target = None
        if self.negative:  # (a TTLCache pop costs more than all the rest of this method)
            self.negative.pop(path, None)
        return node

    def touch_dir(self, path: str, now: int | None = None) -> None:
        """An entry of directory ``path`` was made, removed or renamed: its mtime and ctime move.

        Kept in memory and in the metadata cache, not in the bucket: rewriting the marker would
        cost a request per file created, and an implicit directory has no object to keep them."""
        now = now or time.time_ns()
        node = self.inodes.at(path)
        if node is not None:
            node.attrs.mtime_ns = node.attrs.ctime_ns = now
        self.meta.set_dir_times(self.keys.dir_prefix(path), now, now)

    def nlink(self, node: Inode) -> int:
        """Link count: 1 for a file (0 once unlinked); 2 and one per known subdirectory for a
        directory (from its latest listing and our own changes to it, no request)."""
        if node.path is None:
            return 0
        if not node.is_dir:
            return 1
        return 2 + self.listings.subdirs(node.path)

    async def lookup(self, parent: int, raw_name: bytes) -> Inode:
        if raw_name == b".":
            return self.node(parent)
        if raw_name == b"..":
            p = self.dir_path(parent)
            return self.inodes.at(split(p)[0]) or self.node(ROOT_INODE)
        parent_path = self.dir_path(parent)
        name = decode_name(raw_name)
        self.keys.check_length(join(parent_path, name))
        node = await self.resolve(parent_path, name)
        if node is None:
            raise FsError("no such file or directory", errno=errno.ENOENT)
        node.lookups += 1
        return node

    def forget(self, items: list[tuple[int, int]]) -> None:
        for ino, count in items:
            self.inodes.forget(ino, count)

    async def getattr(self, ino: int) -> Inode:
        node = self.node(ino)
        if (ino == ROOT_INODE or node.path is None or node.open_count
                or node.valid_until > trio.current_time()):
            return node
        parent, name = split(node.path)
        fresh = await self.resolve(parent, name)
        if fresh is None:
            raise FsError("file was removed", errno=errno.ENOENT)
        if fresh is not node:
            # The path now holds a different kind of object; this inode is gone.
            raise FsError("file was replaced", errno=errno.ESTALE)
        return node

    async def readlink(self, ino: int) -> bytes:
        node = self.node(ino)
        if not node.is_symlink:
            raise FsError("not a symlink", errno=errno.EINVAL)
        if node.symlink_target is None:
            assert node.path is not None
            key = self.keys.file_key(node.path)
            # The lookup that found the link has usually fetched its target already.
            data = self.take_peeked(key, node.etag)
            if data is None:
                data = await self._runner.run(self._runner.store.get_range, key, 0, SYMLINK_MAX)
            node.symlink_target = data.decode("utf-8", "surrogateescape")
        return node.symlink_target.encode("utf-8", "surrogateescape")

    async def check_new_name(self, parent: int, raw_name: bytes, *, is_dir: bool = False
                             ) -> tuple[str, str]:
        """Validate a name about to be created; EEXIST if taken. Returns (parent path, path)."""
        self.cfg.check_writable()
        parent_path = self.dir_path(parent)
        name = decode_name(raw_name)
        path = join(parent_path, name)
        self.keys.check_length(path, is_dir=is_dir)
        if hidden(self.keys, path):
            raise FsError("name reserved for the shared index", errno=errno.EPERM)
        if await self.resolve(parent_path, name) is not None:
            raise FsError("file exists", errno=errno.EEXIST)
        return parent_path, path

    def install_provisional(self, path: str, entry: DirEntry) -> Inode:
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
        node = self.install(path, attrs, old.etag if entry.is_dir and old else entry.etag,
                            None, None if entry.is_dir else entry.last_modified)
        node.extra = extra
        node.valid_until = 0.0
        node.provisional = True
        return node

    async def described(self, ino: int) -> None:
        """Make sure inode ``ino`` has its stored attributes, not a listing's guess: for what
        reads them without a lookup first (setattr, the extended attributes)."""
        if self.node(ino).provisional:
            await self.getattr(ino)

    async def _stat_name(self, parent: str, name: str, since: int) -> Inode | None:
        """A lookup in a big directory whose listing has expired. A name that listing showed as
        a file is checked with one HEAD (a directory of the same name made since then shows at
        the next listing); anything else needs the full question (HEAD, LIST and marker HEAD)."""
        path = join(parent, name)
        old = self.listings.get(parent)
        entry = old.entries.get(name) if old is not None else None
        if entry is not None and not entry.is_dir:
            info = await self._describe_listed(self.keys.file_key(path), entry.size)
            if self.overtaken(path, since):
                return self._as_known(path)
            if info is not None:
                return self.install_info(path, info)
        return await self._stat_path(path, None, since)

    def overtaken(self, path: str, since: int) -> bool:
        """Whether we made, removed or renamed ``path`` while the bucket was asked about it
        (``since``: ``listings.seq`` before the question): the answer is older than what we
        know, and installing it would bring an unlinked file back, or an older version."""
        return self.listings.changed_since(*split(path), since)

    def _as_known(self, path: str) -> Inode | None:
        """What our own latest change left at ``path``."""
        return None if path in self.negative else self.inodes.at(path)

    async def head_or_none(self, key: str) -> ObjectInfo | None:
        try:
            return await self._runner.run(self._runner.store.head, key)
        except NotFound:
            return None

    async def _dir_exists(self, path: str) -> bool:
        page = await self._runner.run(self._runner.store.list_page, self.keys.dir_prefix(path),
                                      max_keys=1)
        return bool(page.objects or page.prefixes)

    async def _stat_path(self, path: str, hint: DirEntry | None, since: int) -> Inode | None:
        """Ask S3 what ``path`` is; install and return its inode, or None if it does not exist
        (or what we made of it since ``since``: see ``overtaken``)."""
        if hint is not None and not hint.is_dir:
            return await self._install_file(path, hint, since)
        file_info: ObjectInfo | None = None
        marker: ObjectInfo | None = None
        is_dir = hint is not None and hint.is_dir

        async def head_file() -> None:
            nonlocal file_info
            file_info = await self.head_or_none(self.keys.file_key(path))

        async def head_marker() -> None:
            nonlocal marker
            if self.cfg.posix_metadata or hint is None:
                marker = await self.head_or_none(self.keys.dir_prefix(path))

        async def list_dir() -> None:
            nonlocal is_dir
            is_dir = await self._dir_exists(path)

        await gather([head_marker] if hint is not None else [head_file, list_dir, head_marker])
        if self.overtaken(path, since):
            return self._as_known(path)
        if is_dir or marker is not None:
            if file_info is not None:
                self.listings.warn_conflict(path)
            return self.install_dir(path, marker)
        if file_info is None:
            return None
        return self.install_info(path, file_info)

    def install_dir(self, path: str, marker: ObjectInfo | None) -> Inode:
        existing = self.inodes.at(path)
        if (marker is None and existing is not None and existing.is_dir
                and existing.etag is None):
            existing.valid_until = self.fresh_until()  # implicit before, implicit still
            existing.provisional = False
            return existing
        md = dict(marker.metadata or {}) if marker else None
        lm = marker.last_modified if marker else time.time()
        attrs = self._attrs_for(is_dir=True, size=0, last_modified=lm, metadata=md)
        return self.install(path, attrs, marker.etag if marker else None, md,
                            marker.last_modified if marker else None)

    def install_info(self, path: str, info: ObjectInfo) -> Inode:
        md = dict(info.metadata or {})
        if info.size == 0 and (info.content_type == LEGACY_DIR_TYPE or stat.S_ISDIR(
                parse_mode(md.get("mode")) or 0)):
            # An old s3fs directory object (no trailing "/"): shown as the directory, never
            # cached as a file's metadata, and removed with the directory (rmdir, rename).
            self.listings.legacy_markers[path] = info.key
            return self.install_dir(path, info)
        attrs = self._attrs_for(is_dir=False, size=info.size, last_modified=info.last_modified,
                                metadata=md)
        self.meta.put(info.key, info.etag, info.last_modified, md)
        return self.install(path, attrs, info.etag, md, info.last_modified)

    async def _install_file(self, path: str, entry: DirEntry, since: int) -> Inode | None:
        """A file seen in a listing: metadata from the cache by ETag, else one HEAD."""
        node = self.install_known(path, entry)
        if node is not None:
            return node
        info = await self._describe_listed(self.keys.file_key(path), entry.size)
        if self.overtaken(path, since):
            return self._as_known(path)
        if info is None:
            return None
        return self.install_info(path, info)

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
            return await self.head_or_none(key)
        try:
            info, head = await self._runner.run(self._runner.store.peek, key, PEEK_MAX)
        except NotFound:
            return None
        if len(head) == info.size:
            self.peeked[(key, info.etag)] = head
        return info

    def take_peeked(self, key: str, etag: str | None) -> bytes | None:
        """The whole content of this version of ``key`` if a lookup fetched it lately (see
        ``_describe_listed``); it is handed out once."""
        return self.peeked.pop((key, etag), None) if etag else None

    def install_known(self, path: str, entry: DirEntry) -> Inode | None:
        """Install a listed file if that needs no request: its metadata is cached for this
        version, or no metadata is wanted (``no_posix_metadata``). Else None."""
        if entry.etag is None:
            return None
        key = self.keys.file_key(path)
        md = self.meta.get(key, entry.etag, entry.last_modified)
        if md is None and not self.cfg.posix_metadata:
            md = {}
        if md is None:
            return None
        # Our own upload, listed: from now on its entry matches this version only (as in
        # ``unchanged``), so a later change of its metadata elsewhere is noticed.
        self.meta.adopt(key, entry.etag, entry.last_modified)
        attrs = self._attrs_for(is_dir=False, size=entry.size, last_modified=entry.last_modified,
                                metadata=md)
        return self.install(path, attrs, entry.etag, md, entry.last_modified)

    def unchanged(self, node: Inode, entry: DirEntry) -> bool:
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

    async def resolve(self, parent_path: str, name: str) -> Inode | None:
        """The inode at ``parent/name`` if it exists (fresh enough), else None."""
        path = join(parent_path, name)
        node = self.inodes.at(path)
        if node is not None and node.provisional:
            await self.describer.wait(path)  # a walk may be describing it
            node = self.inodes.at(path)  # (see _ask)
        if node is not None and (node.valid_until > trio.current_time() or
                                 node.open_count or node.etag is None and not node.is_dir):
            return node
        if path in self.negative or hidden(self.keys, path):
            return None
        memo = self.unreachable
        if memo is not None and (why := memo.get(path)) is not None:
            raise Unavailable(why)
        try:
            return await self._ask(path, parent_path, name)
        except Unavailable as exc:
            if memo is not None:
                memo[path] = str(exc)
            raise

    async def _ask(self, path: str, parent_path: str, name: str) -> Inode | None:
        """``resolve``'s question to the listing or the bucket, for a path not cached."""
        since = self.listings.seq
        lst = await self.listings.for_lookup(parent_path, name)
        # The inode found before may be gone meanwhile: dropped once the kernel forgot it (a
        # lookup of the same name can be under way then), or replaced. Handing it out would
        # give the kernel a number the table no longer knows.
        node = self.inodes.at(path)
        if lst is None:
            found = await self._stat_name(parent_path, name, since)
        elif (entry := lst.entries.get(name)) is None:
            found = None
        elif node is not None and self.unchanged(node, entry):
            node.valid_until = self.fresh_until()
            found = node
        elif node is not None and node.provisional and await self.describer.describe_provisional(
                parent_path, name, self) and not node.provisional and node is self.inodes.at(path):
            found = node  # described by the shared index or with its neighbours
        else:
            found = await self._stat_path(path, entry, since)
        if found is None:
            if node is not None:
                self.inodes.detach(node)
            self.negative[path] = True
        return found
