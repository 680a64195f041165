"""How the core does store work: blocking store calls in worker threads, bounded, and background
tasks in the mount's nursery.

Every component of the core that talks to the bucket gets this one ``StoreRunner``: one limiter
for all of them (matched to the store's connection pool), one place that stamps when an
operation started (its deadline counts from there), and one ``store`` reference (tests wrap it to
count or delay requests).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from ..store.base import ObjectStore, operation_started

T = TypeVar("T")


class StoreRunner:
    """The store, the limiter on calls to it, and the nursery background work runs in."""

    def __init__(self, store: ObjectStore, concurrency: int) -> None:
        self.store = store
        self.limiter = trio.CapacityLimiter(concurrency)
        self.nursery: trio.Nursery | None = None
        """Set by the mount (or a test) once its nursery is open: readers' prefetch, streamed
        parts and the description of a walk's groups run there."""

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking store call in a worker thread, bounded by the limiter. The call's
        ``timeout`` counts from now (the thread copies this context), not from when a thread
        is free: an operation queued behind others on a silent server still ends in time."""
        operation_started.set(time.monotonic())
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs),
                                             limiter=self.limiter)
