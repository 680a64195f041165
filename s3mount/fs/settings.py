"""What the filesystem core needs to know about the mount (derived from MountOptions by
mount.py), in a module of its own so every component of the core can read it without importing
the core that wires them."""

from __future__ import annotations

import errno
from dataclasses import dataclass

from ..errors import FsError
from .attrs import Defaults


@dataclass
class FsConfig:
    """The mount's settings, as the core's components read them."""

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
    timeout: float = 60.0
    """Seconds an operation may take (``-o timeout``): a writer short of disk space waits no
    longer for uploads to free some."""
    shared_index: bool = True
    """Read the shared attribute index in the bucket, and write it unless read-only."""
    xattrs: bool = True
    """Serve extended attributes. The kernel caches none, so each costs a FUSE request: ``ls -l``
    asks two per file (security.selinux, system.posix_acl_access), every write one
    (security.capability). Without them the adapter answers ENOSYS once and the kernel stops
    asking (``-o no_xattr``)."""

    def check_writable(self) -> None:
        """EROFS on a read-only mount: every operation that changes something asks first."""
        if self.read_only:
            raise FsError("read-only mount", errno=errno.EROFS)
