"""Reference-model tests of the filesystem core, after mountpoint-s3's "reftests".

Hypothesis drives the FUSE-agnostic ``Filesystem`` core (no mount) and a plain in-memory model of
what the mount should show with the same random operations — creating, writing, truncating, renaming
and removing files, directories and symlinks, chmod/utimens, and objects put or deleted straight in
the bucket with boto3 behind the filesystem's back — and after every step compares the two: the tree
seen by recursive readdir (names, kinds, sizes, modes, known mtimes), every file's content, every
symlink's target, and the keys in the bucket. Every cache timeout is 0, so the core must notice
changes made behind its back at once. Failing operations must fail with one of the errnos POSIX
allows for the case. The model also knows special files (FIFOs, sockets, devices: empty objects),
extended attributes, explicit atimes, link counts (a directory: 2 and its subdirectories), and
that making, removing or renaming an entry moves its directory's mtime (at least to when the
operation began, whatever the directory's marker says when it is read again).

Model rules that are S3's rather than POSIX's: a directory exists while it has a marker object
(``dir/``) or anything below it, so an implicit directory (one known only from the keys below it)
vanishes with its last entry; a directory that was renamed, or whose attributes were set, has a
marker.

The core runs in one trio run per example, in a background thread (its locks, events and limiter
belong to that run, and the writeback task runs in the same nursery); the test submits coroutines
to it with ``trio.from_thread.run``, each bounded by ``CALL_TIMEOUT``. The S3 side is the
in-memory store (``MemoryStore``: many examples, fast) or the in-process sandbox server over HTTP
(``shared_sandbox``: fewer examples, the real S3 store), one bucket for the module and a fresh
prefix per example. The core's store is wrapped in a ``FaultyStore``, so steps can make the next
call of a kind fail as a server that keeps failing or keys that were refused would: the model says
which errno the operation gets, and that nothing is lost (a write that failed is kept and stored by
the retry; a half-done rename leaves both copies).

``AsyncUploadVsModel`` runs the same machine with ``async_upload`` (close() queues the upload), so
operations also meet files whose upload is queued or running.

Bugs found this way have a deterministic test at the end, so they stay fixed.

The suite (CI) runs the same examples every time (``derandomize``): a run that finds a new bug is
then reproducible, and CI does not fail on whatever a random draw turns up that day. To look for
new bugs, run with ``S3MOUNT_REFTEST_RANDOM=1`` (fresh random examples each run; it prints a seed
to reproduce a failure with ``--hypothesis-seed``), and give each bug found a deterministic test.
"""

from __future__ import annotations

import copy
import errno
import functools
import hashlib
import http.server
import io
import logging
import os
import shutil
import stat
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from provider_support import shared_sandbox

from s3mount.credentials.refresher import Refresher
from s3mount.credentials.static import StaticProvider
from s3mount.errors import AccessDenied, NotFound, S3MountError, Unavailable
from s3mount.fs.attrops import AttrChanges
from s3mount.fs.attrs import Defaults
from s3mount.fs.core import Filesystem
from s3mount.fs.dirops import RENAME_NOREPLACE
from s3mount.fs.inodes import ROOT_INODE, Inode
from s3mount.fs.metacache import MetaCache
from s3mount.fs.paths import KeyMapper
from s3mount.fs.settings import FsConfig
from s3mount.fs.staging import StagingArea
from s3mount.fs.writeback import BACKOFF_INITIAL, BACKOFF_MAX
from s3mount.store.base import KeySet, ObjectStore
from s3mount.store.faulty import FaultyStore
from s3mount.store.lean import Attempt, LeanS3
from s3mount.store.memory import MemoryStore
from s3mount.store.s3 import S3Store, StoreConfig

T = TypeVar("T")

pytestmark = pytest.mark.timeout(600)

UID, GID = os.getuid(), os.getgid()
DEFAULT_FILE_MODE, DEFAULT_DIR_MODE = 0o644, 0o755
CALL_TIMEOUT = 30.0
NAMES = ["a", "b", "c", "d"]  # few names, so operations collide with what exists

contents = st.binary(max_size=48)
modes = st.integers(0o400, 0o777)
mtimes = st.integers(1_000_000_000, 2_000_000_000).map(lambda s: s * 1_000_000_000 + 123)
faults = st.sampled_from([Unavailable("injected: the server keeps failing"),
                          AccessDenied("injected: the keys were refused")])
atimes = st.integers(-(2**40), 2**40).map(lambda s: s * 1_000_000_000 + 456)
"""Before 1970 and long after 2038 too."""


# -- the reference model -------------------------------------------------------------------------

@dataclass
class MFile:
    data: bytes
    mode: int | None = DEFAULT_FILE_MODE
    """None: not compared (see the state machine's ``put_behind``)."""
    mtime_ns: int | None = None
    """Known only after utimens (a write stamps the clock, a foreign object its LastModified)."""
    atime_ns: int | None = None
    """Known only after an explicit atime."""
    xattrs: dict[str, bytes] | None = field(default_factory=dict)
    """None: not compared (as ``mode``)."""


@dataclass
class MLink:
    target: bytes


@dataclass
class MSpecial:
    """A FIFO, socket or device node (an empty object whose metadata says which)."""

    kind: int
    rdev: int
    mode: int | None
    mtime_ns: int | None = None
    atime_ns: int | None = None
    xattrs: dict[str, bytes] | None = field(default_factory=dict)


@dataclass
class MDir:
    mode: int | None = DEFAULT_DIR_MODE
    """None: not compared (see the state machine's ``marker_behind``)."""
    marker: bool = False
    mtime_ns: int | None = None
    atime_ns: int | None = None
    xattrs: dict[str, bytes] | None = field(default_factory=dict)
    mtime_floor: int | None = None
    """An entry was made, removed or renamed in it since this time: its mtime is not older."""


Node = MFile | MLink | MDir | MSpecial


@dataclass
class Model:
    """What the mount should show: path -> node; ``""`` is the root."""

    nodes: dict[str, Node] = field(default_factory=lambda: {"": MDir(marker=True)})

    def get(self, path: str) -> Node | None:
        return self.nodes.get(path)

    def paths(self, *kinds: type) -> list[str]:
        """Every path but the root, of the given kinds (all kinds if none given)."""
        return sorted(p for p, n in self.nodes.items() if p and isinstance(n, kinds or Node))

    def dirs(self) -> list[str]:
        return sorted(p for p, n in self.nodes.items() if isinstance(n, MDir))

    def children(self, path: str) -> list[str]:
        return [p for p in self.nodes if p and parent_of(p) == path]

    def below(self, path: str) -> list[str]:
        return [p for p in self.nodes if p.startswith(path + "/")]

    def add(self, path: str, node: Node) -> None:
        """Put ``node`` at ``path``, with implicit directories for missing parents (S3 keys)."""
        parent = parent_of(path)
        while parent and parent not in self.nodes:
            self.nodes[parent] = MDir()
            parent = parent_of(parent)
        self.nodes[path] = node

    def remove(self, path: str) -> None:
        del self.nodes[path]
        self.prune(parent_of(path))

    def prune(self, path: str) -> None:
        """Implicit directories with nothing left below them are gone."""
        while path:
            node = self.nodes.get(path)
            if not isinstance(node, MDir) or node.marker or self.children(path):
                return
            del self.nodes[path]
            path = parent_of(path)

    def rename(self, src: str, dst: str) -> None:
        node = self.nodes.pop(src)
        self.nodes.pop(dst, None)  # a file, or an empty directory
        if isinstance(node, MDir):
            for p in sorted(self.below(src)):
                self.nodes[dst + p[len(src):]] = self.nodes.pop(p)
            node.marker = True
        self.nodes[dst] = node
        self.prune(parent_of(src))


def parent_of(path: str) -> str:
    return path.rpartition("/")[0]


def name_of(path: str) -> bytes:
    return path.rpartition("/")[2].encode()


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def overwritten(old: bytes, at: int, body: bytes) -> bytes:
    """``old`` after writing ``body`` at ``at`` (a hole before it reads as zeros)."""
    if not body:
        return old
    new = old.ljust(at, b"\0")
    return new[:at] + body + new[at + len(body):]


def ancestors(path: str) -> list[str]:
    out = []
    while (path := parent_of(path)):
        out.append(path)
    return out


# -- driving the core as the kernel would ---------------------------------------------------------

class Loop:
    """A trio run in a background thread for the life of one example."""

    def __init__(self, clock: trio.abc.Clock | None = None) -> None:
        self._ready = threading.Event()
        self.nursery: trio.Nursery | None = None
        self.token: trio.lowlevel.TrioToken | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,),
                                        kwargs={"clock": clock}, daemon=True,
                                        name="reftest-trio")
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("trio loop did not start")

    async def _main(self) -> None:
        async with trio.open_nursery() as n:
            self.nursery = n
            self.token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await trio.sleep_forever()

    def run(self, afn: Callable[..., Awaitable[T]], *args: Any) -> T:
        async def bounded() -> T:
            with trio.fail_after(CALL_TIMEOUT):
                return await afn(*args)
        return trio.from_thread.run(bounded, trio_token=self.token)

    def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        return trio.from_thread.run_sync(fn, *args, trio_token=self.token)

    def close(self) -> None:
        if self._thread.is_alive():
            assert self.nursery is not None
            self.run_sync(self.nursery.cancel_scope.cancel)
        self._thread.join(10)


@dataclass
class Seen:
    """One entry of the tree as the core shows it."""

    kind: int
    mode: int
    size: int
    mtime_ns: int
    atime_ns: int
    rdev: int
    xattrs: dict[str, bytes]
    nlink: int = 0
    content: bytes | None = None


