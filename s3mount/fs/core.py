"""The filesystem core: POSIX operations on a bucket, FUSE-agnostic and async.

``Filesystem`` methods take inode numbers and names, return ``Inode`` objects or data, and raise
``s3mount.errors`` types only (each carries its errno). The FUSE adapter (``fuse_ops``) is a thin
translation on top; tests drive this class directly as well as through real mounts.

This module holds the state and the operations on names (mkdir, unlink, rename, setattr, readdir,
...); finding out what a path is lives in ``namespace`` and file data (open, read, write, uploads)
in ``files``, both mixed into ``Filesystem``.

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
import math
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import trio
from cachetools import TTLCache

from ..errors import FsError, NotFound, S3MountError
from ..store.base import ObjectInfo, ObjectStore, operation_started
from .attrs import (
    SPECIAL_TYPES,
    USER_METADATA_MAX,
    Attrs,
    Defaults,
    acl_mode,
    attrs_from_object,
    decode_xattrs,
    encode_xattrs,
    metadata_for,
    metadata_size,
)
from .budget import Budget
from .concurrency import gather
from .files import FileData
from .inodes import ROOT_INODE, Inode, InodeTable
from .listedattrs import ListedAttrs
from .metacache import MetaCache
from .namespace import DirEntry, Listing, Namespace, Scan, Window
from .openfile import Handle, OpenFile
from .paths import KeyMapper, decode_name, join, split
from .sharedindex import SharedIndex, hidden
from .staging import StagingArea
from .writeback import Writeback

log = logging.getLogger(__name__)

T = TypeVar("T")

# Metadata names we interpret; everything else on an object is carried along untouched.
OWN_METADATA = frozenset({"mode", "uid", "gid", "mtime", "ctime", "atime", "rdev"})
XATTR_KEY = "xattr"
"""s3fs's metadata name for extended attributes (kept in ``Inode.extra``, see ``setxattr``)."""
ACL_ACCESS = "system.posix_acl_access"
ACL_XATTRS = frozenset({ACL_ACCESS, "system.posix_acl_default"})
"""POSIX ACLs are stored like other attributes (for tools that copy them), not enforced; an access
ACL sets the mode's permission bits, as it does on a local filesystem (see ``acl_mode``)."""
HEAD_PARALLELISM = 32
SYMLINK_MAX = 4096
PEEKED_BYTES = 8 * 1024 * 1024
"""Bound of ``Filesystem.peeked``: a body dropped costs its reader the GET it would have made."""


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
    """Store calls in flight at once (worker threads): mount.py sets it to the store's connection
    pool, since a call beyond it would only wait in the pool for a connection."""
    async_upload: bool = False
    cache_limit: int = 4096 * 1024 * 1024
    """Bytes of staged data above which writers wait for background uploads to free space."""
    buffer_limit: int = 384 * 1024 * 1024
    """Bytes of file data in memory for transfers: a third for read prefetch, the rest for upload
    parts in flight (see ``budget``). At the default, uploads get what the connection pool lets
    be in flight anyway (32 parts of 8 MiB), so they are bounded without being slowed: a
    half-size upload budget made eight files written at once 30% slower."""
    shared_index: bool = True
    """Read the shared attribute index in the bucket, and write it unless read-only."""


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
    atime_ns: int | None = None


