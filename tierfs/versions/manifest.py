"""Snapshot manifests: the frozen list of a dataset's files, stored in the lake.

Layout, under the reserved prefix ``.tierfs/`` (never shown in the live view)::

    .tierfs/snapshots/<dataset>/<name>/part-00000.jsonl.gz   entries, sorted
    .tierfs/snapshots/<dataset>/<name>/meta.json             written last: the commit point

Entries are sorted by (parent directory, name) and cut into parts of at most
``PART_ENTRIES``. ``meta.json`` carries the first key and the sha256 of each
part and a checksum of itself, so that listing one directory reads only the
parts that hold it (the root's entries are in the first), and a truncated or
altered manifest is refused instead of half-served; so is one whose checksums
match but whose fields or entries are not what tierfs writes (a name with '/'
or '..', a key outside the lake, entries out of order). Writing streams: memory
is bounded by one part, whatever the number of files.
"""

from __future__ import annotations

import bisect
import datetime as dt
import gzip
import hashlib
import itertools
import json
import re
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tierfs.config import shown
from tierfs.errors import TierfsError, UserError
from tierfs.refs import ObjectRef

RESERVED = ".tierfs"
SNAPSHOTS = f"{RESERVED}/snapshots"
CAS = f"{RESERVED}/cas/sha256"
#: Server-side copies (copy mode), named by the identity of the bytes they were copied from (see copy_key).
COPIES = f"{RESERVED}/cas/copies"
FORMAT = "tierfs-manifest 1"
PART_ENTRIES = 20_000

