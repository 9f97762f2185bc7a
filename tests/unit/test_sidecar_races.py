"""The sidecar's deletions against a writer working at the same time, each race reproduced step by step.

A hook between what a job looked at and what it deletes (its progress
callback, or the store's delete) makes the other side act exactly there:
rewrite the object a lifecycle rule evaluated, create a snapshot while gc
deletes, expire backups while a backup runs. All on a file:// lake.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import assert_one_line_error, random_bytes, run_tierfs, write_tree

from tierfs.config import load
from tierfs.errors import UserError
from tierfs.sidecar.backup import blob_key, expire, list_backups, restore, run_backup
from tierfs.sidecar.cost import plan_lake
from tierfs.sidecar.lifecycle import apply_actions
from tierfs.sidecar.retention import expire_snapshots, expired_snapshots
from tierfs.sidecar.rules import Retention, parse_rules
from tierfs.store.objects import ObjectStore
from tierfs.versions.catalog import delete_snapshot, gc, open_snapshot
from tierfs.versions.create import create_snapshot
from tierfs.versions.leases import LAKE_LEASES, LEASE_TTL
from tierfs.versions.manifest import COPIES

HOUR = 3600.0
X = random_bytes(5000, seed=7)  # the content a copy (or blob) of which outlives its first owner
X_BLOB = blob_key(hashlib.sha256(X).hexdigest())


def _store(root: Path) -> ObjectStore:
    return ObjectStore.open(load(None, {"lake_url": f"file://{root}"}))


def _age(paths: Any, seconds: float) -> None:
    then = time.time() - seconds
    for p in paths:
        os.utime(p, (then, then))


def _other_side(target: Any, started: threading.Event | None = None) -> tuple[threading.Thread, list[Any]]:
    """Run ``target`` in a thread ("another node"); its result or exception lands in the list."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(target())
        except BaseException as exc:
            out.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