class Kernel:
    """Operations by path, done as the kernel does them: walk the path with lookups, make the
    request, and forget the lookups it held (readdirplus entries included) when it is over."""

    def __init__(self, fs: Filesystem) -> None:
        self.fs = fs
        self.held: list[int] = []

    async def walk(self, path: str) -> Inode:
        node = await self.fs.getattr(ROOT_INODE)
        for name in path.split("/") if path else []:
            node = await self.fs.lookup(node.ino, name.encode())
            self.held.append(node.ino)
        return node

    def forget_all(self) -> None:
        self.fs.forget([(ino, 1) for ino in self.held])
        self.held.clear()

    async def create(self, path: str, body: bytes, mode: int) -> None:
        p = await self.walk(parent_of(path))
        fh, node = await self.fs.create(p.ino, name_of(path), mode, os.O_WRONLY | os.O_CREAT,
                                        UID, GID)
        self.held.append(node.ino)
        try:
            for i in range(0, len(body), 20):  # several writes, as the kernel splits them
                await self.fs.write(fh, i, body[i:i + 20])
            await self.fs.flush(fh)
        finally:
            await self.fs.release(fh)

    async def write(self, path: str, at: int, body: bytes, trunc: bool) -> None:
        node = await self.walk(path)
        fh, _ = await self.fs.open(node.ino, os.O_WRONLY | (os.O_TRUNC if trunc else 0))
        try:
            if body:
                await self.fs.write(fh, at, body)
            await self.fs.flush(fh)
        finally:
            await self.fs.release(fh)

    async def read(self, path: str, start: int, length: int) -> bytes:
        node = await self.walk(path)
        fh, _ = await self.fs.open(node.ino, os.O_RDONLY)
        try:
            return await self.fs.read(fh, start, length)
        finally:
            await self.fs.release(fh)

    async def setattr(self, path: str, ch: AttrChanges) -> Inode:
        node = await self.walk(path)
        return await self.fs.setattr(node.ino, ch, None)

    async def ftruncate(self, path: str, size: int) -> None:
        """open, ftruncate (a setattr through the handle), close."""
        node = await self.walk(path)
        fh, _ = await self.fs.open(node.ino, os.O_WRONLY)
        try:
            await self.fs.setattr(node.ino, AttrChanges(size=size), fh)
            await self.fs.flush(fh)
        finally:
            await self.fs.release(fh)

    async def mkdir(self, path: str, mode: int) -> None:
        p = await self.walk(parent_of(path))
        self.held.append((await self.fs.mkdir(p.ino, name_of(path), mode, UID, GID)).ino)

    async def symlink(self, path: str, target: bytes) -> None:
        p = await self.walk(parent_of(path))
        self.held.append((await self.fs.symlink(p.ino, name_of(path), target, UID, GID)).ino)

    async def mknod(self, path: str, mode: int, rdev: int) -> None:
        p = await self.walk(parent_of(path))
        self.held.append((await self.fs.mknod(p.ino, name_of(path), mode, rdev, UID, GID)).ino)

    async def setxattr(self, path: str, name: bytes, value: bytes | None) -> None:
        node = await self.walk(path)
        if value is None:
            await self.fs.removexattr(node.ino, name)
        else:
            await self.fs.setxattr(node.ino, name, value)

    async def rmdir(self, path: str) -> None:
        p = await self.walk(parent_of(path))
        await self.fs.rmdir(p.ino, name_of(path))

    async def unlink(self, path: str) -> None:
        p = await self.walk(parent_of(path))
        await self.fs.unlink(p.ino, name_of(path))

    async def rename(self, src: str, dst: str, flags: int) -> None:
        sp = await self.walk(parent_of(src))
        dp = await self.walk(parent_of(dst))
        await self.fs.rename(sp.ino, name_of(src), dp.ino, name_of(dst), flags)

    async def write_around(self, path: str, first: bytes, second: bytes,
                           between: Callable[[], Awaitable[None]]) -> bytes:
        """Open ``path`` twice (to write, to read), write ``first`` at 0, run ``between`` (a
        rename or unlink of the open file), write ``second`` after ``first``, read it all back
        through the other handle and close both; returns what was read."""
        node = await self.walk(path)
        fh, _ = await self.fs.open(node.ino, os.O_WRONLY)
        try:
            rh, _ = await self.fs.open(node.ino, os.O_RDONLY)
            try:
                if first:  # (the kernel sends no empty writes)
                    await self.fs.write(fh, 0, first)
                await between()
                if second:
                    await self.fs.write(fh, len(first), second)
                return await self.fs.read(rh, 0, 4096)
            finally:
                await self.fs.release(rh)
        finally:
            await self.fs.flush(fh)
            await self.fs.release(fh)

    async def read_file(self, node: Inode) -> bytes:
        fh, _ = await self.fs.open(node.ino, os.O_RDONLY)
        try:
            chunks = []
            while chunk := await self.fs.read(fh, sum(map(len, chunks)), 16):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            await self.fs.release(fh)

    async def list_dir(self, node: Inode) -> list[tuple[str, Inode]]:
        fh = await self.fs.opendir(node.ino)
        try:
            entries: list[tuple[str, Inode]] = []

            def take(name: str, child: Inode, _next: int) -> bool:
                entries.append((name, child))
                return True  # the kernel's buffer never fills here
            self.fs.readdir(fh, 0, take)
        finally:
            self.fs.releasedir(fh)
        for _, child in entries:
            self.held.append(child.ino)  # (readdir counted the lookup)
        for i, (name, child) in enumerate(entries):
            if child.provisional:  # handed out with zero timeouts: the kernel looks it up again
                entries[i] = (name, await self.fs.lookup(node.ino, name.encode()))
                self.held.append(entries[i][1].ino)
        return entries

    async def snapshot(self, known: dict[str, tuple[str, bytes]]) -> dict[str, Seen]:
        """The whole tree by recursive readdir, with each file's content and link's target.

        ``known`` holds (ETag, content) of files read in earlier snapshots: a file the core still
        shows with the same ETag, and has no staged copy of, is not read again (an object
        version's content cannot change), which keeps a step to a few requests. It is updated
        with what was read.
        """
        out: dict[str, Seen] = {}

        def stored_only(node: Inode) -> bool:
            """The file's content is the stored object's (no open or dirty staged copy)."""
            return node.etag is not None and node.ino not in self.fs.registry.open_files

        async def visit(path: str, node: Inode) -> None:
            for name, child in await self.list_dir(node):
                p = join(path, name)
                a = child.attrs
                seen = out[p] = Seen(
                    stat.S_IFMT(a.mode), stat.S_IMODE(a.mode), a.size, a.mtime_ns,
                    a.mtime_ns if a.atime_ns is None else a.atime_ns, a.rdev,
                    {n.decode(): self.fs.getxattr(child.ino, n)
                     for n in self.fs.listxattr(child.ino)})
                if child.is_dir:
                    await visit(p, child)
                elif child.is_symlink:
                    seen.content = await self.fs.readlink(child.ino)
                elif not stat.S_ISREG(a.mode):
                    pass  # a FIFO, socket or device: nothing to read
                elif stored_only(child) and known.get(p, ("", b""))[0] == child.etag:
                    seen.content = known[p][1]
                else:
                    seen.content = await self.read_file(child)
                    if stored_only(child):
                        known[p] = (child.etag, seen.content)
                seen.nlink = self.fs.nlink(child)  # (a directory's: now that it was listed)

        await visit("", await self.fs.getattr(ROOT_INODE))
        return out

    def root(self) -> Seen:
        """The root as the last snapshot left it (its link count needs that listing)."""
        node = self.fs.inodes.get(ROOT_INODE)
        assert node is not None
        a = node.attrs
        return Seen(stat.S_IFDIR, stat.S_IMODE(a.mode), 0, a.mtime_ns,
                    a.mtime_ns if a.atime_ns is None else a.atime_ns, 0,
                    {n.decode(): self.fs.getxattr(ROOT_INODE, n)
                     for n in self.fs.listxattr(ROOT_INODE)}, self.fs.nlink(node))


