"""A mount-wide bound on the file data held in memory for transfers.

Each reader keeps at most a 32 MiB prefetch window and each streaming upload a few parts in
flight, but those bounds are per open file: eight ``cp``s reading at once held eight windows
(577 MiB of RSS, measured). A ``Budget`` is shared by all files of one kind of transfer, so the
total stays bounded however many files are open.

Readers and writers draw on separate budgets, and only writers ever wait. ``cp a b`` on one mount
holds prefetched parts of ``a`` while it writes ``b``; if the write could wait for the reader's
memory, and the reader only gives it back when ``cp`` reads on, both would stop for good. So
readers only take what is free (and prefetch less when little is), while writers wait for upload
parts to be stored or to fail, which never depends on another FUSE request.
"""

from __future__ import annotations

import trio


class Budget:
    """Bytes that may be held at once, taken and given back by the holders (trio tasks only).

    Holders that only take what is free (readers) name themselves, and get no more than an even
    share of the limit among those holding some: otherwise the first reader to grow its window
    keeps the budget and the later ones are left fetching one range at a time.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._held: dict[object, int] = {}
        self._freed = trio.lowlevel.ParkingLot()

    def take_up_to(self, holder: object, wanted: int, *, least: int) -> int:
        """Take ``wanted`` bytes for ``holder``, or as many as are free and within its share if
        that is at least ``least``; returns how many were taken (0 if fewer). Never waits."""
        room = self.share(holder) - self._held.get(holder, 0)
        granted = min(wanted, self.limit - self.used, room)
        if granted < least:
            return 0
        self.take_anyway(holder, granted)
        return granted

    def share(self, holder: object) -> int:
        """The most ``holder`` may hold of what it takes when free: an even split of the limit
        among those holding some now, itself included."""
        return self.limit // (len(self._held) + (holder not in self._held))

    def take_anyway(self, holder: object, n: int) -> None:
        """Take ``n`` bytes even beyond the limit: data a caller is waiting for right now (the
        range a read asked for) must be fetched, and it is given back as soon as it is served."""
        self.used += n
        self._held[holder] = self._held.get(holder, 0) + n

    async def take(self, n: int) -> None:
        """Wait until ``n`` bytes are free, then take them. A request larger than the whole
        budget is granted once nothing else is held, so it waits but is never refused."""
        if not n:
            return
        while self.used and self.used + n > self.limit:
            await self._freed.park()
        self.used += n

    def give(self, n: int, holder: object = None) -> None:
        if not n:
            return
        self.used -= n
        assert self.used >= 0, "gave back more than was taken"
        if holder is not None:
            left = self._held.pop(holder) - n
            if left:
                self._held[holder] = left
        self._freed.unpark_all()
