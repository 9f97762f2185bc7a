"""Freeze a prefix of the lake into a snapshot.

The prefix is walked one directory at a time in (parent, name) order, so the
manifest streams out sorted with one directory listing in memory.

- **pinned** (the store keeps object versions): each entry records the version
  id it had; nothing is copied.
- **copy** (no versions): each object is copied once, server side where the
  store can (CopyObject, rewrite, Copy Blob, a reflink), into
  ``.tierfs/cas/copies/``, under a key named by the identity it was copied
  from and this creation; the copy is conditional on that identity (or
  checked against it), so a source rewritten meanwhile is copied again as
  its new version, never as a mix. A file whose live identity is unchanged
  since the dataset's previous snapshot reuses that snapshot's copy without
  being read or copied. Older snapshots' copies in ``.tierfs/cas/sha256/``
  (by content hash) are reused the same way.

Copies run on ``jobs`` threads with a window of entries in flight across
directories, so the manifest keeps its order while small directories do
not stall the copies.
"""

from __future__ import annotations

import datetime as dt
import getpass
import heapq
import logging
import socket
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from tierfs.errors import NotFound, StoreError, TierfsError, UserError
from tierfs.store.objects import Changed, Entry, ObjectStore
from tierfs.versions.leases import LAKE_LEASES, creating
from tierfs.versions.manifest import (
    RESERVED,
    ManifestEntry,
    ManifestReader,
    ManifestWriter,
    SnapshotMeta,
    copy_key,
    copy_name,
    snapshot_dir,
    validate_name,
)

log = logging.getLogger(__name__)


@dataclass
class Progress:
    files: int = 0
    bytes: int = 0
    copied_bytes: int = 0
    reused: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, files: int = 0, nbytes: int = 0, copied: int = 0, reused: int = 0) -> None:
        with self._lock:
            self.files += files
            self.bytes += nbytes
            self.copied_bytes += copied
            self.reused += reused


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def walk_sorted(store: ObjectStore, prefix: str) -> Iterator[tuple[str, list[Entry]]]:
    """(directory, its entries sorted by name), directories in increasing path order.

    A directory's children all sort after it, so popping the smallest pending
    directory from a heap yields the manifest's (parent, name) order.
    """
    heap = [""]
    while heap:
        rel = heapq.heappop(heap)
        entries = store.list_dir(_join(prefix, rel) if rel else prefix)
        if not prefix and not rel:
            entries = [e for e in entries if e.name != RESERVED]
        entries.sort(key=lambda e: e.name)
        for e in entries:
            if e.is_dir:
                heapq.heappush(heap, _join(rel, e.name))
        yield rel, entries


class _Previous:
    """The dataset's newest snapshot, whose copies a new one may reuse without reading the objects again.

    Its parts are read as the walk needs them, so it may be deleted (by
    retention) while this snapshot is created: from then on nothing is
    reused and objects are copied (or found by content) instead. The copies
    it named stay: no gc deletes any while this creation holds its lease.
    """

    def __init__(self, reader: ManifestReader):
        self.reader = reader
        self.gone = False

    @classmethod
    def of(cls, store: ObjectStore, dataset: str) -> _Previous | None:
        from tierfs.versions.catalog import list_snapshots

        metas = list_snapshots(store, dataset)
        if not metas:
            return None
        newest = max(metas, key=lambda m: m.created_at)
        try:
            return cls(ManifestReader(newest, store.read_all))
        except Exception:  # a broken older snapshot only costs the reuse
            return None

    def lookup(self, parent: str, name: str) -> ManifestEntry | None:
        if self.gone:
            return None
        try:
            return self.reader.lookup(parent, name)
        except TierfsError as exc:  # ManifestError (a part gone) or a store failure: only the reuse is lost
            self.gone = True
            log.info("the previous snapshot %s can no longer be read (%s); copying instead of reusing",
                     self.reader.where, exc)
            return None