class MemoryAdmin:
    """The few boto3 S3 client calls the tests make behind the filesystem's back, on a
    ``MemoryStore`` (so the same rules change either kind of bucket)."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def put_object(self, *, Bucket: str, Key: str, Body: bytes = b"",  # noqa: N803 - boto3's
                   Metadata: dict[str, str] | None = None, **_: Any) -> dict[str, Any]:
        return {"ETag": f'"{self.store.put(Key, Body, metadata=Metadata or {})}"'}

    def delete_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803
        self.store.delete(Key)
        return {}

    def copy_object(self, *, Bucket: str, Key: str, CopySource: dict[str, str],  # noqa: N803
                    MetadataDirective: str = "COPY", Metadata: dict[str, str] | None = None,
                    **_: Any) -> dict[str, Any]:
        replace = Metadata or {} if MetadataDirective == "REPLACE" else None
        return {"CopyObjectResult": {
            "ETag": f'"{self.store.copy(CopySource["Key"], Key, metadata=replace)}"'}}

    def head_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803
        info = self.store.head(Key)
        return {"ContentLength": info.size, "ETag": f'"{info.etag}"',
                "Metadata": dict(info.metadata or {}), "ContentType": info.content_type}

    def get_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803
        return {**self.head_object(Bucket=Bucket, Key=Key),
                "Body": io.BytesIO(self.store.body(Key))}

    def list_objects_v2(self, *, Bucket: str, Prefix: str = "",  # noqa: N803
                        **_: Any) -> dict[str, Any]:
        contents = [{"Key": o.key, "ETag": f'"{o.etag}"', "Size": o.size}
                    for o in self.store.objects(Prefix)]
        return {"Contents": contents, "KeyCount": len(contents)} if contents else {"KeyCount": 0}

    def get_paginator(self, name: str) -> Any:
        assert name == "list_objects_v2"
        admin = self

        class OnePage:
            def paginate(self, **kw: Any) -> list[dict[str, Any]]:
                return [admin.list_objects_v2(**kw)]
        return OnePage()


@dataclass
class Shared:
    """What all examples on one kind of store share: one bucket (examples differ by prefix), the
    store on it and an admin client to change the bucket behind the filesystem's back. Building
    boto3 clients is the slow part of setting up, so it happens once per module."""

    bucket: str
    store: ObjectStore
    s3: Any


_SHARED: dict[str, Shared] = {}


def shared(backend: str = "s3") -> Shared:
    """The bucket of ``backend``: "s3" (the sandbox server) or "memory"."""
    if backend not in _SHARED:
        if backend == "memory":
            memory = MemoryStore()
            _SHARED[backend] = Shared("memory", memory, MemoryAdmin(memory))
            return _SHARED[backend]
        sandbox = shared_sandbox()
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request is noise
        bucket = f"reftest-{uuid.uuid4().hex[:12]}"
        sandbox.create_bucket(bucket)
        keys = sandbox.issue_keys([bucket], label="reftest")
        store = S3Store(StoreConfig(bucket=bucket, endpoint_url=keys.endpoint_url,
                                    region="us-east-1", timeout=20),
                        Refresher(StaticProvider(keys)))
        _SHARED[backend] = Shared(bucket, store, sandbox.admin_s3())
    return _SHARED[backend]


Outcome = tuple[bool, Any]
"""(True, result) or (False, errno)."""


class Rig:
    """A fresh filesystem core (all timeouts ``timeout``: 0 unless given) over a fresh prefix
    of ``backend``'s bucket, in its own trio run (on ``clock`` if given). Its store is
    ``self.store``, a ``FaultyStore`` with no fault set."""

    def __init__(self, *, async_upload: bool = False, prefix: str | None = None,
                 metacache: MetaCache | None = None, posix_metadata: bool = True,
                 timeout: float = 0, clock: trio.abc.Clock | None = None,
                 backend: str = "s3") -> None:
        sh = shared(backend)
        self.bucket, self.s3 = sh.bucket, sh.s3
        self.store = FaultyStore(sh.store)
        self.prefix = prefix or f"ex-{uuid.uuid4().hex[:12]}/"
        self.tmp = tempfile.mkdtemp(prefix="reftest-")
        self.loop = Loop(clock)
        self.staging = StagingArea(os.path.join(self.tmp, "staging"))
        cfg = FsConfig(defaults=Defaults(UID, GID), attr_timeout=timeout, dir_timeout=timeout,
                       neg_timeout=timeout, async_upload=async_upload,
                       posix_metadata=posix_metadata)

        def build() -> Filesystem:
            fs = Filesystem(self.store, KeyMapper(self.prefix), cfg, self.staging,
                            metacache or MetaCache(None))
            assert self.loop.nursery is not None
            fs.nursery = self.loop.nursery
            self.loop.nursery.start_soon(fs.writeback.run)
            return fs

        self.fs = self.loop.run_sync(build)
        self.k = Kernel(self.fs)

    def close(self) -> None:
        try:
            self.loop.close()
        finally:
            self.staging.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __call__(self, op: Callable[..., Awaitable[T]], *args: Any) -> Outcome:
        """Run one ``Kernel`` operation in the core."""
        async def run() -> T:
            try:
                return await op(*args)
            finally:
                self.k.forget_all()
        try:
            return True, self.loop.run(run)
        except S3MountError as exc:
            return False, exc.errno

    def with_fault(self, kind: str, error: S3MountError, op: Callable[..., Awaitable[T]],
                   *args: Any, times: int = 1) -> Outcome:
        """Run one ``Kernel`` operation with the first ``times`` store calls of ``kind``
        failing."""
        self.store.fail(kind, error, times=times)
        try:
            return self(op, *args)
        finally:
            self.store.clear()

    def settle(self) -> None:
        """Wait for every upload to be stored (retries of failed ones included)."""
        assert self.loop.run(self.fs.writeback.drain, 20.0), "uploads did not finish"

    def ok(self, op: Callable[..., Awaitable[T]], *args: Any) -> T:
        done, value = self(op, *args)
        assert done, f"{op.__name__}{args} failed: {errno.errorcode.get(value, value)}"
        return value

    def snapshot(self, known: dict[str, tuple[str, bytes]] | None = None) -> dict[str, Seen]:
        return self.ok(self.k.snapshot, {} if known is None else known)

    def key(self, path: str) -> str:
        return self.prefix + path

    def bucket_keys(self) -> dict[str, str]:
        """Key (without the prefix) -> ETag of everything under the prefix."""
        keys: dict[str, str] = {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix):
            keys.update({o["Key"][len(self.prefix):]: o["ETag"].strip('"')
                         for o in page.get("Contents", [])})
        return keys


# -- the state machine ----------------------------------------------------------------------------

class FilesystemVsModel(RuleBasedStateMachine):
    ASYNC_UPLOAD = False
    BACKEND = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.rig = Rig(async_upload=self.ASYNC_UPLOAD, backend=self.BACKEND)
        self.k = self.rig.k
        self.model = Model()
        self.known: dict[str, tuple[str, bytes]] = {}
        self.ghosts: dict[str, Node] = {}
        """Nodes that vanished behind the filesystem's back (the core may still hold inodes)."""

    def teardown(self) -> None:
        self.rig.close()

    # -- helpers -------------------------------------------------------------------------------

    def expect(self, outcome: Outcome, allowed: set[int], what: str) -> bool:
        """Check an outcome against the errnos the model allows (none: it must succeed); True
        when the operation succeeded."""
        ok, value = outcome
        names = sorted(errno.errorcode[e] for e in allowed)
        if ok:
            assert not allowed, f"{what}: succeeded, expected one of {names}"
            return True
        got = errno.errorcode.get(value, value)
        assert allowed, f"{what}: failed with {got}"
        assert value in allowed, f"{what}: failed with {got}, expected one of {names}"
        return False

    def expect_or(self, outcome: Outcome, error: S3MountError, what: str) -> bool:
        """Check the outcome of an operation one store call of which was made to fail with
        ``error``: it succeeds (the call was not needed) or fails with ``error``'s errno; True
        when it succeeded."""
        ok, value = outcome
        if ok:
            return True
        got = errno.errorcode.get(value, value)
        assert value == error.errno, \
            f"{what}: failed with {got}, expected {errno.errorcode[error.errno]} or success"
        return False

    def new_path(self, data: st.DataObject) -> str:
        """A path in an existing directory; the name may or may not be taken."""
        return join(data.draw(st.sampled_from(self.model.dirs())),
                    data.draw(st.sampled_from(NAMES)))

    def existing(self, data: st.DataObject, *kinds: type) -> str | None:
        """An existing path of one of ``kinds``, or None (then the rule does nothing)."""
        paths = self.model.paths(*kinds)
        return data.draw(st.sampled_from(paths)) if paths else None

    def any_path(self, data: st.DataObject) -> str | None:
        """An existing path of any kind, or a name in an existing directory."""
        return self.existing(data) if data.draw(st.booleans()) else self.new_path(data)

    def behind(self, change: Callable[[], None]) -> None:
        """Apply a change made behind the filesystem's back to the model, minding one limit: a
        file that comes back with the same content (so the same ETag) within the same second
        (LastModified's resolution) shows its old attributes (see
        test_metadata_changed_behind_back); its mode is not compared."""
        before = dict(self.model.nodes)
        change()
        for p in before.keys() - self.model.nodes.keys():
            self.ghosts[p] = before[p]
        for p in self.model.nodes.keys() - before.keys():
            node, ghost = self.model.nodes[p], self.ghosts.get(p)
            if isinstance(node, MFile) and isinstance(ghost, MFile) and node.data == ghost.data:
                node.mode = None
                node.xattrs = None

    def taken(self, path: str) -> set[int]:
        return {errno.EEXIST} if self.model.get(path) is not None else set()

    def changing(self, *paths: str) -> Callable[[], None]:
        """Call before an operation that makes, removes or renames ``paths``; the returned
        function, called once it succeeded, moves their directories' times in the model."""
        began = time.time_ns()

        def done() -> None:
            for p in paths:
                parent = self.model.get(parent_of(p))
                if isinstance(parent, MDir):
                    parent.mtime_ns = None
                    parent.mtime_floor = began
        return done

    # -- operations through the filesystem ------------------------------------------------------

    @rule(data=st.data(), body=contents, mode=modes)
    def create_file(self, data: st.DataObject, body: bytes, mode: int) -> None:
        path = self.new_path(data)
        moved = self.changing(path)
        if self.expect(self.rig(self.k.create, path, body, mode), self.taken(path),
                       f"create {path}"):
            self.model.add(path, MFile(body, mode))
            moved()

    @rule(data=st.data(), body=contents, at=st.integers(0, 64), trunc=st.booleans())
    def write_file(self, data: st.DataObject, body: bytes, at: int, trunc: bool) -> None:
        """Open an existing file (or a directory: EISDIR) for writing, write at an offset, close;
        with ``trunc`` the file is opened with O_TRUNC."""
        path = self.existing(data, MFile, MDir)
        if path is None:
            return
        node = self.model.get(path)
        allowed = {errno.EISDIR} if isinstance(node, MDir) else set()
        if self.expect(self.rig(self.k.write, path, at, body, trunc), allowed,
                       f"write {path} at {at} trunc={trunc}"):
            assert isinstance(node, MFile)
            new = b"" if trunc else node.data
            if body:
                new = new.ljust(at, b"\0")
                new = new[:at] + body + new[at + len(body):]
            node.data = new
            node.mtime_ns = None

    @rule(data=st.data(), size=st.integers(0, 80))
    def truncate(self, data: st.DataObject, size: int) -> None:
        path = self.existing(data, MFile, MDir)
        if path is None:
            return
        node = self.model.get(path)
        allowed = {errno.EISDIR} if isinstance(node, MDir) else set()
        if self.expect(self.rig(self.k.setattr, path, AttrChanges(size=size)), allowed,
                       f"truncate {path} to {size}"):
            assert isinstance(node, MFile)
            node.data = node.data[:size].ljust(size, b"\0")
            node.mtime_ns = None

    @rule(data=st.data(), size=st.integers(0, 80))
    def ftruncate(self, data: st.DataObject, size: int) -> None:
        """Truncate a file through a descriptor open for writing (issue #16.7: a leaked count)."""
        path = self.existing(data, MFile)
        if path is None:
            return
        node = self.model.get(path)
        if self.expect(self.rig(self.k.ftruncate, path, size), set(), f"ftruncate {path}"):
            assert isinstance(node, MFile)
            node.data = node.data[:size].ljust(size, b"\0")
            node.mtime_ns = None

    @rule(data=st.data(), mode=modes)
    def mkdir(self, data: st.DataObject, mode: int) -> None:
        path = self.new_path(data)
        moved = self.changing(path)
        if self.expect(self.rig(self.k.mkdir, path, mode), self.taken(path), f"mkdir {path}"):
            self.model.add(path, MDir(mode, marker=True))
            moved()

    @rule(data=st.data(), mode=modes, kind=st.sampled_from(
        [stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK]), rdev=st.integers(1, 2**20))
    def mknod(self, data: st.DataObject, mode: int, kind: int, rdev: int) -> None:
        path = self.new_path(data)
        moved = self.changing(path)
        if self.expect(self.rig(self.k.mknod, path, kind | mode, rdev), self.taken(path),
                       f"mknod {path} {kind:o}"):
            device = kind in (stat.S_IFCHR, stat.S_IFBLK)
            self.model.add(path, MSpecial(kind, rdev if device else 0, mode))
            moved()

    @rule(data=st.data(), name=st.sampled_from([b"user.a", b"user.b", b"trusted.c"]),
          value=st.one_of(st.none(), st.binary(max_size=30)))
    def setxattr(self, data: st.DataObject, name: bytes, value: bytes | None) -> None:
        """Set (or with ``value`` None remove) an extended attribute; only user.* are stored."""
        path = self.existing(data, MFile, MDir, MSpecial)
        if path is None:
            return
        node = self.model.get(path)
        assert isinstance(node, MFile | MDir | MSpecial)
        if node.xattrs is None and value is None:
            return  # whether it is there is not known
        allowed: set[int] = set()
        if not name.startswith(b"user."):
            allowed = {errno.ENOTSUP} if value is not None else {errno.ENODATA}
        elif value is None and name.decode() not in (node.xattrs or {}):
            allowed = {errno.ENODATA}
        if self.expect(self.rig(self.k.setxattr, path, name, value), allowed,
                       f"setxattr {path} {name!r}={value!r}"):
            if node.xattrs is not None and value is None:
                node.xattrs.pop(name.decode(), None)
            elif node.xattrs is not None:
                node.xattrs[name.decode()] = value
            if isinstance(node, MDir) and path:
                node.marker = True  # a directory's attributes live in its marker

    @rule(data=st.data())
    def rmdir(self, data: st.DataObject) -> None:
        path = self.any_path(data)
        if path is None:
            return
        node = self.model.get(path)
        allowed = ({errno.ENOENT} if node is None else
                   {errno.ENOTDIR} if not isinstance(node, MDir) else
                   {errno.ENOTEMPTY} if self.model.children(path) else set())
        moved = self.changing(path)
        if self.expect(self.rig(self.k.rmdir, path), allowed, f"rmdir {path}"):
            self.model.remove(path)
            moved()

    @rule(data=st.data())
    def unlink(self, data: st.DataObject) -> None:
        path = self.any_path(data)
        if path is None:
            return
        node = self.model.get(path)
        allowed = ({errno.ENOENT} if node is None else
                   {errno.EISDIR, errno.EPERM} if isinstance(node, MDir) else set())
        moved = self.changing(path)
        if self.expect(self.rig(self.k.unlink, path), allowed, f"unlink {path}"):
            self.model.remove(path)
            moved()

    @rule(data=st.data(), noreplace=st.booleans())
    def rename(self, data: st.DataObject, noreplace: bool) -> None:
        src = self.existing(data)
        dst = self.any_path(data)
        if src is None or dst is None or dst == src:
            return
        s, d = self.model.get(src), self.model.get(dst)
        allowed: set[int] = set()
        if isinstance(s, MDir) and dst.startswith(src + "/"):
            allowed.add(errno.EINVAL)  # into itself
        if d is not None:
            if noreplace:
                allowed.add(errno.EEXIST)
            if isinstance(d, MDir) and not isinstance(s, MDir):
                allowed.add(errno.EISDIR)
            if isinstance(s, MDir) and not isinstance(d, MDir):
                allowed.add(errno.ENOTDIR)
            if isinstance(d, MDir) and self.model.children(dst):
                allowed.add(errno.ENOTEMPTY)  # (also when the target is an ancestor of src)
        what = f"rename {src} -> {dst}{' (NOREPLACE)' if noreplace else ''}"
        moved = self.changing(src, dst)
        if self.expect(self.rig(self.k.rename, src, dst, RENAME_NOREPLACE if noreplace else 0),
                       allowed, what):
            self.model.rename(src, dst)
            moved()

    @rule(data=st.data(), mode=st.one_of(st.none(), modes), mtime=st.one_of(st.none(), mtimes),
          atime=st.one_of(st.none(), atimes))
    def chmod_utimens(self, data: st.DataObject, mode: int | None, mtime: int | None,
                      atime: int | None) -> None:
        path = self.existing(data, MFile, MDir, MSpecial)
        if path is None or (mode is None and mtime is None and atime is None):
            return
        node = self.model.get(path)
        assert isinstance(node, MFile | MDir | MSpecial)
        what = f"setattr {path} mode={mode} mtime={mtime} atime={atime}"
        result = self.rig.ok(self.k.setattr, path,
                             AttrChanges(mode=mode, mtime_ns=mtime, atime_ns=atime))
        if mode is not None:
            node.mode = mode
            assert stat.S_IMODE(result.attrs.mode) == mode, what
        if mtime is not None:
            node.mtime_ns = mtime
            assert result.attrs.mtime_ns == mtime, what
            if isinstance(node, MDir):
                node.mtime_floor = None
        if atime is not None:
            node.atime_ns = atime
            assert result.attrs.atime_ns == atime, what
        if isinstance(node, MDir):
            node.marker = True  # a directory's attributes live in its marker

    @rule(data=st.data(), link_to=st.binary(min_size=1, max_size=40).filter(lambda b: 0 not in b))
    def symlink(self, data: st.DataObject, link_to: bytes) -> None:
        path = self.new_path(data)
        moved = self.changing(path)
        if self.expect(self.rig(self.k.symlink, path, link_to), self.taken(path),
                       f"symlink {path}"):
            self.model.add(path, MLink(link_to))
            moved()

    @rule(data=st.data(), start=st.integers(0, 60), length=st.integers(1, 60))
    def read_range(self, data: st.DataObject, start: int, length: int) -> None:
        """A read at an offset (the invariant reads whole files from the start)."""
        path = self.existing(data, MFile)
        if path is None:
            return
        node = self.model.get(path)
        assert isinstance(node, MFile)
        got = self.rig.ok(self.k.read, path, start, length)
        assert got == node.data[start:start + length], f"read {path} [{start}:+{length}]"

    @rule(data=st.data(), first=contents, second=contents)
    def rename_while_open(self, data: st.DataObject, first: bytes, second: bytes) -> None:
        """mv of a file while a writer has it open: the writes before and after the rename all
        land in the file under its new name."""
        src = self.existing(data, MFile)
        dst = self.new_path(data)
        if src is None or self.model.get(dst) is not None:
            return
        node = self.model.get(src)
        assert isinstance(node, MFile)
        expected = first + second + node.data[len(first) + len(second):]
        moved = self.changing(src, dst)
        got = self.rig.ok(self.k.write_around, src, first, second,
                          lambda: self.k.rename(src, dst, 0))
        assert got == expected, f"read back after renaming {src} -> {dst} while open"
        node.data = expected
        node.mtime_ns = None
        self.model.rename(src, dst)
        moved()

    @rule(data=st.data(), first=contents, second=contents)
    def unlink_while_open(self, data: st.DataObject, first: bytes, second: bytes) -> None:
        """rm of a file while a writer has it open: the writer goes on (POSIX), and nothing of
        it reaches the bucket afterwards."""
        path = self.existing(data, MFile)
        if path is None:
            return
        node = self.model.get(path)
        assert isinstance(node, MFile)
        expected = first + second + node.data[len(first) + len(second):]
        moved = self.changing(path)
        got = self.rig.ok(self.k.write_around, path, first, second,
                          lambda: self.k.unlink(path))
        assert got == expected, f"read back after unlinking {path} while open"
        self.model.remove(path)
        moved()

    # -- operations meeting a failing store ---------------------------------------------------

    @rule(data=st.data(), error=faults, start=st.integers(0, 60), length=st.integers(1, 60),
          kind=st.sampled_from(["head", "peek", "list_page", "get_range", "download"]))
    def read_when_store_fails(self, data: st.DataObject, error: S3MountError, start: int,
                              length: int, kind: str) -> None:
        """A read one store call of which fails gets the error's errno and changes nothing."""
        path = self.existing(data, MFile)
        if path is None:
            return
        node = self.model.get(path)
        assert isinstance(node, MFile)
        outcome = self.rig.with_fault(kind, error, self.k.read, path, start, length)
        if self.expect_or(outcome, error, f"read {path} [{start}:+{length}], {kind} failing"):
            assert outcome[1] == node.data[start:start + length], f"read {path}"

    @rule(data=st.data(), error=faults, body=contents, at=st.integers(0, 64),
          trunc=st.booleans())
    def write_when_upload_fails(self, data: st.DataObject, error: S3MountError, body: bytes,
                                at: int, trunc: bool) -> None:
        """A write whose uploads at close() fail: close() reports the errno, the mount keeps
        the data (and shows it), and the retry in the background stores it: nothing is lost."""
        path = self.existing(data, MFile)
        if path is None:
            return
        node = self.model.get(path)
        assert isinstance(node, MFile)
        outcome = self.rig.with_fault("upload", error, self.k.write, path, at, body, trunc,
                                      times=2)  # the upload at flush and the one at release
        self.expect_or(outcome, error, f"write {path} at {at} trunc={trunc}, upload failing")
        node.data = overwritten(b"" if trunc else node.data, at, body)
        node.mtime_ns = None
        self.rig.settle()

    @rule(data=st.data(), error=faults)
    def unlink_when_delete_fails(self, data: st.DataObject, error: S3MountError) -> None:
        path = self.existing(data, MFile, MLink)
        if path is None:
            return
        if self.expect_or(self.rig.with_fault("delete", error, self.k.unlink, path), error,
                          f"unlink {path}, delete failing"):
            self.model.remove(path)

    @rule(data=st.data(), error=faults, mode=modes)
    def mkdir_when_put_fails(self, data: st.DataObject, error: S3MountError, mode: int) -> None:
        path = self.new_path(data)
        if self.model.get(path) is not None:
            return
        if self.expect_or(self.rig.with_fault("put", error, self.k.mkdir, path, mode), error,
                          f"mkdir {path}, put failing"):
            self.model.add(path, MDir(mode, marker=True))

    @rule(data=st.data(), error=faults, kind=st.sampled_from(["copy", "delete"]))
    def rename_file_when_store_fails(self, data: st.DataObject, error: S3MountError,
                                     kind: str) -> None:
        """mv of a file is a copy, then a delete: either failing fails the rename; when the
        delete failed, both copies are left (never a loss)."""
        src = self.existing(data, MFile, MLink)
        dst = self.new_path(data)
        if src is None or self.model.get(dst) is not None:
            return
        if self.expect_or(self.rig.with_fault(kind, error, self.k.rename, src, dst, 0), error,
                          f"rename {src} -> {dst}, {kind} failing"):
            self.model.rename(src, dst)
        elif kind == "delete":
            self.model.add(dst, copy.deepcopy(self.model.nodes[src]))

    @rule(data=st.data(), error=faults, mode=modes)
    def chmod_when_store_fails(self, data: st.DataObject, error: S3MountError,
                               mode: int) -> None:
        """A chmod whose metadata write fails (a copy onto itself, or a directory's marker)
        changes nothing."""
        path = self.existing(data, MFile, MDir)
        if path is None:
            return
        node = self.model.get(path)
        assert isinstance(node, MFile | MDir)
        kind = "put" if isinstance(node, MDir) else "copy"
        outcome = self.rig.with_fault(kind, error, self.k.setattr, path, AttrChanges(mode=mode))
        if self.expect_or(outcome, error, f"chmod {path} {mode:o}, {kind} failing"):
            node.mode = mode
            if isinstance(node, MDir):
                node.marker = True

    # -- changes behind the filesystem's back --------------------------------------------------

    @rule(data=st.data(), body=contents, deeper=st.booleans(), mode=modes,
          kind=st.sampled_from(["plain", "mode", "link"]))
    def put_behind(self, data: st.DataObject, body: bytes, deeper: bool, mode: int,
                   kind: str) -> None:
        """Another client writes an object: a plain file, one with s3fs-style metadata, or a
        symlink as s3fs and s3mount store one; perhaps in directories that exist only
        implicitly."""
        path = self.new_path(data)
        if deeper:
            path = join(path, data.draw(st.sampled_from(NAMES)))
        if any(not isinstance(self.model.get(a), MDir | None) for a in ancestors(path)) or \
                isinstance(self.model.get(path), MDir):
            return  # a key that would make a name both a file and a directory: not modelled
        old = self.model.get(path)
        if kind == "link" and not body:
            kind = "plain"  # a symlink has a target
        for known in (old, self.ghosts.get(path)):
            stored = known.data if isinstance(known, MFile) else known.target \
                if isinstance(known, MLink) else b"" if isinstance(known, MSpecial) else None
            if stored == body and not (isinstance(known, MFile) and kind != "link"):
                # The same body as an object of another type the mount knows: the same ETag,
                # maybe in the same second, so the mount may go on showing the old type (the
                # limit ``behind`` describes, for the type this time): not modelled.
                return
        metadata = {"plain": {}, "mode": {"mode": str(stat.S_IFREG | mode)},
                    "link": {"mode": str(stat.S_IFLNK | 0o777)}}[kind]
        self.rig.s3.put_object(Bucket=self.rig.bucket, Key=self.rig.key(path), Body=body,
                               Metadata=metadata)
        if kind == "link":
            self.behind(lambda: self.model.add(path, MLink(body)))
            return
        new = MFile(body, mode if kind == "mode" else DEFAULT_FILE_MODE)
        if isinstance(old, MFile) and old.data == body:
            new.mode = None  # same content, same ETag, same second: see behind()
        self.behind(lambda: self.model.add(path, new))

    @rule(data=st.data())
    def delete_behind(self, data: st.DataObject) -> None:
        path = self.existing(data, MFile, MLink, MSpecial)
        if path is None:
            return
        self.rig.s3.delete_object(Bucket=self.rig.bucket, Key=self.rig.key(path))
        self.behind(lambda: self.model.remove(path))

    @rule(data=st.data(), add=st.booleans())
    def marker_behind(self, data: st.DataObject, add: bool) -> None:
        """Another client creates a directory (a bare marker) or deletes a directory's marker."""
        if add:
            path = self.new_path(data)
            if self.model.get(path) is None:
                self.rig.s3.put_object(Bucket=self.rig.bucket, Key=self.rig.key(path) + "/",
                                       Body=b"")
                self.behind(lambda: self.model.add(path, MDir(marker=True)))
            return
        marked = [p for p in self.model.paths(MDir)
                  if isinstance(n := self.model.nodes[p], MDir) and n.marker]
        if not marked:
            return
        path = data.draw(st.sampled_from(marked))
        self.rig.s3.delete_object(Bucket=self.rig.bucket, Key=self.rig.key(path) + "/")
        node = self.model.nodes[path]
        assert isinstance(node, MDir)
        node.marker = False
        node.mode = DEFAULT_DIR_MODE  # an implicit directory has the mount's defaults
        node.mtime_ns = None
        node.atime_ns = None
        node.xattrs = {}
        self.behind(lambda: self.model.prune(path))

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def tree_matches_model(self) -> None:
        seen = self.rig.snapshot(self.known)
        expected = self.model.paths()
        assert sorted(seen) == expected, "paths seen by readdir differ from the model"
        seen[""] = self.rig.loop.run_sync(self.k.root)
        for path in ["", *expected]:
            node, s = self.model.nodes[path], seen[path]
            if isinstance(node, MLink):
                assert s.kind == stat.S_IFLNK, f"{path} should be a symlink"
                assert s.content == node.target, f"{path}: symlink target"
                assert s.nlink == 1, f"{path}: link count"
                continue
            if node.xattrs is not None:
                assert s.xattrs == node.xattrs, f"{path}: extended attributes"
            if node.atime_ns is not None:
                assert s.atime_ns == node.atime_ns, f"{path}: atime"
            if isinstance(node, MDir):
                assert s.kind == stat.S_IFDIR, f"{path} should be a directory"
                subdirs = [c for c in self.model.children(path)
                           if isinstance(self.model.nodes[c], MDir)]
                assert s.nlink == 2 + len(subdirs), f"{path}: link count"
                if node.mtime_floor is not None:
                    assert s.mtime_ns >= node.mtime_floor, f"{path}: mtime older than a change"
            elif isinstance(node, MSpecial):
                assert (s.kind, s.rdev, s.size) == (node.kind, node.rdev, 0), f"{path}: kind"
                assert s.nlink == 1, f"{path}: link count"
            else:
                assert s.nlink == 1, f"{path}: link count"
                assert s.kind == stat.S_IFREG, f"{path} should be a regular file"
                assert s.size == len(node.data), f"{path}: size"
                assert s.content == node.data, f"{path}: content"
            if node.mode is not None:
                assert s.mode == node.mode, f"{path}: mode {s.mode:o}, model {node.mode:o}"
            if node.mtime_ns is not None:
                assert s.mtime_ns == node.mtime_ns, f"{path}: mtime"

    @invariant()
    def bucket_matches_model(self) -> None:
        keys = self.rig.bucket_keys()
        markers = {k[:-1] for k in keys if k.endswith("/")}
        objects = {k: v for k, v in keys.items() if not k.endswith("/")}
        stored = {p: n.target if isinstance(n, MLink) else b"" if isinstance(n, MSpecial) else
                  n.data for p, n in self.model.nodes.items()
                  if isinstance(n, MFile | MLink | MSpecial)}
        assert sorted(objects) == sorted(stored), "object keys differ from the model's files"
        for p, body in stored.items():
            assert objects[p] == hashlib.md5(body).hexdigest(), f"{p}: stored content"
        assert markers <= set(self.model.dirs()), "a marker for a directory the model lacks"
        for d in self.model.paths(MDir):
            assert d in markers or self.model.below(d), f"{d}: an empty directory without marker"

    @invariant()
    def nothing_pending(self) -> None:
        assert self.rig.fs.pending_uploads() == 0, "closed files must be stored (close-to-open)"

    @invariant()
    def no_handles_no_open_files(self) -> None:
        """With every descriptor closed, no file counts as open: only uploads still owed (with
        async_upload) keep one, so a leaked count cannot make a file's node trusted for good."""
        def left() -> dict[str | None, int]:
            fs = self.rig.fs
            assert not fs.registry.handles
            return {of.node.path: of.handles for of in fs.registry.open_files.values()
                    if of.handles or not of.dirty}

        # Read in the loop, between two of its steps, not while a task is half-way through.
        found = self.rig.loop.run_sync(left)
        assert not found, f"open files with every handle closed: {found}"


