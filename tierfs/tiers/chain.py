"""The tier chain: RAM -> disk -> (Redis), nearest first; the store comes after it.

``get`` asks each tier in turn; a hit is promoted into the tiers above it
only: a disk hit into RAM (never back into Redis, the tier the nodes share,
which had it or will get it from the node that fetched it), a Redis hit into
the local disk and RAM, so this node asks Redis for a block once. A tier that
raises is logged and treated as a miss (docs/design.md, invariant 3): a sick cache
never fails a read the store can serve.

Puts into in-loop tiers (RAM) happen at once; puts into the others go through
the background fill queue (``fills.py``), behind the read's reply.
"""

from __future__ import annotations

import functools
import itertools
import logging
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

import trio

from tierfs.limits import in_thread
from tierfs.metrics import TIER_SECONDS, observe
from tierfs.refs import BlockKey
from tierfs.tiers.base import Tier
from tierfs.tiers.fills import FillQueue

log = logging.getLogger(__name__)


class TierChain:
    def __init__(self, tiers: Sequence[Tier], limiter: trio.CapacityLimiter, fills: FillQueue | None = None):
        self.tiers = list(tiers)
        self.limiter = limiter
        # Without a mount to run it (reader.start), the queue runs fills inline.
        self.fills = fills if fills is not None else FillQueue(64 << 20)
        self._last_error_log: dict[str, float] = {}
        # Blocks queued for the slower tiers and not in them yet, by digest: a read meanwhile (the
        # kernel's next READ after a read-ahead, with no RAM tier) is served from here, not fetched again.
        self._filling: dict[bytes, tuple[bytes, str]] = {}

    def in_loop_holds(self, key: BlockKey) -> bool:
        """Whether a leading in-loop tier (RAM), or the fill queue, holds ``key``; no read, no hit counted."""
        return key.digest in self._filling or \
            any(t.may_hold(key) for t in itertools.takewhile(lambda t: t.in_loop, self.tiers))

    def get_fast(self, key: BlockKey) -> tuple[bytes, str] | None:
        """Ask only the leading in-loop tiers (RAM): no thread, no await."""
        for tier in self.tiers:
            if not tier.in_loop:
                break
            t0 = time.perf_counter()
            try:
                data = tier.get(key)
                observe(TIER_SECONDS, tier.name, time.perf_counter() - t0)
            except Exception as exc:
                self._failed(tier, exc)
                data = None
            if data is not None:
                return data, tier.name
        return self._filling.get(key.digest)

    async def get(self, key: BlockKey, after_fast: bool = False, wait: bool = False,
                  promote: bool = True) -> tuple[bytes, str] | None:
        """The block and the name of the tier that had it, or None.

        With ``after_fast``, the leading in-loop tiers are taken as already
        asked (by :meth:`get_fast`) and are only promoted into. With ``wait``,
        promotions are done before this returns instead of queued; without
        ``promote``, none is made.
        """
        for i, tier in enumerate(self.tiers):
            if after_fast and tier.in_loop and all(t.in_loop for t in self.tiers[:i]):
                continue
            if not tier.in_loop and not tier.may_hold(key):
                tier.stats.add("misses")  # known in memory: no thread hop for a block the tier lacks
                continue
            t0 = time.perf_counter()
            data = await self._call(tier, tier.get, key)
            observe(TIER_SECONDS, tier.name, time.perf_counter() - t0)
            if data is not None:
                if promote:
                    await self._fill(self.tiers[:i], key, data, wait)
                return data, tier.name
        return None

    def served(self, tier_name: str, nbytes: int) -> None:
        """Account ``nbytes`` of a read's answer to the tier that held them."""
        for tier in self.tiers:
            if tier.name == tier_name:
                tier.stats.add("bytes_served", nbytes)
                return

    async def put(self, key: BlockKey, data: bytes, into: Collection[str] | None = None, wait: bool = False) -> None:
        """Put a block into every tier (or the ones named ``into``): RAM now, the others queued.

        With ``wait``, every put is done before this returns (nothing is dropped).
        """
        tiers = self.tiers if into is None else [t for t in self.tiers if t.name in into]
        await self._fill(tiers, key, data, wait)

    async def evict(self, key: BlockKey, into: Collection[str] | None = None) -> None:
        """Drop a block from every tier (or the ones named ``into``)."""
        for tier in self.tiers if into is None else [t for t in self.tiers if t.name in into]:
            await self._call(tier, tier.evict, key)

    def close(self) -> None:
        for tier in self.tiers:
            try:
                tier.close()
            except Exception:
                log.exception("closing the %s tier failed", tier.name)

    def stats(self) -> dict[str, dict[str, int]]:
        return {t.name: t.stats.snapshot() for t in self.tiers}

    async def _fill(self, tiers: Sequence[Tier], key: BlockKey, data: bytes, wait: bool) -> None:
        slow = []
        for tier in tiers:
            if tier.in_loop:
                await self._call(tier, tier.put, key, data)  # no thread, no await: at once
            else:
                slow.append(tier)
        if not slow:
            return
        if wait:
            await self._put_each(slow, key, data)
            return
        self._filling[key.digest] = (data, slow[0].name)
        if not await self.fills.submit(len(data), functools.partial(self._put_each, slow, key, data, True)):
            self._filling.pop(key.digest, None)  # dropped: the queue is full

    async def _put_each(self, tiers: Sequence[Tier], key: BlockKey, data: bytes, queued: bool = False) -> None:
        try:
            for tier in tiers:
                await self._call(tier, tier.put, key, data)
        finally:
            if queued:
                self._filling.pop(key.digest, None)

    async def _call(self, tier: Tier, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            if tier.in_loop:
                return fn(*args)
            return await in_thread(fn, *args, limiter=self.limiter)
        except Exception as exc:
            self._failed(tier, exc)
            return None

    def _failed(self, tier: Tier, exc: Exception) -> None:
        tier.stats.add("errors")
        now = time.monotonic()
        if now - self._last_error_log.get(tier.name, 0) > 10:
            self._last_error_log[tier.name] = now
            log.warning("%s tier failed (%s: %s); treating as a miss", tier.name, type(exc).__name__, exc)
