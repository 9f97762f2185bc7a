"""Which blocks the disk tier may hold, known in memory: a miss costs no thread hop.

Every cold block asks the disk tier first, and the answer is almost always
"not here". Asking means a worker thread (the index is an LMDB file: a lookup
may fault pages in from disk, which the trio loop must never wait for), and
on the cold path of small files that hop was a tenth of the daemon's CPU per
file. This filter answers the common case in the loop: a byte per slot counts
the index entries whose digest falls in it, so a slot of 0 means the block is
surely not on disk. A slot that reached 255 stays there (it may be anything).
A false "maybe" costs the hop it would have cost anyway; a false "no" never
happens, by the protocol below.

The counts are built from the index in a thread of their own after the disk
tier opens (``build``); until then every answer is "maybe". Changes to the
index are reported with ``changed`` while holding ``lock`` across the write
transaction, and ``build`` takes its snapshot of the index under the same
lock, so a change is either in the snapshot or reported after it, never both
nor neither.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager


def slots_for(capacity: int) -> int:
    """Slots for a disk tier of ``capacity`` bytes: about four per block of 256 KiB, within 64 Ki .. 16 Mi."""
    want = max(1, 4 * capacity // (256 << 10))
    return 1 << min(24, max(16, (want - 1).bit_length()))


class Presence:
    def __init__(self, slots: int):
        if slots & (slots - 1):
            raise ValueError("slots must be a power of two")
        self._mask = slots - 1
        self._counts: bytearray | None = None  # None until built: every answer is "maybe"
        self._changes: list[tuple[bytes, int]] | None = None  # reported while building
        self.lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self._counts is not None

    def may_hold(self, digest: bytes) -> bool:
        """False only if no index entry has ``digest``."""
        counts = self._counts
        return counts is None or counts[self._slot(digest)] != 0

    def changed(self, digest: bytes, delta: int) -> None:
        """An entry of ``digest`` was added (+1) or removed (-1); call with ``lock`` held since before the write."""
        if self._changes is not None:
            self._changes.append((digest, delta))
        if self._counts is not None:
            self._apply(self._counts, digest, delta)

    def build(self, snapshot: Callable[[], AbstractContextManager[Iterable[bytes]]],
              stop: threading.Event) -> None:
        """Count every digest of the index. ``snapshot()`` opens a read of it (entered under ``lock``)."""
        counts = bytearray(self._mask + 1)
        with self.lock:
            self._changes = []
            reading = snapshot()
            digests = reading.__enter__()
        try:
            for n, digest in enumerate(digests):
                self._apply(counts, digest, 1)
                if n % 4096 == 0 and stop.is_set():
                    break
        finally:
            reading.__exit__(None, None, None)
        with self.lock:
            if not stop.is_set():
                for digest, delta in self._changes:
                    self._apply(counts, digest, delta)
                self._counts = counts
            self._changes = None

    def _slot(self, digest: bytes) -> int:
        return int.from_bytes(digest[:8], "little") & self._mask

    def _apply(self, counts: bytearray, digest: bytes, delta: int) -> None:
        i = self._slot(digest)
        c = counts[i]
        if c == 255:
            return  # saturated: "maybe" for good
        counts[i] = max(0, c + delta)
