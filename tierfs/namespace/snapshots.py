"""The read-only ``.snapshots/`` tree: datasets, their snapshots, and the frozen files.

``.snapshots/`` and ``.snapshots/<dataset>/`` are listings of the lake's
manifest area, refreshed like any live listing (new snapshots appear within
the metadata TTL). Below ``<dataset>/<name>/`` everything comes from that
snapshot's manifest, which never changes: those nodes are immutable and the
kernel may cache their entries, attributes and pages for good.

Manifest parts are read through the tier chain (``fetch``), so a large
manifest is fetched from the store once and then served from RAM or disk.
Every fetch is awaited here, in trio, and only the decoding of a part goes to
a worker thread (under the manifest limiter): no thread holding a limiter
token ever waits for another one (``tierfs/limits.py``). Concurrent lookups
that need the same meta.json or part share one fetch.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import trio

from tierfs.data.singleflight import SingleFlight
from tierfs.errors import NotFound, TierfsError, UserError
from tierfs.store.objects import Entry
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
    def __init__(self, list_lake_dir: ListDir, fetch: Fetch, limiter: trio.CapacityLimiter, max_open: int = 32):
        self._list_lake_dir = list_lake_dir
        self._fetch = fetch
        self._limiter = limiter  # the manifest limiter: decoding meta.json and parts
        self._readers: OrderedDict[tuple[str, str], ManifestReader] = OrderedDict()
        self._max_open = max_open
        self._opening: SingleFlight[ManifestReader] = SingleFlight()
        self._loading: SingleFlight[ManifestPart] = SingleFlight()

    async def list_dir(self, path: str) -> list[Entry]:
        parts = self._split(path)
        if not parts:
            return [Entry(e.name, True, 0, e.mtime_ns) for e in await self._datasets()]
        if len(parts) == 1:
            out = []
            for e in await self._snapshot_dirs(parts[0]):
                try:
                    reader = await self._reader(parts[0], e.name)
                except UserError:
                    continue  # not committed yet (no meta.json): not listed
                except ManifestError as exc:
                    log.warning("%s", exc)  # refused, never half-served
                    continue
                out.append(Entry(e.name, True, 0, _created_ns(reader)))
            return out
        reader = await self._reader(parts[0], parts[1])
        return [_to_entry(e, reader) for e in await self._children(reader, "/".join(parts[2:]))]

    async def entry(self, path: str) -> Entry:
        parts = self._split(path)
        if not parts:
            return Entry(SNAPSHOTS_DIR, True)
        if len(parts) == 1:
            if not any(e.name == parts[0] for e in await self._datasets()):
                raise NotFound(path)
            return Entry(parts[0], True)
        try:
            reader = await self._reader(parts[0], parts[1])
        except UserError:
            raise NotFound(path) from None
        if len(parts) == 2:
            return Entry(parts[1], True, 0, _created_ns(reader))
        parent, name = "/".join(parts[2:-1]), parts[-1]
        found = await self._lookup(reader, parent, name)
        if found is None:
            raise NotFound(path)
        return _to_entry(found, reader)

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

    async def _reader(self, dataset: str, name: str) -> ManifestReader:
        key = (dataset, name)
        reader = self._readers.get(key)
        if reader is not None:
            self._readers.move_to_end(key)
            return reader
        reader = await self._opening.run(key, lambda: self._open(dataset, name))
        self._readers[key] = reader
        while len(self._readers) > self._max_open:
            self._readers.popitem(last=False)
        return reader

    async def _open(self, dataset: str, name: str) -> ManifestReader:
        try:
            raw = await self._fetch(meta_key(dataset, name))
        except (FileNotFoundError, TierfsError) as exc:
            if is_absent(exc):
                raise UserError(f"snapshot {dataset}@{name} does not exist") from None
            raise
        return await trio.to_thread.run_sync(ManifestReader.from_meta, dataset, name, raw, limiter=self._limiter)

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
        return await trio.to_thread.run_sync(reader.add_part, i, raw, limiter=self._limiter)

    async def _lookup(self, reader: ManifestReader, parent: str, name: str) -> ManifestEntry | None:
        i = reader.part_index(parent, name)
        return None if i is None else (await self._part(reader, i)).find(parent, name)

    async def _children(self, reader: ManifestReader, parent: str) -> list[ManifestEntry]:
        """The entries of ``parent``, in name order, from the parts that hold them."""
        out: list[ManifestEntry] = []
        i = reader.part_index(parent)
        while i is not None and i < reader.part_count:
            entries, more = (await self._part(reader, i)).children(parent)
            out.extend(entries)
            if not more:
                break
            i += 1
        return out


def _created_ns(reader: ManifestReader) -> int:
    try:
        return int(dt.datetime.fromisoformat(reader.meta.created_at).timestamp() * 1e9)
    except ValueError:
        return 0


def _to_entry(e: ManifestEntry, reader: ManifestReader) -> Entry:
    if e.is_dir:
        return Entry(e.name, True, 0, _created_ns(reader))
    return Entry(e.name, False, e.size, e.mtime_ns, e.ref())
