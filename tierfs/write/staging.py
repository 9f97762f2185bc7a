"""Staged files: the bytes being written through the mount, on local disk, journalled.

Each staged file is ``ID.data`` (its bytes) and ``ID.json`` (its journal
record: lake key and state) under ``<cache dir>/staging/``; while a multipart
upload of it runs, ``ID.upload.json`` holds that upload's progress.

The state in the record:

``clean``
    the bytes are the object in the lake; nothing to upload.
``dirty``
    changed since the last upload, and nobody has asked for them to be
    durable yet (no close or fsync since).
``pending``
    a close or fsync asked for an upload that the store has not acknowledged.
    The record holds the size and checksum of the bytes that were closed, and
    is written only once they are on disk (``seal``).

After a crash of the daemon, the next start uploads every ``pending`` file and
reports it. A ``dirty`` file was never confirmed and may be half-written: it is
moved to ``staging/unclosed/`` and reported, never uploaded. So is a
``pending`` file whose key the lake can never hold (too long a name: an upload
of it would fail at every retry), and one whose bytes are not those its record
names: a power cut lost some of them, and uploading what is left would replace
the object in the lake (a good older checkpoint) with a truncated one.
``clean`` files are dropped: the lake has them.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
import xxhash

from tierfs import statefile
from tierfs.errors import NameTooLong
from tierfs.refs import ObjectRef
from tierfs.tiers.cache_dir import prepare_staging_dir, private_dir

log = logging.getLogger(__name__)

CLEAN, DIRTY, PENDING = "clean", "dirty", "pending"
_HASH_CHUNK = 8 << 20


@dataclass(eq=False)
class StagedFile:
    id: str
    key: str
    data: Path
    fd: int
    state: str
    size: int = 0
    mtime_ns: int = field(default_factory=time.time_ns)
    # The object this file was opened over; its bytes are copied in on the first change.
    base: ObjectRef | None = None
    materialized: bool = True
    handles: int = 0  # open file handles using it
    generation: int = 0  # bumped by every change
    uploaded_generation: int = -1  # the generation the lake holds
    unlinked: bool = False
    filling: bool = False  # its uploaded bytes are being put into the tiers
    fill_scope: trio.CancelScope | None = None  # the fill's (a rename stops it)
    refill: bool = False  # its fill was stopped by a rename: it is filled again under the new name
    dropped: bool = False  # its fd is closed and its files removed
    user_mtime_ns: int = 0  # an mtime set by utimens, applied to the object after its upload
    error: str = ""  # why the last upload failed
    write_error: str = ""  # a write to it failed: it is incomplete and never uploaded
    sealed: tuple[int, str] | None = None  # (size, checksum) of the bytes journalled pending
    upload_lock: trio.Lock = field(default_factory=trio.Lock)

    @property
    def dirty(self) -> bool:
        return self.generation != self.uploaded_generation

    def ref(self) -> ObjectRef:
        """A ref naming the staged bytes: never used to reach the store or the tiers."""
        return ObjectRef(self.key, self.size, f"staged:{self.id}:{self.generation}")


@dataclass
class Leftovers:
    """What a previous run left in staging."""

    pending: list[StagedFile]  # closed, not acknowledged, bytes as closed: to upload now
    unclosed: list[str]  # keys of files never closed (or not uploadable), set aside
    damaged: list[str]  # keys of closed files whose bytes are not those closed, set aside


class Staging:
    def __init__(self, root: Path, key_check: Callable[[str], None] | None = None):
        self.root = root
        self.unclosed_dir = root / "unclosed"
        #: Raises NameTooLong for a key the lake can never hold (ObjectStore.check_key); None: every key is taken.
        self.key_check = key_check
        # One mount per staging dir; the cache dir it is in is checked as the disk tier's is (there may be none).
        self._lock_fd = prepare_staging_dir(root)

    def close(self) -> None:
        os.close(self._lock_fd)

    def create(self, key: str, base: ObjectRef | None = None) -> StagedFile:
        """A new staged file for ``key``: empty, or (with ``base``) standing for that object until changed."""
        sid = uuid.uuid4().hex
        data = self.root / f"{sid}.data"
        fd = os.open(data, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        sf = StagedFile(sid, key, data, fd, CLEAN if base is not None else DIRTY)
        if base is not None:
            sf.base, sf.materialized, sf.size = base, False, base.size
            sf.uploaded_generation = 0
        self._record(sf, durable=False)
        return sf

    def mark(self, sf: StagedFile, state: str) -> None:
        """Journal ``sf`` as ``clean`` or ``dirty`` (``pending`` is ``seal``'s)."""
        assert state != PENDING, "a pending record names its bytes: seal() writes it"
        if sf.state != state:
            was_pending = sf.state == PENDING
            sf.state, sf.sealed = state, None
            self._record(sf, durable=was_pending)

    def seal(self, sf: StagedFile, fd: int | None = None) -> None:
        """Make ``sf``'s bytes durable, then journal it ``pending`` with their size and checksum.

        Blocking (run it in a worker thread): an fsync of the bytes, a read of
        all of them, a durable record. In this order, so that a record naming
        bytes is on disk only once they are: after a power cut, recovery can
        tell the bytes that were closed from what the cut left of them.
        ``fd``: a descriptor of the data to use instead of ``sf.fd`` (one the
        caller keeps open while this runs).
        """
        fd = sf.fd if fd is None else fd
        # The checksum reads the bytes from the page cache while the fsync
        # writes them out: both are done before the record is written.
        failed: list[OSError] = []

        def flush() -> None:
            try:
                os.fsync(fd)
            except OSError as exc:
                failed.append(exc)

        flusher = threading.Thread(target=flush, name="tierfs-seal")
        flusher.start()
        try:
            sealed = _digest(fd)
        finally:
            flusher.join()
        if failed:
            raise failed[0]
        before = sf.state, sf.sealed
        sf.state, sf.sealed = PENDING, sealed
        try:
            self._record(sf, durable=True)
        except BaseException:
            sf.state, sf.sealed = before
            raise

    def rekey(self, sf: StagedFile, key: str) -> None:
        sf.key = key
        self._record(sf, durable=sf.state == PENDING)

    def upload_state(self, sf: StagedFile) -> Path:
        return self.root / f"{sf.id}.upload.json"

    def unrecord(self, sf: StagedFile) -> None:
        """Take ``sf`` out of the journal (never uploaded, never recovered); its open fd stays usable.

        Its data file goes too: the fd keeps the bytes until it is closed, and a
        crash leaves nothing behind.
        """
        for path in (sf.data, self.root / f"{sf.id}.json"):  # (a record without data is dropped at recovery)
            path.unlink(missing_ok=True)

    def drop(self, sf: StagedFile) -> None:
        """Forget a staged file: its bytes and its record."""
        try:
            os.close(sf.fd)
        except OSError:
            pass
        for path in (sf.data, self.root / f"{sf.id}.json"):  # (a record without data is dropped at recovery)
            path.unlink(missing_ok=True)

    def leftovers(self) -> Leftovers:
        """What a previous run left: files to upload now, and the keys of those set aside."""
        left = Leftovers([], [], [])
        for record, data, rec in _records(self.root):
            sid = record.stem
            try:
                key, state = str(rec["key"]), str(rec["state"])
            except (TypeError, KeyError):
                log.warning("staging record %s is unreadable; its data is kept in %s", record, self.unclosed_dir)
                key, state = sid, DIRTY
            if not data.exists() or state == CLEAN:
                record.unlink(missing_ok=True)
                data.unlink(missing_ok=True)
                continue
            refused = self._refused(key) if state == PENDING else ""
            if state == PENDING and not refused:
                fd = os.open(data, os.O_RDWR)
                sealed, differs = _check(fd, rec)
                if not differs:
                    st = os.fstat(fd)
                    left.pending.append(StagedFile(sid, key, data, fd, PENDING, size=st.st_size,
                                                   mtime_ns=st.st_mtime_ns, generation=1, uploaded_generation=0,
                                                   sealed=sealed))
                    continue
                os.close(fd)
                log.warning("%s was closed before the previous run ended, but its staged bytes do not match the "
                            "ones closed (%s): a power cut lost some of them, or they were changed and not closed "
                            "again. It is not uploaded, so the lake keeps what it had; the bytes are kept in %s",
                            key, differs, self.unclosed_dir)
                left.damaged.append(key)
            elif refused:
                log.warning("a file closed before the previous run ended is not uploaded but kept in %s: "
                            "the lake cannot hold its name (%s)", self.unclosed_dir, refused)
                left.unclosed.append(key)
            else:
                left.unclosed.append(key)
            private_dir(self.unclosed_dir)
            os.replace(data, self.unclosed_dir / self._aside_name(sid, key))
            record.unlink(missing_ok=True)
            (self.root / f"{sid}.upload.json").unlink(missing_ok=True)
        for data in sorted(self.root.glob("*.data")):
            if not data.with_suffix(".json").exists() and data.stat().st_size:
                # Its record never reached the disk (a power cut right after its
                # creation, or a kill -9 between the two): nobody closed it.
                private_dir(self.unclosed_dir)
                os.replace(data, self.unclosed_dir / self._aside_name(data.stem, "(no record)"))
                left.unclosed.append(f"(a staged file without a record, {data.stem})")
            elif not data.with_suffix(".json").exists():
                data.unlink()
        return left

    def _refused(self, key: str) -> str:
        """Why the lake can never hold ``key`` ('' if it can)."""
        if self.key_check is None:
            return ""
        try:
            self.key_check(key)
        except NameTooLong as exc:
            return str(exc)
        return ""

    def _aside_name(self, sid: str, key: str) -> str:
        """The name of a file set aside in unclosed/: when, which record, which key, within the local name limit."""
        # Encoded with "replace": a key that is not valid Unicode still gives a name that can be made.
        raw = f"{time.strftime('%Y%m%dT%H%M%S')}-{sid[:8]}-{key.replace('/', '__')}".encode(errors="replace")
        try:
            limit = os.statvfs(self.root).f_namemax
        except OSError:
            limit = 255
        if len(raw) > limit:
            # Cut the key short; the hash of all of it keeps two long keys from meeting in one name.
            tag = "-" + hashlib.sha256(raw).hexdigest()[:12]
            raw = raw[:limit - len(tag)] + tag.encode()
        return raw.decode(errors="ignore")  # (a character cut in half is left out)

    def _record(self, sf: StagedFile, durable: bool) -> None:
        """Write ``sf``'s record; ``durable``: on disk when this returns.

        Only a record that says pending, or replaces one that did, must survive
        a power cut: those decide what the next start uploads. A dirty or clean
        record that a power cut loses leaves the file unclosed or without a
        record, never uploaded, so it costs at most bytes nobody closed; and
        those are written as files are opened and changed, where two fsyncs
        would cost milliseconds each.
        """
        if sf.unlinked:
            return  # out of the journal for good (see unrecord)
        rec: dict[str, object] = {"key": sf.key, "state": sf.state}
        if sf.state == PENDING and sf.sealed is not None:
            rec["size"], rec["xxh3_128"] = sf.sealed
        statefile.save(self.root / f"{sf.id}.json", rec, durable=durable)


def _records(root: Path) -> Iterator[tuple[Path, Path, Any]]:
    """(record, data file, what the record holds: None if unreadable) of each staged file's journal record."""
    for record in sorted(root.glob("*.json")):
        if not record.name.endswith(".upload.json"):
            yield record, root / f"{record.stem}.data", statefile.load(record)


@dataclass
class StagedSummary:
    """What a staging dir holds, by what the journal says of it (``staged_summary``)."""

    pending: int = 0  # closed, the upload not acknowledged: the lake does not have them; a mount uploads them
    pending_bytes: int = 0
    other: int = 0  # being written (or left so by a mount that died: set aside at the next start), or clean
    other_bytes: int = 0
    unclosed: int = 0  # set aside in unclosed/ by an earlier start: never uploaded, kept for the user
    unclosed_bytes: int = 0


def staged_summary(root: Path) -> StagedSummary:
    """Count the staged files in ``root``, without its lock and changing nothing (beside a mount, too)."""
    out = StagedSummary()
    for _record, data, rec in _records(root):
        try:
            size = data.stat().st_size
        except FileNotFoundError:
            continue  # (a record without data is dropped at the next start)
        if isinstance(rec, dict) and rec.get("state") == PENDING:
            out.pending, out.pending_bytes = out.pending + 1, out.pending_bytes + size
        else:
            out.other, out.other_bytes = out.other + 1, out.other_bytes + size
    for data in sorted(root.glob("*.data")):
        if not data.with_suffix(".json").exists():
            with contextlib.suppress(FileNotFoundError):
                out.other, out.other_bytes = out.other + 1, out.other_bytes + data.stat().st_size
    if (root / "unclosed").is_dir():
        for kept in (root / "unclosed").iterdir():
            with contextlib.suppress(FileNotFoundError):
                out.unclosed, out.unclosed_bytes = out.unclosed + 1, out.unclosed_bytes + kept.stat().st_size
    return out


def _digest(fd: int) -> tuple[int, str]:
    """(size, xxh3-128 hex) of the whole file open at ``fd``."""
    h = xxhash.xxh3_128()
    buf = bytearray(_HASH_CHUNK)
    view = memoryview(buf)
    offset = 0
    while n := os.preadv(fd, [buf], offset):
        h.update(view[:n])
        offset += n
    return offset, h.hexdigest()


def _check(fd: int, rec: dict[str, object]) -> tuple[tuple[int, str] | None, str]:
    """The bytes at ``fd`` against the size and checksum of their pending record: (sealed, how they differ or '')."""
    size, digest = rec.get("size"), rec.get("xxh3_128")
    if size is None and digest is None:
        # A record of an older tierfs, which wrote none: its files are uploaded
        # as that version promised (what a kill -9 leaves is whole; only a power
        # cut under that version could have cut one short).
        log.warning("staging record of %s has no checksum (an older tierfs wrote it); uploading its bytes unchecked",
                    rec.get("key"))
        return None, ""
    actual = os.fstat(fd).st_size
    if not isinstance(size, int) or not isinstance(digest, str):
        return None, "the record's size or checksum is unreadable"
    if actual != size:
        return None, f"{actual} bytes where {size} were closed"
    if _digest(fd)[1] != digest:
        return None, "the same size, but other bytes"
    return (size, digest), ""
