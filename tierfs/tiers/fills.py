"""Background tier fills: the slower tiers get a block after the read that needed it is answered.

When a block comes from the object store (or from Redis), the tier chain puts
it into RAM at once (in the loop, cheap: an immediate re-read hits) and hands
the disk and Redis puts to this queue, so the kernel gets the bytes as soon as
the store delivers them instead of after a Redis SET and LMDB write
transactions. Workers in the mount's nursery run the queued fills.

The queue is bounded in bytes: a fill that does not fit is dropped and
counted (``dropped``). Nothing is lost but a cache entry: the block is in RAM
and a later read fetches it again. At unmount what is still queued is run
(:meth:`FillQueue.drain`), so a remount finds it on disk. Without running
workers (no mount: the fsspec protocol, unit tests), or with a bound of 0,
fills run inline, before the read returns.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable

import trio

from tierfs.metrics import FILL_COUNTERS, Counters

log = logging.getLogger(__name__)

Fill = Callable[[], Awaitable[None]]


class FillQueue:
    def __init__(self, max_bytes: int, workers: int = 4):
        self.max_bytes = max_bytes
        self.workers = workers
        # Unbounded as a channel: the bound is in bytes, checked in submit().
        self._send, self._receive = trio.open_memory_channel[tuple[int, Fill]](math.inf)
        self._pending = 0  # bytes queued or being filled
        self._running = False
        self.stats = Counters(FILL_COUNTERS, gauges={"pending_bytes": lambda: self._pending})

    async def submit(self, nbytes: int, fill: Fill) -> bool:
        """Queue ``fill`` (of a block of ``nbytes``), or run it now if no worker runs; False if it was dropped
        because the queue is full."""
        if not self._running or self.max_bytes == 0:
            await self._run(fill)
            return True
        # A block larger than the whole bound still goes in alone, else it would never be filled.
        if self._pending and self._pending + nbytes > self.max_bytes:
            self.stats.add("dropped")
            return False
        self._pending += nbytes
        self._send.send_nowait((nbytes, fill))
        self.stats.add("queued")
        return True

    async def run(self) -> None:
        """Run queued fills until cancelled: a task of the mount's nursery."""
        self._running = True
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(self.workers):
                    nursery.start_soon(self._worker)
        finally:
            self._running = False

    async def drain(self) -> None:
        """Run every fill still queued (at unmount, once the workers have stopped)."""
        while True:
            try:
                nbytes, fill = self._receive.receive_nowait()
            except trio.WouldBlock:
                return
            try:
                await self._run(fill)
            finally:
                self._pending -= nbytes

    async def _worker(self) -> None:
        async for nbytes, fill in self._receive:
            try:
                # A fill taken off the queue is finished even at unmount: it is a
                # few tier calls, each bounded by its tier's own timeouts.
                with trio.CancelScope(shield=True):
                    await self._run(fill)
            finally:
                self._pending -= nbytes

    async def _run(self, fill: Fill) -> None:
        try:
            await fill()
            self.stats.add("done")
        except Exception:
            # The chain already turns tier failures into counted misses; this is
            # a bug, and a fill is only a cache entry: log it and go on.
            self.stats.add("errors")
            log.exception("a tier fill failed; going on without it")
