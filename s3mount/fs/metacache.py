"""POSIX metadata of objects, remembered by key and ETag, in memory and optionally on disk.

A listing gives size, ETag and LastModified but not user metadata (mode, uid, gid, mtime); that takes
one HEAD per object. Since an object's metadata cannot change without its ETag changing, an entry
keyed by (key, ETag) never goes stale: a changed object simply misses. Kept in an SQLite file in the
cache directory, an unchanged directory costs one LIST and no HEAD even on the next mount.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Mapping

from cachetools import LRUCache

log = logging.getLogger(__name__)


class MetaCache:
    """(key, etag) -> metadata. ``path=None`` keeps it in memory only."""

    def __init__(self, path: str | None, *, memory_entries: int = 200_000) -> None:
        self._mem: LRUCache[str, tuple[str, dict[str, str]]] = LRUCache(maxsize=memory_entries)
        self._db: sqlite3.Connection | None = None
        self._pending: dict[str, tuple[str, str] | None] = {}
        if path is not None:
            try:
                self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute("CREATE TABLE IF NOT EXISTS meta "
                                 "(key TEXT PRIMARY KEY, etag TEXT NOT NULL, md TEXT NOT NULL)")
            except sqlite3.Error as exc:
                log.warning("attribute cache %s unusable (%s); using memory only", path, exc)
                self._db = None

    def get(self, key: str, etag: str) -> dict[str, str] | None:
        hit = self._mem.get(key)
        if hit is not None:
            return dict(hit[1]) if hit[0] == etag else None
        if self._db is None:
            return None
        pending = self._pending.get(key)
        if pending is not None:
            row: tuple[str, str] | None = pending
        else:
            row = self._db.execute("SELECT etag, md FROM meta WHERE key=?", (key,)).fetchone()
        if row is None or row[0] != etag:
            return None
        md = json.loads(row[1])
        self._mem[key] = (etag, md)
        return dict(md)

    def put(self, key: str, etag: str, metadata: Mapping[str, str]) -> None:
        md = dict(metadata)
        self._mem[key] = (etag, md)
        if self._db is not None:
            self._pending[key] = (etag, json.dumps(md))
            if len(self._pending) >= 500:
                self.commit()

    def drop(self, key: str) -> None:
        self._mem.pop(key, None)
        if self._db is not None:
            self._pending[key] = None

    def commit(self) -> None:
        """Write pending changes to disk (called in batches and at unmount)."""
        if self._db is None or not self._pending:
            return
        items, self._pending = self._pending, {}
        try:
            with self._db:
                self._db.executemany("DELETE FROM meta WHERE key=?",
                                     [(k,) for k, v in items.items() if v is None])
                self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?, ?)",
                                     [(k, v[0], v[1]) for k, v in items.items() if v is not None])
        except sqlite3.Error as exc:
            log.warning("could not save the attribute cache: %s", exc)

    def close(self) -> None:
        self.commit()
        if self._db is not None:
            self._db.close()
            self._db = None
