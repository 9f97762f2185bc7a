"""Read-ahead: a per-handle window that grows while access is sequential.

Each read that continues where the last one ended doubles the window (in
blocks, up to a maximum); a seek resets it to nothing. The block reader then
fetches the window's blocks in the background, under a bound on how many
prefetches are in flight, so a sequential reader finds its next blocks in the
tiers instead of waiting for a GET.
"""

from __future__ import annotations


class ReadAhead:
    __slots__ = ("block_size", "max_blocks", "next_offset", "window", "fetched_to")

    def __init__(self, block_size: int, max_blocks: int):
        self.block_size = block_size
        self.max_blocks = max_blocks
        self.next_offset = 0
        self.window = 0
        self.fetched_to = 0  # blocks below this index were already asked for

    def advise(self, offset: int, length: int, object_size: int) -> range:
        """Record a read; return the block indexes to prefetch now (maybe none)."""
        sequential = offset == self.next_offset
        self.next_offset = offset + length
        if not sequential:
            self.window = 0
            self.fetched_to = 0
            return range(0)
        self.window = min(max(1, self.window * 2), self.max_blocks)
        last = max(0, (offset + length - 1) // self.block_size)
        blocks = -(-object_size // self.block_size)
        start = max(last + 1, self.fetched_to)
        stop = min(last + 1 + self.window, blocks)
        if start >= stop:
            return range(0)
        self.fetched_to = stop
        return range(start, stop)
