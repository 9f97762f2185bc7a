"""Worker-thread budgets for store calls: one CapacityLimiter per kind of work.

Every blocking store call of a mount runs in a trio worker thread under the
limiter of its kind: metadata (the live view's listings and stats), demand
reads (blocks a reader is waiting on), prefetch (read-ahead and warm jobs),
manifest (snapshot manifests) and write (uploads, copies, deletes). So one
kind never starves another: a burst of read-ahead or of snapshot lookups
leaves the tokens of demand reads alone.

Each call takes its token in its own :func:`in_thread` (or
``trio.to_thread.run_sync``), awaited from trio, never from a thread (or a
task) that already holds one: callers that hold a token while waiting for
another deadlock as soon as enough of them do it at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import outcome
import trio

from tierfs.config import Settings

T = TypeVar("T")


async def in_thread(fn: Callable[..., T], *args: Any, limiter: trio.CapacityLimiter) -> T:
    """``fn(*args)`` in a worker thread, under a token of ``limiter``: the read path's thread hop.

    The semantics of ``trio.to_thread.run_sync(fn, *args, limiter=limiter)``:
    the wait for a token can be cancelled, the call once started cannot, and
    its result or exception comes back here. At a fraction of the cost: that
    function also renames the OS thread twice per call and copies the
    context, which a cold block read pays up to three times (disk lookup,
    store GET, disk fill). Nothing run here may call back into trio.
    """
    async with limiter:
        token = trio.lowlevel.current_trio_token()
        task = trio.lowlevel.current_task()

        def deliver(result: outcome.Outcome[T]) -> None:
            token.run_sync_soon(trio.lowlevel.reschedule, task, result)

        trio.lowlevel.start_thread_soon(lambda: fn(*args), deliver)
        out: T = await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)
    return out


@dataclass(frozen=True)
class StoreLimiters:
    metadata: trio.CapacityLimiter
    read: trio.CapacityLimiter
    prefetch: trio.CapacityLimiter
    manifest: trio.CapacityLimiter
    write: trio.CapacityLimiter

    @classmethod
    def from_settings(cls, settings: Settings) -> StoreLimiters:
        return cls(
            metadata=trio.CapacityLimiter(settings.metadata_concurrency),
            read=trio.CapacityLimiter(settings.read_concurrency),
            prefetch=trio.CapacityLimiter(settings.prefetch_concurrency),
            manifest=trio.CapacityLimiter(settings.manifest_concurrency),
            write=trio.CapacityLimiter(settings.write_concurrency),
        )

