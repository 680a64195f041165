"""The shared attribute index: POSIX metadata of a directory's files, published in the bucket.

A listing carries no user metadata, so each machine's first ``ls -l`` of a folder costs a HEAD per
object, on every new machine and after every cache wipe. Each mount therefore publishes what it
knows: per directory, small JSON objects under ``INDEX_PREFIX`` (at the bucket root, named by a
hash of the directory's key prefix, so any directory depth or mount prefix fits a key) mapping
name -> version (ETag, LastModified) -> metadata. A reader uses an entry only when the listing shows
exactly that version, so a stale or lost index costs HEADs, never wrong attributes.

Writing: a change to the metadata cache (our uploads, chmods, deletes, and HEADs of foreign
objects) marks its directory; ``run`` publishes a directory once its changes have settled
(``SETTLE`` s) and at most once per ``INTERVAL`` s, and ``flush_all`` at unmount. Publishing
lists the directory (which also gives the LastModified our own PUTs never return), reads the
index, keeps each of its entries that still matches the listing, adds what this mount knows for
the listed versions and writes the result back if it changed: names that are gone drop out, and
a race between two mounts loses entries, which only cost HEADs later. Big directories are split
into shards of up to ``SHARD_ENTRIES`` names (shard 0 says how many); a shard larger than
``SHARD_BYTES`` is refused as corrupt. Only GET, PUT, DELETE and LIST are used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import trio

from ..errors import NotFound, S3MountError
from ..store.base import ObjectStore
from .concurrency import gather
from .metacache import MetaCache, same_time
from .paths import KeyMapper

log = logging.getLogger(__name__)

HIDDEN_NAME = ".s3mount"
INDEX_PREFIX = HIDDEN_NAME + "/index/"
"""Where the index objects live, at the bucket root; a root mount never shows ``HIDDEN_NAME``."""
SHARD_ENTRIES = 2000
SHARD_BYTES = 4 * 1024 * 1024
SETTLE = 2.0
INTERVAL = 5.0
"""Seconds without changes before a directory's index is written, and at least between writes."""
UNMOUNT_BUDGET = 20.0
"""Seconds unmount spends publishing what is left; the rest only costs other mounts HEADs."""
PARALLEL = 4
RETRY_AFTER = 30.0
"""Seconds a directory whose index could not be read, or had none, is not asked again (each try
would cost its lookups the server's retries; a names-only ``ls`` repeated in a directory nobody
indexed would cost a GET each time)."""

Entry = tuple[str, float, dict[str, str]]
"""(ETag, LastModified, metadata) of one name."""
Runner = Callable[..., Awaitable[Any]]


class CorruptIndex(ValueError):
    pass


def hidden(keys: KeyMapper, path: str) -> bool:
    """Whether ``path`` is the index's reserved name (at the root of a mount of the bucket root)."""
    return not keys.prefix and path == HIDDEN_NAME


