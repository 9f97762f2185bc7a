"""Snapshot manifests: the frozen list of a dataset's files, stored in the lake.

Layout, under the reserved prefix ``.tierfs/`` (never shown in the live view)::

    .tierfs/snapshots/<dataset>/<name>/part-00000.jsonl.gz   entries, sorted
    .tierfs/snapshots/<dataset>/<name>/meta.json             written last: the commit point

Entries are sorted by (parent directory, name) and cut into parts of at most
``PART_ENTRIES``. ``meta.json`` carries the first key and the sha256 of each
part and a checksum of itself, so that listing one directory reads only the
parts that hold it (the root's entries are in the first), and a truncated or
altered manifest is refused instead of half-served. Writing streams: memory
is bounded by one part, whatever the number of files.
"""

from __future__ import annotations

import bisect
import gzip
import hashlib
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tierfs.errors import TierfsError, UserError
from tierfs.refs import ObjectRef

RESERVED = ".tierfs"
SNAPSHOTS = f"{RESERVED}/snapshots"
CAS = f"{RESERVED}/cas/sha256"
FORMAT = "tierfs-manifest 1"
PART_ENTRIES = 20_000

_BAD_NAME = re.compile(r"[\x00-\x1f\x7f/\\]")


class ManifestError(TierfsError):
    """A manifest is missing, truncated or corrupt: it is refused as a whole."""


def validate_name(kind: str, name: str) -> str:
    """Dataset and snapshot names: one path component a user can type."""
    if not name:
        raise UserError(f"{kind} name is empty")
    if name in (".", "..") or ".." in name.split("/"):
        raise UserError(f"{kind} name {name!r} may not be '.' or '..' or contain '..'")
    if name.startswith("."):
        raise UserError(f"{kind} name {name!r} may not start with a dot")
    if _BAD_NAME.search(name):
        raise UserError(f"{kind} name {name!r} may not contain '/', '\\' or control characters")
    if len(name.encode()) > 200:
        raise UserError(f"{kind} name {name!r} is longer than 200 bytes")
    return name


def snapshot_dir(dataset: str, name: str) -> str:
    return f"{SNAPSHOTS}/{dataset}/{name}"


def meta_key(dataset: str, name: str) -> str:
    return f"{snapshot_dir(dataset, name)}/meta.json"


