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

After a crash of the daemon, the next start uploads every ``pending`` file and
reports it. A ``dirty`` file was never confirmed and may be half-written: it is
moved to ``staging/unclosed/`` and reported, never uploaded. So is a
``pending`` file whose key the lake can never hold (too long a name: an upload
of it would fail at every retry). ``clean`` files are dropped: the lake has
them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from tierfs import statefile
from tierfs.errors import NameTooLong
from tierfs.refs import ObjectRef
from tierfs.tiers.disk import prepare_cache_dir

log = logging.getLogger(__name__)

CLEAN, DIRTY, PENDING = "clean", "dirty", "pending"


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
    dropped: bool = False  # its fd is closed and its files removed
    user_mtime_ns: int = 0  # an mtime set by utimens, applied to the object after its upload
    error: str = ""  # why the last upload failed
    write_error: str = ""  # a write to it failed: it is incomplete and never uploaded
    upload_lock: trio.Lock = field(default_factory=trio.Lock)

    @property
    def dirty(self) -> bool:
        return self.generation != self.uploaded_generation

    def ref(self) -> ObjectRef:
        """A ref naming the staged bytes: never used to reach the store or the tiers."""
        return ObjectRef(self.key, self.size, f"staged:{self.id}:{self.generation}")


class Staging:
    def __init__(self, root: Path, key_check: Callable[[str], None] | None = None):
        self.root = root
        self.unclosed_dir = root / "unclosed"
        #: Raises NameTooLong for a key the lake can never hold (ObjectStore.check_key); None: every key is taken.
        self.key_check = key_check
        self._lock_fd = prepare_cache_dir(root)  # one mount per staging dir

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
        self._record(sf)
        return sf

    def mark(self, sf: StagedFile, state: str) -> None:
        if sf.state != state:
            sf.state = state
            self._record(sf)

    def rekey(self, sf: StagedFile, key: str) -> None:
        sf.key = key
        self._record(sf)

    def upload_state(self, sf: StagedFile) -> Path:
        return self.root / f"{sf.id}.upload.json"

    def unrecord(self, sf: StagedFile) -> None:
        """Take ``sf`` out of the journal (never uploaded, never recovered); its open fd stays usable.

        Its data file goes too: the fd keeps the bytes until it is closed, and a
        crash leaves nothing behind.
        """
        for path in (self.root / f"{sf.id}.json", sf.data):
            path.unlink(missing_ok=True)

    def drop(self, sf: StagedFile) -> None:
        """Forget a staged file: its bytes and its record."""
        try:
            os.close(sf.fd)
        except OSError:
            pass
        for path in (self.root / f"{sf.id}.json", sf.data):
            path.unlink(missing_ok=True)

    def leftovers(self) -> tuple[list[StagedFile], list[str]]:
        """What a previous run left: files to upload now, and the keys of unclosed files set aside."""
        pending: list[StagedFile] = []
        unclosed: list[str] = []
        for record in sorted(self.root.glob("*.json")):
            if record.name.endswith(".upload.json") or record.name.endswith(".tmp"):
                continue
            sid = record.stem
            data = self.root / f"{sid}.data"
            rec = statefile.load(record)
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
                st = os.fstat(fd)
                pending.append(StagedFile(sid, key, data, fd, PENDING, size=st.st_size, mtime_ns=st.st_mtime_ns,
                                          generation=1, uploaded_generation=0))
                continue
            if refused:
                log.warning("a file closed before the previous run ended is not uploaded but kept in %s: "
                            "the lake cannot hold its name (%s)", self.unclosed_dir, refused)
            self.unclosed_dir.mkdir(exist_ok=True)
            os.replace(data, self.unclosed_dir / self._aside_name(sid, key))
            record.unlink(missing_ok=True)
            (self.root / f"{sid}.upload.json").unlink(missing_ok=True)
            unclosed.append(key)
        return pending, unclosed

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

    def _record(self, sf: StagedFile) -> None:
        if sf.unlinked:
            return  # out of the journal for good (see unrecord)
        statefile.save(self.root / f"{sf.id}.json", {"key": sf.key, "state": sf.state})
