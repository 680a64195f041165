"""The filesystem core: POSIX operations on a bucket, FUSE-agnostic and async.

``Filesystem`` methods take inode numbers and names, return ``Inode`` objects or data, and raise
``s3mount.errors`` types only (each carries its errno). The FUSE adapter (``fuse_ops``) is a thin
translation on top; tests drive this class directly as well as through real mounts.

Concurrency protocol:

* Everything here runs in the one trio thread; store calls (blocking boto3) run in worker threads via
  ``_run`` under a ``CapacityLimiter`` matched to botocore's connection pool. No trio lock is held
  across anything but our own awaits.
* Per-inode state of open files (``OpenFile``) is guarded by its ``lock``: loading the object into
  staging, writes, truncation and uploads are serialised per file, so an upload never sees a
  half-applied write and a write never lands in a file being uploaded.
* Directory listings are cached for ``dir_timeout`` and updated in place by our own mutations, so a
  ``tar -x`` that creates 300 files in a fresh directory answers its lookups locally.

See docs/SEMANTICS.md for the user-visible rules this implements.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio
from cachetools import TTLCache

from ..errors import FsError, NotFound, S3MountError
from ..store.base import ListPage, ObjectInfo, ObjectStore
from .attrs import Attrs, Defaults, attrs_from_object, metadata_for
from .inodes import ROOT_INODE, Inode, InodeTable
from .metacache import MetaCache
from .paths import KeyMapper, decode_name, join, split
from .reader import Reader
from .staging import Record, StagingArea, StagingFile
from .streaming import StreamingUpload
from .writeback import Writeback

log = logging.getLogger(__name__)

T = TypeVar("T")

# Metadata names we interpret; everything else on an object is carried along untouched.
OWN_METADATA = frozenset({"mode", "uid", "gid", "mtime", "ctime", "atime"})
HEAD_PARALLELISM = 32
STREAM_PARALLEL = 4
SYMLINK_MAX = 4096


@dataclass
class FsConfig:
    """What the core needs to know about the mount (derived from MountOptions by mount.py)."""

    defaults: Defaults
    read_only: bool = False
    attr_timeout: float = 1.0
    dir_timeout: float = 1.0
    neg_timeout: float = 1.0
    posix_metadata: bool = True
    part_size: int = 8 * 1024 * 1024
    store_concurrency: int = 32
    async_upload: bool = False
    cache_limit: int = 4096 * 1024 * 1024
    """Bytes of staged data above which writers wait for background uploads to free space."""
    shutdown_timeout: float = 3600.0


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


@dataclass
class OpenFile:
    """State of a file that has open handles (shared by all of them)."""

    node: Inode
    staging: StagingFile | None = None
    loaded: bool = False
    """The staging file holds the whole current content (reads and writes go there)."""
    dirty: bool = False
    handles: int = 0
    lock: trio.Lock = field(default_factory=trio.Lock)
    base_etag: str | None = None
    seq_end: int | None = None
    """While the file has been written strictly front to back from empty: how far. None once a
    write landed elsewhere (or the file was not empty to begin with)."""
    stream: StreamingUpload | None = None
    explicit_mtime: bool = False
    """An mtime was set by utimens (not just moved by writes): it must be stored exactly."""


@dataclass
class Handle:
    fh: int
    node: Inode
    of: OpenFile
    reader: Reader | None = None


@dataclass
class DirHandle:
    node: Inode
    entries: list[tuple[str, Inode]]


@dataclass
class AttrChanges:
    """What a setattr asks for; None fields are left alone."""

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    mtime_ns: int | None = None
    ctime_ns: int | None = None


class Filesystem:
    """POSIX semantics over one ``ObjectStore`` (see module docstring)."""

    def __init__(self, store: ObjectStore, mapper: KeyMapper, config: FsConfig,
                 staging: StagingArea, metacache: MetaCache | None = None) -> None:
        self.store = store
        self.keys = mapper
        self.cfg = config
        self.staging = staging
        self.meta = metacache or MetaCache(None)
        now = time.time_ns()
        d = config.defaults
        self.inodes = InodeTable(Attrs(stat.S_IFDIR | d.dir_mode, d.uid, d.gid, 0, now, now))
        self.limiter = trio.CapacityLimiter(config.store_concurrency)
        self.listings: dict[str, Listing] = {}
        self.negative: TTLCache[str, bool] = TTLCache(maxsize=65536, ttl=config.neg_timeout,
                                                       timer=trio.current_time)
        self.open_files: dict[int, OpenFile] = {}
        self.handles: dict[int, Handle] = {}
        self.dir_handles: dict[int, DirHandle] = {}
        self._next_fh = 1
        self.nursery: trio.Nursery | None = None
        self._warned_conflicts: set[str] = set()
        self.large_dirs: set[str] = set()
        self.writeback = Writeback(self)
        self._space = trio.Event()

    # -- plumbing ------------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking store call in a worker thread, bounded by the limiter."""
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs),
                                             limiter=self.limiter)

    def _node(self, ino: int) -> Inode:
        node = self.inodes.get(ino)
        if node is None:
            raise FsError(f"stale inode {ino}", errno=errno.ESTALE)
        return node

    def _dir_path(self, ino: int) -> str:
        node = self._node(ino)
        if not node.is_dir:
            raise FsError("not a directory", errno=errno.ENOTDIR)
        if node.path is None:
            raise FsError("directory was removed", errno=errno.ENOENT)
        return node.path

    def _writable(self) -> None:
        if self.cfg.read_only:
            raise FsError("read-only mount", errno=errno.EROFS)

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def _fresh_until(self) -> float:
        return trio.current_time() + self.cfg.attr_timeout

    def _attrs_for(self, *, is_dir: bool, size: int, last_modified: float,
                   metadata: dict[str, str] | None) -> Attrs:
        return attrs_from_object(kind=stat.S_IFDIR if is_dir else stat.S_IFREG, size=size,
                                 last_modified=last_modified, metadata=metadata,
                                 defaults=self.cfg.defaults)

    def _install(self, path: str, attrs: Attrs, etag: str | None,
                 metadata: dict[str, str] | None) -> Inode:
        node = self.inodes.put(path, attrs, etag=etag)
        node.valid_until = self._fresh_until()
        node.extra = {k: v for k, v in (metadata or {}).items() if k not in OWN_METADATA}
        if not node.is_symlink:
            node.symlink_target = None
        self.negative.pop(path, None)
        return node

    # -- listings ------------------------------------------------------------------------------

    def _cached_listing(self, path: str) -> Listing | None:
        lst = self.listings.get(path)
        if lst is not None and lst.expires > trio.current_time():
            return lst
        return None

    def _listing_add(self, parent: str, entry: DirEntry) -> None:
        lst = self.listings.get(parent)
        if lst is not None:
            lst.entries[entry.name] = entry

    def _listing_remove(self, parent: str, name: str) -> None:
        lst = self.listings.get(parent)
        if lst is not None:
            lst.entries.pop(name, None)

    async def _list_dir(self, path: str) -> Listing:
        """The entries of directory ``path`` (all pages), cached for ``dir_timeout``."""
        cached = self._cached_listing(path)
        if cached is not None:
            return cached
        prefix = self.keys.dir_prefix(path)
        pages = []
        token = None
        while True:
            page = await self._run(self.store.list_page, prefix, token=token)
            pages.append(page)
            token = page.next_token
            if not token:
                break
        return self._remember_listing(path, pages)

    async def _listing_for_lookup(self, path: str) -> Listing | None:
        """A listing of ``path`` to answer a lookup from, if one LIST page holds the directory.

        One LIST answers a lookup (hit or miss) and refreshes every sibling at once, where asking
        for a single name costs a HEAD and a LIST. Directories larger than one page are remembered
        as large and looked up name by name instead.
        """
        cached = self._cached_listing(path)
        if cached is not None or path in self.large_dirs:
            return cached
        page = await self._run(self.store.list_page, self.keys.dir_prefix(path))
        if page.next_token:
            self.large_dirs.add(path)
            return None
        return self._remember_listing(path, [page])

    def _remember_listing(self, path: str, pages: list[ListPage]) -> Listing:
        prefix = self.keys.dir_prefix(path)
        entries: dict[str, DirEntry] = {}
        for page in pages:
            for p in page.prefixes:
                name = self.keys.child_name(prefix, p)
                if name is not None:
                    if name in entries and not entries[name].is_dir:
                        self._warn_conflict(join(path, name))
                    entries[name] = DirEntry(name, True)
            for o in page.objects:
                name = self.keys.child_name(prefix, o.key)
                if name is None:
                    if o.key != prefix:
                        log.debug("skipping key %r: not representable as a path", o.key)
                    continue
                if name in entries and entries[name].is_dir:
                    self._warn_conflict(join(path, name))
                    continue
                entries[name] = DirEntry(name, False, o.size, o.etag, o.last_modified)
        # Files created here but not uploaded yet exist too (close-to-open: they will be).
        for name, of in self._pending_children(path):
            entries.setdefault(name, DirEntry(name, False, of.node.attrs.size, None, time.time()))
        lst = Listing(entries, trio.current_time() + self.cfg.dir_timeout)
        self.listings[path] = lst
        return lst

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

    # -- finding out what a path is ------------------------------------------------------------

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
        if marker is None and existing is not None and existing.is_dir:
            existing.valid_until = self._fresh_until()
            return existing
        md = dict(marker.metadata or {}) if marker else None
        lm = marker.last_modified if marker else time.time()
        attrs = self._attrs_for(is_dir=True, size=0, last_modified=lm, metadata=md)
        return self._install(path, attrs, marker.etag if marker else None, md)

    def _install_info(self, path: str, info: ObjectInfo) -> Inode:
        md = dict(info.metadata or {})
        attrs = self._attrs_for(is_dir=False, size=info.size, last_modified=info.last_modified,
                                metadata=md)
        self.meta.put(info.key, info.etag, md)
        node = self._install(path, attrs, info.etag, md)
        return node

    async def _install_file(self, path: str, entry: DirEntry) -> Inode | None:
        """A file seen in a listing: metadata from the cache by ETag, else one HEAD."""
        key = self.keys.file_key(path)
        md = self.meta.get(key, entry.etag) if entry.etag else None
        if md is None and not self.cfg.posix_metadata and entry.etag is not None:
            md = {}
        if md is None:
            info = await self._head_or_none(key)
            if info is None:
                return None
            return self._install_info(path, info)
        attrs = self._attrs_for(is_dir=False, size=entry.size, last_modified=entry.last_modified,
                                metadata=md)
        return self._install(path, attrs, entry.etag, md)

    @staticmethod
    def _unchanged(node: Inode, entry: DirEntry) -> bool:
        """Whether a listing entry shows the same object as ``node`` (metadata cannot change
        without the ETag changing; a directory's attributes are refreshed by opendir)."""
        if entry.is_dir or node.is_dir:
            return entry.is_dir == node.is_dir
        return entry.etag is not None and entry.etag == node.etag

    async def _resolve(self, parent_path: str, name: str) -> Inode | None:
        """The inode at ``parent/name`` if it exists (fresh enough), else None."""
        path = join(parent_path, name)
        node = self.inodes.at(path)
        if node is not None and (node.valid_until > trio.current_time() or
                                 node.open_count or node.etag is None and not node.is_dir):
            return node
        if path in self.negative:
            return None
        lst = await self._listing_for_lookup(parent_path)
        if lst is None:
            found = await self._stat_path(path)
        elif (entry := lst.entries.get(name)) is None:
            found = None
        elif node is not None and self._unchanged(node, entry):
            node.valid_until = self._fresh_until()
            found = node
        else:
            found = await self._stat_path(path, entry)
        if found is None:
            if node is not None:
                self.inodes.detach(node)
            self.negative[path] = True
        return found

    # -- operations: names ---------------------------------------------------------------------

    async def lookup(self, parent: int, raw_name: bytes) -> Inode:
        if raw_name == b".":
            return self._node(parent)
        if raw_name == b"..":
            p = self._dir_path(parent)
            return self.inodes.at(split(p)[0]) or self._node(ROOT_INODE)
        parent_path = self._dir_path(parent)
        name = decode_name(raw_name)
        self.keys.check_length(join(parent_path, name))
        node = await self._resolve(parent_path, name)
        if node is None:
            raise FsError("no such file or directory", errno=errno.ENOENT)
        node.lookups += 1
        return node

    def forget(self, items: list[tuple[int, int]]) -> None:
        for ino, count in items:
            self.inodes.forget(ino, count)

    async def getattr(self, ino: int) -> Inode:
        node = self._node(ino)
        if (ino == ROOT_INODE or node.path is None or node.open_count
                or node.valid_until > trio.current_time()):
            return node
        parent, name = split(node.path)
        fresh = await self._resolve(parent, name)
        if fresh is None:
            raise FsError("file was removed", errno=errno.ENOENT)
        if fresh is not node:
            # The path now holds a different kind of object; this inode is gone.
            raise FsError("file was replaced", errno=errno.ESTALE)
        return node

    async def readlink(self, ino: int) -> bytes:
        node = self._node(ino)
        if not node.is_symlink:
            raise FsError("not a symlink", errno=errno.EINVAL)
        if node.symlink_target is None:
            assert node.path is not None
            data = await self._run(self.store.get_range, self.keys.file_key(node.path), 0,
                                   SYMLINK_MAX)
            node.symlink_target = data.decode("utf-8", "surrogateescape")
        return node.symlink_target.encode("utf-8", "surrogateescape")

    async def _check_new_name(self, parent: int, raw_name: bytes, *, is_dir: bool = False
                              ) -> tuple[str, str]:
        """Validate a name about to be created; EEXIST if taken. Returns (parent path, path)."""
        self._writable()
        parent_path = self._dir_path(parent)
        name = decode_name(raw_name)
        path = join(parent_path, name)
        self.keys.check_length(path, is_dir=is_dir)
        if await self._resolve(parent_path, name) is not None:
            raise FsError("file exists", errno=errno.EEXIST)
        return parent_path, path

    def _new_attrs(self, kind: int, mode: int, uid: int, gid: int, size: int = 0) -> Attrs:
        now = time.time_ns()
        return Attrs(kind | (mode & 0o7777), uid, gid, size, now, now)

    async def mkdir(self, parent: int, raw_name: bytes, mode: int, uid: int, gid: int) -> Inode:
        parent_path, path = await self._check_new_name(parent, raw_name, is_dir=True)
        attrs = self._new_attrs(stat.S_IFDIR, mode, uid, gid)
        md = metadata_for(attrs)
        etag = await self._run(self.store.put, self.keys.dir_prefix(path), b"", metadata=md,
                               content_type="application/x-directory")
        node = self._install(path, attrs, etag, md)
        node.lookups += 1
        self._listing_add(parent_path, DirEntry(split(path)[1], True))
        # A directory we just made is empty: answer lookups inside it without asking S3.
        self.listings[path] = Listing({}, trio.current_time() + self.cfg.dir_timeout)
        return node

    async def symlink(self, parent: int, raw_name: bytes, target: bytes, uid: int,
                      gid: int) -> Inode:
        parent_path, path = await self._check_new_name(parent, raw_name)
        if len(target) > SYMLINK_MAX:
            raise FsError("symlink target too long", errno=errno.ENAMETOOLONG)
        attrs = self._new_attrs(stat.S_IFLNK, 0o777, uid, gid, size=len(target))
        md = metadata_for(attrs)
        etag = await self._run(self.store.put, self.keys.file_key(path), target, metadata=md,
                               content_type="application/octet-stream")
        node = self._install(path, attrs, etag, md)
        node.symlink_target = target.decode("utf-8", "surrogateescape")
        node.lookups += 1
        self._listing_add(parent_path, DirEntry(split(path)[1], False, len(target), etag,
                                                time.time()))
        return node

    async def unlink(self, parent: int, raw_name: bytes) -> None:
        self._writable()
        parent_path = self._dir_path(parent)
        name = decode_name(raw_name)
        node = await self._resolve(parent_path, name)
        if node is None:
            raise FsError("no such file", errno=errno.ENOENT)
        if node.is_dir:
            raise FsError("is a directory", errno=errno.EISDIR)
        assert node.path is not None
        of = self.open_files.get(node.ino)
        if of is not None:
            async with of.lock:
                await self._stop_stream(of)
                of.dirty = False  # nothing of it may reach the bucket any more
                self._save_record(of, dirty=False)
        if node.etag is not None:
            await self._run(self.store.delete, self.keys.file_key(node.path))
        self._listing_remove(parent_path, name)
        self.meta.drop(self.keys.file_key(node.path))
        self.negative[node.path] = True
        self.inodes.detach(node)

    async def rmdir(self, parent: int, raw_name: bytes) -> None:
        self._writable()
        parent_path = self._dir_path(parent)
        name = decode_name(raw_name)
        node = await self._resolve(parent_path, name)
        if node is None:
            raise FsError("no such directory", errno=errno.ENOENT)
        if not node.is_dir:
            raise FsError("not a directory", errno=errno.ENOTDIR)
        assert node.path is not None
        await self._check_empty(node.path)
        await self._run(self.store.delete, self.keys.dir_prefix(node.path))
        self._listing_remove(parent_path, name)
        self.listings.pop(node.path, None)
        self.negative[node.path] = True
        self.inodes.detach(node)

    async def _check_empty(self, path: str) -> None:
        prefix = self.keys.dir_prefix(path)
        page = await self._run(self.store.list_page, prefix, max_keys=2)
        if page.prefixes or any(o.key != prefix for o in page.objects) or \
                self._pending_children(path):
            raise FsError("directory not empty", errno=errno.ENOTEMPTY)

    async def link(self, ino: int, new_parent: int, raw_name: bytes) -> Inode:
        raise FsError("hard links are not supported on S3", errno=errno.EPERM)

    async def rename(self, parent_old: int, raw_old: bytes, parent_new: int, raw_new: bytes,
                     flags: int) -> None:
        self._writable()
        if flags & RENAME_EXCHANGE:
            raise FsError("RENAME_EXCHANGE cannot be done atomically on S3", errno=errno.EINVAL)
        old_parent = self._dir_path(parent_old)
        new_parent = self._dir_path(parent_new)
        old_name, new_name = decode_name(raw_old), decode_name(raw_new)
        src = await self._resolve(old_parent, old_name)
        if src is None:
            raise FsError("no such file", errno=errno.ENOENT)
        assert src.path is not None
        new_path = join(new_parent, new_name)
        if new_path == src.path:
            return
        self.keys.check_length(new_path, is_dir=src.is_dir)
        if src.is_dir and (new_path + "/").startswith(src.path + "/"):
            raise FsError("cannot move a directory into itself", errno=errno.EINVAL)
        dst = await self._resolve(new_parent, new_name)
        if dst is not None:
            if flags & RENAME_NOREPLACE:
                raise FsError("target exists", errno=errno.EEXIST)
            if dst.is_dir and not src.is_dir:
                raise FsError("target is a directory", errno=errno.EISDIR)
            if src.is_dir and not dst.is_dir:
                raise FsError("target is not a directory", errno=errno.ENOTDIR)
            if dst.is_dir:
                assert dst.path is not None
                await self._check_empty(dst.path)
        if src.is_dir:
            await self._rename_dir(src.path, new_path)
        else:
            await self._rename_file(src, new_path)
        if dst is not None and dst.is_dir and dst.path is not None:
            await self._run(self.store.delete, self.keys.dir_prefix(dst.path))
        old_path = src.path
        for p in [p for p in self.listings if p == old_path or p.startswith(old_path + "/")]:
            self.listings.pop(p)
        self.inodes.move(old_path, new_path)
        self._listing_remove(old_parent, old_name)
        self._listing_add(new_parent, DirEntry(new_name, src.is_dir, src.attrs.size, src.etag,
                                               time.time()))
        self.negative[old_path] = True
        self.negative.pop(new_path, None)
        src.valid_until = self._fresh_until()

    async def _rename_file(self, src: Inode, new_path: str) -> None:
        assert src.path is not None
        of = self.open_files.get(src.ino)
        if of is not None and of.dirty:
            await self._upload(of)  # copy what the writer has so far, not an older version
        old_key, new_key = self.keys.file_key(src.path), self.keys.file_key(new_path)
        if src.etag is None:
            return  # nothing in the bucket yet; the pending upload goes to the new name
        # CopyObject replaces the target in one step, so a reader of the target sees the old or
        # the new content, never a missing or partial file.
        src.etag = await self._run(self.store.copy, old_key, new_key, size=src.attrs.size)
        await self._run(self.store.delete, old_key)
        self.meta.drop(old_key)

    async def _rename_dir(self, old: str, new: str) -> None:
        for of in list(self.open_files.values()):
            p = of.node.path
            if p is not None and p.startswith(old + "/") and of.dirty:
                await self._upload(of)
        old_prefix, new_prefix = self.keys.dir_prefix(old), self.keys.dir_prefix(new)
        keys: list[ObjectInfo] = []
        token = None
        while True:
            page = await self._run(self.store.list_page, old_prefix, delimiter=None, token=token)
            keys += page.objects
            token = page.next_token
            if not token:
                break
        if not any(o.key == old_prefix for o in keys):
            # An implicit directory: give the new one a marker so it exists even if empty.
            node = self.inodes.at(old)
            md = metadata_for(node.attrs) if node else {}
            await self._run(self.store.put, new_prefix, b"", metadata=md,
                            content_type="application/x-directory")
        # Copy everything first, then delete: a failure half-way leaves both trees, never a loss.
        await gather([functools.partial(self._run, self.store.copy, o.key,
                                        new_prefix + o.key[len(old_prefix):], size=o.size)
                      for o in keys], limit=HEAD_PARALLELISM)
        await gather([functools.partial(self._run, self.store.delete, o.key) for o in keys],
                     limit=HEAD_PARALLELISM)
        for o in keys:
            self.meta.drop(o.key)

    # -- operations: attributes ----------------------------------------------------------------

    async def setattr(self, ino: int, ch: AttrChanges, fh: int | None) -> Inode:
        self._writable()
        node = self._node(ino)
        of = self.open_files.get(ino)
        if ch.size is not None:
            if node.is_dir:
                raise FsError("is a directory", errno=errno.EISDIR)
            await self._truncate(node, ch.size)
        new = Attrs(**node.attrs.__dict__)
        if ch.mode is not None:
            new.mode = stat.S_IFMT(new.mode) | (ch.mode & 0o7777)
        if ch.uid is not None:
            new.uid = ch.uid
        if ch.gid is not None:
            new.gid = ch.gid
        if ch.mtime_ns is not None:
            new.mtime_ns = ch.mtime_ns
            if of is not None:
                of.explicit_mtime = True
        if ch.mode is not None or ch.uid is not None or ch.gid is not None or \
                ch.mtime_ns is not None:
            new.ctime_ns = ch.ctime_ns or time.time_ns()
        if new == node.attrs:
            return node
        of = self.open_files.get(ino)
        if of is not None and (of.dirty or node.etag is None):
            node.attrs = new  # goes up with the pending upload
            return node
        await self._write_metadata(node, new)
        return node

    async def _write_metadata(self, node: Inode, new: Attrs) -> None:
        """Persist changed attributes of a clean object: a copy onto itself, or a new marker."""
        if node.path is None:
            node.attrs = new
            return
        md = {**node.extra, **metadata_for(new)}
        if node.is_dir:
            if node.path == "":
                node.attrs = new  # the bucket root has no marker of its own
                return
            node.etag = await self._run(self.store.put, self.keys.dir_prefix(node.path), b"",
                                        metadata=md, content_type="application/x-directory")
        else:
            key = self.keys.file_key(node.path)
            node.etag = await self._run(self.store.copy, key, key, metadata=md,
                                        size=node.attrs.size)
            self.meta.put(key, node.etag, md)
        node.attrs = new
        node.valid_until = self._fresh_until()

    async def _truncate(self, node: Inode, size: int) -> None:
        own = node.ino not in self.open_files
        of = self._open_file(node)
        try:
            async with of.lock:
                await self._stop_stream(of)
                if size == 0:
                    self._fresh_staging(of)
                else:
                    await self._load(of)
                assert of.staging is not None
                of.staging.truncate(size)
                node.attrs.size = size
                node.attrs.mtime_ns = node.attrs.ctime_ns = time.time_ns()
                self._mark_dirty(of)
            if own:
                await self._upload(of)
        finally:
            if own:
                await self._close_file(of)

    async def statfs(self) -> dict[str, int]:
        # S3 has no capacity to report; answer "plenty" so tools that check free space proceed.
        blocks = 2**40 // 4096
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": blocks, "f_bfree": blocks,
                "f_bavail": blocks, "f_files": 2**32, "f_ffree": 2**32, "f_favail": 2**32,
                "f_namemax": 255}

    # -- directories ---------------------------------------------------------------------------

    async def opendir(self, ino: int) -> int:
        path = self._dir_path(ino)
        self.listings.pop(path, None)  # each opendir sees a current listing
        lst = await self._list_dir(path)
        entries: list[tuple[str, Inode]] = []
        todo: list[tuple[str, DirEntry]] = []
        for name in sorted(lst.entries):
            e = lst.entries[name]
            child = join(path, name)
            node = self.inodes.at(child)
            if node is not None and (node.open_count or self._unchanged(node, e)):
                node.valid_until = self._fresh_until()
                continue
            todo.append((name, e))
        await gather([functools.partial(self._stat_entry, join(path, name), e)
                      for name, e in todo], limit=HEAD_PARALLELISM)
        for name in sorted(lst.entries):
            node = self.inodes.at(join(path, name))
            if node is not None:
                entries.append((name, node))
        fh = self._new_fh()
        self.dir_handles[fh] = DirHandle(self._node(ino), entries)
        return fh

    async def _stat_entry(self, path: str, entry: DirEntry) -> None:
        try:
            await self._stat_path(path, entry)
        except S3MountError as exc:
            log.warning("cannot stat %r while listing: %s", path, exc)

    def readdir(self, fh: int, start: int) -> Iterator[tuple[str, Inode, int]]:
        """Entries from index ``start`` on, each with the index to continue after it (lazily:
        the kernel takes a buffer's worth per call)."""
        dh = self.dir_handles.get(fh)
        if dh is None:
            raise FsError("bad directory handle", errno=errno.EBADF)
        for i in range(start, len(dh.entries)):
            name, node = dh.entries[i]
            yield name, node, i + 1

    def releasedir(self, fh: int) -> None:
        self.dir_handles.pop(fh, None)

    # -- files ---------------------------------------------------------------------------------

    def _open_file(self, node: Inode) -> OpenFile:
        of = self.open_files.get(node.ino)
        if of is None:
            of = OpenFile(node, base_etag=node.etag)
            self.open_files[node.ino] = of
        of.handles += 1
        node.open_count += 1
        return of

    async def _close_file(self, of: OpenFile) -> None:
        of.handles -= 1
        of.node.open_count -= 1
        await self._settle(of)

    async def _settle(self, of: OpenFile) -> None:
        """Forget a file nobody has open once its data is safely stored (or no longer wanted);
        a dirty one stays, with its staging file, until the writeback stores it."""
        if of.handles > 0 or of.dirty or self.open_files.get(of.node.ino) is not of:
            return
        del self.open_files[of.node.ino]
        if of.staging is not None:
            of.staging.discard()
            of.staging = None
        if of.node.path is None:
            self.inodes.detach(of.node)

    def _fresh_staging(self, of: OpenFile) -> None:
        if of.staging is None:
            of.staging = self.staging.new()
        of.staging.truncate(0)
        of.loaded = True

    async def _load(self, of: OpenFile) -> None:
        """Make the staging file hold the object's current content (caller holds of.lock)."""
        if of.loaded:
            return
        node = of.node
        if of.staging is None:
            of.staging = self.staging.new()
        if node.etag is not None and node.attrs.size > 0 and node.path is not None:
            with open(of.staging.path, "r+b") as out:
                await self._run(self.store.download, self.keys.file_key(node.path), out,
                                etag=node.etag, size=node.attrs.size)
        of.loaded = True

    def _mark_dirty(self, of: OpenFile) -> None:
        if not of.dirty:
            self._save_record(of, dirty=True)
        of.dirty = True

    def _save_record(self, of: OpenFile, *, dirty: bool, sync: bool = False) -> None:
        """Persist what the staging file belongs to, so a crash cannot orphan its data."""
        if of.node.path is None or of.staging is None:
            return
        if sync:
            of.staging.sync()
        of.staging.save_record(Record(self.keys.file_key(of.node.path),
                                      {**of.node.extra, **metadata_for(of.node.attrs)},
                                      of.base_etag, dirty=dirty))

    def _staged_bytes(self) -> int:
        return sum(of.node.attrs.size for of in self.open_files.values()
                   if of.staging is not None and of.dirty)

    def space_freed(self) -> None:
        self._space.set()
        self._space = trio.Event()

    def _stream_metadata(self, of: OpenFile) -> dict[str, str]:
        """What a streamed object stores: as ``metadata_for`` but without an mtime that only
        moved because of the writes (see streaming.py)."""
        md = {**of.node.extra, **metadata_for(of.node.attrs)}
        if not of.explicit_mtime:
            del md["mtime"], md["ctime"]
        return md

    async def _stream(self, of: OpenFile) -> None:
        """Send the complete parts of a sequentially written file (caller holds of.lock)."""
        assert of.seq_end is not None
        if self.cfg.async_upload or of.seq_end <= self.cfg.part_size or of.node.path is None:
            return
        if of.stream is None:
            assert of.staging is not None and self.nursery is not None
            of.stream = StreamingUpload(
                self.store, self._run, self.nursery, of.staging,
                self.keys.file_key(of.node.path), self._stream_metadata(of),
                part_size=self.cfg.part_size, parallel=STREAM_PARALLEL)
        await of.stream.advance(of.seq_end)

    async def _stop_stream(self, of: OpenFile) -> None:
        """The file is no longer written front to back: upload it the ordinary way at close."""
        of.seq_end = None
        if of.stream is not None:
            stream, of.stream = of.stream, None
            await stream.cancel()

    async def _wait_for_space(self, of: OpenFile) -> None:
        """Back-pressure: while staged data is over the cache limit and background uploads are
        under way to free it, writers wait (instead of failing with ENOSPC)."""
        while (self._staged_bytes() > self.cfg.cache_limit and self.writeback.pending()
               and not (self.writeback.pending() == 1 and of.dirty)):
            await self._space.wait()

    async def open(self, ino: int, flags: int) -> tuple[int, bool]:
        """Open a file; returns (fh, keep_cache)."""
        node = self._node(ino)
        if node.is_dir:
            raise FsError("is a directory", errno=errno.EISDIR)
        writing = flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC
        if writing:
            self._writable()
        keep_cache = node.open_count == 0 and node.etag is not None and \
            node.etag == node.kernel_cache_etag
        of = self._open_file(node)
        try:
            if flags & os.O_TRUNC:
                async with of.lock:
                    await self._stop_stream(of)
                    self._fresh_staging(of)
                    if of.handles == 1:
                        of.seq_end = 0
                    if node.attrs.size != 0 or node.etag is None:
                        node.attrs.size = 0
                        node.attrs.mtime_ns = node.attrs.ctime_ns = time.time_ns()
                    self._mark_dirty(of)
                keep_cache = False
        except BaseException:
            await self._close_file(of)
            raise
        fh = self._new_fh()
        self.handles[fh] = Handle(fh, node, of)
        node.kernel_cache_etag = node.etag
        return fh, keep_cache

    async def create(self, parent: int, raw_name: bytes, mode: int, flags: int, uid: int,
                     gid: int) -> tuple[int, Inode]:
        parent_path, path = await self._check_new_name(parent, raw_name)
        attrs = self._new_attrs(stat.S_IFREG, mode, uid, gid)
        node = self._install(path, attrs, None, None)
        node.lookups += 1
        of = self._open_file(node)
        self._fresh_staging(of)
        of.seq_end = 0
        self._mark_dirty(of)  # even with no write, close() must leave an (empty) object
        fh = self._new_fh()
        self.handles[fh] = Handle(fh, node, of)
        self._listing_add(parent_path, DirEntry(split(path)[1], False, 0, None, time.time()))
        return fh, node

    def _handle(self, fh: int) -> Handle:
        h = self.handles.get(fh)
        if h is None:
            raise FsError("bad file handle", errno=errno.EBADF)
        return h

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        h = self._handle(fh)
        of = h.of
        if of.loaded and of.staging is not None:
            async with of.lock:
                return of.staging.pread(size, offset)
        node = h.node
        if node.etag is None or node.path is None:
            return b""
        if h.reader is None:
            assert self.nursery is not None
            key, etag = self.keys.file_key(node.path), node.etag

            async def fetch(start: int, length: int) -> bytes:
                return await self._run(self.store.get_range, key, start, length, etag=etag)

            h.reader = Reader(fetch, node.attrs.size, self.nursery, part_size=self.cfg.part_size)
        return await h.reader.read(offset, size)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        h = self._handle(fh)
        of = h.of
        self._writable()
        await self._wait_for_space(of)
        async with of.lock:
            await self._load(of)
            assert of.staging is not None
            n = of.staging.pwrite(data, offset)
            node = h.node
            node.attrs.size = max(node.attrs.size, offset + n)
            node.attrs.mtime_ns = node.attrs.ctime_ns = time.time_ns()
            self._mark_dirty(of)
            if of.seq_end is not None:
                if offset == of.seq_end:
                    of.seq_end += n
                    await self._stream(of)
                else:
                    await self._stop_stream(of)
        if h.reader is not None:
            h.reader.close()
            h.reader = None
        return n

    async def flush(self, fh: int) -> None:
        """close(2) of one descriptor: store what is dirty (close-to-open), or with async_upload
        make it durable in the cache and queue it."""
        h = self._handle(fh)
        if not h.of.dirty:
            return
        if self.cfg.async_upload:
            self._save_record(h.of, dirty=True, sync=True)
            self.writeback.submit(h.of)
            return
        await self._upload_or_queue(h.of)

    async def fsync(self, fh: int) -> None:
        h = self._handle(fh)
        if h.of.dirty:
            await self._upload_or_queue(h.of)

    async def _upload_or_queue(self, of: OpenFile) -> None:
        """Upload now; if that fails, keep the data, retry in the background, and report it."""
        try:
            await self._upload(of)
        except S3MountError:
            self.writeback.submit(of, failed=True)
            raise

    async def release(self, fh: int) -> None:
        h = self.handles.pop(fh, None)
        if h is None:
            return
        if h.reader is not None:
            h.reader.close()
        of = h.of
        if of.dirty and of.handles == 1:
            if self.cfg.async_upload:
                self._save_record(of, dirty=True, sync=True)
                self.writeback.submit(of)
            else:
                try:
                    await self._upload_or_queue(of)
                except S3MountError as exc:
                    log.error("upload of %r failed (%s); the data is kept in %s and retried in "
                              "the background", h.node.path, exc,
                              of.staging.path if of.staging else "?")
        await self._close_file(of)

    async def _upload(self, of: OpenFile) -> None:
        """Store the staging file as the object (caller must not hold of.lock)."""
        async with of.lock:
            node = of.node
            if not of.dirty or node.path is None:
                return
            if of.staging is None:
                self._fresh_staging(of)
            assert of.staging is not None
            key = self.keys.file_key(node.path)
            self._save_record(of, dirty=True)
            etag, md = await self._finish_stream(of, key)
            if etag is None:
                md = {**node.extra, **metadata_for(node.attrs)}
                etag = await self._run(self.store.upload, key, of.staging.path, metadata=md)
            of.dirty = False
            of.base_etag = etag
            node.etag = etag
            node.valid_until = self._fresh_until()
            node.kernel_cache_etag = etag
            self.meta.put(key, etag, md)
            self._save_record(of, dirty=False)
            parent, name = split(node.path)
            self._listing_add(parent, DirEntry(name, False, node.attrs.size, etag, time.time()))

    async def _finish_stream(self, of: OpenFile, key: str
                             ) -> tuple[str | None, dict[str, str]]:
        """Complete a streamed upload if it still describes the file; (None, {}) otherwise."""
        # A writer that goes on appending after this upload (a flush from dup2+close, an fsync)
        # keeps streaming: a later stream starts again from offset 0, as the object must be whole.
        stream, of.stream = of.stream, None
        done_sequentially = of.seq_end == of.node.attrs.size
        if stream is None:
            return None, {}
        if not (done_sequentially and stream.key == key and stream.started):
            await stream.cancel()
            return None, {}
        try:
            etag = await stream.finish(of.node.attrs.size)
        except S3MountError as exc:
            log.warning("streamed upload of %r failed (%s); uploading it whole", key, exc)
            return None, {}
        md = self._stream_metadata(of)
        if md != stream.metadata:  # chmod, chown or utimens after the upload started
            etag = await self._run(self.store.copy, key, key, metadata=md,
                                   size=of.node.attrs.size)
        return etag, md

    async def flush_all(self) -> int:
        """Store every dirty file (unmount, SIGTERM); returns how many could not be stored.

        What cannot be stored stays in the cache directory with its record, and the next mount
        of the same bucket uploads it. Uploads run here directly (not through the writeback
        task), so this works while the mount is being torn down.
        """
        async def one(of: OpenFile) -> None:
            try:
                await self._upload(of)
            except S3MountError as exc:
                log.error("could not upload %r before unmount (%s); it stays in %s for the next "
                          "mount", of.node.path, exc, of.staging.path if of.staging else "?")
                return
            await self._settle(of)

        dirty = [of for of in self.open_files.values() if of.dirty]
        await gather([functools.partial(one, of) for of in dirty], limit=8)
        return sum(1 for of in self.open_files.values() if of.dirty)

    def pending_uploads(self) -> int:
        return sum(1 for of in self.open_files.values() if of.dirty)

    def invalidate_key(self, key: str) -> None:
        """Something changed ``key`` outside the normal paths (crash recovery): forget what we
        knew about its directory so the next lookup asks the bucket."""
        if key.startswith(self.keys.prefix):
            parent = split(key[len(self.keys.prefix):])[0]
            self.listings.pop(parent, None)


RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


async def gather(thunks: list[Callable[[], Awaitable[Any]]], *, limit: int = 64) -> None:
    """Run ``thunks`` concurrently, at most ``limit`` at once; re-raise the first error as itself.

    (A trio nursery would wrap errors in an ExceptionGroup, and the FUSE adapter must see the
    errno-carrying error to answer with the right errno.)
    """
    errors: list[BaseException] = []
    sem = trio.Semaphore(limit)

    async def one(thunk: Callable[[], Awaitable[Any]]) -> None:
        async with sem:
            try:
                await thunk()
            except Exception as exc:  # noqa: BLE001 - re-raised below
                errors.append(exc)

    async with trio.open_nursery() as n:
        for t in thunks:
            n.start_soon(one, t)
    if errors:
        raise errors[0]