class SharedIndex:
    """Reads and writes the index; ``mode`` is "rw", "ro" (read-only mounts) or "off"."""

    def __init__(self, run: Runner, store: ObjectStore, keys: KeyMapper, meta: MetaCache, *,
                 mode: str = "rw") -> None:
        self._run = run
        self.store = store
        self.keys = keys
        self.meta = meta
        self.mode = mode
        self._read_for: dict[str, int] = {}  # dir key -> id of the listing it was read for
        # (an id reused by a later listing only means one index read skipped: HEADs instead)
        self._published: dict[str, tuple[str, int]] = {}  # key -> version the index has
        self._dirty: dict[str, float] = {}  # dir key -> monotonic time of its last change
        self._written: dict[str, float] = {}  # dir key -> monotonic time of its last write
        self._warned: set[str] = set()
        self._failed: dict[str, float] = {}  # dir key -> when its read failed or found none
        self._write_failed = False

    @staticmethod
    def shard_key(dir_key: str, shard: int) -> str:
        return f"{INDEX_PREFIX}{hashlib.sha256(dir_key.encode()).hexdigest()[:32]}/{shard}"

    # -- reading -------------------------------------------------------------------------------

    async def read(self, dir_path: str, versions: Mapping[str, tuple[str, float]],
                   listing: object) -> bool:
        """Put into the metadata cache the entries of ``dir_path``'s index that match the listed
        ``versions`` (name -> (ETag, LastModified)); once per ``listing``. Whether it read."""
        dir_key = self.keys.dir_prefix(dir_path)
        if self.mode == "off" or self._read_for.get(dir_key) == id(listing) or \
                self._failed.get(dir_key, -math.inf) > time.monotonic() - RETRY_AFTER:
            return False
        self._read_for[dir_key] = id(listing)
        try:
            entries, count = await self._fetch(dir_key)
        except S3MountError as exc:
            log.warning("could not read the shared index of %r: %s", dir_path or "/", exc)
            self._failed[dir_key] = time.monotonic()
            return True
        if not count:
            self._failed[dir_key] = time.monotonic()  # none yet: not asked again for a while
        for name, (etag, lm, md) in entries.items():
            listed = versions.get(name)
            if listed is not None and listed[0] == etag and same_time(lm, listed[1]):
                self._published[dir_key + name] = (etag, int(lm))
                self.meta.put(dir_key + name, etag, listed[1], md)
        return True

    async def _fetch(self, dir_key: str) -> tuple[dict[str, Entry], int]:
        """The index of ``dir_key`` and its number of shards ({}, 0 when there is none; a
        corrupt one is logged once and counts as empty)."""
        try:
            first = await self._shard(dir_key, 0)
        except NotFound:
            return {}, 0
        except CorruptIndex as exc:
            self._corrupt(dir_key, exc)
            return {}, 1
        count, entries = first
        rest: list[dict[str, Entry]] = [{} for _ in range(count - 1)]

        async def one(i: int) -> None:
            rest[i - 1] = (await self._shard(dir_key, i))[1]

        try:
            await gather([lambda i=i: one(i) for i in range(1, count)], limit=PARALLEL)
        except (NotFound, CorruptIndex) as exc:
            self._corrupt(dir_key, exc)
            return {}, count
        for part in rest:
            entries.update(part)
        return entries, count

    async def _shard(self, dir_key: str, shard: int) -> tuple[int, dict[str, Entry]]:
        key = self.shard_key(dir_key, shard)
        data = await self._run(self.store.get_range, key, 0, SHARD_BYTES + 1)
        if len(data) > SHARD_BYTES:
            raise CorruptIndex(f"{key} is larger than {SHARD_BYTES} bytes")
        return _parse(data, dir_key, shard)

    def _corrupt(self, dir_key: str, exc: Exception) -> None:
        if dir_key not in self._warned:
            self._warned.add(dir_key)
            log.warning("ignoring the shared index of %r: %s", dir_key or "/", exc)

    # -- writing -------------------------------------------------------------------------------

    def changed(self, key: str, etag: str | None, last_modified: float | None) -> None:
        """The metadata cache learnt (or dropped) ``key``: its directory is to be published,
        unless the index already says exactly this."""
        if self.mode != "rw" or not key.startswith(self.keys.prefix) or key.endswith("/"):
            return
        if etag is not None and last_modified is not None and \
                self._published.get(key) == (etag, int(last_modified)):
            return
        self._dirty[key[:key.rfind("/") + 1]] = time.monotonic()

    async def run(self) -> None:
        """Publish settled directories, for ever (a task of the mount's nursery)."""
        while True:
            await trio.sleep(SETTLE / 2)
            now = time.monotonic()
            due = [d for d, t in self._dirty.items()
                   if now - t >= SETTLE and now - self._written.get(d, -math.inf) >= INTERVAL]
            await self._publish(due)

    async def flush_all(self) -> None:
        """Publish every directory with unpublished changes (at unmount), within a budget."""
        with trio.move_on_after(UNMOUNT_BUDGET) as scope:
            await self._publish(list(self._dirty))
        if scope.cancelled_caught:
            log.info("shared index: %d directories left unpublished", len(self._dirty))

    async def _publish(self, dir_keys: list[str]) -> None:
        for d in dir_keys:
            self._dirty.pop(d, None)
            self._written[d] = time.monotonic()

        async def one(d: str) -> None:
            try:
                await self._write(d)
            except S3MountError as exc:  # e.g. keys that may not write there: say it once
                log.log(logging.DEBUG if self._write_failed else logging.WARNING,
                        "could not publish the shared index of %r: %s", d or "/", exc)
                self._write_failed = True

        await gather([lambda d=d: one(d) for d in dir_keys], limit=PARALLEL)

    async def _write(self, dir_key: str) -> None:
        listed = await self._list(dir_key)
        old, old_count = await self._fetch(dir_key)
        new: dict[str, Entry] = {}
        for name, (etag, lm) in listed.items():
            md = self.meta.get(dir_key + name, etag, lm)
            if md is None and (o := old.get(name)) is not None and o[0] == etag \
                    and same_time(o[1], lm):
                md = o[2]
            if md is not None:
                new[name] = (etag, lm, md)
        if new == old:
            return
        if not new:
            for i in range(old_count):
                await self._run(self.store.delete, self.shard_key(dir_key, i))
            return
        count = max(1, math.ceil(len(new) / SHARD_ENTRIES))
        shards: list[dict[str, Entry]] = [{} for _ in range(count)]
        for name, e in new.items():
            shards[_shard_of(name, count)][name] = e
        for i in range(count):
            body: dict[str, Any] = {"v": 1, "dir": dir_key, "shard": i,
                                    "entries": {n: list(e) for n, e in shards[i].items()}}
            if i == 0:
                body["shards"] = count
            await self._run(self.store.put, self.shard_key(dir_key, i),
                            json.dumps(body, separators=(",", ":")).encode(),
                            metadata={}, content_type="application/json")
        for i in range(count, old_count):
            await self._run(self.store.delete, self.shard_key(dir_key, i))
        for name, (etag, lm, _) in new.items():
            self._published[dir_key + name] = (etag, int(lm))

    async def _list(self, dir_key: str) -> dict[str, tuple[str, float]]:
        """Name -> (ETag, LastModified) of the files the bucket has in ``dir_key``."""
        out: dict[str, tuple[str, float]] = {}
        token = None
        while True:
            page = await self._run(self.store.list_page, dir_key, token=token)
            for o in page.objects:
                name = self.keys.child_name(dir_key, o.key)
                if name is not None and not o.key.endswith("/"):
                    out[name] = (o.etag, o.last_modified)
            token = page.next_token
            if not token:
                return out


