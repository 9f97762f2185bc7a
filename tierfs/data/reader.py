"""Block reader: the bytes of a range of an ObjectRef.

Splits a read into blocks, asks the tier chain for each, and on a miss fetches
the block from the object store once however many readers want it
(single-flight), then hands it to the tier chain to fill the tiers (RAM at
once, the others behind the reply). A small object is one block, so its first
read is one GET of the whole object.

A random read into a file of more than one block (the handle's read-ahead
says it is not sequential) fetches only the bytes asked for, rounded out to a
small unit (``ranged.py``), unless a tier has the whole block or a fetch of it
is under way; those units never go into the tiers.

Store fetches run under the limiter of their kind (``tierfs/limits.py``):
demand reads under the read limiter, read-ahead and warm jobs under the
prefetch limiter, manifest parts under the manifest limiter.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable

import trio

from tierfs.data.ranged import RangedReads
from tierfs.data.readahead import ReadAhead
from tierfs.data.singleflight import SingleFlight
from tierfs.errors import StoreError
from tierfs.limits import in_thread
from tierfs.refs import BlockKey, ObjectRef, block_span, blocks_for_range
from tierfs.store.objects import ObjectStore
from tierfs.tiers.chain import TierChain

log = logging.getLogger(__name__)

BACKEND = "backend"  # the source name of a block fetched from the object store
RANGED = "ranged"  # the source name of bytes served from the units of ranged reads (ranged.py)
MIN_LEFT = 0.1  # seconds of a failed read's deadline worth asking the store again with


class BlockReader:
    def __init__(
        self,
        store: ObjectStore,
        chain: TierChain,
        block_size: int,
        read_limiter: trio.CapacityLimiter,
        prefetch_limiter: trio.CapacityLimiter | None = None,
        prefetch_bytes: int = 64 << 20,
        random_read_unit: int = 0,
    ):
        self.store = store
        self.chain = chain
        self.block_size = block_size
        self.read_limiter = read_limiter
        self.prefetch_limiter = prefetch_limiter or read_limiter
        self._flights: SingleFlight[tuple[bytes, str]] = SingleFlight()
        self.ranged = RangedReads(store, min(random_read_unit, block_size), read_limiter)
        self._nursery: trio.Nursery | None = None
        self._prefetch_slots = trio.Semaphore(max(1, prefetch_bytes // block_size))
        self.prefetched = 0
        self.window_peak = 0  # the largest read-ahead window any handle reached, in bytes
        # Demand readers waiting on each block's flight, and the speculative
        # fetches (read-ahead, warm, manifest) still waiting for a token.
        self._wanted: dict[BlockKey, int] = {}
        # Blocks whose fetch just failed: the kernel retries a failed read at once (read-ahead, then the
        # read itself), and each retry with a deadline of its own would answer a deadline later. For
        # failed_for seconds a fetch of the block has only what is left of the failed one's deadline: after
        # a slow failure (a stall, a deadline) nothing, so it is answered with that failure at once; after
        # a fast one (503, a reset) the store is asked again, as a store that is back must be.
        self._failed: dict[BlockKey, tuple[float, str, float]] = {}  # key -> (until, why, the deadline's end)
        self.failed_for = 2.0
        self.failed_after = 1.0  # a failure that took this long is slow
        self._queued: dict[BlockKey, trio.CancelScope] = {}
        # Blocks just fetched from the store, kept for a moment whatever the tiers do with them: after a
        # failed read-ahead the kernel asks for the rest of its range one page at a time, and with no tier
        # to keep the block every page would be a fetch of all of it, each with a deadline of its own.
        self._held: OrderedDict[BlockKey, tuple[float, bytes]] = OrderedDict()  # key -> (fetched at, bytes)
        self._held_total = 0
        self.held_for = 2.0  # seconds
        self.held_bytes = max(16 << 20, 4 * block_size)

    def start(self, nursery: trio.Nursery) -> None:
        """Run read-ahead and the tier fills in ``nursery`` (the mount's); without one, neither is in the background."""
        self._nursery = nursery
        nursery.start_soon(self.chain.fills.run)
        nursery.start_soon(self._let_go_of_held)

    async def _let_go_of_held(self) -> None:
        """Drop the blocks kept past their moment, also when no fetch comes to do it."""
        while True:
            await trio.sleep(max(self.held_for, 0.5))
            self._prune(trio.current_time())

    async def finish(self) -> None:
        """At unmount, after the nursery: put what is still queued into the tiers."""
        await self.chain.fills.drain()

    def read_ahead(self, ra: ReadAhead, ref: ObjectRef, offset: int, length: int) -> None:
        """Prefetch what ``ra`` advises for a read that just arrived, without waiting for it.

        Bounded: when as many prefetches as the memory bound allows are in
        flight, further ones are not queued; the next read asks for them again.
        """
        if self._nursery is None:
            return
        for index in ra.advise(offset, length, ref.size):
            try:
                self._prefetch_slots.acquire_nowait()
            except trio.WouldBlock:
                ra.fetched_to = min(ra.fetched_to, index)
                break
            self._nursery.start_soon(self._prefetch, ref, index)
        self.window_peak = max(self.window_peak, ra.peak * self.block_size)

    async def keep_first_bytes(self, ref: ObjectRef, data: bytes) -> None:
        """A small file's bytes that its lookup's stat brought (``Namespace.first_bytes``): its block 0,
        put into the tiers as a store read's would be, so the open and read that follow need no request."""
        if len(data) != ref.size or not 0 < ref.size <= self.block_size:
            return
        key = ref.block_key(0, self.block_size)
        if self.chain.in_loop_holds(key):
            return
        self._hold(key, data)
        await self.chain.put(key, data)

    def read_first_block(self, ref: ObjectRef, index: int = 0) -> None:
        """An open for reading: fetch block 0 now, so the READ that follows joins a fetch already under way.

        On a cold file this takes the OPEN reply and the READ request's round
        trip out of the time to first byte (a small file is one block). It is a
        demand read (the kernel reads what it opens); a failure is only
        logged here, and the READ asks again and reports.
        """
        if self._nursery is None or ref.size == 0 or self.chain.in_loop_holds(ref.block_key(index, self.block_size)):
            return
        self._nursery.start_soon(self._first_block, ref, index)

    async def _first_block(self, ref: ObjectRef, index: int) -> None:
        try:
            await self.block(ref, index)
        except Exception as exc:
            log.debug("first block of %s at open failed: %s", ref.key, exc)

    async def _prefetch(self, ref: ObjectRef, index: int) -> None:
        try:
            await self.block(ref, index, limiter=self.prefetch_limiter)
            self.prefetched += 1
        except Exception as exc:
            # Only a lost hint: the real read retries and reports.
            log.debug("prefetch of block %d of %s failed: %s", index, ref.key, exc)
        finally:
            self._prefetch_slots.release()

    async def warm(self, ref: ObjectRef, index: int) -> bytes:
        """A block for a warm job: under the prefetch limiter, and in every tier when this returns.

        Filling the tiers is a warm job's point, so its fills are never queued
        behind the reply (nor dropped when the queue is full).
        """
        data, _ = await self.block(ref, index, limiter=self.prefetch_limiter, wait_for_fill=True)
        return data

    def in_flight(self) -> int:
        return self._flights.in_flight()

    async def read(self, ref: ObjectRef, offset: int, length: int,
                   limiter: trio.CapacityLimiter | None = None, random: bool = False) -> tuple[bytes, str]:
        """Bytes [offset, offset+length) of ``ref`` (short at EOF), and where the last block came from.

        Store fetches run under ``limiter`` (default: the demand read limiter). ``random``: the read is
        not sequential (the handle's read-ahead says), so a file of more than one block is read by range.
        """
        data, source = await self.read_view(ref, offset, length, limiter, random)
        return (bytes(data) if isinstance(data, memoryview) else data), source

    async def read_view(self, ref: ObjectRef, offset: int, length: int, limiter: trio.CapacityLimiter | None = None,
                        random: bool = False) -> tuple[bytes | memoryview, str]:
        """As :meth:`read`, for a reply to the kernel: a read within one block is a view of the block, not a
        copy of its part (the kernel copies the reply anyway; a copy here also cost fresh pages to zero)."""
        indexes = blocks_for_range(offset, length, self.block_size, ref.size)
        if not indexes:
            return b"", ""
        if random and self.ranged.unit and ref.size > self.block_size:
            return await self._read_ranged(ref, indexes, offset, min(offset + length, ref.size))
        skip = offset - indexes[0] * self.block_size
        data: bytes | memoryview
        if len(indexes) == 1:
            block, source = await self.block(ref, indexes[0], limiter=limiter)
            data = block if skip == 0 and length >= len(block) else memoryview(block)[skip : skip + length]
        else:
            results: list[tuple[bytes, str]] = [(b"", "")] * len(indexes)

            async def one(slot: int, index: int) -> None:
                results[slot] = await self.block(ref, index, limiter=limiter)

            async with trio.open_nursery() as nursery:
                for slot, index in enumerate(indexes):
                    nursery.start_soon(one, slot, index)
            data = _spanning([r[0] for r in results], skip, length)
            source = results[-1][1]
        self.chain.served(source, len(data))
        return data, source

    async def _read_ranged(self, ref: ObjectRef, indexes: range, offset: int, end: int) -> tuple[bytes, str]:
        parts, source = [], ""
        for index in indexes:  # (one block, but for a read across a boundary)
            start, stop = block_span(index, self.block_size, ref.size)
            part, source = await self._piece(ref, index, start, stop, max(offset, start), min(end, stop))
            parts.append(part)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.chain.served(source, len(data))
        return data, source

    async def _piece(self, ref: ObjectRef, index: int, start: int, stop: int, lo: int, hi: int) -> tuple[bytes, str]:
        """Bytes [lo, hi) of block ``index`` ([start, stop) of ``ref``): of the whole block where it is at
        hand (a tier, a fetch under way, one just fetched) or random reads keep coming to it, else of the
        units of a ranged read."""
        key = ref.block_key(index, self.block_size)
        hit = self.chain.get_fast(key)
        if hit is None and self._flights.running(key):
            hit = await self.block(ref, index)  # a fetch of the whole block is under way: join it
        if hit is None:
            hit = await self.chain.get(key, after_fast=True)
        if hit is None:
            held = self._held_block(key)
            hit = None if held is None else (held, BACKEND)
        if hit is None and self.ranged.dense(key):
            hit = await self.block(ref, index)
        if hit is not None:
            return hit[0][lo - start: hi - start], hit[1]
        data, fetched = await self.ranged.read(ref, key, start, stop, lo, hi)
        return data, BACKEND if fetched else RANGED

    async def read_part(self, ref: ObjectRef, base: int, size: int, offset: int, length: int,
                        ra: ReadAhead | None = None) -> tuple[bytes | memoryview, str]:
        """Bytes [offset, offset+length) of the ``size`` bytes of ``ref`` that start at ``base`` (a member of a
        tar shard), short at their end, for a reply (:meth:`read_view`); ``ra``: the handle's read-ahead,
        advised in the shard's offsets."""
        end = min(offset + length, size)
        if offset >= end:
            return b"", ""
        if ra is not None:
            self.read_ahead(ra, ref, base + offset, end - offset)
        return await self.read_view(ref, base + offset, end - offset, random=ra is not None and not ra.sequential)

    async def block(self, ref: ObjectRef, index: int, limiter: trio.CapacityLimiter | None = None,
                    wait_for_fill: bool = False, fill: bool = True) -> tuple[bytes, str]:
        """Block ``index`` of ``ref``; a store fetch runs under ``limiter`` (default: the demand read limiter).

        Without ``fill`` the tiers only answer: a block from the store, or a
        lower tier, is put into none (the old bytes of a file being rewritten).
        """
        key = ref.block_key(index, self.block_size)
        hit = self.chain.get_fast(key)
        if hit is not None:
            return hit
        limiter = limiter or self.read_limiter
        if not fill:  # (outside single-flight: a reader sharing this fetch would get no fill either)
            return await self._slow(ref, index, key, limiter, wait_for_fill, fill=False)

        # Past RAM, concurrent readers of one block share one disk lookup and
        # at most one backend fetch.
        def slow() -> Awaitable[tuple[bytes, str]]:
            return self._slow(ref, index, key, limiter, wait_for_fill)

        if limiter is not self.read_limiter:
            return await self._flights.run(key, slow)
        self._wanted[key] = self._wanted.get(key, 0) + 1
        queued = self._queued.get(key)
        if queued is not None:
            queued.cancel()  # a reader waits on it now: see _fetch
        try:
            return await self._flights.run(key, slow)
        finally:
            left = self._wanted.pop(key) - 1
            if left:
                self._wanted[key] = left

    async def _slow(self, ref: ObjectRef, index: int, key: BlockKey, limiter: trio.CapacityLimiter,
                    wait_for_fill: bool, fill: bool = True) -> tuple[bytes, str]:
        hit = await self.chain.get(key, after_fast=True, wait=wait_for_fill, promote=fill)
        if hit is not None:
            return hit
        held = self._held_block(key)
        if held is not None:
            return held, BACKEND
        start, end = block_span(index, self.block_size, ref.size)
        t0, started = trio.current_time(), time.monotonic()
        ends = started + self.store.read_deadline  # when this read's deadline ends
        until: float | None = None  # (the store's own read deadline)
        failed = self._failed.get(key)
        if failed is not None:
            if t0 < failed[0]:
                ends = failed[2]
                if ends - started < MIN_LEFT:
                    raise StoreError(f"{failed[1]} (failed moments ago; asked again in {self.failed_for:.0f} s)")
                until = ends
            else:
                del self._failed[key]
        try:
            data = await self._fetch(ref, start, end, key, limiter, until)
        except StoreError as exc:
            if trio.current_time() - t0 >= self.failed_after:
                ends = float("-inf")  # slow: nothing is left to try again with
            if len(self._failed) >= 4096 and key not in self._failed:  # bounded: forget the oldest
                del self._failed[next(iter(self._failed))]
            self._failed[key] = (trio.current_time() + self.failed_for, str(exc), ends)
            raise
        self._failed.pop(key, None)
        self._hold(key, data)
        if fill:
            await self.chain.put(key, data, wait=wait_for_fill)
        return data, BACKEND

    def _held_block(self, key: BlockKey) -> bytes | None:
        entry = self._held.get(key)
        if entry is None:
            return None
        if trio.current_time() - entry[0] >= self.held_for:
            self._prune(trio.current_time())
            return None
        return entry[1]

    def _hold(self, key: BlockKey, data: bytes) -> None:
        """Keep ``data`` for ``held_for`` seconds, in at most ``held_bytes`` (the oldest go first)."""
        now = trio.current_time()
        old = self._held.pop(key, None)
        if old is not None:
            self._held_total -= len(old[1])
        if self.held_for > 0 and len(data) <= self.held_bytes:
            self._held[key] = (now, data)
            self._held_total += len(data)
        self._prune(now)

    def _prune(self, now: float) -> None:
        while self._held:
            key, (at, data) = next(iter(self._held.items()))
            if self._held_total <= self.held_bytes and now - at < self.held_for:
                return
            del self._held[key]
            self._held_total -= len(data)

    def bytes_held(self) -> int:
        """Bytes of blocks kept for a moment after their fetch (not counting the tiers')."""
        return self._held_total

    async def _fetch(self, ref: ObjectRef, start: int, end: int, key: BlockKey,
                     limiter: trio.CapacityLimiter, until: float | None) -> bytes:
        if limiter is not self.read_limiter and not self._wanted.get(key):
            # A speculative fetch waits for a token of its own kind. If a reader
            # comes to wait on this block meanwhile, it cancels the wait
            # (block()) and the fetch goes on under the demand read limiter:
            # single-flight must not make a reader queue behind read-ahead.
            with trio.CancelScope() as waiting:
                self._queued[key] = waiting
                try:
                    # Once its thread has a token the call is not cancellable: it returns the bytes.
                    return await in_thread(self.store.read_range, ref, start, end, until, limiter=limiter)
                finally:
                    del self._queued[key]
        return await in_thread(self.store.read_range, ref, start, end, until, limiter=self.read_limiter)


def _spanning(parts: list[bytes], skip: int, length: int) -> bytes:
    """Bytes [skip, skip+length) of the blocks ``parts`` laid end to end, copied once: a read across a
    block boundary is at most a few hundred KiB of two 4 MiB blocks, not a join of both."""
    out, pos, end = [], 0, skip + length
    for part in parts:
        lo, hi = max(skip - pos, 0), min(end - pos, len(part))
        if hi > lo:
            out.append(memoryview(part)[lo:hi])
        pos += len(part)
    return b"".join(out)
