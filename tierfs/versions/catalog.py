"""Managing snapshots: list, show, diff, delete, and garbage-collect copies."""

from __future__ import annotations

import logging
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tierfs.errors import NotFound, UserError
from tierfs.store.objects import ObjectStore
from tierfs.versions.leases import LAKE_LEASES, sweeping
from tierfs.versions.manifest import (
    CAS,
    COPIES,
    RESERVED,
    SNAPSHOTS,
    ManifestEntry,
    ManifestError,
    ManifestReader,
    SnapshotMeta,
    copy_name,
    snapshot_dir,
    validate_name,
)

log = logging.getLogger(__name__)
CAS_TMP = f"{RESERVED}/cas/tmp"


def list_datasets(store: ObjectStore) -> list[str]:
    try:
        return sorted(e.name for e in store.list_dir(SNAPSHOTS) if e.is_dir)
    except NotFound:
        return []


def list_snapshots(store: ObjectStore, dataset: str) -> list[SnapshotMeta]:
    """The committed snapshots of a dataset, oldest first. Corrupt ones are skipped with a warning."""
    try:
        names = [e.name for e in store.list_dir(f"{SNAPSHOTS}/{dataset}") if e.is_dir]
    except NotFound:
        return []
    metas = []
    for name in names:
        try:
            metas.append(open_snapshot(store, dataset, name).meta)
        except UserError:
            continue  # not committed (meta.json not yet written, or deleted)
        except ManifestError as exc:
            log.warning("%s", exc)
    return sorted(metas, key=lambda m: m.created_at)


def open_snapshot(store: ObjectStore, dataset: str, name: str) -> ManifestReader:
    validate_name("dataset", dataset)
    validate_name("snapshot", name)
    return ManifestReader.open(dataset, name, store.read_all)


def pinned(store: ObjectStore) -> tuple[set[str], set[tuple[str, str]]]:
    """What pinned-mode snapshots read, from one pass over their manifests.

    Returns the lake keys (lifecycle must not expire or archive them) and the
    (key, version id) pairs (no transition may delete those versions).
    """
    keys: set[str] = set()
    versions: set[tuple[str, str]] = set()
    for ds in list_datasets(store):
        for meta in list_snapshots(store, ds):
            if meta.mode != "pinned":
                continue
            for e in open_snapshot(store, ds, meta.name):
                if not e.is_dir:
                    keys.add(e.key)
                    if e.version:
                        versions.add((e.key, e.version))
    return keys, versions


def delete_snapshot(store: ObjectStore, dataset: str, name: str, created_at: str | None = None) -> SnapshotMeta:
    """Remove a snapshot: its meta.json first (so it is gone at once), then its parts.

    ``created_at``: only the snapshot made then (what a retention rule
    evaluated), not one made again under the same name since; UserError if
    it is another. The copies it referenced stay until ``gc``.
    """
    validate_name("dataset", dataset)  # before the names become a key ('..', NUL)
    validate_name("snapshot", name)
    base = snapshot_dir(dataset, name)
    try:
        ref = store.stat(f"{base}/meta.json").ref
    except NotFound:
        raise UserError(f"snapshot {dataset}@{name} does not exist") from None
    meta = open_snapshot(store, dataset, name).meta
    if created_at is not None and meta.created_at != created_at:
        raise UserError(f"snapshot {dataset}@{name} was created again since it was listed; not deleted")
    if ref is None or not store.delete_if(f"{base}/meta.json", ref):  # only the meta.json read may go
        raise UserError(f"snapshot {dataset}@{name} changed or went while it was being deleted; not deleted")
    for i in range(len(meta.parts)):
        store.delete(f"{base}/part-{i:05d}.jsonl.gz")
    return meta


@dataclass
class Change:
    path: str
    kind: str  # added, removed, changed
    old_size: int | None = None
    new_size: int | None = None


def diff(a: ManifestReader, b: ManifestReader) -> Iterator[Change]:
    """Files added, removed and changed from ``a`` to ``b``: a merge of two sorted streams."""
    ia = (e for e in a if not e.is_dir)
    ib = (e for e in b if not e.is_dir)
    ea, eb = next(ia, None), next(ib, None)
    while ea is not None or eb is not None:
        if eb is None or (ea is not None and ea.sort_key < eb.sort_key):
            assert ea is not None
            yield Change(ea.path, "removed", old_size=ea.size)
            ea = next(ia, None)
        elif ea is None or eb.sort_key < ea.sort_key:
            yield Change(eb.path, "added", new_size=eb.size)
            eb = next(ib, None)
        else:
            if not _same_bytes(ea, eb):
                yield Change(ea.path, "changed", ea.size, eb.size)
            ea, eb = next(ia, None), next(ib, None)


