"""What a file with open descriptors is while it is open: one ``OpenFile`` shared by its
handles, one ``Handle`` per descriptor. Plain state, in a module of its own so that the parts of
the core that meet open files (namespace, files, writeback) name them without importing each
other."""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from .inodes import Inode
from .progress import Progress
from .reader import Reader
from .staging import StagingFile
from .streaming import StreamingUpload


@dataclass
class OpenFile:
    """State of a file that has open handles (shared by all of them)."""

    node: Inode
    staging: StagingFile | None = None
    loaded: bool = False
    """The staging file holds the whole current content (reads and writes go there)."""
    dirty: bool = False
    handles: int = 0
    lock: trio.Lock = field(default_factory=trio.Lock)
    base_etag: str | None = None
    seq_end: int | None = None
    """While the file has been written strictly front to back from empty: how far. None once a
    write landed elsewhere (or the file was not empty to begin with)."""
    stream: StreamingUpload | None = None
    explicit_mtime: bool = False
    """An mtime was set by utimens (not just moved by writes): it must be stored exactly."""
    confirmed: bool = False
    """The staging data is what a close() or fsync() handed over (and its record says so): after
    a crash only such data may replace the object; a partial goes to lost+found/."""
    base_size: int = 0
    """Size of the version in the bucket the staged changes are based on."""
    punched: list[tuple[int, int]] = field(default_factory=list)
    """Ranges of a streamed file given back to the disk once stored in the bucket, to make room
    (see streaming.py). The staging file no longer holds the whole file, so it can only be
    appended to while its stream lasts, and is never uploaded whole or recovered from here."""
    punched_bytes: int = 0
    spoiled: str | None = None
    """Why what the writers wrote is whole nowhere (a change could not be staged, or a stream
    whose stored parts were given back failed): none of it is stored, the bucket keeps its
    version, and writes, flush and fsync fail with ENOSPC until the file is truncated to zero
    or closed by everyone."""
    progress: Progress | None = None
    """The current upload attempt (streamed or whole), while there is one."""
    storing: bool = False
    """An upload of it is in flight (set under its lock by ``Uploader.upload``)."""
    closing: bool = False
    """A close(2) of it is storing it and its RELEASE has not come: once stored, its staging
    space is given back without any writer's help (cleared when it changes again)."""


@dataclass
class Handle:
    fh: int
    node: Inode
    of: OpenFile
    reader: Reader | None = None
