"""Lookups in a snapshot through its manifest's local index, built once, in the background.

The first lookup or listing inside a snapshot opens the index of its manifest
(``versions/index_dir.py``) or, if there is none, starts its one builder (a
task of the mount's nursery; single-flight per manifest). The builder reads
the parts in order, straight from the store (they are never needed again, so
no tier is filled with them), and a lookup meanwhile waits only until the
part it needs is in: the first ``ls`` of a million-file snapshot waits for
one part, not for the whole manifest, and no part is decoded twice. Once all
parts are in and the reads of the temp file are done, the file is sealed and
renamed, and the lookups go to it.

Every LMDB call runs in a worker thread under the manifest limiter. What the
callers get back: an entry, or a list of them, or ``NO_INDEX`` where no index
can be kept (the local disk refused): then they read the manifest's parts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import trio

from tierfs.data.singleflight import SingleFlight
from tierfs.limits import in_thread
from tierfs.metrics import Counters
from tierfs.refs import ObjectRef
from tierfs.versions.index_dir import ManifestIndexes
from tierfs.versions.manifest import ManifestEntry, ManifestError, ManifestReader
from tierfs.versions.manifest_index import IndexBuilder, IndexUnavailable, ManifestIndex, decode_value, encode_value

log = logging.getLogger(__name__)

T = TypeVar("T")


class NoIndex:
    def __repr__(self) -> str:
        return "NO_INDEX"


NO_INDEX = NoIndex()


class Build:
    """A build under way: its builder, how many parts are in, and who is reading the temp file."""

    __slots__ = ("builder", "done", "changed", "sealing", "readers", "idle", "error")

    def __init__(self, builder: IndexBuilder):
        self.builder = builder
        self.done = 0  # parts in the file (readable)
        self.changed = trio.Event()  # set, and replaced, at each part and at the end
        self.sealing = False  # every part is in: new reads wait for the sealed file
        self.readers = 0
        self.idle = trio.Event()
        self.error: BaseException | None = None  # why it stopped (a store failure: the next lookup tries again)

    def wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


class Snapshot:
    """One snapshot as the tree knows it: its manifest's reader and its local index, or the build of it."""

    __slots__ = ("reader", "manifest", "root", "index", "build", "parts_only", "refused")

    def __init__(self, reader: ManifestReader, manifest: str):
        self.reader = reader
        self.root = f".snapshots/{reader.meta.dataset}/{reader.meta.name}"  # (its nodes' refs share it)
        self.manifest = manifest  # the manifest's name (the hash of its meta.json)
        self.index: ManifestIndex | None = None
        self.build: Build | None = None
        self.parts_only = False  # no index can be kept: its parts are read instead
        self.refused: ManifestError | None = None  # a part failed its checks: refused whole, for good


class PackedRef:
    """A snapshot file's ObjectRef in the form its manifest's index keeps it: about 170 bytes where the
    ObjectRef and its strings (a copy's key, its hash, the live identity) take about 460; a node keeps this
    and decodes it when asked (at an open: microseconds, no I/O)."""

    __slots__ = ("raw", "root", "prefix")

    def __init__(self, raw: bytes, root: str, prefix: str):
        self.raw = raw
        self.root = root  # the snapshot's directory in the mount (shared by its nodes)
        self.prefix = prefix  # its prefix in the lake (shared)

    @classmethod
    def of(cls, ref: ObjectRef, root: str, prefix: str, parent: str, name: str) -> PackedRef:
        """``parent``: the file's directory in the snapshot."""
        entry = ManifestEntry(parent, name, False, ref.size, 0, 0, ref.key, ref.version, ref.etag,
                              ref.content_hash, ref.cache_id)
        return cls(encode_value(entry, prefix), root, prefix)

    def unpack(self, parent: str, name: str) -> ObjectRef:
        """``parent``: the file's directory in the mount."""
        inner = parent[len(self.root) + 1:] if parent != self.root else ""
        ref = decode_value(inner, name, self.raw, self.prefix).ref()
        assert ref is not None
        return ref


