"""Mapping between filesystem paths and object keys, and which names are allowed.

Paths inside the mount are ``str`` without a leading slash (``""`` is the root); the key of path
``a/b`` is ``prefix + "a/b"``; a directory's marker and listing prefix is its key plus ``/``.
Rules (docs/SEMANTICS.md): names must be valid UTF-8 (EINVAL otherwise), a component is at most 255
bytes and a whole key at most 1024 bytes (ENAMETOOLONG, S3's limit). Keys that cannot be paths —
empty components (``a//b``), ``.`` or ``..`` components — are skipped in listings, never crashed on.
"""

from __future__ import annotations

import errno

from ..errors import FsError

MAX_KEY_BYTES = 1024
MAX_NAME_BYTES = 255


def decode_name(raw: bytes) -> str:
    """A FUSE name (bytes) as ``str``; EINVAL for anything that is not valid UTF-8."""
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FsError("name is not valid UTF-8", errno=errno.EINVAL) from None
    if len(raw) > MAX_NAME_BYTES:
        raise FsError("name longer than 255 bytes", errno=errno.ENAMETOOLONG)
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise FsError(f"invalid name {name!r}", errno=errno.EINVAL)
    return name


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def split(path: str) -> tuple[str, str]:
    """``a/b/c`` -> (``a/b``, ``c``); ``c`` -> (``""``, ``c``)."""
    head, _, tail = path.rpartition("/")
    return head, tail


class KeyMapper:
    """Paths <-> keys under the mount's prefix."""

    def __init__(self, prefix: str = "") -> None:
        prefix = prefix.strip("/")
        self.prefix = f"{prefix}/" if prefix else ""

    def file_key(self, path: str) -> str:
        return self.prefix + path

    def dir_prefix(self, path: str) -> str:
        """The listing prefix of a directory (also the key of its marker object)."""
        return f"{self.prefix}{path}/" if path else self.prefix

    def check_length(self, path: str, *, is_dir: bool = False) -> None:
        """ENAMETOOLONG when the object for ``path`` could not be stored."""
        key = self.dir_prefix(path) if is_dir else self.file_key(path)
        if len(key.encode("utf-8")) > MAX_KEY_BYTES:
            raise FsError("object key would exceed 1024 bytes", errno=errno.ENAMETOOLONG)

    def child_name(self, dir_prefix: str, key: str) -> str | None:
        """The entry name of a key or common prefix in a listing of ``dir_prefix``.

        None for keys that cannot be shown as a name: the directory's own marker, empty components,
        ``.``/``..``, or names too long for the kernel.
        """
        rest = key[len(dir_prefix):]
        if rest.endswith("/"):
            rest = rest[:-1]
        if not rest or "/" in rest or rest in (".", ".."):
            return None
        if len(rest.encode("utf-8")) > MAX_NAME_BYTES:
            return None
        return rest


class PathTree:
    """A set of paths that finds those at or below a path, and the ones directly in a
    directory, in time proportional to their number (not to the size of the set).

    Each directory on the way down to a member knows the names under it that lead to members
    (whether or not the directory is a member itself), so a walk never scans unrelated paths.
    """

    def __init__(self) -> None:
        self._paths: set[str] = set()
        self._kids: dict[str, set[str]] = {}

    def __contains__(self, path: str) -> bool:
        return path in self._paths

    def add(self, path: str) -> None:
        if path in self._paths:
            return
        self._paths.add(path)
        while path:
            path, name = split(path)
            kids = self._kids.setdefault(path, set())
            if name in kids:
                break
            kids.add(name)

    def discard(self, path: str) -> None:
        if path not in self._paths:
            return
        self._paths.remove(path)
        while path and path not in self._paths and path not in self._kids:
            path, name = split(path)  # nothing is left at or below it: unlink it
            kids = self._kids[path]
            kids.discard(name)
            if kids:
                break
            del self._kids[path]

    def children(self, path: str) -> list[str]:
        """Members directly in directory ``path``."""
        return [p for p in (join(path, n) for n in self._kids.get(path, ())) if p in self._paths]

    def under(self, path: str) -> list[str]:
        """``path`` (if a member) and every member below it."""
        out, todo = [], [path]
        while todo:
            p = todo.pop()
            if p in self._paths:
                out.append(p)
            todo += (join(p, n) for n in self._kids.get(p, ()))
        return out
