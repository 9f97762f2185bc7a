"""The background fill queue: bounded in bytes, drops and counts when full, drained at unmount."""

from __future__ import annotations

import functools

import trio
import trio.lowlevel
import trio.testing

from tierfs.tiers.fills import FillQueue

BS = 4096


async def test_a_full_fill_queue_drops_and_counts() -> None:
    queue = FillQueue(max_bytes=3 * BS, workers=1)
    gate = trio.Event()
    filled: list[int] = []

    async def fill(i: int) -> None:
        await gate.wait()
        filled.append(i)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(queue.run)
        await trio.testing.wait_all_tasks_blocked()
        for i in range(5):
            await queue.submit(BS, functools.partial(fill, i))
        s = queue.stats.snapshot()
        assert (s["queued"], s["dropped"], s["pending_bytes"]) == (3, 2, 3 * BS)
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert filled == [0, 1, 2]
        s = queue.stats.snapshot()
        assert (s["done"], s["dropped"], s["pending_bytes"]) == (3, 2, 0)
        nursery.cancel_scope.cancel()


async def test_fills_left_in_the_queue_are_run_by_drain() -> None:
    queue = FillQueue(max_bytes=10 * BS, workers=1)
    filled: list[int] = []

    async def fill(i: int) -> None:
        await trio.lowlevel.checkpoint()
        filled.append(i)

    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(queue.run)
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()  # the workers stop (an unmount) before any fill ran...
            for i in range(3):
                await queue.submit(BS, functools.partial(fill, i))
    await queue.drain()  # ...and the queued ones still go in
    assert filled == [0, 1, 2] and queue.stats.get("pending_bytes") == 0
