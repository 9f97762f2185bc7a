"""RAM tier: a byte-bounded LRU of blocks, the first tier a read tries."""

from __future__ import annotations

import threading
from collections import OrderedDict

from tierfs.refs import BlockKey
from tierfs.tiers.base import Tier


class RamTier(Tier):
    name = "ram"
    in_loop = True

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._blocks: OrderedDict[bytes, bytes] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()
        super().__init__()

    def get(self, key: BlockKey) -> bytes | None:
        with self._lock:
            data = self._blocks.get(key.digest)
            if data is not None:
                self._blocks.move_to_end(key.digest)
        if data is None:
            self._miss()
            return None
        return self._hit(data)

    def holds(self, key: BlockKey) -> bool:
        """Whether the block is here (not a read: no hit counted, no LRU move)."""
        return key.digest in self._blocks

    def may_hold(self, key: BlockKey) -> bool:
        return self.holds(key)

    def put(self, key: BlockKey, data: bytes) -> None:
        if len(data) > self.capacity // 2:
            return  # one block must not flush the whole tier
        evicted = 0
        with self._lock:
            old = self._blocks.pop(key.digest, None)
            if old is not None:
                self._held -= len(old)
            self._blocks[key.digest] = bytes(data)
            self._held += len(data)
            while self._held > self.capacity:
                _, dropped = self._blocks.popitem(last=False)
                self._held -= len(dropped)
                evicted += 1
        if evicted:
            self.stats.add("evictions", evicted)

    def evict(self, key: BlockKey) -> None:
        with self._lock:
            old = self._blocks.pop(key.digest, None)
            if old is not None:
                self._held -= len(old)

    def bytes_held(self) -> int:
        return self._held

    def entries(self) -> int:
        return len(self._blocks)