def _same_bytes(a: ManifestEntry, b: ManifestEntry) -> bool:
    if a.size != b.size:
        return False
    if a.sha256 and b.sha256:
        return a.sha256 == b.sha256
    if a.cache_id and b.cache_id:  # the identity the bytes had when frozen: two copies of one version are the same
        return a.cache_id == b.cache_id
    return (a.key, a.version, a.cache_id) == (b.key, b.version, b.cache_id)


@dataclass
class GcReport:
    referenced: int = 0
    kept: int = 0
    removed: list[tuple[str, int]] = field(default_factory=list)
    #: Why nothing was removed this time ('' if gc ran): a snapshot being created.
    deferred: str = ""

    @property
    def removed_bytes(self) -> int:
        return sum(n for _, n in self.removed)


def gc(store: ObjectStore, dry_run: bool = False, grace_seconds: float = 3600.0,
       on_progress: Callable[[str], None] | None = None) -> GcReport:
    """Remove snapshots' copies (``cas/sha256/`` by content, ``cas/copies/`` by source identity) no snapshot references.

    Never a copy a snapshot being created may reuse: gc holds a sweep lease
    while it runs and deletes nothing if a snapshot's creation lease is live;
    a snapshot that starts meanwhile waits for gc to finish before it looks
    at the copies (``tierfs.versions.leases`` says why that is sound). A dry
    run takes no lease and says what an unobstructed gc would remove.

    The referenced set is built from every manifest (checksums checked: a
    manifest that cannot be read stops gc, since what it pins is unknown),
    in an on-disk table so memory stays bounded. Copies younger than the
    grace period are kept as well: a copy in ``cas/copies`` or ``cas/tmp``
    may be one a snapshot is writing (one from before leases, or past its
    lease's expiry).
    """
    if dry_run:
        return _gc(store, True, grace_seconds, on_progress)
    with sweeping(store, LAKE_LEASES, "gc", "snapshot") as creations:
        if creations:
            why = f"{creations[0]} is under way" + (f" (and {len(creations) - 1} more)" if len(creations) > 1 else "")
            log.info("gc removed nothing: %s; run it again when it is done", why)
            return GcReport(deferred=why)
        return _gc(store, False, grace_seconds, on_progress)


def _gc(store: ObjectStore, dry_run: bool, grace_seconds: float,
        on_progress: Callable[[str], None] | None) -> GcReport:
    report = GcReport()
    with tempfile.TemporaryDirectory(prefix="tierfs-gc-") as tmp:
        db = sqlite3.connect(Path(tmp) / "refs.db")
        db.execute("CREATE TABLE ref (h TEXT PRIMARY KEY)")
        for dataset in list_datasets(store):
            try:
                names = [e.name for e in store.list_dir(f"{SNAPSHOTS}/{dataset}") if e.is_dir]
            except NotFound:
                continue
            for name in names:
                try:
                    reader = open_snapshot(store, dataset, name)
                except UserError:
                    continue  # no meta.json: nothing committed refers to anything
                except ManifestError as exc:
                    raise UserError(f"gc stopped, nothing removed: {exc}") from None
                if on_progress:
                    on_progress(f"reading {dataset}@{name}")
                try:
                    batch = []
                    for e in reader:
                        name = "" if e.is_dir else copy_name(e.key) or e.sha256
                        if name:
                            batch.append((name,))
                            if len(batch) >= 10_000:
                                db.executemany("INSERT OR IGNORE INTO ref VALUES (?)", batch)
                                batch = []
                    db.executemany("INSERT OR IGNORE INTO ref VALUES (?)", batch)
                except ManifestError as exc:
                    raise UserError(f"gc stopped, nothing removed: {exc}") from None
        report.referenced = db.execute("SELECT count(*) FROM ref").fetchone()[0]
        now = time.time()
        for area, is_tmp in ((CAS, False), (COPIES, False), (CAS_TMP, True)):
            for obj in store.walk_files(area):
                name = obj.name.rsplit("/", 1)[-1]
                young = now - obj.mtime_ns / 1e9 < grace_seconds
                if not is_tmp and db.execute("SELECT 1 FROM ref WHERE h = ?", (name,)).fetchone():
                    report.kept += 1
                    continue
                if young:
                    report.kept += 1
                    continue
                key = f"{area}/{obj.name}"
                report.removed.append((key, obj.size))
                if on_progress:
                    on_progress(key)
                if not dry_run:
                    store.delete(key)
        db.close()
    return report
