"""The tier chain: RAM -> (Redis) -> disk, fastest first.

``get`` asks each tier in turn; a hit in a lower tier is promoted into the
faster ones above it. A tier that raises is logged and treated as a miss
(DESIGN.md, invariant 2): a sick cache never fails a read the store can serve.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import trio

from tierfs.metrics import TIER_SECONDS
from tierfs.refs import BlockKey
from tierfs.tiers.base import Tier

log = logging.getLogger(__name__)


class TierChain:
    def __init__(self, tiers: Sequence[Tier], limiter: trio.CapacityLimiter):
        self.tiers = list(tiers)
        self.limiter = limiter
        self._last_error_log: dict[str, float] = {}

    def get_fast(self, key: BlockKey) -> tuple[bytes, str] | None:
        """Ask only the leading in-loop tiers (RAM): no thread, no await."""
        for tier in self.tiers:
            if not tier.in_loop:
                break
            t0 = time.perf_counter()
            try:
                data = tier.get(key)
                TIER_SECONDS.labels(tier.name).observe(time.perf_counter() - t0)
            except Exception as exc:
                self._failed(tier, exc)
                data = None
            if data is not None:
                return data, tier.name
        return None

    async def get(self, key: BlockKey, after_fast: bool = False) -> tuple[bytes, str] | None:
        """The block and the name of the tier that had it, or None.

        With ``after_fast``, the leading in-loop tiers are taken as already
        asked (by :meth:`get_fast`) and are only promoted into.
        """
        for i, tier in enumerate(self.tiers):
            if after_fast and tier.in_loop and all(t.in_loop for t in self.tiers[:i]):
                continue
            t0 = time.perf_counter()
            data = await self._call(tier, tier.get, key)
            TIER_SECONDS.labels(tier.name).observe(time.perf_counter() - t0)
            if data is not None:
                for upper in self.tiers[:i]:
                    await self._call(upper, upper.put, key, data)
                return data, tier.name
        return None

    def served(self, tier_name: str, nbytes: int) -> None:
        """Account ``nbytes`` of a read's answer to the tier that held them."""
        for tier in self.tiers:
            if tier.name == tier_name:
                tier.stats.add("bytes_served", nbytes)
                return

    async def put(self, key: BlockKey, data: bytes) -> None:
        for tier in self.tiers:
            await self._call(tier, tier.put, key, data)

    async def evict(self, key: BlockKey) -> None:
        for tier in self.tiers:
            await self._call(tier, tier.evict, key)

    def close(self) -> None:
        for tier in self.tiers:
            try:
                tier.close()
            except Exception:
                log.exception("closing the %s tier failed", tier.name)

    def stats(self) -> dict[str, dict[str, int]]:
        return {t.name: t.stats.snapshot() for t in self.tiers}

    async def _call(self, tier: Tier, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            if tier.in_loop:
                return fn(*args)
            return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)
        except Exception as exc:
            self._failed(tier, exc)
            return None

    def _failed(self, tier: Tier, exc: Exception) -> None:
        tier.stats.add("errors")
        now = time.monotonic()
        if now - self._last_error_log.get(tier.name, 0) > 10:
            self._last_error_log[tier.name] = now
            log.warning("%s tier failed (%s: %s); treating as a miss", tier.name, type(exc).__name__, exc)
