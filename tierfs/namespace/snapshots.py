"""The read-only ``.snapshots/`` tree: datasets, their snapshots, and the frozen files.

``.snapshots/`` and ``.snapshots/<dataset>/`` are listings of the lake's
manifest area, refreshed like any live listing (new snapshots appear within
the metadata TTL). Below ``<dataset>/<name>/`` everything comes from that
snapshot's manifest, which never changes: those nodes are immutable and the
kernel may cache their entries, attributes and pages for good.

A lookup or a listing inside a snapshot is a key read or a range scan of
the manifest's local index, built the first time a snapshot is entered, once
per manifest and node (``snapshot_index.py``). Where no index can be kept
(the local disk refuses), the parts are read through the tier chain
(``fetch``) and kept decoded in memory, a few at a time, as before the index.

meta.json is read through the tier chain. Every fetch is awaited here, in
trio, and each blocking step (a part's read and decoding, an LMDB read) goes
to a worker thread under the manifest limiter: no thread holding a limiter
token ever waits for another one (``tierfs/limits.py``). Concurrent lookups
that need the same meta.json, index or part share one fetch.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import trio

from tierfs.data.singleflight import SingleFlight
from tierfs.errors import NotFound, TierfsError, UserError
from tierfs.limits import in_thread
from tierfs.metrics import Counters
from tierfs.namespace.snapshot_index import NoIndex, PackedRef, Snapshot, SnapshotIndex
from tierfs.refs import ObjectRef
from tierfs.store.objects import Entry
from tierfs.versions.index_dir import INDEX_COUNTERS, ManifestIndexes, manifest_id
from tierfs.versions.manifest import (
    SNAPSHOTS,
    ManifestEntry,
    ManifestError,
    ManifestPart,
    ManifestReader,
    is_absent,
    meta_key,
)

log = logging.getLogger(__name__)

SNAPSHOTS_DIR = ".snapshots"

ListDir = Callable[[str], Awaitable[list[Entry]]]
Fetch = Callable[[str], Awaitable[bytes]]  # a whole lake object (raises NotFound if absent)


def in_tree(path: str) -> bool:
    return path == SNAPSHOTS_DIR or path.startswith(SNAPSHOTS_DIR + "/")


def is_immutable(path: str) -> bool:
    """Inside one snapshot (``.snapshots/<dataset>/<name>/…``): never changes."""
    return path.count("/") >= 2 and in_tree(path)


class SnapshotTree:
    def __init__(self, list_lake_dir: ListDir, fetch: Fetch, limiter: trio.CapacityLimiter, max_open: int = 32,
                 indexes: ManifestIndexes | None = None, read_part: Callable[[str], bytes] | None = None):
        """``indexes`` and ``read_part`` (a whole lake object, from the store): keep manifests in local indexes;
        without them the parts are decoded in memory."""
        self._list_lake_dir = list_lake_dir
        self._fetch = fetch
        self._limiter = limiter  # the manifest limiter: decoding meta.json and parts, index reads
        self._readers: OrderedDict[tuple[str, str], Snapshot] = OrderedDict()
        self._max_open = max_open
        self._opening: SingleFlight[Snapshot] = SingleFlight()
        self._loading: SingleFlight[ManifestPart] = SingleFlight()
        self._indexes = indexes if read_part is not None else None
        self.counters = indexes.stats if indexes is not None else Counters(INDEX_COUNTERS)
        self._index = SnapshotIndex(self._indexes, read_part, limiter, self.counters)
        self._listed: dict[str, frozenset[str]] = {}  # what was last told to the indexes, by dataset ('': datasets)

    def start(self, nursery: trio.Nursery) -> None:
        """Manifest indexes are built in ``nursery`` (the mount's), while the lookups that need them wait."""
        self._index.start(nursery)

    def stats(self) -> dict[str, int]:
        return self.counters.snapshot()

    def close(self) -> None:
        """At unmount (the trio loop is done): indexes closed, a private index directory removed."""
        if self._indexes is not None:
            self._indexes.close()

    async def list_dir(self, path: str) -> list[Entry]:
        parts = self._split(path)
        if not parts:
            datasets = await self._datasets()
            await self._keep_only("", {e.name for e in datasets})
            return [Entry(e.name, True, 0, e.mtime_ns) for e in datasets]
        if len(parts) == 1:
            out = []
            for e in await self._snapshot_dirs(parts[0]):
                try:
                    snap = await self._reader(parts[0], e.name)
                except UserError:
                    continue  # not committed yet (no meta.json): not listed
                except ManifestError as exc:
                    log.warning("%s", exc)  # refused, never half-served
                    continue
                out.append(Entry(e.name, True, 0, _created_ns(snap.reader)))
            await self._keep_only(parts[0], {e.name for e in out})
            return out
        snap = await self._reader(parts[0], parts[1])
        return [_to_entry(e, snap.reader) for e in await self._children(snap, "/".join(parts[2:]))]

    async def entry(self, path: str) -> Entry:
        parts = self._split(path)
        if not parts:
            return Entry(SNAPSHOTS_DIR, True)
        if len(parts) == 1:
            if not any(e.name == parts[0] for e in await self._datasets()):
                raise NotFound(path)
            return Entry(parts[0], True)
        try:
            snap = await self._reader(parts[0], parts[1])
        except UserError:
            raise NotFound(path) from None
        if len(parts) == 2:
            return Entry(parts[1], True, 0, _created_ns(snap.reader))
        parent, name = "/".join(parts[2:-1]), parts[-1]
        found = await self._lookup(snap, parent, name)
        if found is None:
            raise NotFound(path)
        return _to_entry(found, snap.reader)

    def pack(self, parent: str, name: str, ref: ObjectRef) -> ObjectRef | PackedRef:
        """A snapshot file's ref as its node keeps it: packed, as the index holds it (``parent``: its
        directory in the mount)."""
        parts = self._split(parent)
        snap = self._readers.get((parts[0], parts[1])) if len(parts) >= 2 else None
        if snap is None:
            return ref
        return PackedRef.of(ref, snap.root, snap.reader.meta.prefix, "/".join(parts[2:]), name)

    def lake_path(self, path: str) -> str | None:
        """Where the lake kept the file a path inside an open snapshot froze (None: not known here)."""
        parts = self._split(path)
        snap = self._readers.get((parts[0], parts[1])) if len(parts) >= 3 else None
        if snap is None:
            return None
        return "/".join([p for p in snap.reader.meta.prefix.split("/") if p] + parts[2:])

    # -- internals --------------------------------------------------------
    @staticmethod
    def _split(path: str) -> list[str]:
        rest = path[len(SNAPSHOTS_DIR):].strip("/")
        return rest.split("/") if rest else []

    async def _datasets(self) -> list[Entry]:
        try:
            return [e for e in await self._list_lake_dir(SNAPSHOTS) if e.is_dir]
        except NotFound:
            return []

    async def _snapshot_dirs(self, dataset: str) -> list[Entry]:
        try:
            return [e for e in await self._list_lake_dir(f"{SNAPSHOTS}/{dataset}") if e.is_dir]
        except NotFound:
            raise NotFound(dataset) from None

    async def _reader(self, dataset: str, name: str) -> Snapshot:
        key = (dataset, name)
        snap = self._readers.get(key)
        if snap is not None:
            self._readers.move_to_end(key)
            return snap
        try:
            snap = await self._opening.run(key, lambda: self._open(dataset, name))
        except UserError:
            await self._forget(dataset, name)
            raise
        self._readers[key] = snap
        excess = len(self._readers) - self._max_open
        if excess > 0:  # the least recently used go (an index closes once its last read is done); one being built stays
            for old in [k for k, s in self._readers.items() if s.build is None][:excess]:
                del self._readers[old]
        return snap

    async def _open(self, dataset: str, name: str) -> Snapshot:
        try:
            raw = await self._fetch(meta_key(dataset, name))
        except (FileNotFoundError, TierfsError) as exc:
            if is_absent(exc):
                raise UserError(f"snapshot {dataset}@{name} does not exist") from None
            raise
        reader = await in_thread(ManifestReader.from_meta, dataset, name, raw, limiter=self._limiter)
        return Snapshot(reader, manifest_id(raw))

    # -- the local index ---------------------------------------------------
    async def _keep_only(self, dataset: str, names: set[str]) -> None:
        """What the lake lists now: the indexes of the snapshots (or datasets) it no longer has go."""
        if self._indexes is None or self._listed.get(dataset) == (listed := frozenset(names)):
            return
        self._listed[dataset] = listed
        await in_thread(self._indexes.keep_only, dataset, names, limiter=self._limiter)

    async def _forget(self, dataset: str, name: str) -> None:
        if self._indexes is not None:
            await in_thread(self._indexes.forget, dataset, name, limiter=self._limiter)

    # -- lookups and listings -------------------------------------------------
    async def _lookup(self, snap: Snapshot, parent: str, name: str) -> ManifestEntry | None:
        found = await self._index.lookup(snap, parent, name)
        if not isinstance(found, NoIndex):
            return found
        i = snap.reader.part_index(parent, name)
        return None if i is None else (await self._part(snap.reader, i)).find(parent, name)

    async def _children(self, snap: Snapshot, parent: str) -> list[ManifestEntry]:
        """The entries of ``parent``, in name order: one range of the index, or the parts that hold them."""
        listed = await self._index.children(snap, parent)
        if not isinstance(listed, NoIndex):
            return listed
        reader = snap.reader
        out: list[ManifestEntry] = []
        i = reader.part_index(parent)
        while i is not None and i < reader.part_count:
            entries, more = (await self._part(reader, i)).children(parent)
            out.extend(entries)
            if not more:
                break
            i += 1
        return out

    async def _part(self, reader: ManifestReader, i: int) -> ManifestPart:
        part = reader.cached_part(i)
        if part is not None:
            return part
        return await self._loading.run((reader.where, i), lambda: self._load(reader, i))

    async def _load(self, reader: ManifestReader, i: int) -> ManifestPart:
        try:
            raw = await self._fetch(reader.part_key(i))
        except (FileNotFoundError, TierfsError) as exc:
            if is_absent(exc):
                raise reader.missing_part(i) from None
            raise
        part = await in_thread(reader.add_part, i, raw, limiter=self._limiter)
        self.counters.add("parts_decoded")
        return part


def _created_ns(reader: ManifestReader) -> int:
    try:
        return int(dt.datetime.fromisoformat(reader.meta.created_at).timestamp() * 1e9)
    except ValueError:
        return 0


def _to_entry(e: ManifestEntry, reader: ManifestReader) -> Entry:
    if e.is_dir:
        return Entry(e.name, True, 0, _created_ns(reader))
    return Entry(e.name, False, e.size, e.mtime_ns, e.ref())
