"""A snapshot's manifest kept on local disk as an LMDB file: a lookup is a key read, a listing a range scan.

A manifest never changes, so a node indexes each once and every later mount
reuses the file. One file per manifest (``index_dir.py`` names and keeps them):

- key ``parent \\0 name`` (UTF-8, lone surrogates passed through), which sorts
  as the manifest does, so the entries of a directory are one range and the
  file is written in order (LMDB's append: full pages, no splits);
- value: the entry's fields, less what the rest gives (a file's key where it
  is the snapshot's prefix plus its path, or its copy's, named by its hash;
  the live identity a copy was frozen from but for its etag; a sha256 as 32
  bytes), so a million entries take about a hundred MB;
- ``\\xff`` keys, after every entry (no UTF-8 starts with 0xff): the format,
  the manifest indexed and its number of entries.

Built streaming, one part at a time (each checked as a reader checks it: its
sha256, its entries, their order), into a ``mkstemp`` file (0600) that is
synced, hashed and renamed into place. Its name carries the hash of its bytes,
checked before LMDB is let near it (reading a damaged LMDB file can abort the
process): a file a crash, a full disk or a bit flip left short or altered is
removed and built again, never read.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import struct
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import lmdb

from tierfs.errors import TierfsError
from tierfs.versions.manifest import ManifestEntry, ManifestError, ManifestReader, cas_key, is_absent

log = logging.getLogger(__name__)

FORMAT = b"tierfs-manifest-index 1"
SUFFIX = ".mdb"
BUILDING = ".build-"  # the prefix of a file being built (mkstemp): never opened but by its builder
_MAP_SIZE = 1 << 40  # address space only: the file grows as it is written
_META = b"\xff"
_HEAD = struct.Struct(">BQHq")  # flags, size, mode, mtime_ns
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_DIR, _KEY_IS_PATH, _LIVE_ID, _VERSION_ID, _RAW_SHA, _KEY_IS_COPY = 1, 2, 4, 8, 16, 32
_SHA256 = re.compile(r"[0-9a-f]{64}")


class IndexUnavailable(TierfsError):
    """No index can be kept here (the local disk refused, or LMDB did): the manifest's parts are read instead."""


def unavailable(where: str, root: object, exc: BaseException) -> IndexUnavailable:
    """The error that says manifest ``where`` gets no index in ``root`` (the disk refused: ``exc``)."""
    why = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"
    return IndexUnavailable(f"manifest {where}: no local index can be kept in {root} ({why}); "
                            "its parts are read into memory instead")


class IndexClosed(TierfsError):
    """The index was closed under a lookup (at unmount): the caller opens it again or gives up."""


def _utf8(s: str) -> bytes:
    return s.encode("utf-8", "surrogatepass")


def _text(b: bytes | memoryview) -> str:
    return bytes(b).decode("utf-8", "surrogatepass")


def entry_key(parent: str, name: str) -> bytes:
    return _utf8(parent) + b"\0" + _utf8(name)


def _path_key(prefix: str, parent: str, name: str) -> str:
    path = f"{parent}/{name}" if parent else name
    return f"{prefix}/{path}" if prefix else path


def _put(out: bytearray, s: bytes) -> None:
    if len(s) < 255:
        out.append(len(s))
    else:
        out.append(255)
        out += _U32.pack(len(s))
    out += s


def encode_value(e: ManifestEntry, prefix: str) -> bytes:
    """One entry's fields but its names (they are its key), less what the other fields give."""
    if e.is_dir:
        return bytes([_DIR])
    flags = 0
    default = _path_key(prefix, e.parent, e.name)
    key = e.key
    if key == default:
        flags, key = flags | _KEY_IS_PATH, ""
    elif e.sha256 and key == cas_key(e.sha256):  # (a copy-mode snapshot's file: its copy, named by its hash)
        flags, key = flags | _KEY_IS_COPY, ""
    cache_id = e.cache_id
    head, tail = f"e:{default}\0", f"\0{e.size}"
    if len(cache_id) >= len(head) + len(tail) and cache_id.startswith(head) and cache_id.endswith(tail):
        flags, cache_id = flags | _LIVE_ID, cache_id[len(head):len(cache_id) - len(tail)]
    elif e.version and cache_id == f"v:{e.key}\0{e.version}":
        flags, cache_id = flags | _VERSION_ID, ""
    sha = _utf8(e.sha256)
    if _SHA256.fullmatch(e.sha256):
        flags, sha = flags | _RAW_SHA, bytes.fromhex(e.sha256)
    out = bytearray(_HEAD.pack(flags, e.size, e.mode, e.mtime_ns))
    for s in (_utf8(key), _utf8(e.version), _utf8(e.etag), sha, _utf8(cache_id)):
        _put(out, s)
    return bytes(out)


