"""The thin pyfuse3 adapter: FUSE requests in, core calls, errno replies out.

The only module that knows pyfuse3's types. Every handler translates arguments, calls the
``Filesystem`` core and turns our errors into ``FUSEError(errno)``; anything else that escapes is a
bug, logged with its traceback and answered with EIO so the caller gets an error instead of a hang.
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import pyfuse3
import trio

from ..errors import S3MountError
from .attrops import AttrChanges
from .core import Filesystem
from .inodes import Inode

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def _errors(fn: F) -> F:
    @functools.wraps(fn)
    async def wrapper(self: FuseOperations, *args: Any) -> Any:
        if log.isEnabledFor(logging.DEBUG):
            # Names are logged, file contents never (a write's buffer shows as its length).
            shown = tuple(f"<{len(a)} bytes>" if fn.__name__ == "write" and isinstance(a, bytes)
                          else a for a in args if not isinstance(a, pyfuse3.RequestContext))
            log.debug("%s%r", fn.__name__, shown)
        try:
            return await fn(self, *args)
        except pyfuse3.FUSEError:
            raise
        except S3MountError as exc:
            if exc.errno in (errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY, errno.ENODATA):
                log.debug("%s: %s", fn.__name__, exc)
            else:
                log.warning("%s failed: %s", fn.__name__, exc)
            raise pyfuse3.FUSEError(exc.errno) from None
        except Exception:
            log.exception("internal error in %s", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
    return wrapper  # type: ignore[return-value]


def _forget_attrs(ino: int) -> None:
    """The kernel asks for the attributes of ``ino`` again before it next uses them (no
    writeback cache here, so this never waits for the kernel)."""
    try:
        pyfuse3.invalidate_inode(ino, attr_only=True)
    except OSError as exc:  # ENOENT: the kernel holds the inode no more
        log.debug("invalidating the attributes of inode %d: %s", ino, exc)


def _xattrs_on(fs: Filesystem) -> None:
    """ENOSYS for an extended-attribute request under ``-o no_xattr``: the kernel then stops
    sending that kind of request (and answers ENOTSUP itself)."""
    if not fs.cfg.xattrs:
        raise pyfuse3.FUSEError(errno.ENOSYS)


class FuseOperations(pyfuse3.Operations):
    """pyfuse3 callbacks over one ``Filesystem``."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, fs: Filesystem) -> None:
        super().__init__()
        self.fs = fs
        fs.forget_kernel_attrs = _forget_attrs

    def _entry(self, node: Inode) -> pyfuse3.EntryAttributes:
        a = node.attrs
        e = pyfuse3.EntryAttributes()
        e.st_ino = node.ino
        e.generation = 0
        # Guessed attributes (listedattrs) must not be kept by the kernel: a stat asks again.
        e.entry_timeout = e.attr_timeout = 0 if node.provisional else self.fs.cfg.attr_timeout
        node.shown(trio.current_time(), e.attr_timeout)
        e.st_mode = a.mode
        e.st_nlink = self.fs.nlink(node)
        e.st_uid = a.uid
        e.st_gid = a.gid
        e.st_rdev = a.rdev
        e.st_size = a.size
        e.st_blksize = 512 * 1024
        e.st_blocks = (a.size + 511) // 512
        e.st_atime_ns = a.mtime_ns if a.atime_ns is None else a.atime_ns
        e.st_mtime_ns = a.mtime_ns
        e.st_ctime_ns = a.ctime_ns
        return e

    @_errors
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
                     ) -> pyfuse3.EntryAttributes:
        try:
            return self._entry(await self.fs.lookup(parent_inode, name))
        except S3MountError as exc:
            if exc.errno != errno.ENOENT:
                raise
        # An entry with inode 0 lets the kernel cache the miss for neg_timeout (an ENOENT error
        # would not be cached, and tools probe for missing names a lot).
        e = pyfuse3.EntryAttributes()
        e.st_ino = 0
        e.entry_timeout = self.fs.cfg.neg_timeout
        return e

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        self.fs.forget(list(inode_list))

    @_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(await self.fs.getattr(inode))

    @_errors
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        ch = AttrChanges(
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
            ctime_ns=attr.st_ctime_ns if fields.update_ctime else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
        )
        return self._entry(await self.fs.setattr(inode, ch, fh))

    @_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return await self.fs.readlink(inode)

    @_errors
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(await self.fs.mknod(parent_inode, name, mode, rdev, ctx.uid, ctx.gid))

    @_errors
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(await self.fs.mkdir(parent_inode, name, mode, ctx.uid, ctx.gid))

    @_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.fs.unlink(parent_inode, name)

    @_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.fs.rmdir(parent_inode, name)

    @_errors
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(await self.fs.symlink(parent_inode, name, target, ctx.uid, ctx.gid))

    @_errors
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        await self.fs.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)

    @_errors
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(await self.fs.link(inode, new_parent_inode, new_name))

    @_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        fh, keep_cache = await self.fs.open(inode, flags)
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep_cache)

    @_errors
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        fh, node = await self.fs.create(parent_inode, name, mode, flags, ctx.uid, ctx.gid)
        return pyfuse3.FileInfo(fh=fh), self._entry(node)

    @_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await self.fs.read(fh, off, size)

    @_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return await self.fs.write(fh, off, buf)

    @_errors
    async def flush(self, fh: int) -> None:
        await self.fs.flush(fh)

    @_errors
    async def release(self, fh: int) -> None:
        await self.fs.release(fh)

    @_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.fs.fsync(fh)

    @_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return await self.fs.opendir(inode)

    @_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        self.fs.readdir(fh, start_id, lambda name, node, next_id: pyfuse3.readdir_reply(
            token, name.encode("utf-8"), self._entry(node), next_id))

    async def releasedir(self, fh: int) -> None:
        self.fs.releasedir(fh)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None  # directories are stored as soon as they change

    @_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        for k, v in (await self.fs.statfs()).items():
            setattr(s, k, v)
        return s

    # Extended attributes: user.* and the POSIX ACL names, in the object's metadata (see
    # AttrOps.setxattr). get and list answer from memory, so the kernel's getxattr of
    # security.capability before each write and ``ls -l``'s two per file cost no S3 request
    # (a FUSE request each: ``-o no_xattr`` answers ENOSYS, after which the kernel stops asking).
    @_errors
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        _xattrs_on(self.fs)
        await self.fs.described(inode)
        return self.fs.getxattr(inode, name)

    @_errors
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        _xattrs_on(self.fs)
        await self.fs.described(inode)
        return self.fs.listxattr(inode)

    @_errors
    async def setxattr(self, inode: int, name: bytes, value: bytes,
                       ctx: pyfuse3.RequestContext) -> None:
        _xattrs_on(self.fs)
        await self.fs.setxattr(inode, name, value)

    @_errors
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        _xattrs_on(self.fs)
        await self.fs.removexattr(inode, name)
