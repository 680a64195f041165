"""Operations on attributes: setattr (chmod, chown, utimens, truncate), extended attributes and
statfs.

Attributes live in the object's user metadata, as s3fs and rclone store them. A file whose upload
is still owed carries its new attributes with that upload (its record says them at once, for
crash recovery); a clean object gets them by a copy onto itself, a directory by a new marker.
Reads (getxattr, listxattr) answer from memory: the kernel asks for ``security.capability``
before every write, ``ls -l`` for two names per file.
"""

from __future__ import annotations

import errno
import stat
import time
from dataclasses import dataclass

from ..errors import FsError
from .attrs import (
    USER_METADATA_MAX,
    Attrs,
    acl_mode,
    decode_xattrs,
    encode_xattrs,
    metadata_for,
    metadata_size,
)
from .files import FileIO
from .inodes import Inode
from .metacache import MetaCache
from .namespace import Namespace
from .paths import KeyMapper
from .registry import OpenFiles
from .runner import StoreRunner
from .settings import FsConfig
from .uploads import Uploader

XATTR_KEY = "xattr"
"""s3fs's metadata name for extended attributes (kept in ``Inode.extra``, see ``setxattr``)."""
ACL_ACCESS = "system.posix_acl_access"
ACL_XATTRS = frozenset({ACL_ACCESS, "system.posix_acl_default"})
"""POSIX ACLs are stored like other attributes (for tools that copy them), not enforced; an access
ACL sets the mode's permission bits, as it does on a local filesystem (see ``acl_mode``)."""


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


class AttrOps:
    """setattr, the extended attributes and statfs (see module docstring)."""

    def __init__(self, runner: StoreRunner, keys: KeyMapper, cfg: FsConfig, meta: MetaCache,
                 names: Namespace, files: OpenFiles, uploader: Uploader, data: FileIO) -> None:
        self._runner = runner
        self.keys = keys
        self.cfg = cfg
        self.meta = meta
        self._names = names
        self._files = files
        self._uploader = uploader
        self._data = data

    async def setattr(self, ino: int, ch: AttrChanges, fh: int | None) -> Inode:
        self.cfg.check_writable()
        await self._names.described(ino)  # the attributes not changed here must be the stored ones
        node = self._names.node(ino)
        of = self._files.open_files.get(ino)
        if ch.size is not None:
            if node.is_dir:
                raise FsError("is a directory", errno=errno.EISDIR)
            await self._data.truncate(node, ch.size)
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
        of = self._files.open_files.get(node.ino)
        if of is not None and (of.dirty or node.etag is None):
            node.attrs = new
            await self._uploader.metadata_changed(of)
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
                # changes in it give it (see Namespace.touch_dir); its mode and owner are the
                # mount's.
                node.attrs = new
                self.meta.set_dir_times(self.keys.dir_prefix(""), new.mtime_ns, new.ctime_ns)
                return
            node.etag = await self._runner.run(
                self._runner.store.put, self.keys.dir_prefix(node.path), b"", metadata=md,
                content_type="application/x-directory")
            self.meta.drop_dir_times(self.keys.dir_prefix(node.path))  # the marker has them
        else:
            key = self.keys.file_key(node.path)
            node.etag = await self._runner.run(self._runner.store.copy, key, key, metadata=md,
                                               size=node.attrs.size)
            node.s3_mtime = None
            self.meta.put(key, node.etag, None, md)
        node.attrs = new
        node.valid_until = self._names.fresh_until()

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
        value = decode_xattrs(self._names.node(ino).extra.get(XATTR_KEY)).get(name or "")
        if name is None or value is None:
            raise FsError("no such attribute", errno=errno.ENODATA)
        return value

    def listxattr(self, ino: int) -> list[bytes]:
        xattrs = decode_xattrs(self._names.node(ino).extra.get(XATTR_KEY))
        return [n.encode("utf-8", "surrogateescape") for n in xattrs]

    async def setxattr(self, ino: int, raw_name: bytes, value: bytes) -> None:
        self.cfg.check_writable()
        await self._names.described(ino)  # its other xattrs are written back with it
        name = self._xattr_name(raw_name)
        if name is None:
            raise FsError(f"attribute {raw_name!r} cannot be stored", errno=errno.ENOTSUP)
        node = self._names.node(ino)
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
        self.cfg.check_writable()
        await self._names.described(ino)  # its other xattrs are written back with it
        node = self._names.node(ino)
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