def cas_key(sha256: str) -> str:
    return f"{CAS}/{sha256[:2]}/{sha256[2:4]}/{sha256}"


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    parent: str  # directory inside the snapshot, '' for its root
    name: str
    is_dir: bool
    size: int = 0
    mode: int = 0o644
    mtime_ns: int = 0
    key: str = ""  # where the bytes are in the lake (the source key, or a CAS key)
    version: str = ""  # pinned version id, where the store keeps versions
    etag: str = ""
    sha256: str = ""  # content hash (copy mode)
    cache_id: str = ""  # the live identity these bytes had when frozen

    @property
    def path(self) -> str:
        return f"{self.parent}/{self.name}" if self.parent else self.name

    @property
    def sort_key(self) -> tuple[str, str]:
        return (self.parent, self.name)

    def ref(self) -> ObjectRef | None:
        if self.is_dir:
            return None
        return ObjectRef(self.key, self.size, self.etag, self.version, self.sha256, self.cache_id)

    def to_json(self) -> str:
        d: dict[str, Any] = {"p": self.parent, "n": self.name}
        if self.is_dir:
            d["d"] = 1
        else:
            d.update(s=self.size, m=self.mode, t=self.mtime_ns, k=self.key, c=self.cache_id)
            if self.version:
                d["v"] = self.version
            if self.etag:
                d["e"] = self.etag
            if self.sha256:
                d["h"] = self.sha256
        return json.dumps(d, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> ManifestEntry:
        d = json.loads(line)
        if d.get("d"):
            return cls(d["p"], d["n"], True)
        return cls(d["p"], d["n"], False, d["s"], d["m"], d["t"], d["k"], d.get("v", ""),
                   d.get("e", ""), d.get("h", ""), d.get("c", ""))


@dataclass
class SnapshotMeta:
    dataset: str
    name: str
    prefix: str
    mode: str  # "pinned" (version ids) or "copy" (content-addressed copies)
    message: str = ""
    created_at: str = ""
    creator: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    file_count: int = 0
    dir_count: int = 0
    total_size: int = 0
    parts: list[dict[str, Any]] = field(default_factory=list)  # {"first": [p, n], "count", "sha256", "bytes"}

    def to_json(self) -> bytes:
        body = {
            "format": FORMAT, "dataset": self.dataset, "name": self.name, "prefix": self.prefix,
            "mode": self.mode, "message": self.message, "created_at": self.created_at,
            "creator": self.creator, "metadata": self.metadata, "file_count": self.file_count,
            "dir_count": self.dir_count, "total_size": self.total_size, "parts": self.parts,
        }
        canon = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        body["checksum"] = hashlib.sha256(canon.encode()).hexdigest()
        return json.dumps(body, sort_keys=True, ensure_ascii=False, indent=1).encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> SnapshotMeta:
        try:
            body = json.loads(raw)
            checksum = body.pop("checksum")
        except (ValueError, KeyError, AttributeError, TypeError):
            raise ManifestError(f"manifest {where} is truncated or not JSON: it cannot be served; delete and recreate the snapshot") from None
        canon = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        if hashlib.sha256(canon.encode()).hexdigest() != checksum:
            raise ManifestError(f"manifest {where} fails its checksum (corrupt or edited): it cannot be served")
        if body.get("format") != FORMAT:
            raise ManifestError(f"manifest {where} has format {body.get('format')!r}; this tierfs reads {FORMAT!r}")
        body.pop("format")
        return cls(**body)


class ManifestWriter:
    """Streams sorted entries into parts; ``finish`` returns the part list for meta.json."""

    def __init__(self, put: Callable[[str, bytes], object], base: str, part_entries: int = PART_ENTRIES):
        self._put = put
        self._base = base
        self._part_entries = part_entries
        self._buf: list[str] = []
        self._first: tuple[str, str] | None = None
        self._last: tuple[str, str] | None = None
        self.parts: list[dict[str, Any]] = []

    def add(self, entry: ManifestEntry) -> None:
        if self._last is not None and entry.sort_key <= self._last:
            raise AssertionError(f"manifest entries out of order: {entry.sort_key} after {self._last}")
        self._last = entry.sort_key
        if self._first is None:
            self._first = entry.sort_key
        self._buf.append(entry.to_json())
        if len(self._buf) >= self._part_entries:
            self._flush()

    def finish(self) -> list[dict[str, Any]]:
        if self._buf:
            self._flush()
        return self.parts

    def _flush(self) -> None:
        raw = gzip.compress(("\n".join(self._buf) + "\n").encode(), compresslevel=6, mtime=0)
        key = f"{self._base}/part-{len(self.parts):05d}.jsonl.gz"
        self._put(key, raw)
        assert self._first is not None
        self.parts.append({"first": list(self._first), "count": len(self._buf),
                           "sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw)})
        self._buf = []
        self._first = None


class ManifestPart:
    """One decoded part: its entries in (parent, name) order."""

    __slots__ = ("keys", "entries")

    def __init__(self, entries: list[ManifestEntry]):
        self.entries = entries
        self.keys = [e.sort_key for e in entries]

    def find(self, parent: str, name: str) -> ManifestEntry | None:
        key = (parent, name)
        i = bisect.bisect_left(self.keys, key)
        if i < len(self.keys) and self.keys[i] == key:
            return self.entries[i]
        return None

    def children(self, parent: str) -> tuple[list[ManifestEntry], bool]:
        """The entries of ``parent`` in this part, and whether the next part may hold more of them."""
        i = bisect.bisect_left(self.keys, (parent, ""))
        out: list[ManifestEntry] = []
        while i < len(self.entries):
            e = self.entries[i]
            if e.parent != parent:
                return out, False
            out.append(e)
            i += 1
        return out, True


def is_absent(exc: BaseException) -> bool:
    """Whether a fetch failed because the object is not there (rather than the store failing)."""
    return isinstance(exc, FileNotFoundError) or (isinstance(exc, TierfsError) and exc.errno == 2)


class ManifestReader:
    """Reads one snapshot's manifest lazily: meta first, parts on demand, checked.

    ``fetch(key)`` returns the bytes of a lake object (raising ``FileNotFoundError``
    or ``NotFound`` if absent). The mount passes no ``fetch``: its snapshot tree
    fetches parts itself, from trio, and hands them to :meth:`add_part`.
    """

    def __init__(self, meta: SnapshotMeta, fetch: Callable[[str], bytes] | None = None, cached_parts: int = 8):
        self.meta = meta
        self._fetch = fetch
        self._firsts = [tuple(p["first"]) for p in meta.parts]
        self._cache: OrderedDict[int, ManifestPart] = OrderedDict()
        self._cached_parts = cached_parts
        self._lock = threading.Lock()

    @classmethod
    def open(cls, dataset: str, name: str, fetch: Callable[[str], bytes]) -> ManifestReader:
        try:
            raw = fetch(meta_key(dataset, name))
        except (FileNotFoundError, TierfsError) as exc:
            if is_absent(exc):
                raise UserError(f"snapshot {dataset}@{name} does not exist") from None
            raise
        return cls.from_meta(dataset, name, raw, fetch)

    @classmethod
    def from_meta(cls, dataset: str, name: str, raw: bytes,
                  fetch: Callable[[str], bytes] | None = None) -> ManifestReader:
        """A reader of the snapshot whose meta.json holds ``raw`` (checked)."""
        return cls(SnapshotMeta.from_json(raw, f"{dataset}@{name}"), fetch)

    @property
    def where(self) -> str:
        return f"{self.meta.dataset}@{self.meta.name}"

    def part_key(self, i: int) -> str:
        return f"{snapshot_dir(self.meta.dataset, self.meta.name)}/part-{i:05d}.jsonl.gz"

    def part_index(self, parent: str, name: str = "") -> int | None:
        """The part that holds (or would hold) ``(parent, name)``; None for an empty manifest."""
        if not self._firsts:
            return None
        return max(0, bisect.bisect_right(self._firsts, (parent, name)) - 1)

    @property
    def part_count(self) -> int:
        return len(self._firsts)

    def cached_part(self, i: int) -> ManifestPart | None:
        with self._lock:
            part = self._cache.get(i)
            if part is not None:
                self._cache.move_to_end(i)
            return part

    def missing_part(self, i: int) -> ManifestError:
        return ManifestError(f"manifest {self.where} is missing part {i}: it cannot be served")

    def part(self, i: int) -> ManifestPart:
        part = self.cached_part(i)
        if part is not None:
            return part
        if self._fetch is None:
            raise RuntimeError("this manifest reader fetches no parts itself; use add_part")
        try:
            raw = self._fetch(self.part_key(i))
        except (FileNotFoundError, TierfsError) as exc:
            if is_absent(exc):
                raise self.missing_part(i) from None
            raise
        return self.add_part(i, raw)

    def add_part(self, i: int, raw: bytes) -> ManifestPart:
        """Check and decode part ``i`` from its bytes, and keep it among the cached parts."""
        info = self.meta.parts[i]
        if hashlib.sha256(raw).hexdigest() != info["sha256"]:
            raise ManifestError(f"manifest {self.where}: part {i} fails its checksum (corrupt or truncated)")
        try:
            lines = gzip.decompress(raw).decode().splitlines()
            part = ManifestPart([ManifestEntry.from_json(ln) for ln in lines if ln])
        except (OSError, ValueError, KeyError, EOFError) as exc:
            raise ManifestError(f"manifest {self.where}: part {i} cannot be read ({exc})") from None
        if len(part.entries) != info["count"]:
            raise ManifestError(f"manifest {self.where}: part {i} has {len(part.entries)} entries, meta says {info['count']}")
        with self._lock:
            self._cache[i] = part
            while len(self._cache) > self._cached_parts:
                self._cache.popitem(last=False)
        return part

    def lookup(self, parent: str, name: str) -> ManifestEntry | None:
        i = self.part_index(parent, name)
        return None if i is None else self.part(i).find(parent, name)

    def list_dir(self, parent: str) -> Iterator[ManifestEntry]:
        """Entries directly in ``parent``, in name order, reading only the parts that hold them."""
        p = self.part_index(parent)
        while p is not None and p < self.part_count:
            entries, more = self.part(p).children(parent)
            yield from entries
            if not more:
                return
            p += 1

    def __iter__(self) -> Iterator[ManifestEntry]:
        """Every entry, in order (for diff and gc), one part at a time."""
        for p in range(len(self._firsts)):
            yield from self.part(p).entries
