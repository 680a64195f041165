"""The filesystem core: POSIX operations on a bucket, FUSE-agnostic and async.

``Filesystem`` operations take inode numbers and names, return ``Inode`` objects or data, and raise
``s3mount.errors`` types only (each carries its errno). The FUSE adapter (``fuse_ops``) is a thin
translation on top; tests drive this class directly as well as through real mounts.

``Filesystem`` is the facade: it builds the components below, each owning its own state, wires
them together here and nowhere else, and hands each POSIX operation to the one that does it (its
attributes name them, so a reader goes from here to the code in one step):

* ``runner`` (``StoreRunner``): how store calls run (worker threads, one limiter) and where
  background tasks run (the mount's nursery).
* ``inodes`` (``InodeTable``): numbers for paths, by directory, forgotten when the kernel forgets.
* ``listings`` (``Listings``): the listing cache, its journal, the state of big directories.
* ``describer`` (``listedattrs.Describer``): metadata of listed entries, asked for a walk at a time
  (and the shared index, which ``dirs`` has it read before entries are installed).
* ``names`` (``Namespace``): lookup, getattr, forget, readlink; what a path is.
* ``registry`` (``OpenFiles``): open files, their handles and staging files.
* ``space`` (``CacheSpace``): staged bytes against the cache limit.
* ``uploader`` (``Uploader``): storing a file's staged data; ``writeback``: the background queue
  and the uploads owed at unmount.
* ``files`` (``FileIO``): open, read, write, flush, fsync, release, create, truncate.
* ``dirops`` (``DirOps``): mkdir, symlink, mknod, unlink, rmdir, rename.
* ``attrops`` (``AttrOps``): setattr, extended attributes, statfs.
* ``dirs`` (``DirReader``): opendir, readdir, releasedir.

A ``write()`` goes fuse_ops -> core (here) -> files (``FileIO.write``: staged, and streamed when
written front to back) and its ``close()``: files (``FileIO.flush``/``release``) -> uploads
(``Uploader.upload``) -> store/s3 (the PUT, or the multipart upload's completion).

Concurrency protocol:

* Everything here runs in the one trio thread; store calls (blocking boto3) run in worker threads
  via ``StoreRunner.run`` under a ``CapacityLimiter`` matched to botocore's connection pool. No trio
  lock is held across anything but our own awaits.
* Per-inode state of open files (``OpenFile``) is guarded by its ``lock``: loading the object into
  staging, writes, truncation and uploads are serialised per file, so an upload never sees a
  half-applied write and a write never lands in a file being uploaded.
* Directory listings are cached for ``dir_timeout`` and updated in place by our own mutations, so a
  ``tar -x`` that creates 300 files in a fresh directory answers its lookups locally.

See docs/SEMANTICS.md for the user-visible rules this implements.
"""

from __future__ import annotations

import stat
import time
from collections.abc import Callable

import trio

from ..store.base import ObjectStore
from .attrops import AttrOps
from .attrs import Attrs
from .budget import Budget
from .dirops import DirOps
from .files import FileIO
from .inodes import InodeTable
from .listedattrs import Describer
from .listing import Listings
from .metacache import MetaCache
from .namespace import Namespace
from .paths import KeyMapper
from .readdir import DirReader
from .registry import OpenFiles
from .runner import StoreRunner
from .settings import FsConfig
from .sharedindex import SharedIndex
from .space import CacheSpace
from .staging import StagingArea
from .uploads import Uploader
from .writeback import Writeback


class Filesystem:
    """POSIX semantics over one ``ObjectStore`` (see module docstring)."""

    def __init__(self, store: ObjectStore, mapper: KeyMapper, config: FsConfig,
                 staging: StagingArea, metacache: MetaCache | None = None) -> None:
        self.keys = mapper
        self.cfg = config
        self.staging = staging
        self.meta = meta = metacache or MetaCache(None)
        self.runner = runner = StoreRunner(store, config.store_concurrency)
        self.shared = SharedIndex(
            runner.run, store, mapper, meta,
            mode="off" if not config.shared_index else "ro" if config.read_only else "rw")
        meta.listener = self.shared.changed
        self.registry = registry = OpenFiles(runner, mapper, config, staging)
        now = time.time_ns()
        d = config.defaults
        mtime, ctime = meta.dir_times(mapper.dir_prefix("")) or (now, now)
        self.inodes = inodes = InodeTable(
            Attrs(stat.S_IFDIR | d.dir_mode, d.uid, d.gid, 0, mtime, ctime), held=registry.holds)
        self.listings = listings = Listings(runner, mapper, config, registry.pending_children)
        self.describer = describer = Describer(runner, mapper, config, inodes, listings,
                                               self.shared)
        self.names = names = Namespace(runner, mapper, config, meta, inodes, listings,
                                       describer)
        self.space = CacheSpace(registry, config)
        upload_budget = Budget(config.buffer_limit - config.buffer_limit // 3)
        self.uploader = uploader = Uploader(runner, mapper, config, meta, registry, names,
                                            listings, inodes, upload_budget)
        self.writeback = writeback = Writeback(uploader, registry, listings, runner, mapper,
                                               config.part_size)
        self.files = files = FileIO(runner, mapper, config, names, listings, inodes, registry,
                                    self.space, uploader, writeback,
                                    Budget(config.buffer_limit // 3), upload_budget)
        self.dirops = dirops = DirOps(runner, mapper, config, meta, names, listings, inodes,
                                      registry, uploader, files)
        self.attrops = attrops = AttrOps(runner, mapper, config, meta, names, registry, uploader,
                                         files)
        self.dirs = dirs = DirReader(mapper, config, meta, names, listings, inodes,
                                     describer)

        # The operations, each where it is done.
        self.lookup, self.forget, self.getattr = names.lookup, names.forget, names.getattr
        self.readlink, self.nlink, self.described = names.readlink, names.nlink, names.described
        self.mkdir, self.symlink, self.mknod = dirops.mkdir, dirops.symlink, dirops.mknod
        self.unlink, self.rmdir, self.rename = dirops.unlink, dirops.rmdir, dirops.rename
        self.link = dirops.link
        self.setattr, self.statfs = attrops.setattr, attrops.statfs
        self.getxattr, self.listxattr = attrops.getxattr, attrops.listxattr
        self.setxattr, self.removexattr = attrops.setxattr, attrops.removexattr
        self.opendir, self.readdir, self.releasedir = dirs.opendir, dirs.readdir, dirs.releasedir
        self.create, self.open, self.read, self.write = (files.create, files.open, files.read,
                                                         files.write)
        self.flush, self.fsync, self.release = files.flush, files.fsync, files.release
        self.flush_all, self.pending_uploads = writeback.flush_all, uploader.pending_uploads
        self.upload_progress = uploader.upload_progress

    @property
    def forget_kernel_attrs(self) -> Callable[[int], None]:
        return self.files.forget_kernel_attrs

    @forget_kernel_attrs.setter
    def forget_kernel_attrs(self, forget: Callable[[int], None]) -> None:
        """How to make the kernel ask for an inode's attributes again (the FUSE adapter's)."""
        self.files.forget_kernel_attrs = forget

    @property
    def nursery(self) -> trio.Nursery | None:
        return self.runner.nursery

    @nursery.setter
    def nursery(self, nursery: trio.Nursery | None) -> None:
        """The mount's nursery, once open: background work (prefetch, streamed parts, the
        description of a walk) runs there."""
        self.runner.nursery = nursery
