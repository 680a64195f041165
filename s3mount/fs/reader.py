"""The read path for objects not staged locally: ranged GETs with sequential prefetch.

A reader belongs to one open file handle. Small objects (up to ``whole_object_max``) are fetched in
one GET on the first read and served from memory. For larger ones the reader watches the offsets:
while reads continue where the last one ended (or inside what is already scheduled, since the kernel
sends readahead requests concurrently) it keeps a window of parts in flight ahead of the reader,
doubling the window up to ``max_window``; a read elsewhere drops the window and fetches just what
was asked, so random access does not trigger wasteful prefetch. Every GET is pinned to the ETag seen
at open, so a file that changes mid-read fails with an error instead of mixing two versions. Memory
is bounded by ``max_window`` per open handle, and across handles by the mount's read ``Budget``:
prefetch takes only what is free in it, up to an even share, so with many files read at once
each prefetches less instead of all of them holding a full window.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from .budget import Budget

log = logging.getLogger(__name__)

KiB = 1024
MiB = 1024 * KiB

MIN_PART = 256 * KiB

Fetch = Callable[[int, int], Awaitable[bytes]]
"""fetch(start, length) -> bytes: one ranged GET (run in a worker thread by the caller)."""


@dataclass
class _Part:
    start: int
    length: int
    done: trio.Event = field(default_factory=trio.Event)
    held: int = 0
    """Bytes of the read budget this part holds; given back once it is done and dropped."""
    data: bytes = b""
    error: BaseException | None = None
    dropped: bool = False

    @property
    def end(self) -> int:
        return self.start + self.length


class Reader:
    """Serves ``read(offset, size)`` of one object of known size."""

    def __init__(
        self, fetch: Fetch, size: int, nursery: trio.Nursery, budget: Budget, *,
        whole_object_max: int = 1 * MiB, initial_window: int = 1 * MiB,
        max_window: int = 32 * MiB, part_size: int = 8 * MiB,
    ) -> None:
        self._fetch = fetch
        self.size = size
        self._nursery = nursery
        self._budget = budget
        self._whole_max = whole_object_max
        self._initial = initial_window
        self._max_window = max_window
        self._part_size = part_size
        self._window = initial_window
        self._parts: list[_Part] = []
        self._scheduled_to = 0  # prefetch has been scheduled up to here
        self._last_end = 0  # where the previous read ended: a read starting here is sequential

    async def read(self, offset: int, size: int) -> bytes:
        if offset >= self.size or size <= 0:
            return b""
        end = min(offset + size, self.size)
        if self.size <= self._whole_max:
            if not self._parts:
                self._fetch_whole()
            return await self._collect(offset, end)
        if self._parts and self._parts[0].start <= offset <= self._scheduled_to:
            # Sequential (or a concurrent readahead inside the window): keep the window ahead.
            self._drop_before(offset)
            self._window = min(self._window * 2, self._max_window)
            self._ensure(offset, end)
        elif not self._parts and offset == self._last_end:
            self._window = self._initial
            self._ensure(offset, end)
        else:
            # Random access: forget the window, fetch exactly what was asked.
            self._reset()
            self._last_end = end
            return await self._fetch(offset, end - offset)
        self._last_end = end
        return await self._collect(offset, end)

    async def prime(self) -> None:
        """Fetch a small object now (it is read in one GET anyway); nothing for a large one."""
        if self.size <= self._whole_max and not self._parts and self.size > 0:
            self._fetch_whole()
            await self._collect(0, self.size)

    def close(self) -> None:
        """Stop using prefetched data; fetches in flight finish and are dropped."""
        self._drop(self._parts)

    def _reset(self) -> None:
        self._drop(self._parts)
        self._scheduled_to = 0
        self._window = self._initial

    def _ensure(self, offset: int, end: int) -> None:
        if not self._parts:
            self._scheduled_to = offset
        target = min(max(end, offset + self._window), self.size)
        # Whole parts only (as large as the window allows, up to part_size): a request per kernel
        # read would cost a round trip each, and some servers read the whole object per range.
        # With a small share of the read budget the parts are smaller, so that two are still in
        # flight at once: one part that fills the share is fetched only after the previous
        # one is read, and every part would wait a full round trip.
        part = max(min(self._window, self._part_size, self._budget.share(self) // 2), MIN_PART)
        while self._scheduled_to < target:
            start = self._scheduled_to
            length = min(part, self.size - start)
            taken = self._budget.take_up_to(self, length, least=min(MIN_PART, length))
            if not taken:
                if start >= end:
                    break  # the mount's read budget is spent: no prefetch for now
                # Asked for right now: fetched in any case, but only what the read needs.
                taken = min(max(end - start, MIN_PART), length)
                self._budget.take_anyway(self, taken)
            self._schedule(start, taken)

    def _fetch_whole(self) -> None:
        """A small object is fetched whole (and kept until close), budget or not."""
        self._budget.take_anyway(self, self.size)
        self._schedule(0, self.size)

    def _schedule(self, start: int, length: int) -> None:
        """Fetch ``[start, start+length)``, whose bytes the caller has taken from the budget."""
        part = _Part(start, length, held=length)
        self._parts.append(part)
        self._scheduled_to = start + length
        self._nursery.start_soon(self._run, part)

    async def _run(self, part: _Part) -> None:
        try:
            part.data = await self._fetch(part.start, part.length)
        except Exception as exc:  # noqa: BLE001 - handed to the reader that waits for this part
            part.error = exc
        finally:
            part.done.set()
            if part.dropped:
                self._give_back(part)

    def _drop_before(self, offset: int) -> None:
        self._drop([p for p in self._parts if p.end <= offset])

    def _drop(self, parts: list[_Part]) -> None:
        """Forget ``parts``; their budget goes back now, or when a fetch in flight ends."""
        gone = {id(p) for p in parts}
        for p in parts:
            p.dropped = True
            if p.done.is_set():
                self._give_back(p)
        self._parts = [p for p in self._parts if id(p) not in gone]

    def _give_back(self, part: _Part) -> None:
        # The data itself stays: a read collecting from this part may still hold it.
        self._budget.give(part.held, self)
        part.held = 0

    async def _collect(self, offset: int, end: int) -> bytes:
        chunks = []
        for part in list(self._parts):
            if part.end <= offset or part.start >= end:
                continue
            await part.done.wait()
            if part.error is not None:
                self._reset()
                raise part.error
            lo = max(offset, part.start) - part.start
            hi = min(end, part.end) - part.start
            chunks.append(part.data[lo:hi])
        return b"".join(chunks)
