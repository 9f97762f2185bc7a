"""Block reader: the bytes of a range of an ObjectRef.

Splits a read into blocks, asks the tier chain for each, and on a miss fetches
the block from the object store once however many readers want it
(single-flight), then puts it into every tier. A small object is one block, so
its first read is one GET of the whole object.
"""

from __future__ import annotations

import trio

from tierfs.data.readahead import ReadAhead
from tierfs.data.singleflight import SingleFlight
from tierfs.refs import BlockKey, ObjectRef, block_span, blocks_for_range
from tierfs.store.objects import ObjectStore
from tierfs.tiers.chain import TierChain

BACKEND = "backend"  # the source name of a block fetched from the object store


class BlockReader:
    def __init__(
        self,
        store: ObjectStore,
        chain: TierChain,
        block_size: int,
        store_limiter: trio.CapacityLimiter,
        prefetch_bytes: int = 64 << 20,
    ):
        self.store = store
        self.chain = chain
        self.block_size = block_size
        self.store_limiter = store_limiter
        self._flights: SingleFlight[tuple[bytes, str]] = SingleFlight()
        self._nursery: trio.Nursery | None = None
        self._prefetch_slots = trio.Semaphore(max(1, prefetch_bytes // block_size))
        self.prefetched = 0

    def start(self, nursery: trio.Nursery) -> None:
        """Give read-ahead a nursery to run in (the mount's); without one it is off."""
        self._nursery = nursery

    def read_ahead(self, ra: ReadAhead, ref: ObjectRef, offset: int, length: int) -> None:
        """Prefetch what ``ra`` advises after a read, without waiting for it.

        Bounded: when as many prefetches as the memory bound allows are in
        flight, further ones are dropped, not queued.
        """
        if self._nursery is None:
            return
        for index in ra.advise(offset, length, ref.size):
            try:
                self._prefetch_slots.acquire_nowait()
            except trio.WouldBlock:
                return
            self._nursery.start_soon(self._prefetch, ref, index)

    async def _prefetch(self, ref: ObjectRef, index: int) -> None:
        try:
            await self.block(ref, index)
            self.prefetched += 1
        except Exception:
            pass  # a failed prefetch is only a lost hint; the real read will retry and report
        finally:
            self._prefetch_slots.release()

    def in_flight(self) -> int:
        return self._flights.in_flight()

    async def read(self, ref: ObjectRef, offset: int, length: int) -> tuple[bytes, str]:
        """Bytes [offset, offset+length) of ``ref`` (short at EOF), and where the last block came from."""
        indexes = blocks_for_range(offset, length, self.block_size, ref.size)
        if not indexes:
            return b"", ""
        if len(indexes) == 1:
            block, source = await self.block(ref, indexes[0])
            parts = [block]
        else:
            results: list[tuple[bytes, str]] = [(b"", "")] * len(indexes)

            async def one(slot: int, index: int) -> None:
                results[slot] = await self.block(ref, index)

            async with trio.open_nursery() as nursery:
                for slot, index in enumerate(indexes):
                    nursery.start_soon(one, slot, index)
            parts = [r[0] for r in results]
            source = results[-1][1]
        first = indexes[0] * self.block_size
        skip = offset - first
        data = parts[0][skip : skip + length] if len(parts) == 1 else b"".join(parts)[skip : skip + length]
        self.chain.served(source, len(data))
        return data, source

    async def block(self, ref: ObjectRef, index: int) -> tuple[bytes, str]:
        key = ref.block_key(index, self.block_size)
        hit = self.chain.get_fast(key)
        if hit is not None:
            return hit
        # Past RAM, concurrent readers of one block share one disk lookup and
        # at most one backend fetch.
        return await self._flights.run(key, lambda: self._slow(ref, index, key))

    async def _slow(self, ref: ObjectRef, index: int, key: BlockKey) -> tuple[bytes, str]:
        hit = await self.chain.get(key, after_fast=True)
        if hit is not None:
            return hit
        start, end = block_span(index, self.block_size, ref.size)
        data = await trio.to_thread.run_sync(
            self.store.read_range, ref, start, end, limiter=self.store_limiter
        )
        await self.chain.put(key, data)
        return data, BACKEND
