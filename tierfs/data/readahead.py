"""Read-ahead: a per-handle window that grows while access is sequential.

The window follows the reads as the kernel *sends* them (the handler asks
for advice when a read arrives, before serving it), not as they complete:
the kernel has several reads of one file in flight at once and they finish
out of order, and pyfuse3's tasks may take them up in a slightly different
order. A read counts as sequential when it starts near where the furthest
read so far ended: up to 16 MiB forward (a reader skipping a header, as
Mountpoint allows; a handle's first read, within its first block only) or 8 MiB back (reads of up to 1 MiB that others
overtook; a read back there is served from RAM anyway).
Each sequential read doubles the window (in blocks, up to a maximum); any
other read resets it. The block reader fetches the window's blocks in the
background, under a bound on how many prefetches are in flight, so a
sequential reader finds its next blocks in the tiers instead of waiting for
a GET. ``peak`` is the largest window reached, in blocks (``tierfs stats``).
``sequential`` says whether the last read was; the block reader reads a
random one by range, without its whole block (``ranged.py``).
"""

from __future__ import annotations

MiB = 1 << 20


class ReadAhead:
    __slots__ = ("block_size", "max_blocks", "forward", "backward", "next_offset", "window", "fetched_to", "peak",
                 "sequential", "started")

    def __init__(self, block_size: int, max_blocks: int, forward: int = 16 * MiB, backward: int = 8 * MiB):
        self.block_size = block_size
        self.max_blocks = max_blocks
        self.forward, self.backward = forward, backward
        self.next_offset = 0  # where the furthest read so far ended
        self.window = 0
        self.fetched_to = 0  # blocks below this index were already asked for
        self.peak = 0
        self.sequential = True
        self.started = False  # a read arrived

    def advise(self, offset: int, length: int, object_size: int) -> range:
        """Record a read as it arrives; return the block indexes to prefetch now (maybe none)."""
        end = offset + length
        # A handle's first read is sequential only in its first block (the one the open fetched): a first
        # read further on is a seek (a parquet footer, an index), and a reader that goes on from there is
        # sequential from its second read.
        forward = self.forward if self.started else self.block_size - 1
        self.started = True
        if not self.next_offset - self.backward <= offset <= self.next_offset + forward:
            self.window = 0
            self.fetched_to = 0
            self.next_offset = end
            self.sequential = False
            return range(0)
        self.sequential = True
        self.next_offset = max(self.next_offset, end)
        self.window = min(max(1, self.window * 2), self.max_blocks)
        self.peak = max(self.peak, self.window)
        last = max(0, (self.next_offset - 1) // self.block_size)
        blocks = -(-object_size // self.block_size)
        start = max(last + 1, self.fetched_to)
        stop = min(last + 1 + self.window, blocks)
        if start >= stop:
            return range(0)
        self.fetched_to = stop
        return range(start, stop)
