"""The disk tier's index: which blocks are on disk, their size, checksum and age.

Four LMDB databases:

- ``blocks``  digest -> (size, checksum, access stamp)
- ``lru``     access stamp + digest -> ''   (ordered oldest first: eviction order)
- ``probation`` the same, for blocks never hit since they landed (the
  ``stable`` policy keeps them apart and evicts the newest of them first)
- ``pending`` digest -> b'L' (landing) or b'E' (evicting): the blocks whose file
  and index entry may disagree if the process dies now. Start-up repairs only
  these, so a crash never costs a rescan of the whole cache.
- ``meta``    totals (bytes, entries), the access clock, and the clean flag.

The access stamp is a logical clock, not wall time: strictly increasing, so the
LRU order is exact and immune to clock steps.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path

import lmdb

_ENTRY = struct.Struct(">QQQ")  # size, checksum, stamp
_U64 = struct.Struct(">Q")
LANDING = b"L"
EVICTING = b"E"


class BlockIndex:
    def __init__(self, path: Path, map_size: int = 1 << 34):
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        # sync=False: the cache can always be rebuilt and every block is
        # checksummed, so an OS crash losing the last transactions is harmless;
        # a kill -9 loses nothing (the pages are in the kernel already).
        self.env = lmdb.open(
            str(path), map_size=map_size, max_dbs=5, sync=False, metasync=False,
            max_readers=512, readahead=False,
        )
        self._blocks = self.env.open_db(b"blocks")
        self._lru = self.env.open_db(b"lru")
        self._probation = self.env.open_db(b"probation")
        self._pending = self.env.open_db(b"pending")
        self._meta = self.env.open_db(b"meta")
        with self.env.begin(db=self._meta) as txn:
            raw = txn.get(b"clock")
        self._clock = _U64.unpack(raw)[0] if raw else 0

    # -- reads ----------------------------------------------------------
    def lookup(self, digest: bytes) -> tuple[int, int] | None:
        with self.env.begin(db=self._blocks) as txn:
            raw = txn.get(digest)
        if raw is None:
            return None
        size, checksum, _ = _ENTRY.unpack(raw)
        return size, checksum

    def totals(self) -> tuple[int, int]:
        with self.env.begin(db=self._meta) as txn:
            b, n = txn.get(b"bytes"), txn.get(b"entries")
        return (_U64.unpack(b)[0] if b else 0, _U64.unpack(n)[0] if n else 0)

    def oldest(self, limit: int) -> list[tuple[bytes, int]]:
        """Up to ``limit`` (digest, size) pairs, least recently used first."""
        out: list[tuple[bytes, int]] = []
        with self.env.begin() as txn:
            for k in txn.cursor(db=self._lru).iternext(keys=True, values=False):
                digest = bytes(k[8:])
                raw = txn.get(digest, db=self._blocks)
                out.append((digest, _ENTRY.unpack(raw)[0] if raw else 0))
                if len(out) >= limit:
                    break
        return out

    def newest_in_probation(self, limit: int) -> list[tuple[bytes, int]]:
        """Up to ``limit`` (digest, size) pairs of never-hit blocks, newest first."""
        out: list[tuple[bytes, int]] = []
        with self.env.begin() as txn:
            cur = txn.cursor(db=self._probation)
            if not cur.last():
                return out
            while True:
                digest = bytes(cur.key()[8:])
                raw = txn.get(digest, db=self._blocks)
                out.append((digest, _ENTRY.unpack(raw)[0] if raw else 0))
                if len(out) >= limit or not cur.prev():
                    break
        return out

    def pending(self) -> list[tuple[bytes, bytes]]:
        with self.env.begin(db=self._pending) as txn:
            return [(bytes(k), bytes(v)) for k, v in txn.cursor()]

    def was_clean(self) -> bool:
        with self.env.begin(db=self._meta) as txn:
            return txn.get(b"clean") == b"1"

    def all_digests(self) -> Iterable[bytes]:
        with self.env.begin(db=self._blocks) as txn:
            for k in txn.cursor().iternext(keys=True, values=False):
                yield bytes(k)

    # -- writes ---------------------------------------------------------
    def mark(self, digests: Iterable[bytes], kind: bytes) -> None:
        with self.env.begin(write=True, db=self._pending) as txn:
            for d in digests:
                txn.put(d, kind)

    def unmark(self, digests: Iterable[bytes]) -> None:
        with self.env.begin(write=True, db=self._pending) as txn:
            for d in digests:
                txn.delete(d)

    def add(self, digest: bytes, size: int, checksum: int, probation: bool = False) -> None:
        """Record a block whose file has landed; clears its pending mark."""
        with self.env.begin(write=True) as txn:
            delta_b, delta_n = self._drop(txn, digest)
            stamp = self._tick(txn)
            txn.put(digest, _ENTRY.pack(size, checksum, stamp), db=self._blocks)
            txn.put(_U64.pack(stamp) + digest, b"", db=self._probation if probation else self._lru)
            txn.delete(digest, db=self._pending)
            self._bump(txn, size - delta_b, 1 - delta_n)

    def remove(self, digests: Iterable[bytes]) -> int:
        """Forget blocks (their files go next); marks them pending-evict.

        Returns the bytes freed.
        """
        freed = 0
        with self.env.begin(write=True) as txn:
            removed = 0
            for d in digests:
                b, n = self._drop(txn, d)
                if n:
                    txn.put(d, EVICTING, db=self._pending)
                freed += b
                removed += n
            self._bump(txn, -freed, -removed)
        return freed

    def touch(self, digests: Iterable[bytes]) -> None:
        """Move blocks to the young end of the LRU order (one transaction)."""
        with self.env.begin(write=True) as txn:
            for d in digests:
                raw = txn.get(d, db=self._blocks)
                if raw is None:
                    continue
                size, checksum, old = _ENTRY.unpack(raw)
                txn.delete(_U64.pack(old) + d, db=self._lru)
                txn.delete(_U64.pack(old) + d, db=self._probation)  # a hit: out of probation
                stamp = self._tick(txn)
                txn.put(d, _ENTRY.pack(size, checksum, stamp), db=self._blocks)
                txn.put(_U64.pack(stamp) + d, b"", db=self._lru)

    def set_clean(self, clean: bool) -> None:
        with self.env.begin(write=True, db=self._meta) as txn:
            txn.put(b"clean", b"1" if clean else b"0")
        if clean:
            self.env.sync(True)

    def close(self) -> None:
        self.env.close()

    # -- inside a write transaction ---------------------------------------
    def _drop(self, txn: lmdb.Transaction, digest: bytes) -> tuple[int, int]:
        raw = txn.get(digest, db=self._blocks)
        if raw is None:
            return 0, 0
        size, _, stamp = _ENTRY.unpack(raw)
        txn.delete(digest, db=self._blocks)
        txn.delete(_U64.pack(stamp) + digest, db=self._lru)
        txn.delete(_U64.pack(stamp) + digest, db=self._probation)
        return size, 1

    def _tick(self, txn: lmdb.Transaction) -> int:
        self._clock += 1
        txn.put(b"clock", _U64.pack(self._clock), db=self._meta)
        return self._clock

    def _bump(self, txn: lmdb.Transaction, d_bytes: int, d_entries: int) -> None:
        if not d_bytes and not d_entries:
            return
        b, n = txn.get(b"bytes", db=self._meta), txn.get(b"entries", db=self._meta)
        nb = (_U64.unpack(b)[0] if b else 0) + d_bytes
        nn = (_U64.unpack(n)[0] if n else 0) + d_entries
        txn.put(b"bytes", _U64.pack(max(nb, 0)), db=self._meta)
        txn.put(b"entries", _U64.pack(max(nn, 0)), db=self._meta)