def decode_value(parent: str, name: str, raw: bytes, prefix: str) -> ManifestEntry:
    flags = raw[0]
    if flags & _DIR:
        return ManifestEntry(parent, name, True)
    _, size, mode, mtime_ns = _HEAD.unpack_from(raw)
    pos = _HEAD.size
    fields: list[bytes] = []
    for _ in range(5):
        n = raw[pos]
        pos += 1
        if n == 255:
            (n,) = _U32.unpack_from(raw, pos)
            pos += _U32.size
        fields.append(raw[pos:pos + n])
        pos += n
    key, version, etag, cache_id = _text(fields[0]), _text(fields[1]), _text(fields[2]), _text(fields[4])
    sha = fields[3].hex() if flags & _RAW_SHA else _text(fields[3])
    default = _path_key(prefix, parent, name)
    if flags & _KEY_IS_PATH:
        key = default
    elif flags & _KEY_IS_COPY:
        key = cas_key(sha)
    if flags & _LIVE_ID:
        cache_id = f"e:{default}\0{cache_id}\0{size}"
    elif flags & _VERSION_ID:
        cache_id = f"v:{key}\0{version}"
    return ManifestEntry(parent, name, False, size, mode, mtime_ns, key, version, etag, sha, cache_id)


def file_digest(path: Path) -> str:
    """The hash of a file's bytes, as an index's name carries it (hashlib reads without holding the GIL)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()[:32]


class _Entries:
    """Reads of an open LMDB file of entries, from worker threads; ``close`` waits for none but defers to the last."""

    def __init__(self, env: lmdb.Environment, prefix: str, name: str):
        self.env = env
        self.prefix = prefix  # the snapshot's prefix in the lake: what a file's key is made of
        self._name = name
        self._users = 0
        self._closing = False
        self._lock = threading.Lock()

    def lookup(self, parent: str, name: str) -> ManifestEntry | None:
        self._enter()
        try:
            with self.env.begin() as txn:
                raw = txn.get(entry_key(parent, name))
        finally:
            self._leave()
        return None if raw is None else decode_value(parent, name, raw, self.prefix)

    def children(self, parent: str) -> list[ManifestEntry]:
        """The entries directly in ``parent``, in name order: one range of keys."""
        start = _utf8(parent) + b"\0"
        found: list[tuple[bytes, bytes]] = []
        self._enter()
        try:
            with self.env.begin() as txn:
                cur = txn.cursor()
                if cur.set_range(start):
                    for k, v in cur:
                        if not k.startswith(start):
                            break
                        found.append((k[len(start):], v))
        finally:
            self._leave()
        return [decode_value(parent, _text(k), v, self.prefix) for k, v in found]

    def close(self) -> None:
        """Close now if no read is under way, else when the last one ends; later reads raise IndexClosed."""
        with self._lock:
            self._closing = True
            if self._users:
                return
        self.env.close()

    def _enter(self) -> None:
        with self._lock:
            if self._closing:
                raise IndexClosed(f"the manifest index {self._name} is closed")
            self._users += 1

    def _leave(self) -> None:
        with self._lock:
            self._users -= 1
            last = self._closing and not self._users
        if last:
            self.env.close()


class ManifestIndex(_Entries):
    """One manifest's index, open read-only; its methods run in worker threads (LMDB reads may wait on the disk).

    Safe from several threads at once: nothing writes the file, so LMDB needs
    no lock (``lock=False``: no lock file either). Closed when the last
    reference to it goes, or by ``close`` once no read is under way.
    """

    def __init__(self, path: Path, manifest: str, prefix: str, entries: int):
        self.path = path
        env = lmdb.open(str(path), subdir=False, readonly=True, lock=False, readahead=False, max_spare_txns=4)
        try:
            with env.begin() as txn:
                fmt, mid, count = (txn.get(_META + k) for k in (b"format", b"manifest", b"entries"))
            if fmt != FORMAT or mid != manifest.encode() or count is None or _U64.unpack(count)[0] != entries:
                raise ManifestError(f"it is not the index of manifest {manifest} with {entries} entries")
        except BaseException:
            env.close()
            raise
        super().__init__(env, prefix, path.name)


class IndexBuilder(_Entries):
    """Writes one manifest's index into a temp file, part by part; ``finish`` renames it into place.

    Each call runs in a worker thread of its own, so each part is one write
    transaction begun and committed in that call (LMDB ties a write
    transaction to its thread). The parts already in can be read meanwhile
    (``lookup``, ``children``, from other threads: LMDB's lock file, beside
    the temp file, keeps readers and the writer apart), so a lookup waits
    only for the part it needs.
    """

    def __init__(self, root: Path, stem: str, reader: ManifestReader, manifest: str):
        self.root = root
        self.stem = stem
        self.reader = reader
        self.manifest = manifest
        self.entries = 0
        self.open = False
        fd, tmp = tempfile.mkstemp(dir=root, prefix=BUILDING, suffix=SUFFIX)  # 0600
        os.close(fd)
        self.tmp = Path(tmp)
        try:
            # sync=False: one fsync, at the end (a build a crash cut short is never trusted anyway).
            env = lmdb.open(tmp, subdir=False, sync=False, metasync=False, map_size=_MAP_SIZE, readahead=False,
                            mode=0o600)  # (meminit stays on: no stray process memory in the file's unused bytes)
        except BaseException:
            self._remove()
            raise
        super().__init__(env, reader.meta.prefix, self.tmp.name)
        self.open = True

    def add_from(self, i: int, read: Callable[[str], bytes]) -> int:
        """Read part ``i`` with ``read`` (a whole lake object), check it, and add its entries; returns how many."""
        try:
            raw = read(self.reader.part_key(i))
        except (FileNotFoundError, TierfsError) as exc:
            if is_absent(exc):
                raise self.reader.missing_part(i) from None
            raise
        return self.add(i, raw)

    def add(self, i: int, raw: bytes) -> int:
        entries = self.reader.check_part(i, raw)
        prefix = self.reader.meta.prefix
        items = [(entry_key(e.parent, e.name), encode_value(e, prefix)) for e in entries]
        try:
            with self.env.begin(write=True) as txn:
                _, added = txn.cursor().putmulti(items, append=True)
        except (OSError, lmdb.Error) as exc:  # (the disk is full, or refuses)
            raise unavailable(self.reader.where, self.root, exc) from None
        if added != len(items):  # (decode_part checked the order: never, unless a bug)
            raise ManifestError(f"manifest {self.reader.where}: part {i} is out of order: it cannot be served")
        self.entries += len(items)
        return len(items)

    def finish(self) -> Path:
        """Seal the file: its meta keys, a sync, its hash in its name, the rename (then the directory's sync).

        No read of it may be under way (the caller waits for them to end)."""
        with self.env.begin(write=True) as txn:
            txn.put(_META + b"format", FORMAT)
            txn.put(_META + b"manifest", self.manifest.encode())
            txn.put(_META + b"entries", _U64.pack(self.entries))
        self.env.sync(True)
        self._shut()
        final = self.root / f"{self.stem}-{file_digest(self.tmp)}{SUFFIX}"
        os.replace(self.tmp, final)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return final

    def abort(self) -> None:
        self._shut()
        self._remove()

    def _shut(self) -> None:
        if self.open:
            self.open = False
            self.close()
        Path(f"{self.tmp}-lock").unlink(missing_ok=True)

    def _remove(self) -> None:
        self.tmp.unlink(missing_ok=True)
        Path(f"{self.tmp}-lock").unlink(missing_ok=True)