def create_snapshot(
    store: ObjectStore,
    prefix: str,
    name: str,
    dataset: str | None = None,
    message: str = "",
    metadata: dict[str, Any] | None = None,
    mode: str = "auto",
    jobs: int = 32,
    on_progress: Callable[[Progress], None] | None = None,
    part_entries: int | None = None,
) -> SnapshotMeta:
    prefix = prefix.strip("/")
    dataset = validate_name("dataset", dataset or (prefix.rsplit("/", 1)[-1] if prefix else ""))
    validate_name("snapshot", name)
    if prefix.split("/", 1)[0] == RESERVED:
        raise UserError(f"{RESERVED}/ belongs to tierfs and cannot be snapshotted")
    base = snapshot_dir(dataset, name)
    if store.exists(f"{base}/meta.json"):
        raise UserError(f"snapshot {dataset}@{name} already exists; snapshots are immutable, choose another name")
    try:
        root = store.stat(prefix) if prefix else None
    except NotFound:
        raise UserError(f"prefix {prefix!r} does not exist in {store.url}") from None
    if root is not None and not root.is_dir:
        raise UserError(f"prefix {prefix!r} is a file, not a directory")
    if mode == "auto":
        mode = "pinned" if store.version_aware else "copy"
    if mode == "pinned" and not store.version_aware:
        raise UserError(f"{store.url} keeps no object versions: use copy mode (the default here)")

    meta = SnapshotMeta(
        dataset=dataset, name=name, prefix=prefix, mode=mode, message=message,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
        creator=f"{getpass.getuser()}@{socket.gethostname()}", metadata=dict(metadata or {}),
    )
    if mode != "copy":
        return _create(store, walk_sorted(store, prefix), base, meta, _freezer(store, meta.mode, None), jobs,
                       on_progress, part_entries)
    # Copy mode reuses copies already in the lake: none may be collected by a gc until this is committed.
    with creating(store, LAKE_LEASES, "snapshot", "gc"):
        meta.created_at = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")  # after any wait for a gc
        return _create(store, walk_sorted(store, prefix), base, meta,
                       _freezer(store, meta.mode, _Previous.of(store, dataset)), jobs, on_progress, part_entries)


#: How one file becomes its manifest entry: (directory in the snapshot, its listing entry, the creation's run id,
#: the progress to count it in) -> the entry, or None to leave it out.
Freeze = Callable[[str, Entry, str, Progress], "ManifestEntry | None"]


def _freezer(store: ObjectStore, mode: str, previous: _Previous | None) -> Freeze:
    return lambda rel, e, run, progress: _freeze(store, rel, e, mode, previous, progress, run)


def create_from_files(store: ObjectStore, dataset: str, name: str, prefix: str, files: dict[str, Entry],
                      freeze: Freeze, message: str = "", metadata: dict[str, Any] | None = None, jobs: int = 32,
                      before_commit: Callable[[], None] | None = None) -> SnapshotMeta:
    """A snapshot of exactly ``files`` (path under ``prefix`` -> its listing entry, ref included), not of a walk.

    ``freeze`` makes each file's entry (a read-set's pin passes its own, which never takes a newer version);
    ``before_commit`` may refuse the snapshot (raise) once every entry is made and before it becomes visible.
    """
    dataset, prefix = validate_name("dataset", dataset), prefix.strip("/")
    validate_name("snapshot", name)
    base = snapshot_dir(dataset, name)
    if store.exists(f"{base}/meta.json"):
        raise UserError(f"snapshot {dataset}@{name} already exists; snapshots are immutable, choose another name")
    meta = SnapshotMeta(
        dataset=dataset, name=name, prefix=prefix, mode="pinned" if store.version_aware else "copy",
        message=message, created_at="", creator=f"{getpass.getuser()}@{socket.gethostname()}",
        metadata=dict(metadata or {}),
    )
    with creating(store, LAKE_LEASES, "snapshot", "gc"):  # (the copies it names must outlive any gc meanwhile)
        meta.created_at = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
        return _create(store, tree_of(files), base, meta, freeze, jobs, None, None, before_commit)


def tree_of(files: dict[str, Entry]) -> Iterator[tuple[str, list[Entry]]]:
    """``files`` (path -> entry named by its last component) as walk_sorted yields a lake's: directory order."""
    children: dict[str, dict[str, Entry]] = {"": {}}
    for path, entry in files.items():
        parts = path.split("/")
        for i in range(len(parts) - 1):
            parent, sub = "/".join(parts[:i]), parts[i]
            children.setdefault(parent, {}).setdefault(sub, Entry(sub, True))
            children.setdefault(_join(parent, sub), {})
        children.setdefault("/".join(parts[:-1]), {})[parts[-1]] = entry
    heap = [""]
    while heap:
        rel = heapq.heappop(heap)
        entries = sorted(children.get(rel, {}).values(), key=lambda e: e.name)
        for e in entries:
            if e.is_dir:
                heapq.heappush(heap, _join(rel, e.name))
        yield rel, entries