def _shard_of(name: str, count: int) -> int:
    return zlib.crc32(name.encode("utf-8", "surrogateescape")) % count


def _parse(data: bytes, dir_key: str, shard: int) -> tuple[int, dict[str, Entry]]:
    """(shard count, entries) of one shard object; CorruptIndex for anything else."""
    try:
        body = json.loads(data)
        if not isinstance(body, dict) or body.get("v") != 1 or body.get("dir") != dir_key \
                or body.get("shard") != shard or not isinstance(body.get("entries"), dict):
            raise CorruptIndex("not an index of this directory")
        count = body.get("shards", 1) if shard == 0 else 1
        if not isinstance(count, int) or not 1 <= count <= 10_000:
            raise CorruptIndex("bad shard count")
        entries: dict[str, Entry] = {}
        for name, e in body["entries"].items():
            etag, lm, md = e
            if not (isinstance(etag, str) and isinstance(lm, (int, float)) and
                    isinstance(md, dict) and all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in md.items())):
                raise CorruptIndex(f"bad entry {name!r}")
            entries[name] = (etag, float(lm), md)
        return count, entries
    except CorruptIndex:
        raise
    except (ValueError, TypeError) as exc:  # JSON errors, wrong shapes, bad UTF-8
        raise CorruptIndex(f"unreadable ({type(exc).__name__})") from None