class SnapshotIndex:
    def __init__(self, indexes: ManifestIndexes | None, read_part: Callable[[str], bytes] | None,
                 limiter: trio.CapacityLimiter, counters: Counters):
        self._indexes = indexes if read_part is not None else None
        self._read_part = read_part
        self._limiter = limiter
        self.counters = counters
        self._nursery: trio.Nursery | None = None
        self._beginning: SingleFlight[None] = SingleFlight()

    def start(self, nursery: trio.Nursery) -> None:
        """Builds run in ``nursery`` (the mount's); without one, in the task that first needs the index."""
        self._nursery = nursery

    async def lookup(self, snap: Snapshot, parent: str, name: str) -> ManifestEntry | NoIndex | None:
        part = snap.reader.part_index(parent, name)
        if part is None:
            return None  # (an empty manifest)
        return await self._read(snap, part, part, lambda source: source.lookup(parent, name))

    async def children(self, snap: Snapshot, parent: str) -> list[ManifestEntry] | NoIndex:
        first, last = snap.reader.part_index(parent), snap.reader.part_index(parent + "\0")
        if first is None or last is None:
            return []
        return await self._read(snap, first, last, lambda source: source.children(parent))

    # -- internals ----------------------------------------------------------------
    async def _read(self, snap: Snapshot, first: int, last: int,
                    fn: Callable[[ManifestIndex | IndexBuilder], T]) -> T | NoIndex:
        """``fn`` of the index, or of the temp file once parts ``first``..``last`` are in it."""
        if self._indexes is None:
            return NO_INDEX
        while True:
            if snap.refused is not None:
                raise snap.refused
            if snap.index is not None:
                self.counters.add("index_lookups")
                return await in_thread(fn, snap.index, limiter=self._limiter)
            if snap.parts_only:
                return NO_INDEX
            build = snap.build
            if build is None:
                await self._beginning.run(snap.manifest, lambda: self._begin(snap))
                continue
            if build.done > last and not build.sealing:
                self.counters.add("index_lookups")
                build.readers += 1
                try:
                    return await in_thread(fn, build.builder, limiter=self._limiter)
                finally:
                    build.readers -= 1
                    if not build.readers:
                        build.idle.set()
            changed = build.changed
            await changed.wait()
            if build.error is not None and snap.build is None:
                raise build.error

    async def _begin(self, snap: Snapshot) -> None:
        """Open the manifest's index, or start its build; says which in ``snap``."""
        if snap.index is not None or snap.build is not None or snap.parts_only or snap.refused is not None:
            return
        assert self._indexes is not None
        try:
            index = await in_thread(self._indexes.open, snap.reader, snap.manifest, limiter=self._limiter)
            if index is not None:
                snap.index = index
                return
            builder = await in_thread(self._indexes.builder, snap.reader, snap.manifest, limiter=self._limiter)
        except IndexUnavailable as exc:
            self._no_index(snap, exc)
            return
        build = snap.build = Build(builder)
        if self._nursery is not None:
            self._nursery.start_soon(self._run, snap, build)
            return
        await self._run(snap, build)
        if build.error is not None:
            raise build.error

    async def _run(self, snap: Snapshot, build: Build) -> None:
        """The build: every part in, then the file sealed. Never raises but Cancelled (a task of the mount)."""
        assert self._indexes is not None and self._read_part is not None
        t0 = time.monotonic()
        try:
            for i in range(snap.reader.part_count):
                await in_thread(build.builder.add_from, i, self._read_part, limiter=self._limiter)
                self.counters.add("parts_decoded")
                build.done = i + 1
                build.wake()
            build.sealing = True  # (no new read of the temp file starts: wait for those under way)
            while build.readers:
                build.idle = trio.Event()
                await build.idle.wait()
            snap.index = await in_thread(self._indexes.commit, build.builder, limiter=self._limiter)
            ms = int(1000 * (time.monotonic() - t0))
            self.counters.add("index_build_ms", ms)
            log.info("manifest %s: local index built (%d parts, %.1f s)", snap.reader.where,
                     snap.reader.part_count, ms / 1000)
        except IndexUnavailable as exc:
            self._no_index(snap, exc)
        except ManifestError as exc:
            snap.refused = exc  # (a manifest never changes: neither does what is wrong with it)
        except Exception as exc:  # (the store failed: the lookups waiting get the error, the next ones try again)
            log.warning("manifest %s: its local index could not be built: %s", snap.reader.where, exc)
            build.error = exc
        finally:
            if snap.index is None:
                with trio.CancelScope(shield=True):
                    await in_thread(build.builder.abort, limiter=self._limiter)
            snap.build = None
            build.wake()

    def _no_index(self, snap: Snapshot, exc: IndexUnavailable) -> None:
        log.warning("%s", exc)
        self.counters.add("index_fallbacks")
        snap.parts_only = True
