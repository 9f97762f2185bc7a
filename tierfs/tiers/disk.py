"""Disk tier: block files on local NVMe, indexed by LMDB, evicted LRU.

Layout of the cache dir (mode 0700)::

    LAYOUT           layout version; another version is wiped, not misread
    lock             flock'd by the one process using the dir
    index/           LMDB (see lmdb_index.py)
    blocks/ab/cd/…   one file per block, named by its key
    tmp/             blocks being written; emptied at start

A block lands as temp file -> rename -> index entry, and leaves as index entry
(marked pending) -> unlink -> pending cleared, so at any crash point the
pending marks name every block whose file and index may disagree.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import threading
import time
from pathlib import Path

import lmdb
import xxhash

from tierfs.errors import UserError
from tierfs.refs import BlockKey
from tierfs.tiers.base import Tier
from tierfs.tiers.lmdb_index import EVICTING, BlockIndex

log = logging.getLogger(__name__)

LAYOUT = "tierfs-disk-cache 1\n"
_TOUCH_BATCH = 512
_TOUCH_SECONDS = 2.0


def checksum(data: bytes) -> int:
    return xxhash.xxh3_64_intdigest(data)


class DiskTier(Tier):
    name = "disk"

    def __init__(self, root: Path, capacity: int, high: float = 0.95, low: float = 0.85, policy: str = "lru"):
        """``policy``: ``lru`` evicts the least recently used block. ``stable``
        (for datasets larger than the cache, read in cyclic epochs, where LRU
        evicts exactly what the next epoch reads first) keeps blocks that were
        hit apart and evicts never-hit blocks newest first, so a stable part of
        the dataset stays cached from one epoch to the next."""
        self.policy = policy
        self.root = root
        self.capacity = capacity
        self.high_bytes = int(capacity * high)
        self.low_bytes = int(capacity * low)
        self._lock_fd = prepare_cache_dir(root)
        self.blocks_dir = root / "blocks"
        self.tmp_dir = root / "tmp"
        self._check_layout()
        self.blocks_dir.mkdir(mode=0o700, exist_ok=True)
        self.tmp_dir.mkdir(mode=0o700, exist_ok=True)
        self.index = BlockIndex(root / "index")
        self._touched: dict[bytes, None] = {}
        self._touch_lock = threading.Lock()
        self._last_touch_flush = time.monotonic()
        self._evict_lock = threading.Lock()
        self._made_dirs: set[str] = set()
        self._full_until = 0.0  # after ENOSPC, bypass puts for a while
        self.recovered = self._recover()
        self.index.set_clean(False)
        super().__init__()

    # -- Tier -----------------------------------------------------------
    def get(self, key: BlockKey) -> bytes | None:
        meta = self.index.lookup(key.digest)
        if meta is None:
            self._miss()
            return None
        size, expected = meta
        try:
            with open(self._path(key.hex), "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            log.warning("disk cache: block %s is in the index but its file is gone; forgetting it", key.hex)
            self._drop([key.digest])
            self._miss()
            return None
        if len(data) != size or checksum(data) != expected:
            log.warning("disk cache: block %s failed its checksum (%d of %d bytes); dropped, refetching",
                        key.hex, len(data), size)
            self.stats.add("errors")
            self._drop([key.digest])
            self._miss()
            return None
        self._touch(key.digest)
        return self._hit(data)

    def put(self, key: BlockKey, data: bytes) -> None:
        if len(data) > self.high_bytes - self.low_bytes or time.monotonic() < self._full_until:
            return
        final = self._path(key.hex)
        tmp = self.tmp_dir / f"{key.hex}.{threading.get_ident():x}"
        try:
            self._ensure_dir(final.parent)
            with open(tmp, "wb") as fh:
                fh.write(data)
            self.index.mark([key.digest], b"L")
            os.replace(tmp, final)
            self.index.add(key.digest, len(data), checksum(data), probation=self.policy == "stable")
        except (OSError, lmdb.MapFullError) as exc:
            tmp.unlink(missing_ok=True)
            self._drop([key.digest])  # whatever half of the landing happened
            if isinstance(exc, lmdb.MapFullError) or exc.errno in (errno.ENOSPC, errno.EDQUOT):
                self._full_until = time.monotonic() + 10
                log.warning("disk cache: %s is full; evicting and bypassing the disk tier for 10 s", self.root)
                self._evict_to(self.low_bytes)
                return
            raise
        except Exception:
            tmp.unlink(missing_ok=True)
            raise
        if self.index.totals()[0] > self.high_bytes:
            self._evict_to(self.low_bytes)

    def evict(self, key: BlockKey) -> None:
        self._drop([key.digest])

    def bytes_held(self) -> int:
        return self.index.totals()[0]

    def entries(self) -> int:
        return self.index.totals()[1]

    def close(self) -> None:
        self._flush_touches(force=True)
        self.index.set_clean(True)
        self.index.close()
        os.close(self._lock_fd)

    # -- internals ------------------------------------------------------
    def _path(self, hexkey: str) -> Path:
        return self.blocks_dir / hexkey[:2] / hexkey[2:4] / hexkey

    def _ensure_dir(self, d: Path) -> None:
        s = str(d)
        if s not in self._made_dirs:
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            if len(self._made_dirs) < 70000:
                self._made_dirs.add(s)

    def _touch(self, digest: bytes) -> None:
        with self._touch_lock:
            self._touched[digest] = None
        self._flush_touches()

    def _flush_touches(self, force: bool = False) -> None:
        now = time.monotonic()
        with self._touch_lock:
            if not self._touched:
                return
            if not force and len(self._touched) < _TOUCH_BATCH and now - self._last_touch_flush < _TOUCH_SECONDS:
                return
            batch, self._touched = list(self._touched), {}
            self._last_touch_flush = now
        self.index.touch(batch)

    def _drop(self, digests: list[bytes]) -> None:
        self.index.remove(digests)
        for d in digests:
            self._path(d.hex()).unlink(missing_ok=True)
        self.index.unmark(digests)

    def _evict_to(self, target: int) -> None:
        if not self._evict_lock.acquire(blocking=False):
            return  # another thread is evicting already
        try:
            self._flush_touches(force=True)
            total = self.index.totals()[0]
            evicted = 0
            while total > target:
                victims = []
                candidates = self.index.newest_in_probation(256) if self.policy == "stable" else []
                for digest, size in candidates or self.index.oldest(256):
                    victims.append(digest)
                    total -= size
                    if total <= target:
                        break
                if not victims:
                    break
                self._drop(victims)
                evicted += len(victims)
                total = self.index.totals()[0]
            if evicted:
                self.stats.add("evictions", evicted)
                log.info("disk cache: evicted %d blocks, %d bytes held", evicted, total)
        finally:
            self._evict_lock.release()

    def _check_layout(self) -> None:
        marker = self.root / "LAYOUT"
        try:
            current = marker.read_text()
        except FileNotFoundError:
            current = None
        if current == LAYOUT:
            return
        if current is not None or (self.root / "index").exists():
            log.warning("disk cache %s has another layout; starting it afresh", self.root)
        for sub in ("blocks", "index", "tmp"):
            shutil.rmtree(self.root / sub, ignore_errors=True)
        tmp = self.root / "LAYOUT.tmp"
        tmp.write_text(LAYOUT)
        os.replace(tmp, marker)

    def _recover(self) -> int:
        """Repair what a crash may have left; returns the number of blocks repaired."""
        for leftover in self.tmp_dir.iterdir():
            leftover.unlink(missing_ok=True)
        pending = self.index.pending()
        if not pending:
            return 0
        dropped = []
        for digest, kind in pending:
            path = self._path(digest.hex())
            meta = self.index.lookup(digest)
            if kind == EVICTING or meta is None:
                dropped.append(digest)
                continue
            try:
                ok = path.stat().st_size == meta[0]
            except FileNotFoundError:
                ok = False
            if not ok:
                dropped.append(digest)
        self._drop(dropped)
        self.index.unmark([d for d, _ in pending])
        log.info("disk cache: repaired %d interrupted block writes/evictions (%d dropped)",
                 len(pending), len(dropped))
        return len(pending)


def prepare_cache_dir(root: Path) -> int:
    """Create the cache dir (0700), check it is writable, and lock it for this process."""
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        probe = root / f".probe.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(
            f"cache dir {root} is not usable ({exc.strerror or exc}); give a writable --cache-dir"
        ) from None
    fd = os.open(root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise UserError(
            f"cache dir {root} is in use by another tierfs process (pid {holder}); "
            "give each mount its own --cache-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