# About 20 s of CPU (the sandbox server included: it runs in this process); shrinking a failure
# takes minutes, hence the generous timeout.
class AsyncUploadVsModel(FilesystemVsModel):
    """The same with ``-o async_upload``: close() queues the upload and returns, so operations
    meet files whose upload is queued or running (renamed, unlinked, rewritten, read, listed
    meanwhile). The bucket is compared when the queue is empty, which ``settle`` forces now and
    then."""

    ASYNC_UPLOAD = True

    @rule()
    def settle(self) -> None:
        self.rig.settle()
        super().no_handles_no_open_files()

    @invariant()
    def no_handles_no_open_files(self) -> None:
        """(An upload the queue is finishing holds its file open until it is done: checked
        once the queue is empty, in ``settle``.)"""

    @invariant()
    def bucket_matches_model(self) -> None:
        if self.rig.fs.pending_uploads() == 0:
            super().bucket_matches_model()

    @invariant()
    def nothing_pending(self) -> None:
        """(Pending uploads are what this variant is about.)"""

    def teardown(self) -> None:
        try:
            self.rig.settle()
            assert self.rig.fs.pending_uploads() == 0
            super().bucket_matches_model()
        finally:
            super().teardown()


class FilesystemVsModelOnS3(FilesystemVsModel):
    """The same against the S3 store and the sandbox server: fewer examples (each step costs
    requests over HTTP to moto), for what the memory store could hide."""

    BACKEND = "s3"


