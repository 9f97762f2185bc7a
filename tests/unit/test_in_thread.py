"""tierfs.limits.in_thread: the read path's thread hop keeps trio.to_thread.run_sync's semantics."""

from __future__ import annotations

import threading

import pytest
import trio

from tierfs.limits import in_thread


async def test_result_and_exception_come_back() -> None:
    limiter = trio.CapacityLimiter(2)
    main = threading.get_ident()
    assert await in_thread(lambda a, b: (a + b, threading.get_ident() != main), 2, 3, limiter=limiter) == (5, True)
    with pytest.raises(KeyError, match="nope"):
        await in_thread({}.__getitem__, "nope", limiter=limiter)
    assert limiter.borrowed_tokens == 0


async def test_the_limiter_bounds_calls_and_the_wait_for_a_token_can_be_cancelled() -> None:
    limiter = trio.CapacityLimiter(1)
    release = threading.Event()
    running: list[int] = []

    def slow() -> str:
        running.append(1)
        release.wait(10)
        return "done"

    async with trio.open_nursery() as nursery:
        results: list[str] = []

        async def first() -> None:
            results.append(await in_thread(slow, limiter=limiter))

        nursery.start_soon(first)
        await trio.sleep(0.05)
        with trio.move_on_after(0.1) as waited:  # no token: this call never starts
            await in_thread(slow, limiter=limiter)
        assert waited.cancelled_caught and running == [1]
        release.set()
    assert results == ["done"] and limiter.borrowed_tokens == 0


async def test_a_call_that_runs_is_not_abandoned_when_its_caller_is_cancelled() -> None:
    limiter = trio.CapacityLimiter(1)
    finished: list[str] = []

    def slow() -> str:
        threading.Event().wait(0.2)
        finished.append("ran to the end")
        return "done"

    with trio.move_on_after(0.05) as scope:
        await in_thread(slow, limiter=limiter)  # the deadline passes meanwhile: it waits all the same
    assert scope.cancel_called and finished == ["ran to the end"] and limiter.borrowed_tokens == 0
