"""The inode table: stable numbers for paths, with the kernel's lookup counts.

An inode number is handed out the first time a path is seen and follows the object through
renames (``move``), so ``stat`` before and after ``mv`` agree. The kernel's lookup count decides
when an inode may be forgotten; an inode whose path was unlinked or replaced is *detached*
(``path is None``) but lives on while the kernel or an open file still refers to it.
"""

from __future__ import annotations

import itertools
import stat
from dataclasses import dataclass, field

from .attrs import Attrs

ROOT_INODE = 1


@dataclass
class Inode:
    ino: int
    path: str | None
    attrs: Attrs
    etag: str | None = None
    """ETag of the object (files, symlinks) or of the directory marker; None if there is none."""
    valid_until: float = 0.0
    """trio clock time until which ``attrs`` are trusted without asking S3 again."""
    lookups: int = 0
    open_count: int = 0
    symlink_target: str | None = None
    s3_mtime: float | None = None
    """LastModified of the object version ``etag`` names; None when unknown (our own upload)."""
    kernel_cache_etag: str | None = None
    """ETag of the content the kernel's page cache holds for this inode (keep_cache decision)."""
    extra: dict[str, str] = field(default_factory=dict)
    """Foreign user metadata we do not interpret; kept across our own rewrites of the object."""
    provisional: bool = False
    """``attrs`` are guessed from a listing: the object's POSIX metadata is not known yet
    (see ``listedattrs``)."""

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.attrs.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.attrs.mode)


class InodeTable:
    """Inodes by number and by path. Paths are relative to the mount root (``""`` = root)."""

    def __init__(self, root_attrs: Attrs) -> None:
        self._next = itertools.count(ROOT_INODE + 1)
        root = Inode(ROOT_INODE, "", root_attrs, valid_until=float("inf"))
        root.lookups = 1
        self.by_ino: dict[int, Inode] = {ROOT_INODE: root}
        self.by_path: dict[str, Inode] = {"": root}

    def get(self, ino: int) -> Inode | None:
        return self.by_ino.get(ino)

    def at(self, path: str) -> Inode | None:
        return self.by_path.get(path)

    def put(self, path: str, attrs: Attrs, *, etag: str | None) -> Inode:
        """The inode of ``path`` with fresh attributes; a new one if the path is new or changed kind."""
        node = self.by_path.get(path)
        if node is not None and stat.S_IFMT(node.attrs.mode) == stat.S_IFMT(attrs.mode):
            node.attrs = attrs
            node.etag = etag
            return node
        if node is not None:
            self.detach(node)
        node = Inode(next(self._next), path, attrs, etag=etag)
        self.by_ino[node.ino] = node
        self.by_path[path] = node
        return node

    def detach(self, node: Inode) -> None:
        """The path of ``node`` is gone (unlinked or replaced); the inode lives while referenced."""
        if node.path is not None and self.by_path.get(node.path) is node:
            del self.by_path[node.path]
        node.path = None
        self._maybe_drop(node)

    def move(self, old: str, new: str) -> None:
        """Rename ``old`` to ``new``, with everything below it; inode numbers stay."""
        target = self.by_path.get(new)
        if target is not None:
            self.detach(target)
        moved = [(p, n) for p, n in self.by_path.items()
                 if p == old or p.startswith(old + "/")]
        for p, _ in moved:
            del self.by_path[p]
        for p, n in moved:
            n.path = new + p[len(old):]
            self.by_path[n.path] = n

    def forget(self, ino: int, count: int) -> None:
        node = self.by_ino.get(ino)
        if node is None or ino == ROOT_INODE:
            return
        node.lookups = max(node.lookups - count, 0)
        self._maybe_drop(node)

    def _maybe_drop(self, node: Inode) -> None:
        # A still-named inode with no references stays cached: its number must remain stable for
        # the path while we may hand it out again.
        if (node.lookups == 0 and node.open_count == 0 and node.ino != ROOT_INODE
                and node.path is None):
            self.by_ino.pop(node.ino, None)

    def children(self, path: str) -> list[Inode]:
        """Cached inodes directly under directory ``path``."""
        pre = f"{path}/" if path else ""
        return [n for p, n in self.by_path.items()
                if p and p.startswith(pre) and "/" not in p[len(pre):]]