class AsyncUploadVsModelOnS3(AsyncUploadVsModel):
    BACKEND = "s3"


def machine_settings(max_examples: int) -> settings:
    return settings(max_examples=max_examples, stateful_step_count=30, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow],
                    derandomize=not os.environ.get("S3MOUNT_REFTEST_RANDOM"))


# On the memory store, 5x the examples the S3 store ran in the same time before (25 and 15).
FilesystemVsModel.TestCase.settings = machine_settings(150)
TestFilesystemVsModel = FilesystemVsModel.TestCase
AsyncUploadVsModel.TestCase.settings = machine_settings(90)
TestAsyncUploadVsModel = AsyncUploadVsModel.TestCase
FilesystemVsModelOnS3.TestCase.settings = machine_settings(5)
TestFilesystemVsModelOnS3 = FilesystemVsModelOnS3.TestCase
AsyncUploadVsModelOnS3.TestCase.settings = machine_settings(3)
TestAsyncUploadVsModelOnS3 = AsyncUploadVsModelOnS3.TestCase


# -- known bugs found by the state machine, as deterministic cases --------------------------------

@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    try:
        yield r
    finally:
        r.close()


def test_rename_dir_onto_empty_dir(rig: Rig) -> None:
    """rename(a, b) with a and b empty directories must leave b (POSIX; the model's rule)."""
    rig.ok(rig.k.mkdir, "a", 0o750)
    rig.ok(rig.k.mkdir, "b", 0o755)
    rig.ok(rig.k.rename, "a", "b", 0)
    assert set(rig.bucket_keys()) == {"b/"}
    seen = rig.snapshot()
    assert list(seen) == ["b"] and seen["b"].mode == 0o750


def test_rename_dir_onto_a_changed_empty_dir_keeps_the_source_times(rig: Rig) -> None:
    """The target's own times (moved when an entry was removed from it) go with it: the renamed
    directory shows the mtime it was given (found by the reference model on the real store)."""
    rig.ok(rig.k.mkdir, "b", 0o755)
    rig.ok(rig.k.setattr, "b", AttrChanges(mtime_ns=1_331_660_465_000_000_123))
    rig.ok(rig.k.mkdir, "d", 0o755)
    rig.ok(rig.k.mkdir, "d/a", 0o755)
    rig.ok(rig.k.rmdir, "d/a")  # d's mtime moves to now
    rig.ok(rig.k.rename, "b", "d", 0)
    assert rig.snapshot()["d"].mtime_ns == 1_331_660_465_000_000_123


def test_dir_attrs_after_marker_deleted_behind_back(rig: Rig) -> None:
    rig.ok(rig.k.mkdir, "d", 0o700)
    rig.ok(rig.k.create, "d/f", b"x", 0o644)
    assert rig.snapshot()["d"].mode == 0o700
    rig.s3.delete_object(Bucket=rig.bucket, Key=rig.key("d/"))  # d is implicit now
    assert rig.snapshot()["d"].mode == DEFAULT_DIR_MODE


def test_metadata_changed_behind_back(rig: Rig) -> None:
    """Another client (s3fs, another s3mount) chmods a file: CopyObject onto itself with new
    metadata. The content and so the ETag stay; the mode must change all the same."""
    rig.ok(rig.k.create, "f", b"same", 0o600)
    assert rig.snapshot()["f"].mode == 0o600
    before = rig.bucket_keys()["f"]
    time.sleep(1.1)  # LastModified has whole seconds (HEAD): a change in the same one is missed
    rig.s3.copy_object(Bucket=rig.bucket, Key=rig.key("f"), MetadataDirective="REPLACE",
                       CopySource={"Bucket": rig.bucket, "Key": rig.key("f")},
                       Metadata={"mode": str(stat.S_IFREG | 0o640)})
    assert rig.bucket_keys()["f"] == before  # the premise: S3 keeps the ETag
    assert rig.snapshot()["f"].mode == 0o640


def test_dir_recreated_behind_back(rig: Rig) -> None:
    rig.ok(rig.k.mkdir, "d", 0o700)
    assert rig.snapshot()["d"].mode == 0o700
    rig.s3.delete_object(Bucket=rig.bucket, Key=rig.key("d/"))
    assert rig.snapshot() == {}
    rig.s3.put_object(Bucket=rig.bucket, Key=rig.key("d/"), Body=b"")  # no metadata: defaults
    assert rig.snapshot()["d"].mode == DEFAULT_DIR_MODE


def test_symlink_changed_behind_back(rig: Rig) -> None:
    rig.ok(rig.k.symlink, "l", b"old-target")
    assert rig.snapshot()["l"].content == b"old-target"
    rig.s3.put_object(Bucket=rig.bucket, Key=rig.key("l"), Body=b"new-target",
                      Metadata={"mode": str(stat.S_IFLNK | 0o777)})
    assert rig.snapshot()["l"].content == b"new-target"


