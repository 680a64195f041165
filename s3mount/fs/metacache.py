"""POSIX metadata of objects, remembered by version, in memory and optionally on disk.

A listing gives size, ETag and LastModified but not user metadata (mode, uid, gid, mtime); that takes
one HEAD per object. An object's *version* is its (ETag, LastModified): the ETag alone is the MD5 of
the content, so a chmod by another client (a copy of the object onto itself with new metadata)
keeps it, but it moves LastModified. An entry stored for a version never goes stale: a changed
object simply misses. (After our own uploads LastModified is unknown, PUT does not return it; such
entries match any LastModified with their ETag.) Kept in an SQLite file in the cache directory, an
unchanged directory costs one LIST and no HEAD even on the next mount.

It also keeps the times of directories that entries made, removed or renamed in them moved
(``dir_times``): rewriting a directory's marker for every file created in it would cost a request
per file, and a directory without a marker has nowhere in the bucket to keep them at all.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Mapping

from cachetools import LRUCache

log = logging.getLogger(__name__)

ABSENT: tuple[str, float | None, dict[str, str]] = ("", None, {})
"""Memory entry of a key known not to be on disk (matches no ETag)."""
LOAD_BATCH = 500
"""Keys per query in ``load`` (SQLite allows 32,766 parameters, older builds 999)."""


class MetaCache:
    """(key, etag) -> metadata. ``path=None`` keeps it in memory only."""

    def __init__(self, path: str | None, *, memory_entries: int = 200_000) -> None:
        self._mem: LRUCache[str, tuple[str, float | None, dict[str, str]]] = \
            LRUCache(maxsize=memory_entries)
        self._db: sqlite3.Connection | None = None
        self._pending: dict[str, tuple[str, float | None, str] | None] = {}
        self._dir_times: dict[str, tuple[int, int]] = {}
        self._dir_pending: dict[str, tuple[int, int] | None] = {}
        self.listener: Callable[[str, str | None, float | None], None] | None = None
        """Told of every put (key, ETag, LastModified) and drop (key, None, None): the shared
        index publishes what changed."""
        if path is not None:
            try:
                self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute("CREATE TABLE IF NOT EXISTS objmeta (key TEXT PRIMARY KEY, "
                                 "etag TEXT NOT NULL, lm REAL, md TEXT NOT NULL)")
                self._db.execute("CREATE TABLE IF NOT EXISTS dirtimes (key TEXT PRIMARY KEY, "
                                 "mtime INTEGER NOT NULL, ctime INTEGER NOT NULL)")
                # Few directories change per mount; all of them are kept in memory.
                self._dir_times = {k: (m, c) for k, m, c in
                                   self._db.execute("SELECT key, mtime, ctime FROM dirtimes")}
            except sqlite3.Error as exc:
                log.warning("attribute cache %s unusable (%s); using memory only", path, exc)
                self._db = None

    def get(self, key: str, etag: str, last_modified: float) -> dict[str, str] | None:
        hit = self._mem.get(key)
        if hit is None and key in self._pending:
            row = self._pending[key]
            hit = self._mem[key] = ABSENT if row is None else (row[0], row[1], json.loads(row[2]))
        elif hit is None:
            self.load([key])
            hit = self._mem.get(key)
        if hit is None or hit[0] != etag or not same_time(hit[1], last_modified):
            return None
        return dict(hit[2])

    def load(self, keys: list[str]) -> None:
        """Bring the disk entries of ``keys`` into memory in a few queries (a directory's worth
        of ``get`` calls would cost one query each)."""
        if self._db is None:
            return
        want = [k for k in keys if k not in self._mem and k not in self._pending]
        for i in range(0, len(want), LOAD_BATCH):
            batch = want[i:i + LOAD_BATCH]
            try:
                rows = self._db.execute(
                    f"SELECT key, etag, lm, md FROM objmeta WHERE key IN "
                    f"({','.join('?' * len(batch))})", batch).fetchall()
            except sqlite3.Error as exc:
                log.warning("could not read the attribute cache: %s", exc)
                return
            found = {key: (etag, lm, json.loads(md)) for key, etag, lm, md in rows}
            for key in batch:  # a key not on disk is remembered as such: no query per miss
                self._mem[key] = found.get(key, ABSENT)

    def put(self, key: str, etag: str, last_modified: float | None,
            metadata: Mapping[str, str]) -> None:
        md = dict(metadata)
        self._mem[key] = (etag, last_modified, md)
        if self.listener is not None:
            self.listener(key, etag, last_modified)
        if self._db is not None:
            self._pending[key] = (etag, last_modified, json.dumps(md))
            if len(self._pending) >= 500:
                self.commit()

    def adopt(self, key: str, etag: str, last_modified: float) -> None:
        """We learnt the LastModified of our own upload (from a listing): from now on the entry
        matches that version only, so a later metadata-only change elsewhere is noticed."""
        hit = self._mem.get(key)
        if hit is not None and hit[0] == etag and hit[1] is None:
            self.put(key, etag, last_modified, hit[2])

    def drop(self, key: str) -> None:
        self._mem.pop(key, None)
        if self.listener is not None:
            self.listener(key, None, None)
        if self._db is not None:
            self._pending[key] = None

    def dir_times(self, key: str) -> tuple[int, int] | None:
        """(mtime, ctime) in ns that changes inside directory ``key`` (its marker key) gave it."""
        return self._dir_times.get(key)

    def set_dir_times(self, key: str, mtime_ns: int, ctime_ns: int) -> None:
        self._dir_times[key] = (mtime_ns, ctime_ns)
        if self._db is not None:
            self._dir_pending[key] = (mtime_ns, ctime_ns)

    def move_dir_times(self, old: str, new: str) -> None:
        """A directory was renamed: the kept times of it and every directory below it move.
        Those of an empty directory it replaced go first: newer than the source's marker, they
        would otherwise win over it (``Namespace.install`` keeps the newer)."""
        for key in [k for k in self._dir_times if k.startswith(new)]:
            self.drop_dir_times(key)
        for key in [k for k in self._dir_times if k.startswith(old)]:
            mtime, ctime = self._dir_times.pop(key)
            if self._db is not None:
                self._dir_pending[key] = None
            self.set_dir_times(new + key[len(old):], mtime, ctime)

    def drop_dir_times(self, key: str) -> None:
        if self._dir_times.pop(key, None) is not None and self._db is not None:
            self._dir_pending[key] = None

    def commit(self) -> None:
        """Write pending changes to disk (called in batches and at unmount)."""
        if self._db is None or not (self._pending or self._dir_pending):
            return
        items, self._pending = self._pending, {}
        dirs, self._dir_pending = self._dir_pending, {}
        try:
            with self._db:  # one transaction (the connection autocommits each statement)
                self._db.execute("BEGIN")
                self._db.executemany("DELETE FROM objmeta WHERE key=?",
                                     [(k,) for k, v in items.items() if v is None])
                self._db.executemany("INSERT OR REPLACE INTO objmeta VALUES (?, ?, ?, ?)",
                                     [(k, *v) for k, v in items.items() if v is not None])
                self._db.executemany("DELETE FROM dirtimes WHERE key=?",
                                     [(k,) for k, v in dirs.items() if v is None])
                self._db.executemany("INSERT OR REPLACE INTO dirtimes VALUES (?, ?, ?)",
                                     [(k, *v) for k, v in dirs.items() if v is not None])
        except sqlite3.Error as exc:
            log.warning("could not save the attribute cache: %s", exc)

    def close(self) -> None:
        self.commit()
        if self._db is not None:
            self._db.close()
            self._db = None


def same_time(known: float | None, seen: float) -> bool:
    """LastModified values agree (None: not known, after our own upload). Compared to the
    second: a HEAD's Last-Modified header has whole seconds, a listing may have milliseconds."""
    return known is None or int(known) == int(seen)
