"""The inode table: stable numbers for paths, with the kernel's lookup counts.

An inode number is handed out the first time a path is seen and follows the object through
renames (``move``), so ``stat`` before and after ``mv`` agree. The kernel's lookup count decides
when an inode may be forgotten (see ``InodeTable``); an inode whose path was unlinked or replaced
is *detached* (``path is None``) but lives on while the kernel or an open file still refers to it.
"""

from __future__ import annotations

import itertools
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from .attrs import Attrs
from .paths import PathTree

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
    shown_etag: str | None = None
    """ETag of the version whose attributes the latest reply handed the kernel..."""
    shown_until: float = 0.0
    """... and the trio clock time until which it may keep them (it cuts reads at that size)."""
    other_until: float = 0.0
    """Until when the kernel may keep the attributes of a version shown before: of concurrent
    replies it keeps the first it receives, which need not be the last one sent."""
    extra: dict[str, str] = field(default_factory=dict)
    """Foreign user metadata we do not interpret; kept across our own rewrites of the object."""
    provisional: bool = False
    """``attrs`` are guessed from a listing: the object's POSIX metadata is not known yet
    (see ``listedattrs``)."""
    copied_as: dict[str, str] | None = None
    """ETag a version of this file was copied under by our own renames, by its ETag before (a
    rename copies the object; the copy of an object uploaded in parts gets another ETag), so
    a descriptor opened before a rename still finds its version (``FileIO._moved``)."""

    def shown(self, now: float, timeout: float) -> None:
        """The kernel was handed this version's attributes, to keep ``timeout`` seconds."""
        if timeout > 0:
            if self.shown_etag != self.etag and self.shown_until > now:
                self.other_until = max(self.other_until, self.shown_until)
            self.shown_etag, self.shown_until = self.etag, now + timeout

    def kernel_holds_other(self, now: float) -> bool:
        """Whether the kernel may still hold the attributes of a version other than ours."""
        return self.other_until > now or self.shown_etag != self.etag and self.shown_until > now

    def kernel_forgot_attrs(self) -> None:
        """The kernel was told to drop its attributes (and ignores replies sent before)."""
        self.shown_until = self.other_until = 0.0

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.attrs.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.attrs.mode)


class InodeTable:
    """Inodes by number and by path, and by directory (``children``, ``move`` and ``forget``
    touch only the entries concerned, never every cached path). Paths are relative to the mount
    root (``""`` = root).

    The kernel's lookup count decides how long an inode is remembered: once it has forgotten
    every lookup (``forget``) and nothing else holds the inode, it is dropped, named or not; the
    next lookup of its path installs it again (with a new number, which is fine: the kernel
    holds none). ``held`` says what else holds one: an open file still in the open-files
    registry, even closed (a dirty file waiting for its upload must keep its inode and path, or
    a lookup of it would ask the bucket, which does not have it yet)."""

    def __init__(self, root_attrs: Attrs, held: Callable[[int], bool]) -> None:
        self._next = itertools.count(ROOT_INODE + 1)
        self._held = held
        root = Inode(ROOT_INODE, "", root_attrs, valid_until=float("inf"))
        root.lookups = 1
        self.by_ino: dict[int, Inode] = {ROOT_INODE: root}
        self.by_path: dict[str, Inode] = {}
        self._paths = PathTree()
        """The paths of ``by_path``, by directory."""
        self._name(root)

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
        self._name(node)
        return node

    def detach(self, node: Inode) -> None:
        """The path of ``node`` is gone (unlinked or replaced); the inode lives while referenced."""
        self._unname(node)
        node.path = None
        self._maybe_drop(node)

    def move(self, old: str, new: str) -> None:
        """Rename ``old`` to ``new``, with everything below it; inode numbers stay."""
        target = self.by_path.get(new)
        if target is not None:
            self.detach(target)
        moved = [self.by_path[p] for p in self._paths.under(old)]
        for n in moved:
            self._unname(n)
        for n in moved:
            assert n.path is not None
            n.path = new + n.path[len(old):]
            if (shadowed := self.by_path.get(n.path)) is not None:
                self.detach(shadowed)  # a stale inode below the replaced target
            self._name(n)

    def attach(self, node: Inode, path: str) -> None:
        """Name ``node`` ``path`` again (detached meanwhile, it was moved there after all),
        in place of any inode named so since."""
        if (other := self.by_path.get(path)) is not None and other is not node:
            self.detach(other)
        node.path = path
        self.by_ino[node.ino] = node
        self._name(node)

    def local(self, node: Inode) -> bool:
        """Whether this mount's own state of ``node`` is the truth, not a listing's: it is open,
        or data of it is owed to the bucket (closed with async_upload and not stored yet, or its
        upload failed). A listing must not put what it shows over it: one begun before a file
        was made and answered while its upload waited showed it as made (empty), and reads of
        the closed file ended at 0 bytes."""
        return node.open_count > 0 or self._held(node.ino)

    def forget(self, ino: int, count: int) -> None:
        node = self.by_ino.get(ino)
        if node is None or ino == ROOT_INODE:
            return
        node.lookups = max(node.lookups - count, 0)
        self._maybe_drop(node)

    def release(self, node: Inode) -> None:
        """Whatever held ``node`` besides the kernel let go of it (an open file was settled):
        drop it if the kernel holds it no more either."""
        self._maybe_drop(node)

    def remember(self, node: Inode, path: str | None) -> Inode:
        """The inode to hand the kernel for ``node``, an entry of a directory listing taken
        earlier (readdirplus) and now at ``path`` (None: the directory is gone): ``node`` itself,
        registered again if it was dropped meanwhile (the kernel must never hold a number we do
        not know: it would get ESTALE), or the inode installed at ``path`` since."""
        if self.by_ino.get(node.ino) is node:
            return node
        current = self.by_path.get(path) if path is not None else None
        if current is not None:
            return current
        node.path = path if node.path is not None else None  # (an unlinked one stays so)
        self.by_ino[node.ino] = node
        if node.path is not None:
            self._name(node)
        return node

    def children(self, path: str) -> list[Inode]:
        """Cached inodes directly under directory ``path``."""
        return [self.by_path[p] for p in self._paths.children(path)]

    def _name(self, node: Inode) -> None:
        assert node.path is not None
        self.by_path[node.path] = node
        self._paths.add(node.path)

    def _unname(self, node: Inode) -> None:
        if node.path is not None and self.by_path.get(node.path) is node:
            del self.by_path[node.path]
            self._paths.discard(node.path)

    def _maybe_drop(self, node: Inode) -> None:
        """Forget ``node`` once nothing refers to it: the kernel (lookups), open handles, the
        open-files registry (``held``). It keeps its path, so a directory listing that still
        holds it can hand it out again (``remember``)."""
        if (node.lookups == 0 and node.open_count == 0 and node.ino != ROOT_INODE
                and not self._held(node.ino)):
            if self.by_ino.get(node.ino) is node:
                del self.by_ino[node.ino]
            self._unname(node)
