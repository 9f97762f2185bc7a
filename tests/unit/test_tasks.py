"""The SIGUSR1 task dump names every task and where it waits."""

from __future__ import annotations

import trio

from tierfs.tasks import task_tree


async def test_the_task_tree_shows_each_task_and_its_await() -> None:
    async def parked_fill(stop: trio.Event) -> None:
        await stop.wait()

    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(parked_fill, stop, name="fill-worker")
        await trio.lowlevel.checkpoint()
        tree = task_tree()
        stop.set()
    assert "task fill-worker" in tree
    line = next(i for i, t in enumerate(tree.splitlines()) if "task fill-worker" in t)
    assert "parked_fill" in tree.splitlines()[line + 1]
    assert "test_the_task_tree_shows_each_task_and_its_await" in tree
