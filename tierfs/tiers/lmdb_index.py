"""The disk tier's index: which blocks are on disk, their size, checksum and age.

Five LMDB databases:

- ``blocks``  digest -> (size, checksum, access stamp)
- ``lru``     access stamp + digest -> ''   (ordered oldest first: eviction order)
- ``probation`` the same, for blocks never hit since they landed (the
  ``stable`` policy keeps them apart and evicts the newest of them first)
- ``pending`` digest -> b'L' (landing) or b'E' (evicting): the blocks whose file
  and index entry may disagree if the process dies now.
- ``meta``    totals (bytes, entries) and the access clock.

Beside them, ``state.json`` says whether the index was closed cleanly (and
synced to disk then), or is open, since which boot of the system, and whether
it is being checked. After a clean close nothing is checked. After an unclean
start (``unclean`` says why) the disk tier checks every entry against its
block file (``entries_after``, ``repair``). If the system itself went down
while the index was open, the LMDB file may be torn, and it is first copied
entry by entry into a new one in a child process (``_rebuild``), since reading
a torn file can abort the process that reads it; so is a file whose last check
never finished (the process died in it) or on which LMDB raised. Another
process (`tierfs cache du`) reads the figures through a read-only open
(``read_summary``), beside the one that writes the index.

The access stamp is a logical clock, not wall time: strictly increasing, so the
LRU order is exact and immune to clock steps.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import lmdb

from tierfs import statefile
from tierfs.tiers.presence import Presence

log = logging.getLogger(__name__)

_ENTRY = struct.Struct(">QQQ")  # size, checksum, stamp
_U64 = struct.Struct(">Q")
LANDING = b"L"
EVICTING = b"E"
STATE = "state.json"
_DBS = ("blocks", "lru", "probation", "pending", "meta")
_REBUILD_SECONDS = 90  # so that the mount, checked after, still has a chance to be ready within its 120 s
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")

# Run in a child process: copies every entry the old file still yields into a
# new LMDB file, the blocks first, committing as it goes. A torn page makes
# LMDB abort (an assertion in its C code) or raise; either way only the child
# dies, and what it committed before is a whole LMDB file all the same (an
# LMDB file survives the death of its writer): the parent goes on with that,
# and ``repair`` rebuilds the orders and totals it may lack.
_REBUILD = textwrap.dedent("""
    import sys, lmdb
    src, dst, map_size, names = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    old = lmdb.open(src, readonly=True, lock=False, max_dbs=len(names), map_size=map_size, readahead=False)
    new = lmdb.open(dst, map_size=map_size, max_dbs=len(names), sync=False, metasync=False, mode=0o600)
    for name in names:
        with old.begin() as rt:
            try:
                sdb = old.open_db(name.encode(), txn=rt, create=False)
            except lmdb.NotFoundError:
                continue
            ndb = new.open_db(name.encode())
            wt = new.begin(write=True, db=ndb)
            for n, (k, v) in enumerate(rt.cursor(db=sdb), 1):
                wt.put(k, v)
                if n % 1000 == 0:
                    wt.commit()
                    wt = new.begin(write=True, db=ndb)
            wt.commit()
    new.sync(True)
    new.close()