_BAD_NAME = re.compile(r"[\x00-\x1f\x7f/\\]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_INT64 = 2**63


class ManifestError(TierfsError):
    """A manifest is missing, truncated or corrupt: it is refused as a whole."""


def validate_name(kind: str, name: str) -> str:
    """Dataset and snapshot names: one path component a user can type."""
    if not isinstance(name, str) or not name:
        raise UserError(f"{kind} name is empty")
    if name in (".", "..") or ".." in name.split("/"):
        raise UserError(f"{kind} name {name!r} may not be '.' or '..' or contain '..'")
    if name.startswith("."):
        raise UserError(f"{kind} name {name!r} may not start with a dot")
    if _BAD_NAME.search(name):
        raise UserError(f"{kind} name {name!r} may not contain '/', '\\' or control characters")
    if _SURROGATE.search(name):  # (bytes that are not UTF-8, from the command line: no object name in every store)
        raise UserError(f"{kind} name {name!r} is not valid UTF-8")
    if len(name.encode()) > 200:
        raise UserError(f"{kind} name {name!r} is longer than 200 bytes")
    return name


def _dumps(obj: Any, **kw: Any) -> str:
    """JSON text, UTF-8 as it is, except that a name that is not UTF-8 (a local lake's file
    names, as os.fsdecode gives them) is written as \\udcXX escapes, which read back the same."""
    text = json.dumps(obj, ensure_ascii=False, **kw)
    return json.dumps(obj, ensure_ascii=True, **kw) if _SURROGATE.search(text) else text


def _canonical(body: dict[str, Any]) -> bytes:
    """What meta.json's checksum covers (surrogatepass: a name that is not UTF-8 has bytes too)."""
    return json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")


def _component(value: Any, what: str) -> str:
    """One name of a path: a string a filesystem can be given and a POSIX directory can hold."""
    if not isinstance(value, str) or not value or value in (".", "..") or "/" in value or "\0" in value:
        raise ValueError(f"{what} {shown(value)} is not a file name")
    value.encode("utf-8", "surrogateescape")  # UnicodeEncodeError (a ValueError) for a lone surrogate
    return value


def _whole(value: Any, what: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < _INT64:
        raise ValueError(f"{what} {shown(value)} is not a whole number from {low} to 2**63")
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} {shown(value)} is not a string")
    return value


def snapshot_dir(dataset: str, name: str) -> str:
    return f"{SNAPSHOTS}/{dataset}/{name}"


def meta_key(dataset: str, name: str) -> str:
    return f"{snapshot_dir(dataset, name)}/meta.json"


def cas_key(sha256: str) -> str:
    return f"{CAS}/{sha256[:2]}/{sha256[2:4]}/{sha256}"


def copy_key(identity: str, run: str) -> str:
    """Where a snapshot creation (``run``) puts its copy of the bytes whose ObjectRef identity is ``identity``.

    Never written twice: a key per creation, so no other creation's copy, nor
    a copy of a newer version, can land over one a manifest names; later
    snapshots share it by reusing their predecessor's entry.
    """
    h = hashlib.sha256(identity.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{COPIES}/{h[:2]}/{h[2:4]}/{h}-{run}"


def copy_name(key: str) -> str:
    """The name gc knows a copy by: its sha256 (CAS) or its copy key's last component; '' for no copy."""
    for area in (CAS, COPIES):
        if key.startswith(f"{area}/"):
            return key.rsplit("/", 1)[-1]
    return ""


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
        return _dumps(d, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> ManifestEntry:
        """One entry, checked: a ValueError (or KeyError) says what is wrong with it.

        Names become names in a directory and keys become paths in a local
        lake, so neither may hold '/', '..' or NUL where it should not.
        """
        d = json.loads(line)
        if not isinstance(d, dict):
            raise ValueError(f"an entry is {type(d).__name__}, not an object")
        parent = _text(d["p"], "parent")
        if parent:
            for c in parent.split("/"):
                _component(c, "parent")
        name = _component(d["n"], "name")
        is_dir = d.get("d", 0)
        if is_dir not in (0, 1):
            raise ValueError(f"'d' of {name!r} is {shown(is_dir)}")
        if is_dir:
            return cls(parent, name, True)
        key = _text(d["k"], "key")
        parts = key.split("/")
        if not key or key.startswith("/") or ".." in parts or "\0" in key:
            raise ValueError(f"key {shown(key)} is not a key inside the lake")
        key.encode("utf-8", "surrogateescape")
        mode = _whole(d["m"], "mode")
        if mode > 0o7777:  # permission bits only (tierfs writes 0o644)
            raise ValueError(f"mode {mode:o} of {name!r} is more than permission bits")
        return cls(parent, name, False, _whole(d["s"], "size"), mode,
                   _whole(d["t"], "mtime", -_INT64), key, _text(d.get("v", ""), "version"),
                   _text(d.get("e", ""), "etag"), _text(d.get("h", ""), "sha256"), _text(d.get("c", ""), "cache id"))


@dataclass
class SnapshotMeta:
    dataset: str
    name: str
    prefix: str
    mode: str  # "pinned" (version ids) or "copy" (copies in .tierfs/cas/)
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
        body["checksum"] = hashlib.sha256(_canonical(body)).hexdigest()
        return _dumps(body, sort_keys=True, indent=1).encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> SnapshotMeta:
        try:
            body = json.loads(raw)
            checksum = body.pop("checksum")
        except (ValueError, KeyError, AttributeError, TypeError, RecursionError):
            raise ManifestError(f"manifest {where} is truncated or not JSON: it cannot be served; delete and recreate the snapshot") from None
        if hashlib.sha256(_canonical(body)).hexdigest() != checksum:
            raise ManifestError(f"manifest {where} fails its checksum (corrupt or edited): it cannot be served")
        if body.get("format") != FORMAT:
            raise ManifestError(f"manifest {where} has format {shown(body.get('format'))}; this tierfs reads {FORMAT!r}")
        body.pop("format")
        try:
            _check_meta(body)
        except (ValueError, TypeError) as exc:
            # A checksum that matches does not make a body right (a writer's bug, a hand edit).
            raise ManifestError(f"manifest {where} is malformed ({exc}): it cannot be served") from None
        if f"{body['dataset']}@{body['name']}" != where:  # its parts would be read from that other snapshot
            raise ManifestError(f"manifest {where} says it is {body['dataset']}@{body['name']}: it cannot be served")
        return cls(**body)


_META_TEXT = ("dataset", "name", "prefix", "mode", "message", "created_at", "creator")
_META_COUNTS = ("file_count", "dir_count", "total_size")
_PART_FIELDS = {"first", "count", "sha256", "bytes"}


def _check_meta(body: dict[str, Any]) -> None:
    """Every field of meta.json there, of its type and range; parts in order. Raises ValueError."""
    expected = set(_META_TEXT) | set(_META_COUNTS) | {"metadata", "parts"}
    if set(body) != expected:
        odd = sorted(set(body) ^ expected)[0]
        raise ValueError(f"field {odd!r} is {'missing' if odd in expected else 'unknown'}")
    for f in _META_TEXT:
        _text(body[f], f)
    for f in _META_COUNTS:
        _whole(body[f], f)
    for kind in ("dataset", "name"):
        try:
            validate_name(kind, body[kind])
        except UserError as exc:
            raise ValueError(str(exc)) from None
    if body["mode"] not in ("pinned", "copy"):
        raise ValueError(f"mode {shown(body['mode'])} is neither pinned nor copy")
    dt.datetime.fromisoformat(body["created_at"])  # (retention reads it)
    if not isinstance(body["metadata"], dict):
        raise ValueError("metadata is not an object")
    parts = body["parts"]
    if not isinstance(parts, list):
        raise ValueError("parts is not a list")
    last: tuple[str, str] | None = None
    for i, p in enumerate(parts):
        if not isinstance(p, dict) or set(p) != _PART_FIELDS:
            raise ValueError(f"part {i} is not {{first, count, sha256, bytes}}")
        first = p["first"]
        if not (isinstance(first, list) and len(first) == 2 and all(isinstance(x, str) for x in first)):
            raise ValueError(f"part {i}: first is not [parent, name]")
        if last is not None and tuple(first) <= last:
            raise ValueError(f"part {i} does not start after part {i - 1}")
        last = (first[0], first[1])
        _whole(p["count"], f"part {i}: count", 1)
        _whole(p["bytes"], f"part {i}: bytes")
        if not isinstance(p["sha256"], str) or not _SHA256.fullmatch(p["sha256"]):
            raise ValueError(f"part {i}: sha256 is not 64 hex digits")


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


def decode_part(raw: bytes, where: str, i: int, info: dict[str, Any], after: tuple[Any, ...] | None) -> list[ManifestEntry]:
    """The entries of part ``i`` (its checksum already checked), or a ManifestError saying why not.

    A checksum that matches does not make the entries right, so each is checked
    (ManifestEntry.from_json), and their order: lookups bisect on the entries and on
    meta.json's first keys, and would miss, or find another entry, were either off.
    ``after`` is the first key of the next part.
    """
    try:
        # split("\n"), not splitlines(): a name may hold \x85 or \u2028, which JSON leaves as they are.
        lines = gzip.decompress(raw).decode().split("\n")
        entries = [ManifestEntry.from_json(ln) for ln in lines if ln]
    except (OSError, zlib.error, ValueError, KeyError, EOFError, RecursionError) as exc:
        raise ManifestError(f"manifest {where}: part {i} cannot be read ({shown(str(exc), 120)})") from None
    if len(entries) != info["count"]:
        raise ManifestError(f"manifest {where}: part {i} has {len(entries)} entries, meta says {info['count']}")
    keys = [e.sort_key for e in entries]
    if (any(a >= b for a, b in itertools.pairwise(keys)) or keys[0] != tuple(info["first"])
            or (after is not None and keys[-1] >= after)):
        raise ManifestError(f"manifest {where}: part {i} is out of order: it cannot be served")
    return entries


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
        # Checked here, where a name becomes a key: '..' in either would read a meta.json from elsewhere.
        validate_name("dataset", dataset)
        validate_name("snapshot", name)
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

    def check_part(self, i: int, raw: bytes) -> list[ManifestEntry]:
        """The entries of part ``i`` from its bytes, checked (a ManifestError says why not)."""
        info = self.meta.parts[i]
        if hashlib.sha256(raw).hexdigest() != info["sha256"]:
            raise ManifestError(f"manifest {self.where}: part {i} fails its checksum (corrupt or truncated)")
        after = self._firsts[i + 1] if i + 1 < len(self._firsts) else None
        return decode_part(raw, self.where, i, info, after)

    def add_part(self, i: int, raw: bytes) -> ManifestPart:
        """Check and decode part ``i`` from its bytes, and keep it among the cached parts."""
        part = ManifestPart(self.check_part(i, raw))
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
