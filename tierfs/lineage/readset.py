"""Read-sets in the lake, read back: list, load, compare, and pin one as a snapshot."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tierfs.errors import NotFound, UserError
from tierfs.lineage.record import LINEAGE, LIVE, LineageError, Read, decode_part, job_dir
from tierfs.store.backend import Changed, Entry
from tierfs.store.objects import ObjectStore
from tierfs.versions.create import Progress, create_from_files
from tierfs.versions.manifest import ManifestEntry, SnapshotMeta, copy_key, copy_name, validate_name

log = logging.getLogger(__name__)


@dataclass
class ReadSet:
    name: str
    start: dict[str, Any]
    stop: dict[str, Any] | None  # None: still running, or its daemon died before the stop record
    reads: list[Read] = field(default_factory=list)

    @property
    def state(self) -> str:
        if self.stop is None:
            return "running or cut short (no stop record)"
        return str(self.stop.get("reason", "stopped"))


def list_jobs(store: ObjectStore) -> list[str]:
    try:
        return sorted(e.name for e in store.list_dir(LINEAGE) if e.is_dir)
    except NotFound:
        return []


def _record(store: ObjectStore, key: str) -> dict[str, Any] | None:
    try:
        raw = store.read_all(key)
    except NotFound:
        return None
    try:
        body = json.loads(raw)
        if not isinstance(body, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        raise LineageError(f"{store.url}/{key} is not a lineage record ({exc})") from None
    return body


def load(store: ObjectStore, name: str) -> ReadSet:
    """The read-set of job ``name``: its records and every part written, in the order they were written."""
    base = job_dir(name)
    start = _record(store, f"{base}/start.json")
    if start is None:
        raise UserError(f"no lineage job {name!r} in {store.url} (tierfs lineage list names those there)")
    rs = ReadSet(name, start, _record(store, f"{base}/stop.json"))
    parts = sorted(e.name for e in store.list_dir(base) if not e.is_dir and e.name.startswith("part-")
                   and e.name.endswith(".jsonl.gz"))
    for p in parts:
        rs.reads.extend(decode_part(store.read_all(f"{base}/{p}"), f"{store.url}/{base}/{p}"))
    return rs


def to_row(r: Read) -> dict[str, Any]:
    d = r.to_dict()
    d["identity"] = r.ref.identity()
    return d


@dataclass
class Diff:
    added: list[Read]
    removed: list[Read]
    changed: list[tuple[Read, Read]]  # (in A, in B): the same view and path, other bytes


def diff(a: ReadSet, b: ReadSet) -> Diff:
    """What B read that A did not (added), what A read that B did not (removed), and the same path read as
    other bytes (changed). A path read in several versions by one job counts by each of them."""
    ia = {(r.where, r.ref.identity()): r for r in a.reads}
    ib = {(r.where, r.ref.identity()): r for r in b.reads}
    wa = {r.where: r for r in a.reads}
    wb = {r.where: r for r in b.reads}
    added = [r for k, r in sorted(ib.items()) if k not in ia and r.where not in wa]
    removed = [r for k, r in sorted(ia.items()) if k not in ib and r.where not in wb]
    changed = [(wa[w], r) for (w, ident), r in sorted(ib.items())
               if w in wa and (w, ident) not in ia]
    return Diff(added, removed, changed)


# -- pin ----------------------------------------------------------------------

def pin(store: ObjectStore, name: str, dataset: str, version: str, prefix: str | None = None,
        message: str = "", jobs: int = 32) -> SnapshotMeta:
    """A snapshot DATASET@VERSION holding exactly the files job ``name`` read, as the bytes it read.

    Live-view reads are laid out by their path (under ``prefix``: by default the deepest directory holding
    them all, which becomes the snapshot's root); reads of a snapshot under ``snapshot/DS/NAME/``. A
    versioned store pins the recorded version ids. An unversioned one copies each object (server side,
    conditional on the recorded identity): one rewritten since the job read it cannot be pinned, and the
    snapshot is refused, naming those paths. Bytes a snapshot already holds (copies, content hashes)
    are named as they are, never copied again.
    """
    validate_name("dataset", dataset)
    rs = load(store, name)
    if rs.stop is None:
        raise UserError(f"lineage job {name!r} has no stop record (still running, or its daemon died): "
                        f"stop it first (tierfs lineage stop {name} MOUNTPOINT)")
    if not rs.reads:
        raise UserError(f"lineage job {name!r} read no files: nothing to pin")
    placed: dict[str, Read] = {}
    for r in rs.reads:
        path = r.path if r.view == LIVE else f"snapshot/{r.view.removeprefix('snapshot:')}/{r.path}"
        old = placed.get(path)
        if old is not None and old.ref.identity() != r.ref.identity():
            raise UserError(f"lineage job {name!r} read {path} as two different versions; a snapshot holds one")
        placed[path] = r
    root = _common_dir(list(placed)) if prefix is None else prefix.strip("/")
    files: dict[str, Entry] = {}
    for path, r in placed.items():
        if root and not path.startswith(root + "/"):
            raise UserError(f"{path} (read by {name!r}) is not under --prefix {root}")
        rel = path[len(root) + 1:] if root else path
        files[rel] = Entry(rel.rsplit("/", 1)[-1], False, r.ref.size, r.mtime_ns, r.ref)
    changed: list[str] = []
    lock = threading.Lock()

    def freeze(parent: str, e: Entry, run: str, progress: Progress) -> ManifestEntry | None:
        ref = e.ref
        assert ref is not None
        progress.add(files=1, nbytes=ref.size)
        if (ref.version and store.version_aware) or ref.content_hash or copy_name(ref.key):
            return ManifestEntry(parent, e.name, False, ref.size, 0o644, e.mtime_ns, ref.key, ref.version,
                                 ref.etag, ref.content_hash, ref.cache_id or ref.identity())
        key = copy_key(ref.identity(), run)
        try:
            store.copy_ref(ref, key)  # (conditional on the identity read: never a newer version)
        except (Changed, NotFound):
            with lock:
                changed.append("/".join(p for p in (root, parent, e.name) if p))  # (as the lake names it)
            return None
        return ManifestEntry(parent, e.name, False, ref.size, 0o644, e.mtime_ns, key, "", "", "", ref.identity())

    def refuse_if_changed() -> None:
        if changed:
            shown = ", ".join(sorted(changed)[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
            raise UserError(f"{len(changed)} of the files {name!r} read changed in the lake since (an unversioned "
                            f"store keeps no old bytes to pin): {shown}")

    return create_from_files(store, dataset, version, root, files, freeze, message=message or f"read-set of {name}",
                             metadata={"lineage": name}, jobs=jobs, before_commit=refuse_if_changed)


def _common_dir(paths: list[str]) -> str:
    dirs = [p.split("/")[:-1] for p in paths]
    common = dirs[0]
    for d in dirs[1:]:
        n = 0
        while n < min(len(common), len(d)) and common[n] == d[n]:
            n += 1
        common = common[:n]
    return "/".join(common)


def rows(rs: ReadSet) -> Iterator[dict[str, Any]]:
    for r in sorted(rs.reads, key=lambda r: (r.view, r.path, r.at)):
        yield to_row(r)
