"""Operations on names: mkdir, symlink, mknod, unlink, rmdir, rename (and link, refused).

Each checks the name against the namespace, changes the bucket, then brings the caches along:
the parent's listing (and its journal), the inode table, the negative cache, the metadata cache
and the parent's times. A file's rename is a copy and a delete; a directory's copies every key
below it, then deletes them (a failure half-way leaves both trees, never a loss). Files with
data still owed to the bucket are stored first, so the copy is of what the writer has.
"""

from __future__ import annotations

import errno
import functools
import stat
import time

from ..errors import FsError
from ..store.base import ObjectInfo
from .attrs import SPECIAL_TYPES, metadata_for, new_attrs
from .concurrency import gather
from .files import FileIO
from .inodes import Inode, InodeTable
from .listing import DirEntry, Listings
from .metacache import MetaCache
from .namespace import SYMLINK_MAX, Namespace
from .paths import KeyMapper, decode_name, join, split
from .registry import OpenFiles
from .runner import StoreRunner
from .settings import FsConfig
from .sharedindex import hidden
from .uploads import Uploader

HEAD_PARALLELISM = 32
"""Copies (and deletes) of one directory rename in flight at once."""
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


class DirOps:
    """The operations that make, remove and move names (see module docstring)."""

    def __init__(self, runner: StoreRunner, keys: KeyMapper, cfg: FsConfig, meta: MetaCache,
                 names: Namespace, listings: Listings, inodes: InodeTable, files: OpenFiles,
                 uploader: Uploader, data: FileIO) -> None:
        self._runner = runner
        self.keys = keys
        self.cfg = cfg
        self.meta = meta
        self._names = names
        self._listings = listings
        self._inodes = inodes
        self._files = files
        self._uploader = uploader
        self._data = data

    async def mkdir(self, parent: int, raw_name: bytes, mode: int, uid: int, gid: int) -> Inode:
        parent_path, path = await self._names.check_new_name(parent, raw_name, is_dir=True)
        attrs = new_attrs(stat.S_IFDIR, mode, uid, gid)
        md = metadata_for(attrs)
        etag = await self._runner.run(self._runner.store.put, self.keys.dir_prefix(path), b"",
                                      metadata=md, content_type="application/x-directory")
        self.meta.drop_dir_times(self.keys.dir_prefix(path))  # of a directory removed before
        node = self._names.install(path, attrs, etag, md)
        node.lookups += 1
        self._listings.add(parent_path, DirEntry(split(path)[1], True))
        self._names.touch_dir(parent_path, attrs.mtime_ns)
        # A directory we just made is empty: answer lookups inside it without asking S3.
        self._listings.empty(path)
        return node

    async def symlink(self, parent: int, raw_name: bytes, target: bytes, uid: int,
                      gid: int) -> Inode:
        parent_path, path = await self._names.check_new_name(parent, raw_name)
        if len(target) > SYMLINK_MAX:
            raise FsError("symlink target too long", errno=errno.ENAMETOOLONG)
        attrs = new_attrs(stat.S_IFLNK, 0o777, uid, gid, size=len(target))
        md = metadata_for(attrs)
        etag = await self._runner.run(self._runner.store.put, self.keys.file_key(path), target,
                                      metadata=md, content_type="application/octet-stream")
        self.meta.put(self.keys.file_key(path), etag, None, md)
        node = self._names.install(path, attrs, etag, md)
        node.symlink_target = target.decode("utf-8", "surrogateescape")
        node.lookups += 1
        self._listings.add(parent_path, DirEntry(split(path)[1], False, len(target), etag,
                                                 time.time()))
        self._names.touch_dir(parent_path, attrs.mtime_ns)
        return node

    async def mknod(self, parent: int, raw_name: bytes, mode: int, rdev: int, uid: int,
                    gid: int) -> Inode:
        """A FIFO, socket or device: an empty object whose mode carries the kind (and
        ``rdev`` the device), as s3fs stores them. Opening one is the kernel's business. A
        regular file is made as create(2) and close(2) make it: stored empty at once."""
        if stat.S_ISREG(mode):
            fh, node = await self._data.create(parent, raw_name, mode, 0, uid, gid)
            await self._data.flush(fh)
            await self._data.release(fh)
            return node
        kind = stat.S_IFMT(mode)
        if kind not in SPECIAL_TYPES or kind == stat.S_IFLNK:
            raise FsError(f"cannot make a node of type {kind:o}", errno=errno.EINVAL)
        parent_path, path = await self._names.check_new_name(parent, raw_name)
        attrs = new_attrs(kind, mode, uid, gid)
        if kind in (stat.S_IFCHR, stat.S_IFBLK):
            attrs.rdev = rdev
        md = metadata_for(attrs)
        key = self.keys.file_key(path)
        etag = await self._runner.run(self._runner.store.put, key, b"", metadata=md)
        self.meta.put(key, etag, None, md)
        node = self._names.install(path, attrs, etag, md)
        node.lookups += 1
        self._listings.add(parent_path, DirEntry(split(path)[1], False, 0, etag, time.time()))
        self._names.touch_dir(parent_path, attrs.mtime_ns)
        return node

    async def _existing(self, parent: int, raw_name: bytes) -> tuple[str, str, str, Inode]:
        """(parent path, name, path, inode) of an existing entry, for the calls that remove or
        move one; ENOENT when there is none. The callers use the path, not ``node.path``, after
        their first request: a listing taken meanwhile (opendir of the directory, which the
        kernel does not hold back) no longer shows the name and takes the inode's path away."""
        parent_path = self._names.dir_path(parent)
        name = decode_name(raw_name)
        node = await self._names.resolve(parent_path, name)
        if node is None or node.path is None:
            raise FsError("no such file or directory", errno=errno.ENOENT)
        return parent_path, name, node.path, node

    async def unlink(self, parent: int, raw_name: bytes) -> None:
        self.cfg.check_writable()
        parent_path, name, path, node = await self._existing(parent, raw_name)
        if node.is_dir:
            raise FsError("is a directory", errno=errno.EISDIR)
        of = self._files.open_files.get(node.ino)
        if of is not None:
            async with of.lock:
                await self._files.stop_stream(of)
                if of.handles:
                    # POSIX: open descriptors keep the data; keep a local copy of it.
                    await self._files.load(of)
                of.dirty = False  # nothing of it may reach the bucket any more
                self._files.drop_record(of)
        if node.etag is not None:
            await self._runner.run(self._runner.store.delete, self.keys.file_key(path))
        self._listings.remove(parent_path, name)
        self.meta.drop(self.keys.file_key(path))
        self._names.negative[path] = True
        self._removed(path, node)
        self._names.touch_dir(parent_path)
        node.attrs.ctime_ns = time.time_ns()

    def _removed(self, path: str, node: Inode) -> None:
        """``node``, removed from ``path``, is detached, and so is an inode installed at the
        path while the removal waited for the bucket: a listing taken after the DELETE takes
        ``node``'s path away, and one whose LIST was answered before it installs the name
        again as a new inode, which would stay at the removed name."""
        if (other := self._inodes.at(path)) is not None and other is not node:
            self._inodes.detach(other)
        self._inodes.detach(node)

    async def rmdir(self, parent: int, raw_name: bytes) -> None:
        self.cfg.check_writable()
        parent_path, name, path, node = await self._existing(parent, raw_name)
        if not node.is_dir:
            raise FsError("not a directory", errno=errno.ENOTDIR)
        await self._check_empty(path)
        await self._runner.run(self._runner.store.delete, self.keys.dir_prefix(path))
        if (legacy := self._listings.legacy_markers.pop(path, None)) is not None:
            await self._runner.run(self._runner.store.delete, legacy)
        self._listings.remove(parent_path, name)
        self._listings.drop(path)
        self.meta.drop_dir_times(self.keys.dir_prefix(path))
        self._names.negative[path] = True
        self._removed(path, node)
        self._names.touch_dir(parent_path)

    async def _check_empty(self, path: str) -> None:
        prefix = self.keys.dir_prefix(path)
        page = await self._runner.run(self._runner.store.list_page, prefix, max_keys=2)
        if page.prefixes or any(o.key != prefix for o in page.objects) or \
                self._files.pending_children(path):
            raise FsError("directory not empty", errno=errno.ENOTEMPTY)

    async def link(self, ino: int, new_parent: int, raw_name: bytes) -> Inode:
        raise FsError("hard links are not supported on S3", errno=errno.EPERM)

    async def rename(self, parent_old: int, raw_old: bytes, parent_new: int, raw_new: bytes,
                     flags: int) -> None:
        self.cfg.check_writable()
        if flags & RENAME_EXCHANGE:
            raise FsError("RENAME_EXCHANGE cannot be done atomically on S3", errno=errno.EINVAL)
        old_parent, old_name, old_path, src = await self._existing(parent_old, raw_old)
        new_parent = self._names.dir_path(parent_new)
        new_name = decode_name(raw_new)
        new_path = join(new_parent, new_name)
        if new_path == old_path:
            return
        self.keys.check_length(new_path, is_dir=src.is_dir)
        if hidden(self.keys, new_path):
            raise FsError("name reserved for the shared index", errno=errno.EPERM)
        if src.is_dir and (new_path + "/").startswith(old_path + "/"):
            raise FsError("cannot move a directory into itself", errno=errno.EINVAL)
        dst = await self._names.resolve(new_parent, new_name)
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
            await self._rename_dir(old_path, new_path)
            if (legacy := self._listings.legacy_markers.pop(old_path, None)) is not None:
                await self._runner.run(self._runner.store.delete, legacy)
            self.meta.move_dir_times(self.keys.dir_prefix(old_path),
                                     self.keys.dir_prefix(new_path))
            src.attrs.ctime_ns = now
        else:
            await self._rename_file(src, old_path, new_path, now)
        self._listings.drop_tree(old_path)
        self._inodes.move(old_path, new_path)
        if src.path is None:  # a listing taken meanwhile showed the old name gone already
            self._inodes.attach(src, new_path)
        self._listings.remove(old_parent, old_name)
        self._listings.add(new_parent, DirEntry(new_name, src.is_dir, src.attrs.size, src.etag,
                                                time.time()))
        self._names.negative[old_path] = True
        self._names.negative.pop(new_path, None)
        src.valid_until = self._names.fresh_until()
        self._names.touch_dir(old_parent, now)
        self._names.touch_dir(new_parent, now)

    async def _rename_file(self, src: Inode, old_path: str, new_path: str, now: int) -> None:
        """Copy and delete. The copy carries the metadata anew (as ext4 does, a rename moves
        the ctime), which also has the store guess the Content-Type again from the new name."""
        of = self._files.open_files.get(src.ino)
        if of is not None and of.dirty:
            await self._uploader.upload(of)  # copy what the writer has so far, not an older version
        src.attrs.ctime_ns = now
        old_key, new_key = self.keys.file_key(old_path), self.keys.file_key(new_path)
        if src.etag is None:
            return  # nothing in the bucket yet; the pending upload goes to the new name
        # With no_posix_metadata the object's own metadata was never read: it is copied as it is.
        md = {**src.extra, **metadata_for(src.attrs)} if self.cfg.posix_metadata else None
        # CopyObject replaces the target in one step, so a reader of the target sees the old or
        # the new content, never a missing or partial file.
        before = src.etag
        src.etag = await self._runner.run(self._runner.store.copy, old_key, new_key, metadata=md,
                                          size=src.attrs.size)
        if src.etag is not None and src.etag != before:
            src.copied_as = {**(src.copied_as or {}), before: src.etag}
        src.s3_mtime = None
        if md is not None:
            self.meta.put(new_key, src.etag, None, md)
        await self._runner.run(self._runner.store.delete, old_key)
        self.meta.drop(old_key)

    async def _rename_dir(self, old: str, new: str) -> None:
        for of in list(self._files.open_files.values()):
            p = of.node.path
            if p is not None and p.startswith(old + "/") and of.dirty:
                await self._uploader.upload(of)
        old_prefix, new_prefix = self.keys.dir_prefix(old), self.keys.dir_prefix(new)
        keys: list[ObjectInfo] = []
        token = None
        while True:
            page = await self._runner.run(self._runner.store.list_page, old_prefix,
                                          delimiter=None, token=token)
            keys += page.objects
            token = page.next_token
            if not token:
                break
        if not any(o.key == old_prefix for o in keys):
            # An implicit directory: give the new one a marker so it exists even if empty.
            node = self._inodes.at(old)
            md = metadata_for(node.attrs) if node else {}
            await self._runner.run(self._runner.store.put, new_prefix, b"", metadata=md,
                                   content_type="application/x-directory")
        # Copy everything first, then delete: a failure half-way leaves both trees, never a loss.
        run, store = self._runner.run, self._runner.store

        async def copy(o: ObjectInfo) -> None:
            rel = o.key[len(old_prefix):]
            etag = await run(store.copy, o.key, new_prefix + rel, size=o.size)
            node = None if rel.endswith("/") else self._inodes.at(f"{old}/{rel}")
            if node is not None and node.etag == o.etag and etag and etag != o.etag:
                # A big object is copied in parts and gets another ETag: descriptors open on
                # the version follow it (FileIO._moved), and our own copy is not taken for
                # a change made by someone else.
                node.copied_as = {**(node.copied_as or {}), o.etag: etag}
                node.etag = etag

        await gather([functools.partial(copy, o) for o in keys], limit=HEAD_PARALLELISM)
        await gather([functools.partial(run, store.delete, o.key) for o in keys],
                     limit=HEAD_PARALLELISM)
        for o in keys:
            self.meta.drop(o.key)
