"""Renaming a directory: one step on a local lake, a copy of many objects elsewhere.

An object store has no directories to rename: every object below the old
prefix is copied to the new one (server side, ``concurrency`` copies in
flight), and only once all copies succeeded are the old objects deleted. So a
failure leaves the source whole (and perhaps part of the target), and the same
rename can simply be run again. Other readers may see both trees, or part of
the target, while it runs: it is not atomic (docs/semantics.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio

from tierfs.store.objects import ObjectStore

log = logging.getLogger(__name__)


async def rename_tree(store: ObjectStore, old: str, new: str, limiter: trio.CapacityLimiter,
                      concurrency: int) -> int:
    """Move everything below ``old`` to ``new``; returns how many objects moved."""
    if await trio.to_thread.run_sync(store.rename_dir, old, new, limiter=limiter):
        return 1
    t0 = time.monotonic()
    files = await trio.to_thread.run_sync(lambda: [e.name for e in store.walk_files(old)], limiter=limiter)
    await _each(files, lambda name: store.copy(f"{old}/{name}", f"{new}/{name}"), limiter, concurrency)
    await _each(files, lambda name: store.delete(f"{old}/{name}"), limiter, concurrency)
    log.info("renamed %s to %s: %d objects copied and deleted in %.1f s", old, new, len(files), time.monotonic() - t0)
    return len(files)


async def _each(names: list[str], fn: Callable[[str], None], limiter: trio.CapacityLimiter, concurrency: int) -> None:
    """``fn(name)`` for every name in worker threads, at most ``concurrency`` at once; the first error wins."""
    slots = trio.Semaphore(concurrency)

    async def one(name: str) -> None:
        try:
            await trio.to_thread.run_sync(fn, name, limiter=limiter)
        finally:
            slots.release()

    async with trio.open_nursery() as nursery:
        for name in names:
            await slots.acquire()
            nursery.start_soon(one, name)