class Filesystem(Namespace, ListedAttrs, FileData):
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
        mtime, ctime = self.meta.dir_times(mapper.dir_prefix("")) or (now, now)
        self.inodes = InodeTable(Attrs(stat.S_IFDIR | d.dir_mode, d.uid, d.gid, 0, mtime, ctime))
        self.limiter = trio.CapacityLimiter(config.store_concurrency)
        self.listings: dict[str, Listing] = {}
        self.negative: TTLCache[str, bool] = TTLCache(maxsize=65536, ttl=config.neg_timeout,
                                                       timer=trio.current_time)
        # Small files fetched whole by a lookup, until their reader takes them (by key and ETag),
        # for as long as the attributes that lookup gave are trusted.
        self.peeked: TTLCache[tuple[str, str], bytes] = TTLCache(
            maxsize=PEEKED_BYTES, ttl=config.attr_timeout, timer=trio.current_time, getsizeof=len)
        self.read_budget = Budget(config.buffer_limit // 3)
        self.upload_budget = Budget(config.buffer_limit - config.buffer_limit // 3)
        self.open_files: dict[int, OpenFile] = {}
        self.handles: dict[int, Handle] = {}
        self.dir_handles: dict[int, DirHandle] = {}
        self._next_fh = 1
        self.nursery: trio.Nursery | None = None
        self._warned_conflicts: set[str] = set()
        self._seq = 0  # counts our own directory changes (see Namespace._journal)
        self._changes: dict[str, list[tuple[int, str, DirEntry | None]]] = {}
        self.large_dirs: set[str] = set()  # directories larger than one LIST page
        self.large_dir_lookups: dict[str, int] = {}  # names looked up singly since listed
        self.windows: dict[str, Window] = {}  # big directory -> its latest look-ahead LIST
        self.scans: dict[str, Scan] = {}  # big directory -> its latest lookup
        # Directory path -> key of another tool's marker for it (``dir`` or ``dir_$folder$``),
        # deleted with the directory.
        self.legacy_markers: dict[str, str] = {}
        self.writeback = Writeback(self)
        self.shared = SharedIndex(
            self._run, store, mapper, self.meta,
            mode="off" if not config.shared_index else "ro" if config.read_only else "rw")
        self.meta.listener = self.shared.changed
        self._describing: dict[str, trio.Event] = {}  # provisional path -> its batch (listedattrs)
        self._walks: dict[str, float] = {}  # dir -> time of its last provisional lookup
        self._space = trio.Event()

    # -- plumbing ------------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking store call in a worker thread, bounded by the limiter. The call's
        ``timeout`` counts from now (the thread copies this context), not from when a thread
        is free: an operation queued behind others on a silent server still ends in time."""
        operation_started.set(time.monotonic())
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
                 metadata: dict[str, str] | None, last_modified: float | None = None) -> Inode:
        kept = self.meta.dir_times(self.keys.dir_prefix(path)) \
            if attrs.kind == stat.S_IFDIR else None
        if kept is not None and kept[0] >= attrs.mtime_ns:
            # Changes made in it here are newer than its marker says (see _touch_dir), unless
            # the marker was written since.
            attrs.mtime_ns, attrs.ctime_ns = kept[0], max(kept[1], attrs.ctime_ns)
        old = self.inodes.at(path)
        if old is not None and old.etag != etag:
            old.symlink_target = None  # another object now: read its target again
        node = self.inodes.put(path, attrs, etag=etag)
        node.s3_mtime = last_modified
        node.valid_until = self._fresh_until()
        node.extra = {k: v for k, v in (metadata or {}).items() if k not in OWN_METADATA}
        node.provisional = False
        if not node.is_symlink:
            node.symlink_target = None
        if self.negative:  # (a TTLCache pop costs more than all the rest of this method)
            self.negative.pop(path, None)
        return node

    def _touch_dir(self, path: str, now: int | None = None) -> None:
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
        lst = self.listings.get(node.path)
        return 2 + (sum(1 for e in lst.entries.values() if e.is_dir) if lst else 0)

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
            key = self.keys.file_key(node.path)
            # The lookup that found the link has usually fetched its target already.
            data = self._take_peeked(key, node.etag)
            if data is None:
                data = await self._run(self.store.get_range, key, 0, SYMLINK_MAX)
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
        if hidden(self.keys, path):
            raise FsError("name reserved for the shared index", errno=errno.EPERM)
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
        self.meta.drop_dir_times(self.keys.dir_prefix(path))  # of a directory removed before
        node = self._install(path, attrs, etag, md)
        node.lookups += 1
        self._listing_add(parent_path, DirEntry(split(path)[1], True))
        self._touch_dir(parent_path, attrs.mtime_ns)
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
        self.meta.put(self.keys.file_key(path), etag, None, md)
        node = self._install(path, attrs, etag, md)
        node.symlink_target = target.decode("utf-8", "surrogateescape")
        node.lookups += 1
        self._listing_add(parent_path, DirEntry(split(path)[1], False, len(target), etag,
                                                time.time()))
        self._touch_dir(parent_path, attrs.mtime_ns)
        return node

    async def mknod(self, parent: int, raw_name: bytes, mode: int, rdev: int, uid: int,
                    gid: int) -> Inode:
        """A FIFO, socket or device: an empty object whose mode carries the kind (and
        ``rdev`` the device), as s3fs stores them. Opening one is the kernel's business."""
        kind = stat.S_IFMT(mode)
        if kind not in SPECIAL_TYPES or kind == stat.S_IFLNK:
            raise FsError(f"cannot make a node of type {kind:o}", errno=errno.EINVAL)
        parent_path, path = await self._check_new_name(parent, raw_name)
        attrs = self._new_attrs(kind, mode, uid, gid)
        if kind in (stat.S_IFCHR, stat.S_IFBLK):
            attrs.rdev = rdev
        md = metadata_for(attrs)
        key = self.keys.file_key(path)
        etag = await self._run(self.store.put, key, b"", metadata=md)
        self.meta.put(key, etag, None, md)
        node = self._install(path, attrs, etag, md)
        node.lookups += 1
        self._listing_add(parent_path, DirEntry(split(path)[1], False, 0, etag, time.time()))
        self._touch_dir(parent_path, attrs.mtime_ns)
        return node

    async def _existing(self, parent: int, raw_name: bytes) -> tuple[str, str, Inode]:
        """(parent path, name, inode) of an existing entry, for the calls that remove or move
        one; ENOENT when there is none."""
        parent_path = self._dir_path(parent)
        name = decode_name(raw_name)
        node = await self._resolve(parent_path, name)
        if node is None or node.path is None:
            raise FsError("no such file or directory", errno=errno.ENOENT)
        return parent_path, name, node

    async def unlink(self, parent: int, raw_name: bytes) -> None:
        self._writable()
        parent_path, name, node = await self._existing(parent, raw_name)
        if node.is_dir:
            raise FsError("is a directory", errno=errno.EISDIR)
        assert node.path is not None
        of = self.open_files.get(node.ino)
        if of is not None:
            async with of.lock:
                await self._stop_stream(of)
                if of.handles:
                    # POSIX: open descriptors keep the data; keep a local copy of it.
                    await self._load(of)
                of.dirty = False  # nothing of it may reach the bucket any more
                self._drop_record(of)
        if node.etag is not None:
            await self._run(self.store.delete, self.keys.file_key(node.path))
        self._listing_remove(parent_path, name)
        self.meta.drop(self.keys.file_key(node.path))
        self.negative[node.path] = True
        self.inodes.detach(node)
        self._touch_dir(parent_path)
        node.attrs.ctime_ns = time.time_ns()

    async def rmdir(self, parent: int, raw_name: bytes) -> None:
        self._writable()
        parent_path, name, node = await self._existing(parent, raw_name)
        if not node.is_dir:
            raise FsError("not a directory", errno=errno.ENOTDIR)
        assert node.path is not None
        await self._check_empty(node.path)
        await self._run(self.store.delete, self.keys.dir_prefix(node.path))
        if (legacy := self.legacy_markers.pop(node.path, None)) is not None:
            await self._run(self.store.delete, legacy)
        self._listing_remove(parent_path, name)
        self.listings.pop(node.path, None)
        self.meta.drop_dir_times(self.keys.dir_prefix(node.path))
        self.negative[node.path] = True
        self.inodes.detach(node)
        self._touch_dir(parent_path)

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
        old_parent, old_name, src = await self._existing(parent_old, raw_old)
        new_parent = self._dir_path(parent_new)
        new_name = decode_name(raw_new)
        assert src.path is not None
        new_path = join(new_parent, new_name)
        if new_path == src.path:
            return
        self.keys.check_length(new_path, is_dir=src.is_dir)
        if hidden(self.keys, new_path):
            raise FsError("name reserved for the shared index", errno=errno.EPERM)
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
        # An empty target directory needs no deleting: the source's marker (or the one
        # _rename_dir writes for an implicit source) takes the same key.
        now = time.time_ns()
        if src.is_dir:
            await self._rename_dir(src.path, new_path)
            if (legacy := self.legacy_markers.pop(src.path, None)) is not None:
                await self._run(self.store.delete, legacy)
            self.meta.move_dir_times(self.keys.dir_prefix(src.path),
                                     self.keys.dir_prefix(new_path))
            src.attrs.ctime_ns = now
        else:
            await self._rename_file(src, new_path, now)
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
        self._touch_dir(old_parent, now)
        self._touch_dir(new_parent, now)

    async def _rename_file(self, src: Inode, new_path: str, now: int) -> None:
        """Copy and delete. The copy carries the metadata anew (as ext4 does, a rename moves
        the ctime), which also has the store guess the Content-Type again from the new name."""
        assert src.path is not None
        of = self.open_files.get(src.ino)
        if of is not None and of.dirty:
            await self._upload(of)  # copy what the writer has so far, not an older version
        src.attrs.ctime_ns = now
        old_key, new_key = self.keys.file_key(src.path), self.keys.file_key(new_path)
        if src.etag is None:
            return  # nothing in the bucket yet; the pending upload goes to the new name
        # With no_posix_metadata the object's own metadata was never read: it is copied as it is.
        md = {**src.extra, **metadata_for(src.attrs)} if self.cfg.posix_metadata else None
        # CopyObject replaces the target in one step, so a reader of the target sees the old or
        # the new content, never a missing or partial file.
        src.etag = await self._run(self.store.copy, old_key, new_key, metadata=md,
                                   size=src.attrs.size)
        src.s3_mtime = None
        if md is not None:
            self.meta.put(new_key, src.etag, None, md)
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
        await self.described(ino)  # the attributes not changed here must be the stored ones
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
            if new.atime_ns is None and ch.atime_ns is None:
                new.atime_ns = new.mtime_ns  # the atime read so far stays what it was
            new.mtime_ns = ch.mtime_ns
            if of is not None:
                of.explicit_mtime = True
        if ch.atime_ns is not None:
            new.atime_ns = ch.atime_ns
        if ch.mode is not None or ch.uid is not None or ch.gid is not None or \
                ch.mtime_ns is not None or ch.atime_ns is not None:
            new.ctime_ns = ch.ctime_ns or time.time_ns()
        if new == node.attrs:
            return node
        await self._set_attrs(node, new)
        return node

    async def _set_attrs(self, node: Inode, new: Attrs) -> None:
        """New attributes (``node.extra`` already changed too): with the upload a file still owes
        (its record says them at once), else written to the object's metadata now."""
        of = self.open_files.get(node.ino)
        if of is not None and (of.dirty or node.etag is None):
            node.attrs = new
            await self._pending_metadata_changed(of)
            return
        await self._write_metadata(node, new)

    async def _write_metadata(self, node: Inode, new: Attrs) -> None:
        """Persist changed attributes of a clean object: a copy onto itself, or a new marker."""
        if node.path is None:
            node.attrs = new
            return
        md = {**node.extra, **metadata_for(new)}
        if node.is_dir:
            if node.path == "":
                # The bucket root has no marker of its own: its times are kept like those that
                # changes in it give it (see _touch_dir); its mode and owner are the mount's.
                node.attrs = new
                self.meta.set_dir_times(self.keys.dir_prefix(""), new.mtime_ns, new.ctime_ns)
                return
            node.etag = await self._run(self.store.put, self.keys.dir_prefix(node.path), b"",
                                        metadata=md, content_type="application/x-directory")
            self.meta.drop_dir_times(self.keys.dir_prefix(node.path))  # the marker has them
        else:
            key = self.keys.file_key(node.path)
            node.etag = await self._run(self.store.copy, key, key, metadata=md,
                                        size=node.attrs.size)
            node.s3_mtime = None
            self.meta.put(key, node.etag, None, md)
        node.attrs = new
        node.valid_until = self._fresh_until()

    # -- extended attributes -------------------------------------------------------------------

    @staticmethod
    def _xattr_name(raw: bytes) -> str | None:
        """The name if it is one we store (``user.*`` and the POSIX ACLs), else None."""
        name = raw.decode("utf-8", "surrogateescape")
        return name if name.startswith("user.") or name in ACL_XATTRS else None

    def getxattr(self, ino: int, raw_name: bytes) -> bytes:
        """From the metadata the lookup brought: no request (the kernel asks for
        ``security.capability`` before every write, ``ls -l`` for two names per file)."""
        name = self._xattr_name(raw_name)
        value = decode_xattrs(self._node(ino).extra.get(XATTR_KEY)).get(name or "")
        if name is None or value is None:
            raise FsError("no such attribute", errno=errno.ENODATA)
        return value

    def listxattr(self, ino: int) -> list[bytes]:
        xattrs = decode_xattrs(self._node(ino).extra.get(XATTR_KEY))
        return [n.encode("utf-8", "surrogateescape") for n in xattrs]

    async def setxattr(self, ino: int, raw_name: bytes, value: bytes) -> None:
        self._writable()
        await self.described(ino)  # its other xattrs are written back with it
        name = self._xattr_name(raw_name)
        if name is None:
            raise FsError(f"attribute {raw_name!r} cannot be stored", errno=errno.ENOTSUP)
        node = self._node(ino)
        xattrs = decode_xattrs(node.extra.get(XATTR_KEY))
        xattrs[name] = value
        mode = None
        if name == ACL_ACCESS:
            parsed = acl_mode(value)
            if parsed is None:
                raise FsError("not a POSIX access ACL", errno=errno.EINVAL)
            mode, extended = parsed
            if not extended:
                del xattrs[name]  # the mode says it all
        await self._store_xattrs(node, xattrs, mode)

    async def removexattr(self, ino: int, raw_name: bytes) -> None:
        self._writable()
        await self.described(ino)  # its other xattrs are written back with it
        node = self._node(ino)
        xattrs = decode_xattrs(node.extra.get(XATTR_KEY))
        if xattrs.pop(self._xattr_name(raw_name) or "", None) is None:
            raise FsError("no such attribute", errno=errno.ENODATA)
        await self._store_xattrs(node, xattrs)

    async def _store_xattrs(self, node: Inode, xattrs: dict[str, bytes],
                            perms: int | None = None) -> None:
        """Store the attributes (and permission bits ``perms`` an ACL set) with the object's
        other metadata (E2BIG past S3's limit)."""
        extra = {k: v for k, v in node.extra.items() if k != XATTR_KEY}
        if xattrs:
            extra[XATTR_KEY] = encode_xattrs(xattrs)
        new = Attrs(**node.attrs.__dict__)
        new.ctime_ns = time.time_ns()
        if perms is not None:
            new.mode = new.mode & ~0o777 | perms
        size = metadata_size({**extra, **metadata_for(new)})
        if size > USER_METADATA_MAX:
            raise FsError(f"extended attributes of {node.path!r} would take {size} bytes of "
                          f"user metadata; S3 allows {USER_METADATA_MAX}", errno=errno.E2BIG)
        node.extra = extra
        await self._set_attrs(node, new)

    async def statfs(self) -> dict[str, int]:
        # S3 has no capacity to report; answer "plenty" so tools that check free space proceed.
        blocks = 2**40 // 4096
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": blocks, "f_bfree": blocks,
                "f_bavail": blocks, "f_files": 2**32, "f_ffree": 2**32, "f_favail": 2**32,
                "f_namemax": 255}

    # -- directories ---------------------------------------------------------------------------

    async def opendir(self, ino: int) -> int:
        path = self._dir_path(ino)
        if (old := self.listings.get(path)) is not None:
            old.expires = -math.inf  # each opendir sees a current listing (the old one guides it)
        lst = await self._list_dir(path)
        entries: list[tuple[str, Inode]] = []
        todo: list[tuple[str, DirEntry]] = []
        now = trio.current_time()
        for child in self.inodes.children(path):
            assert child.path is not None
            if split(child.path)[1] not in lst.entries and not child.open_count:
                self.inodes.detach(child)  # gone from the bucket behind our back
        for name in sorted(lst.entries):
            e = lst.entries[name]
            child = join(path, name)
            node = self.inodes.at(child)
            # Files are re-read only when their version moved; directories (whose marker has no
            # version in a listing) when their attributes are older than attr_timeout.
            if node is not None and (node.open_count or self._unchanged(node, e) and
                                     (not node.is_dir or node.valid_until > now)):
                node.valid_until = self._fresh_until()
                continue
            todo.append((name, e))
        # Files whose metadata is known (cached by version, or not wanted) are installed here
        # and now; the rest get attributes guessed from the listing, and their metadata is
        # fetched when something asks for it (listedattrs): a names-only readdir costs LISTs.
        self.meta.load([self.keys.file_key(join(path, name)) for name, e in todo if not e.is_dir])
        for name, e in todo:
            if e.is_dir and not self.cfg.posix_metadata:
                self._install_dir(join(path, name), None)
            elif e.is_dir or self._install_known(join(path, name), e) is None:
                self._install_provisional(join(path, name), e)
        for name in sorted(lst.entries):
            node = self.inodes.at(join(path, name))
            if node is not None:
                entries.append((name, node))
        fh = self._new_fh()
        self.dir_handles[fh] = DirHandle(self._node(ino), entries)
        return fh

    async def _stat_listed(self, path: str, todo: list[tuple[str, DirEntry]]) -> None:
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
                self._install_dir(child, None)
        if not heads:
            return
        for key, info in (await self._run(self.store.head_many, list(heads))).items():
            child, e = heads[key]
            if isinstance(info, NotFound):
                if e.is_dir:
                    self._install_dir(child, None)  # a prefix without a marker object
            elif isinstance(info, S3MountError):
                log.warning("cannot stat %r while listing: %s", child, info)
            elif e.is_dir:
                self._install_dir(child, info)
            else:
                self._install_info(child, info)

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
        self._touch_dir(parent_path, attrs.mtime_ns)
        return fh, node

    def invalidate_key(self, key: str) -> None:
        """Something changed ``key`` outside the normal paths (crash recovery): forget what we
        knew about its directory so the next lookup asks the bucket."""
        if key.startswith(self.keys.prefix):
            parent = split(key[len(self.keys.prefix):])[0]
            self.listings.pop(parent, None)


RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
