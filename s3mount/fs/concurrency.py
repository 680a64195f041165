"""Running store calls side by side without losing the errno of the one that failed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio


async def gather(thunks: list[Callable[[], Awaitable[Any]]], *, limit: int = 64) -> None:
    """Run ``thunks`` concurrently, at most ``limit`` at once; re-raise the first error as itself.

    (A trio nursery would wrap errors in an ExceptionGroup, and the FUSE adapter must see the
    errno-carrying error to answer with the right errno.)
    """
    errors: list[BaseException] = []
    sem = trio.Semaphore(limit)

    async def one(thunk: Callable[[], Awaitable[Any]]) -> None:
        async with sem:
            try:
                await thunk()
            except Exception as exc:  # noqa: BLE001 - re-raised below
                errors.append(exc)

    async with trio.open_nursery() as n:
        for t in thunks:
            n.start_soon(one, t)
    if errors:
        raise errors[0]
