"""The Tier contract that RAM, Redis and disk each fulfil.

A tier holds blocks by BlockKey. ``get`` answers the block or None (a miss);
``put`` may decline to store (too big, disk full) without failing; ``evict``
forgets a key. Every method is blocking and thread-safe; the chain runs tiers
that do I/O in worker threads and calls ``in_loop`` tiers directly.
"""

from __future__ import annotations

import abc

from tierfs.metrics import TIER_COUNTERS, Counters
from tierfs.refs import BlockKey


class Tier(abc.ABC):
    name: str = "tier"
    #: True when get/put never block (pure memory): the chain may call them on the trio loop.
    in_loop: bool = False

    def __init__(self) -> None:
        self.stats = Counters(
            TIER_COUNTERS,
            gauges={"bytes_held": self.bytes_held, "entries": self.entries, "up": lambda: int(self.is_up())},
        )

    @abc.abstractmethod
    def get(self, key: BlockKey) -> bytes | None: ...

    @abc.abstractmethod
    def put(self, key: BlockKey, data: bytes) -> None: ...

    @abc.abstractmethod
    def evict(self, key: BlockKey) -> None: ...

    @abc.abstractmethod
    def bytes_held(self) -> int: ...

    @abc.abstractmethod
    def entries(self) -> int: ...

    def may_hold(self, key: BlockKey) -> bool:
        """False only when the tier surely lacks ``key``, known without blocking: the chain then skips it
        without a thread hop. (True, "ask me", unless the tier keeps such knowledge in memory.)"""
        return True

    def is_up(self) -> bool:
        """False while the tier is skipped because it failed (Redis down)."""
        return True

    def close(self) -> None:  # noqa: B027 - most tiers hold nothing to release
        """Release resources; a tier is not used after close."""

    # Bookkeeping shared by every implementation.
    def _hit(self, data: bytes) -> bytes:
        # bytes_served is counted by the chain for the bytes a read returned,
        # not the whole block it was cut from.
        self.stats.add("hits")
        return data

    def _miss(self) -> None:
        self.stats.add("misses")