def test_a_lookup_the_kernel_forgets_the_inode_of_meanwhile_hands_out_a_known_one(
        rig: Rig) -> None:
    """Lookups of one name overlap a FORGET of its inode (the kernel dropped the name's old
    dentry while a new lookup of it was under way: zero timeouts, parallel lookups). The
    lookup answered with the inode it had found before its LIST, dropped from the table
    meanwhile: the kernel then held a number the mount did not know (getattr: ESTALE)."""
    rig.ok(rig.k.create, "f", b"x", 0o644)
    fs = rig.fs

    async def race() -> Inode:
        first = await fs.lookup(ROOT_INODE, b"f")
        rig.store.slow("list_page", 0.3)
        found: list[Inode] = []

        async def look() -> None:
            found.append(await fs.lookup(ROOT_INODE, b"f"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(look)
            await trio.sleep(0.1)  # the lookup waits for its LIST
            fs.forget([(first.ino, 1)])
        rig.store.clear()
        return found[0]

    node = rig.loop.run(race)
    assert fs.inodes.get(node.ino) is node
    assert rig.loop.run(fs.getattr, node.ino) is node


def test_write_after_unlink_while_open(rig: Rig) -> None:
    """Write to an open file after unlinking it (POSIX allows it; temporary files do it), then
    close: nothing is left to upload and the staging file is gone."""
    rig.ok(rig.k.create, "f", b"data", 0o644)
    rig.ok(rig.k.write_around, "f", b"more", b"after unlink", lambda: rig.k.unlink("f"))
    assert rig.bucket_keys() == {}
    assert rig.fs.pending_uploads() == 0
    assert not [f for f in os.listdir(rig.staging.dir) if f.endswith(".data")]


@pytest.mark.parametrize("size", [10, 3 * 1024 * 1024])
def test_read_after_unlink_while_open(rig: Rig, size: int) -> None:
    """POSIX: an unlinked file stays readable through the descriptors open on it."""
    body = os.urandom(size)
    rig.s3.put_object(Bucket=rig.bucket, Key=rig.key("f"), Body=body)

    async def open_unlink_read() -> bytes:
        node = await rig.k.walk("f")
        fh, _ = await rig.fs.open(node.ino, os.O_RDONLY)
        try:
            await rig.k.unlink("f")
            out = b""
            while chunk := await rig.fs.read(fh, len(out), 128 * 1024):
                out += chunk
            return out
        finally:
            await rig.fs.release(fh)

    assert rig.ok(open_unlink_read) == body
    assert rig.bucket_keys() == {}


def test_an_unchanged_file_opened_again_keeps_the_kernel_pages(rig: Rig) -> None:
    """The kernel's pages of a file are kept at an open while nothing changed, also when an
    earlier descriptor is still open: FUSE sends a close's RELEASE in the background, so a
    program reading a file again can open it before the mount has seen it closed (a GET per
    such open, found as a flaky request count under load)."""
    rig.ok(rig.k.create, "f", b"data", 0o644)

    async def open_twice() -> tuple[bool, bool]:
        node = await rig.k.walk("f")
        fh1, _ = await rig.fs.open(node.ino, os.O_RDONLY)
        try:
            assert await rig.fs.read(fh1, 0, 10) == b"data"
            fh2, keep = await rig.fs.open(node.ino, os.O_RDONLY)
            await rig.fs.release(fh2)
        finally:
            await rig.fs.release(fh1)
        fh3, keep_after = await rig.fs.open(node.ino, os.O_RDONLY)
        await rig.fs.release(fh3)
        return keep, keep_after

    assert rig.ok(open_twice) == (True, True)


def test_write_after_unlink_keeps_old_content(rig: Rig) -> None:
    rig.ok(rig.k.create, "f", b"0123456789", 0o644)
    got = rig.ok(rig.k.write_around, "f", b"", b"ab", lambda: rig.k.unlink("f"))
    assert got == b"ab23456789"


def test_zero_timeouts_see_outside_changes_at_once(rig: Rig) -> None:
    """With attr_timeout, dir_timeout and neg_timeout 0, a miss, a listing and attributes are all
    asked anew: each change another client makes is seen by the very next call."""
    put = functools.partial(rig.s3.put_object, Bucket=rig.bucket)
    assert rig(rig.k.walk, "f") == (False, errno.ENOENT)  # a miss (a negative entry)
    put(Key=rig.key("f"), Body=b"1")
    assert rig.ok(rig.k.walk, "f").attrs.size == 1  # neg_timeout=0
    assert sorted(rig.snapshot()) == ["f"]
    put(Key=rig.key("g"), Body=b"")
    assert sorted(rig.snapshot()) == ["f", "g"]  # dir_timeout=0
    put(Key=rig.key("f"), Body=b"12345", Metadata={"mode": str(stat.S_IFREG | 0o600)})

    async def getattr_f() -> Inode:
        node = await rig.k.walk("f")
        return await rig.fs.getattr(node.ino)

    a = rig.ok(getattr_f).attrs
    assert (a.size, stat.S_IMODE(a.mode)) == (5, 0o600)  # attr_timeout=0
    rig.s3.delete_object(Bucket=rig.bucket, Key=rig.key("f"))
    assert rig(rig.k.walk, "f") == (False, errno.ENOENT)


class StoreWrapper:
    """An ObjectStore that passes every call to ``store``; subclasses intercept a few."""

    def __init__(self, store: S3Store) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class ListRacesUpload(StoreWrapper):
    """An ObjectStore wrapper that makes a LIST overtake an upload: uploads wait until an armed
    LIST has been answered by the server, and that LIST's answer is handed back only once the
    core has recorded the finished upload (an order a real race can take)."""

    def __init__(self, store: S3Store, node: Callable[[], Inode | None]) -> None:
        super().__init__(store)
        self._node = node
        self.armed = threading.Event()
        self._listed = threading.Event()

    def list_page(self, prefix: str, **kw: Any) -> Any:
        page = self._store.list_page(prefix, **kw)
        if self.armed.is_set():
            self._listed.set()
            deadline = time.monotonic() + 10
            while (n := self._node()) is None or n.etag is None:
                assert time.monotonic() < deadline, "the upload did not finish"
                time.sleep(0.01)
        return page

    def upload(self, *args: Any, **kw: Any) -> str:
        assert self._listed.wait(10), "no armed LIST came"
        return self._store.upload(*args, **kw)


def test_readdir_during_upload() -> None:
    """A new file (async_upload: close queues the upload) must be listed while its upload runs."""
    rig = Rig(async_upload=True)
    try:
        created: dict[str, Inode | None] = {}
        store = ListRacesUpload(rig.fs.runner.store, lambda: created.get("f"))
        rig.fs.runner.store = store
        rig.ok(rig.k.create, "f", b"data", 0o644)  # queued; its upload waits for the LIST
        # (the inode table may drop it once stored: the kernel forgot it, so watch the inode)
        created["f"] = rig.fs.inodes.at("f")
        store.armed.set()
        assert list(rig.snapshot()) == ["f"]
    finally:
        rig.close()


@pytest.mark.parametrize("change", ["unlink", "rename"])
def test_a_directory_read_does_not_bring_back_a_forgotten_inode_of_a_name_gone_since(
        rig: Rig, change: str) -> None:
    """A directory is opened; the kernel then forgets the inode opendir listed for a name (it
    is dropped), looks the name up again (a new inode) and removes or renames it; then reads
    the directory. readdir registered the dropped inode again at its old path, which nothing
    held any more: the removed name came back, for lookups too, until the inode expired (16
    callers in one directory, a slow server: a name stayed after its unlink)."""
    rig.ok(rig.k.create, "f", b"x", 0o644)
    fs = rig.fs

    async def race() -> list[str]:
        fh = await fs.opendir(ROOT_INODE)
        first = await fs.lookup(ROOT_INODE, b"f")
        fs.forget([(first.ino, 1)])
        assert fs.inodes.get(first.ino) is None  # dropped
        again = await fs.lookup(ROOT_INODE, b"f")
        if change == "unlink":
            await fs.unlink(ROOT_INODE, b"f")
        else:
            await fs.rename(ROOT_INODE, b"f", ROOT_INODE, b"g", 0)
        fs.forget([(again.ino, 1)])
        names: list[str] = []
        fs.readdir(fh, 0, lambda name, node, _next: names.append(name) is None)
        fs.releasedir(fh)
        return names

    assert "f" not in rig.loop.run(race)
    assert fs.inodes.at("f") is None
    assert rig(rig.k.walk, "f") == (False, errno.ENOENT)


class HeldAnswers(StoreWrapper):
    """An ObjectStore wrapper that sends a request at once but holds its answer: the next LIST
    once ``hold_list`` is called, every DELETE (``deleted`` says it was done; ``*_go`` lets
    the answer through)."""

    def __init__(self, store: S3Store) -> None:
        super().__init__(store)
        self._hold = False
        self.listed, self.list_go = threading.Event(), threading.Event()
        self.deleted, self.delete_go = threading.Event(), threading.Event()

    def hold_list(self) -> None:
        self._hold = True

    def list_page(self, prefix: str, **kw: Any) -> Any:
        held, self._hold = self._hold, False
        page = self._store.list_page(prefix, **kw)
        if held:
            self.listed.set()
            assert self.list_go.wait(10), "the held LIST was never let go"
        return page

    def delete(self, key: str) -> Any:
        done = self._store.delete(key)
        self.deleted.set()
        assert self.delete_go.wait(10), "the held DELETE was never let go"
        return done


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_an_unlink_removes_the_inode_a_listing_installed_at_its_name_meanwhile(
        rig: Rig, kind: str) -> None:
    """An unlink (rmdir) waits for its DELETE; meanwhile one listing, taken after the DELETE,
    takes the inode's path away, and another, whose LIST was answered before it, installs the
    name again as a new inode. The unlink took only its own inode out: the new one stayed at
    the removed name, and readdir handed it to the kernel (16 callers in one directory, a slow
    server: a name stayed after its unlink)."""
    if kind == "file":
        rig.ok(rig.k.create, "f", b"x", 0o644)
    else:
        rig.ok(rig.k.mkdir, "f", 0o755)
    fs = rig.fs
    held = HeldAnswers(fs.runner.store)
    fs.runner.store = held

    async def until(done: Callable[[], bool]) -> None:
        while not done():
            await trio.sleep(0.01)

    async def race() -> list[str]:
        before: list[int] = []
        async with trio.open_nursery() as nursery:
            held.hold_list()

            async def open_before() -> None:
                before.append(await fs.opendir(ROOT_INODE))

            nursery.start_soon(open_before)
            await until(held.listed.is_set)  # its LIST saw f
            nursery.start_soon(fs.unlink if kind == "file" else fs.rmdir, ROOT_INODE, b"f")
            await until(held.deleted.is_set)
            fs.releasedir(await fs.opendir(ROOT_INODE))  # f is gone from the bucket
            held.list_go.set()
            await until(lambda: bool(before))
            held.delete_go.set()
        names: list[str] = []
        fs.readdir(before[0], 0, lambda name, node, _next: names.append(name) is None)
        fs.releasedir(before[0])
        return names

    assert "f" not in rig.loop.run(race)
    assert fs.inodes.at("f") is None


class Gates(StoreWrapper):
    """An ObjectStore wrapper that holds the next LIST once ``hold_list`` is called (``listing``
    says it is held, ``list_go`` lets it answer) and every upload until ``upload_go``."""

    def __init__(self, store: S3Store) -> None:
        super().__init__(store)
        self._hold = False
        self.listing = threading.Event()
        self.list_go = threading.Event()
        self.upload_go = threading.Event()

    def hold_list(self) -> None:
        self._hold = True

    def list_page(self, prefix: str, **kw: Any) -> Any:
        if self._hold:
            self._hold = False
            self.listing.set()
            assert self.list_go.wait(10), "the held LIST was never let go"
        return self._store.list_page(prefix, **kw)

    def upload(self, *args: Any, **kw: Any) -> str:
        assert self.upload_go.wait(10), "the upload was never let go"
        return self._store.upload(*args, **kw)


def test_a_listing_answered_while_a_new_file_waits_for_its_upload_keeps_its_size() -> None:
    """async_upload: a directory listing begins, a file is made in it, written and closed
    (its upload queued), and then the listing is answered. It showed the file as it was when
    made (empty: our own change replayed over the LIST) and opendir put that over the closed
    file's inode: a read right after the close gave b'' (size 0), and so did the file after its
    upload until the next listing (16 threads writing and reading back in one directory)."""
    rig = Rig(async_upload=True)
    try:
        gates = Gates(rig.fs.runner.store)
        rig.fs.runner.store = gates
        fs, data = rig.fs, bytes(range(256)) * 20

        async def race() -> None:
            gates.hold_list()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(rig.k.list_dir, fs.inodes.get(ROOT_INODE))
                while not gates.listing.is_set():
                    await trio.sleep(0.01)
                await rig.k.create("f", data, 0o644)  # closed; the upload waits
                gates.list_go.set()
            rig.k.forget_all()

        rig.loop.run(race)
        assert rig.ok(rig.k.walk, "f").attrs.size == len(data)
        gates.upload_go.set()  # (a read waits for the upload under way: the file's lock)
        assert rig.ok(rig.k.read, "f", 0, 2 * len(data)) == data
        rig.settle()
        assert rig.ok(rig.k.walk, "f").attrs.size == len(data)
        assert rig.ok(rig.k.read, "f", 0, 2 * len(data)) == data
    finally:
        rig.close()


class CountingStore(StoreWrapper):
    """An ObjectStore wrapper that records, in order, each request that describes or reads one
    object: ("head", key) for HEADs, singly or in batches, ("peek", key), ("get", key)."""

    def __init__(self, store: S3Store) -> None:
        super().__init__(store)
        self.calls: list[tuple[str, str]] = []

    @property
    def heads(self) -> list[str]:
        """The keys asked about, by HEAD or by a peek (the same question, asked with a GET)."""
        return [k for kind, k in self.calls if kind in ("head", "peek")]

    def head(self, key: str) -> Any:
        self.calls.append(("head", key))
        return self._store.head(key)

    def head_many(self, keys: list[str]) -> Any:
        self.calls.extend(("head", k) for k in keys)
        return self._store.head_many(keys)

    def peek(self, key: str, length: int) -> Any:
        self.calls.append(("peek", key))
        return self._store.peek(key, length)

    def get_range(self, key: str, start: int, length: int, **kw: Any) -> Any:
        self.calls.append(("get", key))
        return self._store.get_range(key, start, length, **kw)

    def on_files(self) -> list[tuple[str, str]]:
        """The calls, without those on directory markers (the walk to the file makes them)."""
        return [c for c in self.calls if not c[1].endswith("/")]


def test_store_peek_tells_the_whole_size() -> None:
    """peek gives HEAD's answer and the first bytes: the size is the object's, not the range's;
    an empty object (no first byte) and an archived one (no GET) still get HEAD's answer."""
    sh = shared()
    prefix = f"ex-{uuid.uuid4().hex[:12]}/"
    big = os.urandom(100_000)
    sh.s3.put_object(Bucket=sh.bucket, Key=prefix + "big", Body=big, Metadata={"mode": "33152"})
    sh.s3.put_object(Bucket=sh.bucket, Key=prefix + "empty", Body=b"")
    info, head = sh.store.peek(prefix + "big", 65536)
    assert (info.size, head, info.metadata) == (100_000, big[:65536], {"mode": "33152"})
    assert info.etag == sh.store.head(prefix + "big").etag
    info, head = sh.store.peek(prefix + "empty", 65536)
    assert (info.size, head) == (0, b"")
    sh.s3.put_object(Bucket=sh.bucket, Key=prefix + "cold", Body=b"z" * 10,
                     StorageClass="GLACIER")  # GET refused until restored; HEAD answers
    info, head = sh.store.peek(prefix + "cold", 65536)
    assert (info.size, head) == (10, b"")
    with pytest.raises(NotFound):
        sh.store.peek(prefix + "missing", 65536)


@pytest.mark.parametrize("status, content_range", [(200, None), (206, None), (206, "bytes 0-2/*")])
def test_peek_of_a_server_that_answers_range_its_own_way(status: int, content_range: str | None
                                                         ) -> None:
    """A server that ignores Range (200, the whole body), or leaves the total out of its
    Content-Range, still gets the size from the body it sent."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            self.send_response(status)
            self.send_header("ETag", '"e1"')
            self.send_header("Last-Modified", "Tue, 01 Dec 2026 00:00:00 GMT")
            self.send_header("x-amz-meta-mode", "33188")
            if content_range:
                self.send_header("Content-Range", content_range)
            self.send_header("Content-Length", "3")
            self.end_headers()
            self.wfile.write(b"abc")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        lean = LeanS3(f"http://127.0.0.1:{server.server_port}", "us-east-1", "b", ca_certs=None,
                      verify=True, pool_size=1)
        info, head = lean.peek("k", KeySet("AKIDEXAMPLE", "secret"), Attempt(1, 1, 5, 5), 65536)
        assert (info.size, info.etag, info.metadata, head) == (3, "e1", {"mode": "33188"}, b"abc")
    finally:
        server.shutdown()
        server.server_close()


def test_small_file_read_by_name_costs_one_get() -> None:
    """A small file looked up by name and read (cat, cp) costs one GET, which also brings its
    metadata; a large or empty one a HEAD, then GETs for the data. Opened again after its
    attributes expired, a small file replaced behind our back reads as the new version."""
    clock = trio.testing.MockClock(rate=1)
    rig = Rig(timeout=5, clock=clock)
    try:
        small, big = os.urandom(4096), os.urandom(100_000)
        rig.s3.put_object(Bucket=rig.bucket, Key=rig.key("d/small"), Body=small,
                          Metadata={"mode": str(0o100600)})
        rig.s3.put_object(Bucket=rig.bucket, Key=rig.key("d/big"), Body=big)
        rig.s3.put_object(Bucket=rig.bucket, Key=rig.key("d/empty"), Body=b"")
        store = CountingStore(rig.fs.runner.store)
        rig.fs.runner.store = store
        assert rig.ok(rig.k.read, "d/small", 0, 1 << 20) == small
        assert store.on_files() == [("peek", rig.key("d/small"))]
        assert stat.S_IMODE(rig.ok(rig.k.walk, "d/small").attrs.mode) == 0o600
        store.calls.clear()
        assert rig.ok(rig.k.read, "d/big", 0, 1 << 20) == big
        assert store.on_files()[0] == ("head", rig.key("d/big"))
        assert {c for c, _ in store.on_files()[1:]} == {"get"}
        store.calls.clear()
        assert rig.ok(rig.k.read, "d/empty", 0, 1 << 20) == b""
        assert store.on_files() == [("head", rig.key("d/empty"))]
        assert rig.loop.run_sync(len, rig.fs.names.peeked) == 0  # each body was taken by its reader

        newer = os.urandom(3000)
        rig.s3.put_object(Bucket=rig.bucket, Key=rig.key("d/small"), Body=newer)
        clock.jump(6)  # the listing and the attributes expire
        store.calls.clear()
        assert rig.ok(rig.k.read, "d/small", 0, 1 << 20) == newer
        assert store.on_files() == [("peek", rig.key("d/small"))]
        assert rig.bucket_keys()["d/small"] == rig.ok(rig.k.walk, "d/small").etag
    finally:
        rig.close()


def test_symlink_found_by_lookup_needs_no_request_to_read() -> None:
    """Following a symlink (lookup, then readlink) costs the lookup's one GET: it brought the
    target along."""
    rig = Rig(timeout=5, clock=trio.testing.MockClock(rate=1))
    try:
        rig.ok(rig.k.symlink, "link", b"some/where/else")
        fresh = Rig(timeout=5, clock=trio.testing.MockClock(rate=1), prefix=rig.prefix)
        try:
            store = CountingStore(fresh.fs.runner.store)
            fresh.fs.runner.store = store

            async def follow() -> bytes:
                return await fresh.fs.readlink((await fresh.k.walk("link")).ino)
            assert fresh.ok(follow) == b"some/where/else"
            assert store.on_files() == [("peek", rig.key("link"))]
        finally:
            fresh.close()
    finally:
        rig.close()


def test_lookup_peek_unused_without_attribute_caching() -> None:
    """With attr_timeout=0 nothing fetched at lookup could be served later: lookups HEAD."""
    rig = Rig()
    try:
        rig.s3.put_object(Bucket=rig.bucket, Key=rig.key("d/small"), Body=b"abc")
        store = CountingStore(rig.fs.runner.store)
        rig.fs.runner.store = store
        assert rig.ok(rig.k.read, "d/small", 0, 100) == b"abc"
        assert [c for c, _ in store.on_files()] == ["head", "get"], store.calls
    finally:
        rig.close()


def test_listing_heads_only_what_no_cache_knows(tmp_path: Path) -> None:
    """ls -l of a directory HEADs each file once; on the next mount (same attribute cache) an
    unchanged directory costs no HEAD, a changed file one; no_posix_metadata never HEADs."""
    prefix = f"ex-{uuid.uuid4().hex[:12]}/"
    sh = shared()
    for i in range(40):
        sh.s3.put_object(Bucket=sh.bucket, Key=f"{prefix}d/f{i:02d}", Body=b"x" * i)
    sh.s3.put_object(Bucket=sh.bucket, Key=f"{prefix}d/s3fs", Body=b"y",
                     Metadata={"mode": str(0o100600), "uid": "1234", "mtime": "1000000000"})
    files = {f"{prefix}d/f{i:02d}" for i in range(40)} | {f"{prefix}d/s3fs"}

    def listing(rig: Rig) -> tuple[list[str], dict[str, tuple[int, int, int, int]]]:
        store = CountingStore(rig.fs.runner.store)
        rig.fs.runner.store = store
        try:
            async def ls() -> list[tuple[str, Inode]]:
                d = await rig.k.walk("d")
                store.calls.clear()  # the lookup of d itself is not what is measured
                return await rig.k.list_dir(d)
            entries = rig.ok(ls)
            return store.heads, {n: (stat.S_IMODE(c.attrs.mode), c.attrs.uid, c.attrs.size,
                                     c.attrs.mtime_ns) for n, c in entries}
        finally:
            rig.close()

    db = str(tmp_path / "attrs.sqlite")
    cache = MetaCache(db)
    heads, first = listing(Rig(prefix=prefix, metacache=cache))
    cache.close()
    assert sorted(heads) == sorted(files)
    assert first["s3fs"][:3] == (0o600, 1234, 1)
    assert first["s3fs"][3] == 1_000_000_000 * 10**9

    cache = MetaCache(db)  # the next mount
    heads, second = listing(Rig(prefix=prefix, metacache=cache))
    assert heads == [] and second == first
    time.sleep(1.1)  # into a new second, so the change below moves LastModified
    sh.s3.copy_object(Bucket=sh.bucket, Key=f"{prefix}d/s3fs", MetadataDirective="REPLACE",
                      CopySource={"Bucket": sh.bucket, "Key": f"{prefix}d/s3fs"},
                      Metadata={"mode": str(0o100640), "uid": "1234", "mtime": "1000000000"})
    heads, third = listing(Rig(prefix=prefix, metacache=cache))
    cache.close()
    assert heads == [f"{prefix}d/s3fs"] and third["s3fs"][0] == 0o640

    heads, plain = listing(Rig(prefix=prefix, posix_metadata=False))
    assert heads == [] and plain["s3fs"][0] == 0o644 and set(plain) == set(first)


def test_opendir_installs_what_the_shared_index_knows() -> None:
    """A second mount with an empty attribute cache: opendir reads the directory's shared index
    (one GET) before it answers, so the entries the index knows for their listed version come
    with their stored attributes (no lookup per entry afterwards, no HEAD); an object replaced
    since stays provisional (its own HEAD when looked up: the index costs speed, never truth)."""
    rig = Rig(timeout=300, backend="memory")
    prefix = rig.prefix
    try:
        for i in range(20):
            rig.s3.put_object(Bucket=rig.bucket, Key=rig.key(f"d/f{i:02d}"), Body=b"x" * i,
                              Metadata={"mode": str(0o100600), "uid": "4242"})
        rig.snapshot()  # HEADs them all: learnt, then published at the flush
        rig.loop.run(rig.fs.shared.flush_all)
    finally:
        rig.close()
    rig.s3.put_object(Bucket=rig.bucket, Key=f"{prefix}d/f05", Body=b"new",
                      Metadata={"mode": str(0o100644)})
    fresh = Rig(timeout=300, backend="memory", prefix=prefix)
    try:
        store = CountingStore(fresh.fs.runner.store)
        fresh.fs.runner.store = fresh.fs.shared.store = store

        async def opendir() -> dict[str, Inode]:
            d = await fresh.k.walk("d")
            store.calls.clear()
            fh = await fresh.fs.opendir(d.ino)
            entries: dict[str, Inode] = {}

            def take(name: str, child: Inode, _next: int) -> bool:
                entries[name] = child
                return True
            try:
                fresh.fs.readdir(fh, 0, take)
            finally:
                fresh.fs.releasedir(fh)
            return entries

        entries = fresh.ok(opendir)
        assert [kind for kind, _ in store.calls] == ["get"], store.calls  # the index shard
        assert store.calls[0][1].startswith(".s3mount/index/")
        assert [n for n, c in entries.items() if c.provisional] == ["f05"]
        assert all(stat.S_IMODE(c.attrs.mode) == 0o600 and c.attrs.uid == 4242
                   for n, c in entries.items() if n != "f05")
        node = fresh.ok(fresh.k.walk, "d/f05")
        assert (stat.S_IMODE(node.attrs.mode), node.attrs.size) == (0o644, 3)
    finally:
        fresh.close()


class Straggler(StoreWrapper):
    """HEADs answer at once, except ``slow``'s, which is held until ``others`` other HEADs were
    answered (or 10 s passed): a request that takes long while the rest flow."""

    def __init__(self, store: S3Store, slow: str, others: int) -> None:
        super().__init__(store)
        self.slow, self.others = slow, others
        self.answered = 0
        self.seen_while_held = 0
        self.released = threading.Event()
        self._lock = threading.Lock()

    def head_many(self, keys: list[str]) -> Any:
        if self.slow in keys:
            self.released.wait(10)
            self.seen_while_held = self.answered
        out = self._store.head_many(keys)
        with self._lock:
            self.answered += len(keys) - (self.slow in keys)
            if self.answered >= self.others:
                self.released.set()
        return out


def test_a_slow_head_does_not_hold_up_the_rest_of_a_walk() -> None:
    """ls -l of a fresh directory describes its entries as a pipeline: while one HEAD takes
    long, the HEADs of the entries after it go on (a walk in chunks, one after the other, held
    every entry behind that chunk's slowest HEAD)."""
    rig = Rig(timeout=300, backend="memory")
    try:
        for i in range(300):
            rig.s3.put_object(Bucket=rig.bucket, Key=rig.key(f"d/f{i:03d}"), Body=b"x")
        store = Straggler(rig.fs.runner.store, rig.key("d/f100"), others=250)
        rig.fs.runner.store = store

        async def ls_l() -> None:
            d = await rig.k.walk("d")
            fh = await rig.fs.opendir(d.ino)
            rig.fs.releasedir(fh)
            await rig.fs.lookup(d.ino, b"f000")  # a first lookup: maybe a cat
            await rig.fs.lookup(d.ino, b"f001")  # the second: a walk, from f001 on
            assert await trio.to_thread.run_sync(store.released.wait, 20)

        rig.ok(ls_l)
        assert store.seen_while_held >= 250  # released by the others' answers, not its timeout
    finally:
        rig.close()


class ListCounter(StoreWrapper):
    """An ObjectStore wrapper that records the StartAfter of each LIST request."""

    def __init__(self, store: S3Store) -> None:
        super().__init__(store)
        self.starts: list[str | None] = []

    def list_page(self, prefix: str, **kw: Any) -> Any:
        self.starts.append(kw.get("start_after"))
        return self._store.list_page(prefix, **kw)


class LookupCounter(CountingStore, ListCounter):
    """Records both the HEADs and the LISTs."""


def test_ascending_lookups_in_a_big_directory_look_ahead() -> None:
    """Once a big directory's listing has expired, lookups going up through its names (as
    ``rm -r`` makes them) are answered by LISTs that look ahead, not by a HEAD each; and the
    answers are exactly the bucket's, changes behind our back included."""
    clock = trio.testing.MockClock(rate=1)
    rig = Rig(timeout=5, clock=clock)
    try:
        rig.fs.listings.LIST_PAGE = 10
        put = functools.partial(rig.s3.put_object, Bucket=rig.bucket, Body=b"x")
        for i in range(0, 120, 2):
            put(Key=rig.key(f"d/f{i:03d}"))
        put(Key=rig.key("d/f051/inside"))  # a directory among the files

        async def ls() -> list[tuple[str, Inode]]:  # (the kernel holds d while it reads it)
            return await rig.k.list_dir(await rig.k.walk("d"))
        assert len(rig.ok(ls)) == 61
        assert "d" in rig.fs.listings.large_dirs
        for i in (31, 33, 81):  # new behind our back, beside names already listed
            put(Key=rig.key(f"d/f{i:03d}"))
        for i in (40, 42, 90):  # gone behind our back
            rig.s3.delete_object(Bucket=rig.bucket, Key=rig.key(f"d/f{i:03d}"))
        clock.jump(60)  # the listing and every attribute expire
        store = LookupCounter(rig.fs.runner.store)
        rig.fs.runner.store = store
        truth = {k[len("d/"):].split("/")[0] for k in rig.bucket_keys() if k.startswith("d/")}
        asked = sorted(truth | {f"f{i:03d}" for i in (40, 42, 90)} | {"f0305", "f999"})
        for name in asked:
            done, got = rig(rig.k.walk, f"d/{name}")
            assert done == (name in truth), name
            if done:
                assert stat.S_ISDIR(got.attrs.mode) == (name == "f051"), name
        names_headed = [k for k in store.heads if k.startswith(rig.key("d/f"))]
        new = {rig.key(f"d/f{i:03d}") for i in (31, 33, 81)}  # need a HEAD for their metadata
        assert len(set(names_headed) - new) <= 3, names_headed  # the scan's first two names
        looked_ahead = [s for s in store.starts if s is not None]
        assert 3 <= len(looked_ahead) <= 12, store.starts  # 32, 64, ... names per LIST
    finally:
        rig.close()


def test_relisting_in_ranges_misses_nothing() -> None:
    """A directory listed before is listed again in ranges split at the old page boundaries
    (here pages of 10 names): names added behind our back inside a range (more than a page of
    them), after the last boundary and before the first, names removed (boundaries too), and
    subdirectories all come out exactly as in the bucket."""
    rig = Rig()
    try:
        rig.fs.listings.LIST_PAGE = 10
        put = functools.partial(rig.s3.put_object, Bucket=rig.bucket, Body=b"x")
        for i in range(0, 60, 2):
            put(Key=rig.key(f"d/f{i:03d}"))
        put(Key=rig.key("d/sub/a"))
        put(Key=rig.key("d/sub/b"))
        store = ListCounter(rig.fs.runner.store)
        rig.fs.runner.store = store

        async def ls() -> list[str]:
            return [n for n, _ in await rig.k.list_dir(await rig.k.walk("d"))]

        first = rig.ok(ls)
        assert len(first) == 31 and "sub" in first
        for i in range(1, 30, 2):  # 15 new names between f000 and f030: more than a page
            put(Key=rig.key(f"d/f{i:03d}"))
        for name in ("e", "g", "f0185", "sub2/x"):  # before, after, inside; a new subdirectory
            put(Key=rig.key(f"d/{name}"))
        for name in ("f018", "f038", "sub/a", "sub/b"):  # boundaries among them; sub vanishes
            rig.s3.delete_object(Bucket=rig.bucket, Key=rig.key(f"d/{name}"))
        store.starts.clear()
        second = rig.ok(ls)
        truth = sorted({k[len("d/"):].split("/")[0] for k in rig.bucket_keys()
                        if k.startswith("d/")})
        assert second == truth
        assert len([s for s in store.starts if s is not None]) >= 3  # ranges were used
    finally:
        rig.close()


# -- the inode table forgets what the kernel forgot ------------------------------------------------

def test_forget_drops_a_named_inode_and_lookup_finds_the_path_again() -> None:
    """An inode the kernel forgot, not open, is dropped, named or not; the next lookup of its
    path installs it again."""
    rig = Rig(backend="memory")
    try:
        rig.s3.put_object(Bucket=rig.bucket, Key=rig.key("f"), Body=b"abc")

        async def forget_then_look_again() -> None:
            node = await rig.fs.lookup(ROOT_INODE, b"f")
            rig.fs.forget([(node.ino, 1)])
            assert rig.fs.inodes.get(node.ino) is None and rig.fs.inodes.at("f") is None
            again = await rig.fs.lookup(ROOT_INODE, b"f")
            assert again.path == "f" and again.attrs.size == 3
            assert rig.fs.inodes.get(again.ino) is again
            assert await rig.fs.getattr(again.ino) is again
        rig.ok(forget_then_look_again)
    finally:
        rig.close()


def test_a_closed_file_waiting_for_its_upload_survives_forget() -> None:
    """A file closed with async_upload whose upload keeps failing has no open handle and no
    lookup left, but the open-files registry holds it: it keeps its inode and path, so lookups
    and listings still show it (the bucket does not have it: a HEAD would say ENOENT)."""
    rig = Rig(async_upload=True, backend="memory")
    try:
        rig.store.fail("upload", Unavailable("injected: the server keeps failing"), times=1000)
        rig.ok(rig.k.create, "f", b"data", 0o644)  # closed, queued, its lookups forgotten
        node = rig.fs.inodes.at("f")
        assert node is not None and node.lookups == 0 and node.etag is None
        assert rig.ok(rig.k.walk, "f") is node
        assert rig.ok(rig.k.read, "f", 0, 100) == b"data"
        assert list(rig.snapshot()) == ["f"]
        rig.store.clear()
        rig.settle()
        assert rig.bucket_keys().keys() == {"f"}
    finally:
        rig.close()


def test_readdir_hands_out_only_inodes_the_table_knows() -> None:
    """An entry of an open directory handle whose inode was dropped since opendir (the kernel
    forgot it) is registered again when readdir hands it out, or replaced by the inode its path
    got meanwhile: the kernel never holds a number the core does not know (ESTALE)."""
    rig = Rig(backend="memory")
    try:
        for name in ("a", "b"):
            rig.s3.put_object(Bucket=rig.bucket, Key=rig.key(f"d/{name}"), Body=b"x")

        async def read_dir_after_forget() -> None:
            d = await rig.fs.lookup(ROOT_INODE, b"d")
            fh = await rig.fs.opendir(d.ino)
            try:
                a = await rig.fs.lookup(d.ino, b"a")
                b = await rig.fs.lookup(d.ino, b"b")
                rig.fs.forget([(a.ino, 1), (b.ino, 1)])
                assert rig.fs.inodes.get(a.ino) is None and rig.fs.inodes.get(b.ino) is None
                b_now = await rig.fs.lookup(d.ino, b"b")  # b's path gets a new inode
                handed: dict[str, Inode] = {}

                def reply(name: str, node: Inode, _next: int) -> bool:
                    handed[name] = node
                    return True
                rig.fs.readdir(fh, 0, reply)
                assert handed == {"a": a, "b": b_now}
                assert rig.fs.inodes.get(a.ino) is a and rig.fs.inodes.at("d/a") is a
                assert (a.lookups, b_now.lookups) == (1, 2)
            finally:
                rig.fs.releasedir(fh)
            rig.fs.forget([(d.ino, 1), (a.ino, 1), (b_now.ino, 2)])
        rig.ok(read_dir_after_forget)
    finally:
        rig.close()


def test_a_retry_never_stores_what_a_writer_is_changing() -> None:
    """With async_upload, a closed file whose upload failed waits for a retry. A writer opens
    it again and appends; while that write is inside its critical section (here: staging
    slowly, as on a disk that must wait for room), the retry comes due, finds the file still
    as it was closed and waits for its lock. Once the write is in, the staging file holds the
    closed data plus a partial write nobody closed: the retry must not store that (the bucket
    keeps its version until the writer closes, and then gets the whole file)."""
    rig = Rig(async_upload=True, backend="memory")
    try:
        rig.store.fail("upload", Unavailable("injected: the server is down"), times=1000)
        rig.ok(rig.k.create, "f", b"closed\n", 0o644)  # closed, queued, its upload failed
        node = rig.fs.inodes.at("f")
        assert node is not None
        stage = rig.fs.space.stage

        async def slow_stage(of: Any, data: bytes, offset: int) -> int:
            rig.store.clear()  # the server is back while the write waits for room
            # ... until the retry has come due and waits for the file's lock (not a sleep that
            # hopes it did: after a few failures on a slow machine the next one is far off).
            with trio.fail_after(BACKOFF_MAX + 10):
                while not of.lock.statistics().tasks_waiting:
                    await trio.sleep(0.05)
            return await stage(of, data, offset)

        async def append_while_retried() -> int:
            fh, _ = await rig.fs.open(node.ino, os.O_WRONLY | os.O_APPEND)
            rig.fs.space.stage = slow_stage
            try:
                await rig.fs.write(fh, 7, b"partial")
            finally:
                rig.fs.space.stage = stage
            await trio.sleep(2 * BACKOFF_INITIAL + 1)  # a retry has had every chance
            return fh

        fh = rig.ok(append_while_retried)
        assert "f" not in rig.bucket_keys(), "a file being written was stored"
        assert rig.fs.pending_uploads() == 1
        rig.ok(rig.fs.release, fh)
        rig.settle()
        assert rig.s3.get_object(Bucket=rig.bucket, Key=rig.key("f"))["Body"].read() == \
            b"closed\npartial"
    finally:
        rig.close()
