"""Ranged reads: the bytes a random read into a large file asks for, without the whole block.

A random 4 KiB read into a cold large file (a parquet footer, an LMDB or zarr
index, fio's randread) would cost a whole block's GET (4 MiB by default). When
the handle's read-ahead says the read is not sequential, the block reader asks
this module instead: it fetches the requested bytes rounded out to ``unit``
(64 KiB by default), aligned to the unit within their block, and keeps those
units here, in a small LRU of its own. They never go into the tiers: a tier
entry is a whole block under its BlockKey, and partial bytes under that key
would be wrong bytes for the next reader. Once access turns sequential the
block reader goes back to whole blocks and read-ahead.

The units are keyed by the ref's identity, as blocks are, and fetched through
the same ``ObjectStore.read_range`` with the same ref, so a range GET is as
conditional (If-Match, version, generation) as a block's: an object rewritten
upstream between two ranged reads is Changed (EIO), never new bytes under the
old identity.
"""

from __future__ import annotations

import functools
from collections import OrderedDict

import trio

from tierfs.data.singleflight import SingleFlight
from tierfs.limits import in_thread
from tierfs.metrics import Counters
from tierfs.refs import BlockKey, ObjectRef
from tierfs.store.objects import ObjectStore

RANGED_COUNTERS = ("fetches", "bytes", "hits", "whole_blocks")
# Ranged fetches into one block after which its next miss fetches the whole block, into the tiers: random
# reads that keep coming to a block (a file read at random all over, an index read often) are better served by
# the whole of it, and across mounts by the disk tier. A 64 KiB unit in a 4 MiB block: at most 1/16 more bytes.
WHOLE_AFTER = 4


class RangedReads:
    def __init__(self, store: ObjectStore, unit: int, limiter: trio.CapacityLimiter, capacity: int = 32 << 20):
        self.store = store
        self.unit = unit  # 0: off
        self.limiter = limiter
        self.capacity = capacity
        self._units: OrderedDict[tuple[str, int], bytes] = OrderedDict()  # (identity, start) -> bytes
        self._held = 0
        self._flights: SingleFlight[bytes] = SingleFlight()
        self._fetched_in: OrderedDict[BlockKey, int] = OrderedDict()  # block -> ranged fetches into it
        self.stats = Counters(RANGED_COUNTERS, gauges={"bytes_held": lambda: self._held,
                                                       "entries": lambda: len(self._units)})

    def spans(self, block_start: int, block_end: int, lo: int, hi: int) -> list[tuple[int, int]]:
        """The units, [start, end) each, that cover bytes [lo, hi) of the block [block_start, block_end)."""
        first = block_start + (lo - block_start) // self.unit * self.unit
        return [(s, min(s + self.unit, block_end)) for s in range(first, hi, self.unit)]

    def dense(self, key: BlockKey) -> bool:
        """Whether random reads came to block ``key`` often enough that the whole of it is worth a fetch."""
        if self._fetched_in.get(key, 0) < WHOLE_AFTER:
            return False
        del self._fetched_in[key]
        self.stats.add("whole_blocks")
        return True

    def _count(self, key: BlockKey) -> None:
        self._fetched_in[key] = self._fetched_in.pop(key, 0) + 1
        if len(self._fetched_in) > 65536:  # bounded: forget the longest untouched
            self._fetched_in.popitem(last=False)

    async def read(self, ref: ObjectRef, key: BlockKey, block_start: int, block_end: int, lo: int,
                   hi: int) -> tuple[bytes, bool]:
        """Bytes [lo, hi) of ``ref`` (within its block ``key``), from the units held here or fetched now; and whether
        any was fetched."""
        identity = ref.identity()
        spans = self.spans(block_start, block_end, lo, hi)
        parts: dict[int, bytes] = {}
        for start, _ in spans:
            held = self._get(identity, start)
            if held is not None:
                parts[start] = held
        fetched = len(parts) < len(spans)
        if not fetched:
            self.stats.add("hits")
        else:
            # The missing units are one GET each run of them: a read across two cold units is one request.
            missing = [s for s in spans if s[0] not in parts]
            runs: list[tuple[int, int]] = []
            for start, end in missing:
                if runs and runs[-1][1] == start:
                    runs[-1] = (runs[-1][0], end)
                else:
                    runs.append((start, end))
            self._count(key)
            for start, end in runs:
                data = await self._flights.run((identity, start, end), functools.partial(self._fetch, ref, start, end))
                for s in range(start, end, self.unit):
                    piece = data[s - start: s - start + self.unit]
                    parts[s] = piece
                    self._put(identity, s, piece)
        joined = b"".join(parts[s] for s, _ in spans)
        skip = lo - spans[0][0]
        return joined[skip: skip + (hi - lo)], fetched

    async def _fetch(self, ref: ObjectRef, start: int, end: int) -> bytes:
        data: bytes = await in_thread(self.store.read_range, ref, start, end, limiter=self.limiter)
        self.stats.add("fetches")
        self.stats.add("bytes", len(data))
        return data

    # (Only ever called on the trio loop, as the block reader is: no lock.)
    def _get(self, identity: str, start: int) -> bytes | None:
        data = self._units.get((identity, start))
        if data is not None:
            self._units.move_to_end((identity, start))
        return data

    def _put(self, identity: str, start: int, data: bytes) -> None:
        old = self._units.pop((identity, start), None)
        if old is not None:
            self._held -= len(old)
        self._units[(identity, start)] = data
        self._held += len(data)
        while self._held > self.capacity:
            _, dropped = self._units.popitem(last=False)
            self._held -= len(dropped)

    def bytes_held(self) -> int:
        return self._held
