"""Disk tier: block files on local NVMe, indexed by LMDB, evicted LRU.

Layout of the cache dir (mode 0700)::

    LAYOUT           layout version and sealing; another is wiped, not misread;
                     without it, a non-empty dir is refused, never cleaned
    lock             flock'd by the one process using the dir
    index/           LMDB (see lmdb_index.py)
    blocks/ab/cd/…   one file per block, named by its key
    tmp/             emptied at start (blocks of older versions were written there)
    manifests/       snapshots' manifests, indexed (``versions/index_dir.py``)
    shards/          tar shards' member indexes (``namespace/shard_index.py``)

A block lands as pending mark -> its file, written at its name -> index entry
(which clears the mark), and leaves as index entry (marked pending) ->
unlink -> pending cleared, so at any crash point the
pending marks name every block whose file and index may disagree. After a
clean close the next start repairs only those; after an unclean one (a kill
-9, a power cut: the index says why) it checks every index entry against its
block file, drops what is missing or of the wrong size, and removes block
files the index does not know. A block's bytes are checked against its
checksum at every read, so a block that a power cut cut short or zeroed is
dropped and refetched, never served; `tierfs cache verify` reads them all
through the same check (``check``, ``entries_and_files``).

The tier is bounded twice: by its configured size (the watermarks) and by the
filesystem it lives on, whose free space it never lets fall below a reserve
(``min_free``): staged files (``<cache dir>/staging``) share that filesystem,
and a checkpoint written through the mount must find room there. A block that
cannot land without eating into the reserve evicts older blocks, or is not
cached at all; the read it came from is served all the same.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import lmdb

from tierfs import statefile
from tierfs.config import format_size
from tierfs.refs import BlockKey
from tierfs.tiers.backing import BackingFiles, checksum
from tierfs.tiers.base import Tier
from tierfs.tiers.cache_dir import layout_text, prepare_cache_dir, private_dir, read_marker, sealing_of
from tierfs.tiers.lmdb_index import EVICTING, BlockIndex
from tierfs.tiers.presence import slots_for
from tierfs.tiers.seal import Sealer

log = logging.getLogger(__name__)

_TOUCH_BATCH = 512
_TOUCH_SECONDS = 2.0
DEFAULT_MIN_FREE = 0.05  # of the filesystem, as Mountpoint for S3 keeps
_MIN_FREE_FLOOR = 1 << 30  # room for a staged checkpoint; at most half a small filesystem, or no cache fits there
# statvfs is cheap but others (staged files, logs) change the free space too:
# between calls, free space is estimated from what this tier wrote, and read
# again after this many bytes or seconds.
_STATVFS_BYTES = 32 << 20
_STATVFS_SECONDS = 0.5
# Why a block file is not its block (``DiskTier.check``): cut short or other bytes; or not sealed under the key.
BAD_CHECKSUM, NOT_SEALED = "wrong size or checksum", "does not open under the cache key"
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def reserve_bytes(min_free: int | float | None, fs_bytes: int) -> int:
    """The free space to keep on a filesystem of ``fs_bytes``: ``min_free`` bytes,
    a fraction of the filesystem (a float), or (None) the default."""
    if min_free is None:
        return max(int(fs_bytes * DEFAULT_MIN_FREE), min(_MIN_FREE_FLOOR, fs_bytes // 2))
    if isinstance(min_free, float):
        return int(fs_bytes * min_free)
    return min_free


class DiskTier(BackingFiles, Tier):
    name = "disk"

    def __init__(self, root: Path, capacity: int, high: float = 0.95, low: float = 0.85, policy: str = "lru",
                 min_free: int | float | None = None, data_key: bytes = b""):
        """``policy``: ``lru`` evicts the least recently used block. ``stable``
        (for datasets larger than the cache, read in cyclic epochs, where LRU
        evicts exactly what the next epoch reads first) keeps blocks that were
        hit apart and evicts never-hit blocks newest first, so a stable part of
        the dataset stays cached from one epoch to the next.

        ``min_free``: the free space kept on the cache dir's filesystem, in
        bytes or (a float) as a fraction of it; None: ``reserve_bytes``' default.

        ``data_key``: blocks are stored encrypted (AES-256-GCM, ``seal.py``)
        under it, bound to their block key; a block that does not open under
        the key (another key, or none) is a miss and is dropped."""
        self.sealer = Sealer(data_key=data_key) if data_key else None
        self.policy = policy
        self.root = root
        self.capacity = capacity
        self.high, self.low = high, low
        self.high_bytes = int(capacity * high)
        self.low_bytes = int(capacity * low)
        self.min_free = min_free
        self._space_lock = threading.Lock()
        self._free = self._reserve = 0  # at the last statvfs
        self._written = 0  # bytes this tier wrote since then
        self._statvfs_at = 0.0
        self.skipped = 0  # blocks not cached for want of free space
        self._last_skip_log = 0.0
        self._lock_fd = prepare_cache_dir(root)
        self.blocks_dir = root / "blocks"
        self.tmp_dir = root / "tmp"
        try:
            self._check_layout()
        except BaseException:
            os.close(self._lock_fd)
            raise
        private_dir(self.blocks_dir)
        private_dir(self.tmp_dir)
        self.index = BlockIndex(root / "index")
        self._touched: dict[bytes, None] = {}
        self._touch_lock = threading.Lock()
        self._last_touch_flush = time.monotonic()
        self._evict_lock = threading.Lock()
        self._made_dirs: set[str] = set()
        self._landing: set[bytes] = set()  # digests of the blocks being written now (``_land``)
        self._landing_lock = threading.Lock()
        self._full_until = 0.0  # after ENOSPC, bypass puts for a while
        self._last_key_log = 0.0
        self._checked: dict[bytes, int] = {}  # block digest -> inode of the block file checked (backing_fd)
        try:
            self.recovered = self._check_index() if self.index.unclean else self._recover()
        except lmdb.Error as exc:  # (a damaged page that LMDB reported rather than aborted on)
            log.warning("disk cache: the index of %s is damaged (%s: %s); rebuilding it", root,
                        type(exc).__name__, exc)
            self.index.abandon()
            self.index = BlockIndex(root / "index", damaged=f"{type(exc).__name__}: {exc}")
            self.recovered = self._check_index()
        if self.index.unclean:
            self.index.checked()
        self.index.start_presence(slots_for(capacity))
        super().__init__()

    # -- Tier -----------------------------------------------------------
    def may_hold(self, key: BlockKey) -> bool:
        return self.index.may_hold(key.digest)

    def get(self, key: BlockKey) -> bytes | None:
        payload = self.read_block(key)
        if payload is None:
            self._miss()
            return None
        self._touch(key.digest)
        return self._hit(payload)

    def read_block(self, key: BlockKey) -> bytes | None:
        """A block's checked bytes, or None (a bad one dropped and counted as an error); no hit or miss counted."""
        meta = self.index.lookup(key.digest)
        if meta is None:
            return None
        size = meta[0]
        try:
            with open(self._path(key.hex), "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            log.warning("disk cache: block %s is in the index but its file is gone; forgetting it", key.hex)
            self._drop([key.digest])
            return None
        payload, why = self.check(key.digest, meta, data)
        if why == BAD_CHECKSUM:
            log.warning("disk cache: block %s failed its checksum (%d of %d bytes); dropped, refetching",
                        key.hex, len(data), size)
            self.stats.add("errors")
            self._drop([key.digest])
            return None
        if payload is None:
            self._unreadable(key)
            return None
        return payload

    def check(self, digest: bytes, meta: tuple[int, int], data: bytes) -> tuple[bytes | None, str]:
        """A block file's bytes against its index entry's (size, checksum), opened under the cache key:
        (the payload, '') or (None, why not: BAD_CHECKSUM or NOT_SEALED)."""
        size, expected = meta
        if len(data) != size or checksum(data) != expected:
            return None, BAD_CHECKSUM
        if self.sealer is None:
            return data, ""
        opened = self.sealer.open(digest, data)
        return (opened, "") if opened is not None else (None, NOT_SEALED)

    def _unreadable(self, key: BlockKey) -> None:
        """A block that does not open under the cache key: written under another key (or none). A miss."""
        now = time.monotonic()
        if now - self._last_key_log > 60:
            self._last_key_log = now
            log.warning("disk cache: block %s does not open under [cache] encryption_key_file (written under "
                        "another key, or unencrypted); dropped and fetched again", key.hex)
        self.stats.add("errors")
        self._drop([key.digest])

    def put(self, key: BlockKey, data: bytes) -> None:
        if not self._may_land(len(data)):
            return
        if self.sealer is not None:
            data = self.sealer.seal(key.digest, data)
        self._land(key, len(data), lambda fh: (fh.write(data), checksum(data))[1])

    def _may_land(self, n: int) -> bool:
        if n > self.high_bytes - self.low_bytes or time.monotonic() < self._full_until:
            return False
        if not self._room_for(n):
            self._skipped()
            return False
        return True

    def _land(self, key: BlockKey, n: int, write: Callable[[BinaryIO], int]) -> None:
        """Pending mark -> the block file, written at its own name (``write`` fills it and returns its
        checksum) -> index entry.

        Written in place, not as a temp file renamed into place: the mark names
        it until its entry exists, nothing reads a block file without an entry,
        and a file is only ever made new (O_EXCL), never changed once it has an
        entry (what passthrough's open fds rely on): a put of a key held already
        drops the old file first (an fd open on it keeps its bytes). Creating the file in its
        own hashed folder also costs a tenth of creating it in one shared temp
        folder and renaming it out, measured on ext4 (benchmarks/RESULTS.md).
        One landing of a key at a time: a second put meanwhile is dropped.
        """
        final = self._path(key.hex)
        with self._landing_lock:
            if key.digest in self._landing:
                return
            self._landing.add(key.digest)
        try:
            self._land_new(key, n, write, final)
        finally:
            with self._landing_lock:
                self._landing.discard(key.digest)
        if self.index.totals()[0] > self.high_bytes:
            self._evict_to(self.low_bytes)

    def _land_new(self, key: BlockKey, n: int, write: Callable[[BinaryIO], int], final: Path) -> None:
        """The landing itself (``_land``); whatever half of it a failure leaves is dropped."""
        try:
            if self.index.lookup(key.digest) is not None:
                self._drop([key.digest])
            self._ensure_dir(final.parent)
            self.index.mark([key.digest], b"L")
            # (O_EXCL|O_NOFOLLOW, 0600: never through a link planted there; a file without an
            # entry is what an earlier landing left, and goes)
            try:
                fd = os.open(final, _CREATE, 0o600)
            except FileExistsError:
                final.unlink(missing_ok=True)
                fd = os.open(final, _CREATE, 0o600)
            with open(fd, "wb") as fh:
                digest = write(fh)
            self.index.add(key.digest, n, digest, probation=self.policy == "stable")
        except (OSError, lmdb.MapFullError) as exc:
            self._drop([key.digest])  # whatever half of the landing happened (its file too)
            if isinstance(exc, lmdb.MapFullError):
                self._full_until = time.monotonic() + 10
                log.warning("disk cache: the index of %s is full; evicting and bypassing the disk tier for 10 s",
                            self.root)
                self._evict_to(int(self.bytes_held() * self.low))
                return
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                # Evict for real: until the filesystem has its reserve again
                # (the configured size may be far beyond what the disk holds).
                self._make_room(n)
                with self._space_lock:
                    self._statvfs()
                    short = self._free < self._reserve
                if short:  # what fills the disk is not this cache: keep off it for a while
                    self._full_until = time.monotonic() + 10
                log.warning("disk cache: %s is full; evicted to keep %s free there%s", self.root,
                            format_size(self._reserve), ", and bypassing the disk tier for 10 s" if short else "")
                return
            raise
        except BaseException:
            self._drop([key.digest])
            raise

    def evict(self, key: BlockKey) -> None:
        self._drop([key.digest])

    def bytes_held(self) -> int:
        return self.index.totals()[0]

    def entries(self) -> int:
        return self.index.totals()[1]

    def close(self) -> None:
        self._flush_touches(force=True)
        self.index.close()  # (synced, and marked closed: the next start checks nothing)
        os.close(self._lock_fd)

    def room(self) -> tuple[int, int, int]:
        """(bytes this tier can hold on its filesystem now, free bytes there, the reserve kept free)."""
        with self._space_lock:
            self._statvfs()
            free, reserve = self._free, self._reserve
        return max(0, free + self.bytes_held() - reserve), free, reserve

    def fit_note(self) -> str:
        """A note for the user if the configured size cannot fit on the filesystem ('' if it can)."""
        fits, free, reserve = self.room()
        if self.capacity <= fits:
            return ""
        log.warning("disk cache: [cache] size = %s does not fit on the filesystem of %s: it has %s free, "
                    "the cache holds %s and %s are kept free there for staged writes ([cache] min_free); "
                    "the disk tier holds at most %s", format_size(self.capacity), self.root, format_size(free),
                    format_size(self.bytes_held()), format_size(reserve), format_size(fits))
        return (f"disk cache limited to {format_size(fits)}, not the {format_size(self.capacity)} of [cache] size: "
                f"{self.root} has room for no more while keeping {format_size(reserve)} free; "
                "lower [cache] size to fit, or give a --cache-dir on a larger disk")

    # -- internals ------------------------------------------------------
    def _path(self, hexkey: str) -> Path:
        return self.blocks_dir / hexkey[:2] / hexkey[2:4] / hexkey

    def _ensure_dir(self, d: Path) -> None:
        s = str(d)
        if s not in self._made_dirs:
            private_dir(d.parent)  # (blocks/ab, then blocks/ab/cd: each 0700, as mkdir(parents=True) made none)
            private_dir(d)
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
            # (a file landed at this name later may get the freed inode number: check it again)
            self._checked.pop(d, None)
        self.index.unmark(digests)

    def _statvfs(self) -> None:
        """Read the filesystem's free space and the reserve (with ``_space_lock`` held)."""
        st = os.statvfs(self.root)
        self._free = st.f_bavail * st.f_frsize
        self._reserve = reserve_bytes(self.min_free, st.f_blocks * st.f_frsize)
        self._written = 0
        self._statvfs_at = time.monotonic()

    def _room_for(self, n: int) -> bool:
        """Whether ``n`` more bytes may land and leave the reserve free; evicts blocks to make room."""
        cost = n + 8192  # the file's last block and its directory entry, roughly
        with self._space_lock:
            stale = self._written + cost > _STATVFS_BYTES or time.monotonic() - self._statvfs_at > _STATVFS_SECONDS
            # A short estimate is confirmed before anything is evicted: it errs on the full side.
            if stale or self._free - self._written - cost < self._reserve:
                self._statvfs()
            if self._free - self._written - cost >= self._reserve:
                self._written += cost
                return True
        self._make_room(cost)
        with self._space_lock:
            self._statvfs()
            if self._free - cost >= self._reserve:
                self._written += cost
                return True
        return False

    def _make_room(self, n: int) -> None:
        """Evict until ``n`` more bytes fit above the reserve, with the watermarks' slack below that."""
        with self._space_lock:
            self._statvfs()
            free, reserve = self._free, self._reserve
        held = self.bytes_held()
        fits = held + free - reserve - n  # what the cache may hold once the n bytes land
        if held > fits:
            self._evict_to(max(0, int(fits * self.low / self.high)))

    def _skipped(self) -> None:
        self.skipped += 1
        now = time.monotonic()
        if now - self._last_skip_log > 60:
            self._last_skip_log = now
            log.info("disk cache: %s has no room above its %s reserve; blocks are not cached there for now "
                     "(%d so far)", self.root, format_size(self._reserve), self.skipped)

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
        """Make sure the dir is a tierfs cache of this layout and sealing; start it afresh if it is ours but not.

        (A directory without the marker that holds anything tierfs did not put
        there is not a cache: ``prepare_cache_dir`` refused it, untouched.)
        """
        want = self.sealer.key_id if self.sealer is not None else "none"
        current = read_marker(self.root)
        sealing = sealing_of(current) if current is not None else None
        if sealing == want:
            if current != layout_text(want):  # (a marker from before it named the sealing: plain blocks)
                self._write_layout(layout_text(want))
            return
        if current is None:
            pass  # new, or a cache from before the marker (its blocks are not trusted without it)
        elif sealing is not None:
            log.warning("disk cache %s was written under another [cache] encryption key (or with none, or "
                        "encrypted while this mount has no key); starting it afresh", self.root)
        else:
            log.warning("disk cache %s has another layout; starting it afresh", self.root)
        for sub in ("blocks", "index", "tmp", "manifests", "shards"):  # (and the manifest and shard indexes)
            shutil.rmtree(self.root / sub, ignore_errors=True)
        self._write_layout(layout_text(want))

    def _write_layout(self, text: str) -> None:
        statefile.replace_bytes(self.root / "LAYOUT", text.encode())

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


    def _check_index(self) -> int:
        """After an unclean start: keep the entries whose block file is there at its size, remove
        the files the index does not know; returns how many of either were dropped.

        One stat per file, not a read: the bytes are checked against their
        checksum at every read anyway (and by `tierfs cache verify`).
        """
        t0 = time.monotonic()
        for leftover in self.tmp_dir.iterdir():
            leftover.unlink(missing_ok=True)
        kept = dropped = unknown = 0
        bad: list[bytes] = []
        for digest, meta, found in self.entries_and_files():
            if digest is None:
                assert found is not None
                Path(found.path).unlink(missing_ok=True)
                unknown += 1
                continue
            try:
                ok = found is not None and meta is not None and found.stat(follow_symlinks=False).st_size == meta[0]
            except OSError:
                ok = False
            if ok:
                kept += 1
                continue
            bad.append(digest)
            if len(bad) >= 4096:
                self._drop(bad)
                dropped += len(bad)
                bad = []
        self._drop(bad)
        dropped += len(bad)
        self.index.repair()
        if kept or dropped or unknown:
            log.info("disk cache: the index of %s checked against its block files (%s): %d kept, %d dropped "
                     "(missing or cut short), %d file(s) the index did not know removed, in %.1f s", self.root,
                     self.index.unclean, kept, dropped, unknown, time.monotonic() - t0)
        return dropped + unknown

    def entries_and_files(self) -> Iterator[tuple[bytes | None, tuple[int, int] | None, os.DirEntry[str] | None]]:
        """Every index entry beside its block file, in one pass over both, a directory at a time (entries in
        digest order are files in directory order): (digest, (size, checksum), file). The file is None where
        the entry has none, the (size, checksum) None where the entry is unreadable, and the digest None for
        a file the index does not know. Entries may be dropped meanwhile."""
        entries = self._entries()
        entry = next(entries, None)
        for prefix, d in self._block_dirs():
            while entry is not None and entry[0][:2] < prefix:  # no directory: no file
                yield entry[0], entry[1], None
                entry = next(entries, None)
            with os.scandir(d) as it:
                files = {e.name: e for e in it if e.is_file(follow_symlinks=False)}
            while entry is not None and entry[0][:2] == prefix:
                yield entry[0], entry[1], files.pop(entry[0].hex(), None)
                entry = next(entries, None)
            for e in files.values():
                yield None, None, e
        while entry is not None:
            yield entry[0], entry[1], None
            entry = next(entries, None)

    def _entries(self) -> Iterator[tuple[bytes, tuple[int, int] | None]]:
        """The index's (digest, (size, checksum)) pairs in digest order, read in batches (drops between them
        are fine)."""
        after = b""
        while batch := self.index.entries_after(after, 4096):
            yield from batch
            after = batch[-1][0]

    def _block_dirs(self) -> Iterator[tuple[bytes, str]]:
        """(two-byte prefix, path) of each directory of block files, in prefix order."""
        for top in _subdirs(self.blocks_dir):
            for sub in _subdirs(Path(top)):
                try:
                    prefix = bytes.fromhex(Path(top).name + Path(sub).name)
                except ValueError:
                    continue  # not a directory of blocks: not ours to judge
                if len(prefix) == 2:
                    yield prefix, sub


def _subdirs(d: Path) -> list[str]:
    with os.scandir(d) as it:
        return sorted(e.path for e in it if e.is_dir(follow_symlinks=False))