def _create(store: ObjectStore, tree: Iterator[tuple[str, list[Entry]]], base: str, meta: SnapshotMeta,
            freeze: Freeze, jobs: int, on_progress: Callable[[Progress], None] | None, part_entries: int | None,
            before_commit: Callable[[], None] | None = None) -> SnapshotMeta:
    progress = Progress()
    writer = ManifestWriter(store.put_bytes, base, part_entries or 20_000)
    run = uuid.uuid4().hex[:12]
    window: deque[ManifestEntry | Future[ManifestEntry | None]] = deque()
    limit = max(64, 8 * jobs)  # entries in flight: bounded memory, and enough to keep every thread busy

    def write_oldest() -> None:
        item = window.popleft()
        entry = item.result() if isinstance(item, Future) else item
        if entry is not None:
            writer.add(entry)

    pool = ThreadPoolExecutor(max(1, jobs), thread_name_prefix="snapshot")
    written = 0
    try:
        for rel, entries in tree:
            for e in entries:  # files and directories share the (parent, name) order
                if e.is_dir:
                    window.append(ManifestEntry(rel, e.name, True))
                    meta.dir_count += 1
                else:
                    window.append(pool.submit(freeze, rel, e, run, progress))
                while len(window) > limit:
                    write_oldest()
                    written += 1
                    if on_progress is not None and not written % 512:
                        on_progress(progress)  # (a directory of a million files shows its progress too)
            if on_progress is not None:
                on_progress(progress)
        while window:
            write_oldest()
    except BaseException:
        for item in window:
            if isinstance(item, Future):
                item.cancel()
        raise
    finally:
        pool.shutdown(wait=True)
    if on_progress is not None:
        on_progress(progress)
    meta.file_count = progress.files
    meta.total_size = progress.bytes
    meta.parts = writer.finish()
    if before_commit is not None:
        before_commit()
    store.put_bytes(f"{base}/meta.json", meta.to_json())  # the commit point
    log.info("snapshot %s@%s: %d files, %d bytes, mode %s", meta.dataset, meta.name, meta.file_count,
             meta.total_size, meta.mode)
    return meta


def _freeze(store: ObjectStore, rel: str, e: Entry, mode: str, previous: _Previous | None, progress: Progress,
            run: str) -> ManifestEntry | None:
    """The manifest entry of one file: pinned, reused from the previous snapshot, or copied (None: gone meanwhile)."""
    assert e.ref is not None
    ref = e.ref
    if mode == "pinned":
        progress.add(files=1, nbytes=ref.size)
        return ManifestEntry(rel, e.name, False, ref.size, 0o644, e.mtime_ns, ref.key, ref.version,
                             ref.etag, "", ref.identity())
    old = previous.lookup(rel, e.name) if previous is not None else None
    if old is not None and not old.is_dir and old.cache_id == ref.identity() and copy_name(old.key):
        progress.add(files=1, nbytes=ref.size, reused=1)
        return ManifestEntry(rel, e.name, False, ref.size, 0o644, e.mtime_ns, old.key, "", "",
                             old.sha256, old.cache_id)
    mtime_ns = e.mtime_ns
    for _attempt in range(3):
        key = copy_key(ref.identity(), run)
        try:
            store.copy_ref(ref, key)
            break
        except (Changed, NotFound):
            pass
        try:
            now = store.stat(ref.key)
        except NotFound:
            log.info("%s was deleted while it was snapshotted; it is not in the snapshot", ref.key)
            return None
        if now.is_dir or now.ref is None:
            log.info("%s became a directory while it was snapshotted; the file is not in the snapshot", ref.key)
            return None
        log.info("%s changed while it was copied; copying its new version", ref.key)
        ref, mtime_ns = now.ref, now.mtime_ns
    else:
        raise StoreError(f"{ref.key} keeps changing while being snapshotted; try again when writers are done")
    progress.add(files=1, nbytes=ref.size, copied=ref.size)
    # The copy's key is never written again (only gc deletes it): like a content hash, it needs no ETag to be read.
    return ManifestEntry(rel, e.name, False, ref.size, 0o644, mtime_ns, key, "", "", "", ref.identity())
