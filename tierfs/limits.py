"""Worker-thread budgets for store calls: one CapacityLimiter per kind of work.

Every blocking store call of a mount runs in a trio worker thread under the
limiter of its kind: metadata (the live view's listings and stats), demand
reads (blocks a reader is waiting on), prefetch (read-ahead and warm jobs),
manifest (snapshot manifests) and write (uploads, copies, deletes). So one
kind never starves another: a burst of read-ahead or of snapshot lookups
leaves the tokens of demand reads alone.

Each call takes its token in its own ``trio.to_thread.run_sync``, awaited
from trio, never from a thread (or a task) that already holds one: callers
that hold a token while waiting for another deadlock as soon as enough of
them do it at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from tierfs.config import Settings


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