# -- lifecycle expiration -----------------------------------------------------------------
def test_expiration_spares_an_object_rewritten_after_the_plan(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    write_tree(root, {"experiments/old.log": b"old run", "experiments/also-old.log": b"old too"})
    _age([root / "experiments/old.log", root / "experiments/also-old.log"], 100 * 86400)
    store = _store(root)
    rules = parse_rules({"rule": [{"id": "exp", "prefix": "experiments/", "expiration_days": 90}]}, "s3")
    plan = plan_lake(store, load(None, {"lake_url": f"file://{root}"}), "s3", rules, time.time())
    assert sorted(a.key for a in plan.actions) == ["experiments/also-old.log", "experiments/old.log"]
    # another writer puts a new run's log under the same key after the plan evaluated the old one
    tmp = root / "experiments/.new"
    tmp.write_bytes(b"a run from today")
    os.replace(tmp, root / "experiments/old.log")
    moved, expired = apply_actions(store, plan.actions)
    assert (root / "experiments/old.log").read_bytes() == b"a run from today"
    assert not (root / "experiments/also-old.log").exists()
    assert (moved, expired) == (0, 1)


# -- gc and snapshot creation -----------------------------------------------------------------
def _lake_with_an_old_unreferenced_copy(tmp_path: Path, unreferenced: bool = True) -> tuple[Path, ObjectStore, Path]:
    """A lake whose copies hold X, older than gc's grace, and referenced by no snapshot any more (unless not
    ``unreferenced``: then snapshot s1 still names it)."""
    root = tmp_path / "lake"
    write_tree(root, {"data/a.bin": X, "data/b.bin": b"b"})
    store = _store(root)
    create_snapshot(store, "data", "s1")
    if unreferenced:
        delete_snapshot(store, "data", "s1")
    copies = [p for p in (root / COPIES).rglob("*") if p.is_file()]
    _age(copies, 2 * HOUR)
    [copy] = [p for p in copies if p.read_bytes() == X]
    return root, store, copy


def _readable(store: ObjectStore, dataset: str, name: str) -> dict[str, bytes]:
    out = {}
    for e in open_snapshot(store, dataset, name):
        ref = e.ref()
        if ref is not None:
            out[e.path] = store.read_range(ref, 0, ref.size) if ref.size else b""
    return out


def test_gc_during_a_snapshot_keeps_the_copies_it_reuses(tmp_path: Path) -> None:
    """Retention deletes the snapshot a creation reuses copies from, and gc runs: those copies stay."""
    root, store, copy = _lake_with_an_old_unreferenced_copy(tmp_path, unreferenced=False)
    reports = []

    def gc_now(progress: Any) -> None:
        if progress.reused and not reports:  # once, after the snapshot reused X's copy from s1
            delete_snapshot(store, "data", "s1")
            reports.append(gc(store))

    create_snapshot(store, "data", "s2", on_progress=gc_now)
    assert reports and reports[0].deferred
    assert copy.exists()
    assert _readable(store, "data", "s2") == {"a.bin": X, "b.bin": b"b"}


def test_a_snapshot_started_during_gc_does_not_reuse_what_gc_deletes(tmp_path: Path) -> None:
    root, store, copy = _lake_with_an_old_unreferenced_copy(tmp_path)
    other: list[tuple[threading.Thread, list[Any]]] = []

    def snapshot_now(what: str) -> None:
        if what.startswith(COPIES) and not other:  # gc is about to delete its first copy
            other.append(_other_side(lambda: create_snapshot(store, "data", "s2")))
            other[0][0].join(timeout=3)  # a snapshot that does not wait for gc is done by now

    gc(store, on_progress=snapshot_now)
    [(thread, result)] = other
    thread.join(timeout=60)
    assert result and not isinstance(result[0], BaseException), result
    assert _readable(store, "data", "s2") == {"a.bin": X, "b.bin": b"b"}


def test_gc_removes_unreferenced_copies_when_no_snapshot_is_being_made(tmp_path: Path) -> None:
    root, store, copy = _lake_with_an_old_unreferenced_copy(tmp_path)
    report = gc(store)
    assert not copy.exists() and report.removed


def test_retention_during_a_snapshot_deletes_the_one_it_reuses_from(tmp_path: Path) -> None:
    """The previous snapshot goes while a new one reads it: the new one copies instead, and is whole."""
    root = tmp_path / "lake"
    write_tree(root, {"data/a/x.bin": X, "data/b/y.bin": b"y"})
    store = _store(root)
    create_snapshot(store, "data", "s1")
    deleted: list[str] = []

    def retention_now(_progress: Any) -> None:
        if not deleted:  # after the root's entries, before any file was looked up in s1
            deleted.append(delete_snapshot(store, "data", "s1").name)

    create_snapshot(store, "data", "s2", on_progress=retention_now)
    assert deleted == ["s1"]
    assert _readable(store, "data", "s2") == {"a/x.bin": X, "b/y.bin": b"y"}


def test_a_dead_snapshots_lease_holds_gc_back_only_until_it_expires(tmp_path: Path) -> None:
    """A snapshot killed mid-way (kill -9) leaves its lease: gc defers, then ignores it, then clears it."""
    root, store, copy = _lake_with_an_old_unreferenced_copy(tmp_path)
    dead = root / LAKE_LEASES / "snapshot-killed.json"
    dead.parent.mkdir(parents=True, exist_ok=True)
    dead.write_text('{"kind": "snapshot", "owner": "someone@node7 pid 4242"}')
    out = run_tierfs("gc", f"file://{root}", check=True).stdout
    assert "nothing removed: a snapshot by someone@node7 pid 4242" in out and copy.exists()
    _age([dead], LEASE_TTL + 10)  # not renewed for a whole TTL: its process is gone
    report = gc(store)
    assert not report.deferred and not copy.exists()
    _age([dead], 2 * LEASE_TTL + 10)
    gc(store)
    assert not dead.exists()  # long dead: cleared
    assert [p.name for p in (root / LAKE_LEASES).iterdir()] == []  # and gc's own marker is gone


def test_retention_spares_a_snapshot_made_again_under_the_name_it_evaluated(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    write_tree(root, {"data/a.bin": b"v1"})
    store = _store(root)
    for name in ("old", "mid", "new"):
        create_snapshot(store, "data", name)
    doomed = expired_snapshots(store, [Retention("data", keep_last=2)], time.time())
    assert [m.name for m, _ in doomed] == ["old"]
    # meanwhile someone deletes "old" and makes a new snapshot under that name
    delete_snapshot(store, "data", "old")
    (root / "data/a.bin").write_bytes(b"v2")
    create_snapshot(store, "data", "old")
    assert expire_snapshots(store, doomed) == 0
    assert _readable(store, "data", "old") == {"a.bin": b"v2"}


# -- backup expiry and backup runs -----------------------------------------------------------
def _target_with_an_old_unreferenced_blob(tmp_path: Path) -> tuple[Path, ObjectStore, Path]:
    """Backups of ``one`` (holding X) then of ``two``: with keep=1, X's blob is unreferenced and old."""
    target = tmp_path / "target"
    store = _store(target)
    write_tree(tmp_path / "one", {"a.bin": X})
    write_tree(tmp_path / "two", {"b.bin": b"b"})
    run_backup(tmp_path / "one", store)
    run_backup(tmp_path / "two", store)
    _age([p for p in (target / "blobs").rglob("*") if p.is_file()], 2 * HOUR)
    _age([p for p in (target / "backups").rglob("*") if p.is_file()], 2 * HOUR)
    write_tree(tmp_path / "three", {"a.bin": X, "c.bin": b"c"})  # X again: its blob is reused, not uploaded
    return target, store, target / X_BLOB


def _restores(store: ObjectStore, backup_id: str, into: Path) -> dict[str, bytes]:
    restore(store, backup_id, into)
    return {str(p.relative_to(into)): p.read_bytes() for p in into.rglob("*") if p.is_file()}


def test_expiry_during_a_backup_keeps_the_blobs_it_reuses(tmp_path: Path) -> None:
    target, store, blob = _target_with_an_old_unreferenced_blob(tmp_path)
    done: list[list[str]] = []

    def expire_now(_files: int, _bytes: int) -> None:
        if not done:  # once, after the run found X's blob in the target and reused it
            done.append(expire(store, 1))

    rep = run_backup(tmp_path / "three", store, on_progress=expire_now)
    assert blob.exists()
    assert _restores(store, rep.info.id, tmp_path / "restored") == {"a.bin": X, "c.bin": b"c"}


def test_a_backup_started_during_expiry_does_not_reuse_what_expiry_deletes(tmp_path: Path) -> None:
    target, store, blob = _target_with_an_old_unreferenced_blob(tmp_path)
    other: list[tuple[threading.Thread, list[Any]]] = []
    real_delete = store.delete

    def delete(key: str) -> None:
        if key == X_BLOB and not other:  # expiry is about to delete X's blob
            other.append(_other_side(lambda: run_backup(tmp_path / "three", store)))
            other[0][0].join(timeout=3)  # a run that does not wait for the expiry is done by now
        real_delete(key)

    store.delete = delete  # type: ignore[method-assign]
    expire(store, 1)
    [(thread, result)] = other
    thread.join(timeout=60)
    assert result and not isinstance(result[0], BaseException), result
    newest = list_backups(store)[-1]
    assert newest.id == result[0].info.id
    assert _restores(store, newest.id, tmp_path / "restored") == {"a.bin": X, "c.bin": b"c"}


def test_expiry_keeps_blobs_younger_than_the_grace_period(tmp_path: Path) -> None:
    """A blob written within the grace period may be a run's that has not written its manifest yet."""
    target = tmp_path / "target"
    store = _store(target)
    write_tree(tmp_path / "one", {"a.bin": X})
    write_tree(tmp_path / "two", {"b.bin": b"b"})
    run_backup(tmp_path / "one", store)
    run_backup(tmp_path / "two", store)
    assert len(expire(store, 1)) == 1  # the older manifest goes: keep counts backups
    assert (target / X_BLOB).exists()  # its blob is younger than the default hour
    assert len(list_backups(store)) == 1
    expire(store, 1, grace_seconds=0)
    assert not (target / X_BLOB).exists()


def test_restore_of_a_backup_whose_blob_expiry_removed_is_one_clear_error(tmp_path: Path) -> None:
    """(What the races above would leave behind, made on purpose: the failure is a sentence.)"""
    target, store, blob = _target_with_an_old_unreferenced_blob(tmp_path)
    rep = run_backup(tmp_path / "three", store)
    blob.unlink()
    with pytest.raises(UserError, match=r"contents of a\.bin are missing"):
        restore(store, rep.info.id, tmp_path / "restored")


def test_a_backup_jobs_grace_is_a_duration(tmp_path: Path) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text('[[job]]\nname = "x"\nkind = "backup"\nsource = "/tmp"\ntarget = "file:///tmp/t"\ngrace = "soon"\n')
    assert_one_line_error(run_tierfs("sidecar", "--config", str(cfg)), "job 'x': field 'grace' = 'soon'")
