"""Snapshots on a file:// lake: create (copy mode), immutability, diff, delete, gc, corruption."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest
from helpers import random_bytes, write_tree

from tierfs.config import load
from tierfs.errors import UserError
from tierfs.store.objects import ObjectStore
from tierfs.versions.catalog import delete_snapshot, diff, gc, list_datasets, list_snapshots, open_snapshot
from tierfs.versions.create import create_snapshot
from tierfs.versions.manifest import (
    ManifestEntry,
    ManifestError,
    ManifestReader,
    ManifestWriter,
    SnapshotMeta,
    cas_key,
    snapshot_dir,
)


@pytest.fixture
def lake(tmp_path: Path) -> tuple[Path, ObjectStore]:
    root = tmp_path / "lake"
    write_tree(root, {
        "datasets/toy/train/cat/1.jpg": random_bytes(3000, 1),
        "datasets/toy/train/cat/2.jpg": random_bytes(3000, 2),
        "datasets/toy/train/dog/1.jpg": random_bytes(5000, 3),
        "datasets/toy/labels.csv": b"cat,0\ndog,1\n",
        "datasets/toy/empty": b"",
        "other/x": b"x",
    })
    return root, ObjectStore.open(load(None, {"lake_url": f"file://{root}"}))


def read_snapshot(store: ObjectStore, dataset: str, name: str) -> dict[str, bytes]:
    r = open_snapshot(store, dataset, name)
    out = {}
    for e in r:
        if not e.is_dir:
            ref = e.ref()
            assert ref is not None
            out[e.path] = store.read_range(ref, 0, ref.size) if ref.size else b""
    return out


def test_copy_mode_freezes_bytes(lake: tuple[Path, ObjectStore]) -> None:
    root, store = lake
    before = {str(p.relative_to(root / "datasets/toy")): p.read_bytes() for p in (root / "datasets/toy").rglob("*") if p.is_file()}
    meta = create_snapshot(store, "datasets/toy", "v1", message="first", metadata={"license": "CC-BY"})
    assert (meta.dataset, meta.mode, meta.file_count) == ("toy", "copy", 5)
    assert meta.total_size == sum(len(v) for v in before.values())
    (root / "datasets/toy/train/cat/1.jpg").write_bytes(b"overwritten")
    (root / "datasets/toy/labels.csv").unlink()
    assert read_snapshot(store, "toy", "v1") == before
    shown = open_snapshot(store, "toy", "v1").meta
    assert shown.message == "first" and shown.metadata == {"license": "CC-BY"} and shown.creator


def test_second_snapshot_copies_only_what_changed(lake: tuple[Path, ObjectStore]) -> None:
    root, store = lake
    create_snapshot(store, "datasets/toy", "v1")
    copies = {p for p in (root / ".tierfs/cas").rglob("*") if p.is_file()}
    (root / "datasets/toy/train/dog/2.jpg").write_bytes(random_bytes(100, 9))
    from tierfs.versions.create import Progress

    seen: list[Progress] = []
    create_snapshot(store, "datasets/toy", "v2", on_progress=seen.append)
    after = {p for p in (root / ".tierfs/cas").rglob("*") if p.is_file()}
    assert len(after - copies) == 1  # only the new file
    assert seen[-1].reused == 5 and seen[-1].copied_bytes == 100


def test_copies_by_content_hash_from_older_snapshots_are_reused_and_kept(tmp_path: Path) -> None:
    """A snapshot made before server-side copies (its copies in cas/sha256/) is reused, and gc keeps its copies."""
    root = tmp_path / "lake"
    files = {"d/a": b"aaa", "d/b": b"bbbb"}
    write_tree(root, files)
    store = ObjectStore.open(load(None, {"lake_url": f"file://{root}"}))
    writer = ManifestWriter(store.put_bytes, snapshot_dir("d", "old"))
    for key, data in files.items():
        sha = hashlib.sha256(data).hexdigest()
        store.put_bytes(cas_key(sha), data)
        live = store.stat(key)
        assert live.ref is not None
        writer.add(ManifestEntry("", key[2:], False, len(data), 0o644, live.mtime_ns, cas_key(sha), "", "", sha,
                                 live.ref.identity()))
    meta = SnapshotMeta("d", "old", "d", "copy", created_at="2026-01-01T00:00:00+00:00", file_count=2,
                        total_size=7, parts=writer.finish())
    store.put_bytes(f"{snapshot_dir('d', 'old')}/meta.json", meta.to_json())
    from tierfs.versions.create import Progress

    seen: list[Progress] = []
    create_snapshot(store, "d", "new", on_progress=seen.append)
    assert seen[-1].reused == 2 and seen[-1].copied_bytes == 0
    assert not (root / ".tierfs/cas/copies").exists()
    delete_snapshot(store, "d", "old")
    assert gc(store, grace_seconds=0).removed == []  # "new" names them
    assert read_snapshot(store, "d", "new") == {"a": b"aaa", "b": b"bbbb"}
    delete_snapshot(store, "d", "new")
    assert len(gc(store, grace_seconds=0).removed) == 2


def test_names_and_immutability(lake: tuple[Path, ObjectStore]) -> None:
    root, store = lake
    for bad, msg in [("a/b", "may not contain"), ("..", "may not be"), (".hidden", "start with a dot"),
                     ("tab\there", "control characters"), ("", "empty")]:
        with pytest.raises(UserError, match=msg):
            create_snapshot(store, "datasets/toy", bad)
    create_snapshot(store, "datasets/toy", "v1")
    with pytest.raises(UserError, match="already exists"):
        create_snapshot(store, "datasets/toy", "v1")
    with pytest.raises(UserError, match="does not exist"):
        create_snapshot(store, "datasets/nope", "v1")
    with pytest.raises(UserError, match="belongs to tierfs"):
        create_snapshot(store, ".tierfs/snapshots", "v1", dataset="x")


def test_list_show_delete(lake: tuple[Path, ObjectStore]) -> None:
    root, store = lake
    create_snapshot(store, "datasets/toy", "v1")
    create_snapshot(store, "datasets/toy", "v2")
    create_snapshot(store, "other", "a", dataset="misc")
    assert list_datasets(store) == ["misc", "toy"]
    assert [m.name for m in list_snapshots(store, "toy")] == ["v1", "v2"]
    delete_snapshot(store, "toy", "v1")
    assert [m.name for m in list_snapshots(store, "toy")] == ["v2"]
    with pytest.raises(UserError, match="does not exist"):
        open_snapshot(store, "toy", "v1")


def test_diff(lake: tuple[Path, ObjectStore]) -> None:
    root, store = lake
    create_snapshot(store, "datasets/toy", "v1")
    (root / "datasets/toy/train/cat/1.jpg").write_bytes(b"changed!")
    (root / "datasets/toy/labels.csv").unlink()
    (root / "datasets/toy/train/dog/9.jpg").write_bytes(b"new")
    create_snapshot(store, "datasets/toy", "v2")
    changes = {(c.path, c.kind, c.old_size, c.new_size) for c in diff(open_snapshot(store, "toy", "v1"), open_snapshot(store, "toy", "v2"))}
    assert changes == {
        ("train/cat/1.jpg", "changed", 3000, 8),
        ("labels.csv", "removed", 12, None),
        ("train/dog/9.jpg", "added", None, 3),
    }


def test_gc_keeps_every_referenced_copy(lake: tuple[Path, ObjectStore]) -> None:
    root, store = lake
    create_snapshot(store, "datasets/toy", "v1")
    (root / "datasets/toy/train/cat/1.jpg").write_bytes(b"changed!")
    create_snapshot(store, "datasets/toy", "v2")
    report = gc(store, grace_seconds=0)
    assert report.removed == []  # both snapshots' copies are referenced
    delete_snapshot(store, "toy", "v1")
    dry = gc(store, dry_run=True, grace_seconds=0)
    assert len(dry.removed) == 1 and dry.removed_bytes == 3000
    assert len([p for p in (root / ".tierfs/cas/copies").rglob("*") if p.is_file()]) == 6  # dry run removed nothing
    gc(store, grace_seconds=0)
    assert read_snapshot(store, "toy", "v2")["train/cat/1.jpg"] == b"changed!"  # v2 intact
    young = gc(store, grace_seconds=3600)
    assert young.removed == []


def test_corrupt_manifest_is_refused(lake: tuple[Path, ObjectStore]) -> None:
    root, store = lake
    create_snapshot(store, "datasets/toy", "v1", part_entries=3)
    base = root / snapshot_dir("toy", "v1")
    meta = base / "meta.json"
    good = meta.read_bytes()
    meta.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(ManifestError, match="truncated"):
        open_snapshot(store, "toy", "v1")
    meta.write_bytes(good.replace(b'"file_count": 5', b'"file_count": 6'))  # edited
    with pytest.raises(ManifestError, match="checksum"):
        open_snapshot(store, "toy", "v1")
    meta.write_bytes(good)
    part = base / "part-00001.jsonl.gz"
    part.write_bytes(gzip.compress(b'{"p":"","n":"evil","d":1}\n'))
    r = open_snapshot(store, "toy", "v1")
    with pytest.raises(ManifestError, match="part 1 fails its checksum"):
        list(r)
    part.unlink()
    with pytest.raises(ManifestError, match="missing part 1"):
        list(open_snapshot(store, "toy", "v1"))
    # gc refuses to run when it cannot know what a manifest pins
    with pytest.raises(UserError, match="gc stopped, nothing removed"):
        gc(store, grace_seconds=0)


def test_manifest_lookups_across_parts(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    files = {f"d{d}/{i:03d}": bytes([i % 256]) for d in range(5) for i in range(50)}
    write_tree(root, files)
    store = ObjectStore.open(load(None, {"lake_url": f"file://{root}"}))
    create_snapshot(store, "", "v1", dataset="all", part_entries=7)
    r: ManifestReader = open_snapshot(store, "all", "v1")
    assert len(r.meta.parts) > 10
    assert [e.name for e in r.list_dir("")] == [f"d{d}" for d in range(5)]
    assert [e.name for e in r.list_dir("d3")] == [f"{i:03d}" for i in range(50)]
    e = r.lookup("d4", "049")
    assert e is not None and e.size == 1
    assert r.lookup("d4", "050") is None
    assert json.loads((root / snapshot_dir("all", "v1") / "meta.json").read_text())["file_count"] == 250