""")
_REBUILT_DBS = ("blocks", "probation", "lru", "meta")  # (pending marks are cleared by repair)


def _u64(raw: bytes | memoryview | None) -> int:
    """A counter of ``meta``; 0 if absent (or unreadable: what a torn file left, until repair)."""
    return _U64.unpack(raw)[0] if raw is not None and len(raw) == _U64.size else 0


def boot_id() -> str:
    """This boot of the system ('' where it cannot be told)."""
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return ""


def unclean(path: Path) -> tuple[str, bool]:
    """Why the index at ``path`` must be checked ('' if not), and whether its file may be torn (rebuilt first)."""
    state = statefile.load(path / STATE)
    if not (path / "data.mdb").exists():
        return "it is new", False  # (nothing to trust: block files a lost index left are removed)
    if isinstance(state, dict) and state.get("open") is False:
        return "", False
    if isinstance(state, dict) and state.get("checking"):
        return "the last start died while checking it: the file may be damaged", True
    boot = boot_id()
    if isinstance(state, dict) and state.get("open") and boot and state.get("boot") == boot:
        return "the last run did not close it: killed, or it crashed", False
    if state is None:
        return ("the system went down while it was open, or an older tierfs left it: no record of a clean "
                "close"), True
    return "the system went down while it was open: a power cut?", True


@dataclass(frozen=True)
class Summary:
    """What an index holds, in figures its databases keep (no scan)."""

    blocks: int
    bytes: int  # the sizes of the block files it records: what counts against [cache] size
    never_hit: int  # blocks not read again since they landed (the stable policy evicts these first)
    pending: int  # pending marks: blocks whose file and entry may disagree (a crash repairs them)


def read_summary(path: Path, map_size: int = 1 << 34) -> Summary:
    """The figures of the index at ``path``, from a read-only open.

    Safe beside the mount that writes it: LMDB gives each read transaction a
    snapshot, and a read-only open changes only LMDB's lock file (a reader
    slot), never the data file. Not for an index ``unclean`` says may be
    torn: reading a torn file can abort the process. Raises lmdb.Error where
    the file cannot be read (none there, or damaged).
    """
    env = lmdb.open(str(path), readonly=True, max_dbs=len(_DBS), map_size=map_size, max_readers=512,
                    readahead=False)
    try:
        with env.begin() as txn:
            meta, probation, pending = (_existing_db(env, txn, name) for name in (b"meta", b"probation", b"pending"))
            held = _u64(txn.get(b"bytes", db=meta)) if meta is not None else 0
            entries = _u64(txn.get(b"entries", db=meta)) if meta is not None else 0
            never_hit = txn.stat(probation)["entries"] if probation is not None else 0
            marks = txn.stat(pending)["entries"] if pending is not None else 0
    finally:
        env.close()
    return Summary(entries, held, never_hit, marks)


def _existing_db(env: lmdb.Environment, txn: lmdb.Transaction, name: bytes) -> lmdb._Database | None:
    try:
        return env.open_db(name, txn=txn, create=False)
    except lmdb.NotFoundError:
        return None


class BlockIndex:
    def __init__(self, path: Path, map_size: int = 1 << 34, damaged: str = ""):
        """``damaged``: why the file cannot be trusted although its state says it can (LMDB
        raised on it): it is rebuilt as after a crash of the system."""
        self.path = path
        self.map_size = map_size
        #: Which digests may be in the index, in memory (``start_presence``); "maybe" for all until built.
        self.presence = Presence(1 << 16)
        self._presence_stop = threading.Event()
        self._presence_thread: threading.Thread | None = None
        self._recover_dir()
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        #: Why the index must be checked against the block files ('' after a clean close).
        self.unclean, torn = (f"it is damaged: {damaged}", True) if damaged else unclean(path)
        if torn:
            self._rebuild()
        # "open" on disk before anything of the file is read or written; and
        # "checking" until the disk tier has checked it: should this process
        # die reading it (LMDB aborts on a damaged page), the next start
        # rebuilds it apart instead of dying the same way.
        self._save_state(checking=bool(self.unclean))
        # sync=False: no fsync per transaction, which would cost a few ms for
        # every block landing and evicted, serialized behind LMDB's one writer.
        # That is sound because of the state file: it says "open" on disk
        # before this run touches the file, and "closed" only after a full sync
        # at close, so an index that lost or tore transactions in a crash of
        # the system is never trusted but checked (and, being possibly torn,
        # first rebuilt apart). A kill -9 loses nothing: every committed page
        # is in the kernel already. And every block is checked against its
        # checksum when it is read.
        try:
            self._open()
        except lmdb.Error as exc:
            if torn:
                raise  # (a file just rebuilt that cannot be opened: nothing is left to try)
            self.unclean = f"it is damaged: {type(exc).__name__}: {exc}"
            self._rebuild()
            self._open()

    def _open(self) -> None:
        self.env = lmdb.open(
            str(self.path), map_size=self.map_size, max_dbs=len(_DBS), sync=False, metasync=False,
            max_readers=512, readahead=False, mode=0o600,
        )
        try:
            self._blocks = self.env.open_db(b"blocks")
            self._lru = self.env.open_db(b"lru")
            self._probation = self.env.open_db(b"probation")
            self._pending = self.env.open_db(b"pending")
            self._meta = self.env.open_db(b"meta")
            with self.env.begin(db=self._meta) as txn:
                raw = txn.get(b"clock")
        except BaseException:
            self.env.close()
            raise
        self._clock = _u64(raw)

    def checked(self) -> None:
        """The disk tier has checked the index against its block files."""
        self._save_state(checking=False)

    def _save_state(self, checking: bool) -> None:
        state = {"open": True, "boot": boot_id(), "pid": os.getpid()}
        statefile.save(self.path / STATE, {**state, "checking": True} if checking else state)

    def _rebuild(self) -> None:
        """Replace the LMDB file with a copy, made in a child process, of what it still holds."""
        fresh, old = self._sibling("rebuilt"), self._sibling("torn")
        shutil.rmtree(fresh, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
        try:
            res = subprocess.run([sys.executable, "-P", "-c", _REBUILD, str(self.path), str(fresh),
                                  str(self.map_size), *_REBUILT_DBS],
                                 capture_output=True, text=True, timeout=_REBUILD_SECONDS)
            why = "" if res.returncode == 0 else (
                f"exit {res.returncode}: {(res.stderr.strip().splitlines() or ['?'])[-1]}")
        except subprocess.TimeoutExpired:
            why = f"no copy within {_REBUILD_SECONDS} s"
        if not (fresh / "data.mdb").exists():
            shutil.rmtree(fresh, ignore_errors=True)
            fresh.mkdir(mode=0o700)
            log.warning("disk cache: the index in %s may be torn (%s) and cannot be read (%s); it starts afresh, "
                        "and the block files it named are removed", self.path, self.unclean, why)
        elif why:
            log.warning("disk cache: the index in %s may be torn (%s) and could be read only in part (%s); "
                        "rebuilt from that part, the block files of the rest are removed", self.path, self.unclean,
                        why)
        else:
            log.warning("disk cache: the index in %s may be torn (%s); rebuilt from what it still holds",
                        self.path, self.unclean)
        os.replace(self.path, old)
        os.replace(fresh, self.path)  # (the state file is written once it is open)
        shutil.rmtree(old, ignore_errors=True)

    def _recover_dir(self) -> None:
        """Finish a ``_rebuild`` that a crash interrupted between its two renames."""
        fresh = self._sibling("rebuilt")
        if not self.path.exists() and (fresh / "data.mdb").exists():
            os.replace(fresh, self.path)  # (the child is done with it: a whole LMDB file)
        shutil.rmtree(fresh, ignore_errors=True)
        shutil.rmtree(self._sibling("torn"), ignore_errors=True)

    def _sibling(self, tag: str) -> Path:
        return self.path.with_name(f"{self.path.name}.{tag}")

    # -- the presence filter -----------------------------------------------
    def start_presence(self, slots: int) -> None:
        """Count the index's digests into a filter of ``slots``, in a thread; ``may_hold`` answers from it once built."""
        self.presence = Presence(slots)
        self._presence_thread = threading.Thread(target=self.presence.build, args=(self._digests, self._presence_stop),
                                                 name="disk-index-presence", daemon=True)
        self._presence_thread.start()

    def may_hold(self, digest: bytes) -> bool:
        """False only if ``digest`` is surely not in the index (no LMDB read: fit for the trio loop)."""
        return self.presence.may_hold(digest)

    @contextlib.contextmanager
    def _digests(self) -> Iterator[Iterable[bytes]]:
        with self.env.begin(db=self._blocks) as txn:
            yield (bytes(k) for k in txn.cursor().iternext(keys=True, values=False))

    def _stop_presence(self) -> None:
        self._presence_stop.set()
        if self._presence_thread is not None:
            self._presence_thread.join()  # (its read transaction must end before the file closes)

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
        return _u64(b), _u64(n)

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

    def entries_after(self, after: bytes, limit: int) -> list[tuple[bytes, tuple[int, int] | None]]:
        """Up to ``limit`` (digest, (size, checksum)) pairs in digest order, after ``after``; None: an unreadable
        entry."""
        out: list[tuple[bytes, tuple[int, int] | None]] = []
        with self.env.begin(db=self._blocks) as txn:
            cur = txn.cursor()
            if not cur.set_range(after):
                return out
            for k, raw in cur:
                digest = bytes(k)
                if digest == after:
                    continue
                out.append((digest, _ENTRY.unpack(raw)[:2] if len(raw) == _ENTRY.size else None))
                if len(out) >= limit:
                    break
        return out

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
        with self.presence.lock:
            with self.env.begin(write=True) as txn:
                delta_b, delta_n = self._drop(txn, digest)
                stamp = self._tick(txn)
                txn.put(digest, _ENTRY.pack(size, checksum, stamp), db=self._blocks)
                txn.put(_U64.pack(stamp) + digest, b"", db=self._probation if probation else self._lru)
                txn.delete(digest, db=self._pending)
                self._bump(txn, size - delta_b, 1 - delta_n)
            if not delta_n:
                self.presence.changed(digest, 1)

    def remove(self, digests: Iterable[bytes]) -> int:
        """Forget blocks (their files go next); marks them pending-evict.

        Returns the bytes freed.
        """
        freed = 0
        gone = []
        with self.presence.lock:
            with self.env.begin(write=True) as txn:
                for d in digests:
                    b, n = self._drop(txn, d)
                    if n:
                        txn.put(d, EVICTING, db=self._pending)
                        gone.append(d)
                    freed += b
                self._bump(txn, -freed, -len(gone))
            for d in gone:
                self.presence.changed(d, -1)
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

    def repair(self) -> None:
        """Make the LRU orders, the totals and the clock agree with ``blocks``; clear the pending marks.

        After the entries were checked (a crash of the system may have left
        the databases disagreeing: each page of the file is of its own age).
        """
        with self.env.begin(write=True) as txn:
            for db in (self._lru, self._probation):
                stale = []
                for k in txn.cursor(db=db).iternext(keys=True, values=False):
                    raw = txn.get(bytes(k[8:]), db=self._blocks) if len(k) > 8 else None
                    if raw is None or len(raw) != _ENTRY.size or _ENTRY.unpack(raw)[2] != _U64.unpack(k[:8])[0]:
                        stale.append(bytes(k))
                for k in stale:
                    txn.delete(k, db=db)
            held = entries = 0
            for k, raw in txn.cursor(db=self._blocks):
                size, _, stamp = _ENTRY.unpack(raw)
                order = _U64.pack(stamp) + bytes(k)
                if txn.get(order, db=self._lru) is None and txn.get(order, db=self._probation) is None:
                    txn.put(order, b"", db=self._lru)
                held, entries = held + size, entries + 1
                self._clock = max(self._clock, stamp)
            txn.put(b"bytes", _U64.pack(held), db=self._meta)
            txn.put(b"entries", _U64.pack(entries), db=self._meta)
            txn.put(b"clock", _U64.pack(self._clock), db=self._meta)
            txn.drop(self._pending, delete=False)

    def abandon(self) -> None:
        """Close without recording a clean close (the next start checks everything)."""
        self._stop_presence()
        self.env.close()

    def close(self) -> None:
        """Sync the index to disk, then record the clean close (the next start trusts it)."""
        self._stop_presence()
        self.env.sync(True)
        statefile.save(self.path / STATE, {"open": False})
        self.env.close()

    # -- inside a write transaction ---------------------------------------
    def _drop(self, txn: lmdb.Transaction, digest: bytes) -> tuple[int, int]:
        raw = txn.get(digest, db=self._blocks)
        if raw is None:
            return 0, 0
        txn.delete(digest, db=self._blocks)
        if len(raw) != _ENTRY.size:
            return 0, 1  # unreadable (what a torn file left); its order keys go in repair()
        size, _, stamp = _ENTRY.unpack(raw)
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
        nb = _u64(b) + d_bytes
        nn = _u64(n) + d_entries
        txn.put(b"bytes", _U64.pack(max(nb, 0)), db=self._meta)
        txn.put(b"entries", _U64.pack(max(nn, 0)), db=self._meta)
