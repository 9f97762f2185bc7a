"""The local index of snapshot manifests: what it answers, how it is built, checked, bounded and dropped."""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
from helpers import write_tree

from tierfs.config import load
from tierfs.errors import NotFound
from tierfs.fuse.attrs import being_written
from tierfs.namespace.inodes import ROOT_INODE
from tierfs.namespace.live import Namespace
from tierfs.namespace.snapshot_index import PackedRef
from tierfs.namespace.snapshots import SnapshotTree
from tierfs.store.objects import Entry, ObjectStore
from tierfs.versions.catalog import delete_snapshot, open_snapshot
from tierfs.versions.create import create_snapshot
from tierfs.versions.index_dir import ManifestIndexes, manifest_id
from tierfs.versions.manifest import ManifestEntry, ManifestError, ManifestReader, meta_key, snapshot_dir
from tierfs.versions.manifest_index import ManifestIndex, decode_value, encode_value

FILES = {f"train/c{i % 6}/{i:03d}.jpg": bytes([i % 256]) * i for i in range(90)}
FILES.update({"labels.csv": b"a,0\n", "empty": b"", "é x/\u2028 #?": b"odd"})


@pytest.fixture
def store(tmp_path: Path) -> ObjectStore:
    root = tmp_path / "lake"
    write_tree(root / "datasets/toy", FILES)
    (root / "datasets/toy" / os.fsdecode(b"not-utf8-\xff")).write_bytes(b"bytes")  # a name that is not UTF-8
    return ObjectStore.open(load(None, {"lake_url": f"file://{root}"}))


def snapshot(store: ObjectStore, name: str = "v1", part_entries: int = 7) -> tuple[ManifestReader, str]:
    create_snapshot(store, "datasets/toy", name, part_entries=part_entries)
    return open_snapshot(store, "toy", name), manifest_id(store.read_all(meta_key("toy", name)))


def build(indexes: ManifestIndexes, store: ObjectStore, reader: ManifestReader, manifest: str) -> ManifestIndex:
    builder = indexes.builder(reader, manifest)
    for i in range(reader.part_count):
        builder.add_from(i, store.read_all)
    return indexes.commit(builder)


def index_files(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def test_the_index_answers_as_the_manifest_does(store: ObjectStore, tmp_path: Path) -> None:
    reader, manifest = snapshot(store)
    assert reader.part_count > 10
    indexes = ManifestIndexes(tmp_path / "manifests")
    index = build(indexes, store, reader, manifest)
    entries = list(reader)
    for e in entries:
        assert index.lookup(e.parent, e.name) == e
    for parent in ["", *(e.path for e in entries if e.is_dir)]:
        assert index.children(parent) == list(reader.list_dir(parent)), parent
    assert index.lookup("train", "c9") is None and index.lookup("train/c0", "") is None
    assert index.children("labels.csv") == [] and index.children("nope") == []
    # Private: the directory 0700, the file 0600, nothing else left there (no lock file, no temp file).
    root = tmp_path / "manifests"
    assert root.stat().st_mode & 0o777 == 0o700
    (name,) = index_files(root)
    assert (root / name).stat().st_mode & 0o777 == 0o600
    indexes.close()


@pytest.mark.parametrize("entry", [
    ManifestEntry("a/b", "c", False, 5, 0o640, -3, "pre/a/b/c", "", "etag1", "", "e:pre/a/b/c\0live-etag\x005"),
    ManifestEntry("", "c", False, 2**62, 0o644, 2**62, "pre/c", "ver-9", "", "", "v:pre/c\0ver-9"),
    ManifestEntry("d", "x", False, 1, 0o644, 0, ".tierfs/cas/sha256/ab/ab/" + "ab" * 32, "", "", "ab" * 32,
                  "e:pre/d/x\0\0\x001"),
    ManifestEntry("d", "y", False, 1, 0o644, 0, ".tierfs/cas/sha256/ab/cd/" + "ab" * 32, "", "", "ab" * 32, ""),
    ManifestEntry("d", "\udcff", False, 0, 0, 0, "elsewhere/\udcfe", "v" * 300, "e" * 255, "not hex", "x" * 1000),
    ManifestEntry("d", "e", False, 7, 0o644, 0, "pre/d/e", "", "", "", "e:pre/d/e\x007"),  # (too short to hold both)
    ManifestEntry("", "dir", True),
])
def test_values_come_back_whole(entry: ManifestEntry) -> None:
    """What the value leaves out (the key, the live identity, hex) is given back exactly."""
    raw = encode_value(entry, "pre")
    assert decode_value(entry.parent, entry.name, raw, "pre") == entry
    assert len(encode_value(ManifestEntry("a/b", "c", False, 5, 0o644, 0, ".tierfs/cas/sha256/ab/ab/" + "ab" * 32,
                                          "", "", "ab" * 32, "e:pre/a/b/c\0etag\x005"), "pre")) < 70


def test_a_second_open_reuses_the_index_and_a_damaged_one_is_removed(store: ObjectStore, tmp_path: Path) -> None:
    reader, manifest = snapshot(store)
    root = tmp_path / "manifests"
    first = ManifestIndexes(root)
    build(first, store, reader, manifest)
    first.close()
    again = ManifestIndexes(root)
    index = again.open(reader, manifest)
    assert index is not None and index.lookup("", "labels.csv") is not None
    assert again.stats.get("index_reused") == 1
    again.close()
    del index
    for damage in (lambda b: b[: len(b) - 4096], lambda b: b[:100] + bytes([b[100] ^ 1]) + b[101:], lambda b: b""):
        (name,) = index_files(root)
        path = root / name
        path.write_bytes(damage(path.read_bytes()))
        indexes = ManifestIndexes(root)
        assert indexes.open(reader, manifest) is None  # never opened by LMDB: its bytes are not its name's
        assert indexes.stats.get("index_rebuilt") == 1 and index_files(root) == []
        assert build(indexes, store, reader, manifest).lookup("", "empty") is not None
        indexes.close()
        assert len(index_files(root)) == 1


def test_a_build_a_crash_interrupted_is_never_trusted(store: ObjectStore, tmp_path: Path) -> None:
    reader, manifest = snapshot(store)
    root = tmp_path / "manifests"
    crashed = ManifestIndexes(root)
    builder = crashed.builder(reader, manifest)
    builder.add_from(0, store.read_all)
    builder.add_from(1, store.read_all)
    builder.env.close()  # the process dies here: a temp file with two parts in it, never renamed
    assert index_files(root) and all(n.startswith(".build-") for n in index_files(root))  # (and LMDB's lock)
    after = ManifestIndexes(root)
    assert after.open(reader, manifest) is None and index_files(root) == []  # removed at the first use
    build(after, store, reader, manifest)
    assert len(index_files(root)) == 1
    # A build that fails (a part missing in the lake) leaves nothing behind either.
    other, manifest2 = snapshot(store, "v2")
    part = Path(store.full(other.part_key(3)))
    part.rename(part.with_suffix(".gone"))
    builder = after.builder(other, manifest2)
    with pytest.raises(ManifestError, match="missing part 3"):
        for i in range(other.part_count):
            builder.add_from(i, store.read_all)
    builder.abort()
    assert len(index_files(root)) == 1
    after.close()


def test_indexes_are_dropped_with_their_snapshots_and_past_the_bounds(store: ObjectStore, tmp_path: Path) -> None:
    root = tmp_path / "manifests"
    indexes = ManifestIndexes(root, max_files=2)
    made = {}
    for v in ("v1", "v2", "v3"):
        reader, manifest = snapshot(store, v)
        index = build(indexes, store, reader, manifest)
        made[v] = index.path.name
        del index  # (not open any more: the bound may take it)
    assert index_files(root) == sorted([made["v2"], made["v3"]])  # v1: the least recently opened
    indexes.keep_only("toy", {"v3", "v9"})  # what the lake lists now
    assert index_files(root) == [made["v3"]]
    # A snapshot made again under its name has another manifest: the old index goes when the new one is built.
    delete_snapshot(store, "toy", "v3")
    reader, manifest = snapshot(store, "v3", part_entries=5)
    assert indexes.open(reader, manifest) is None
    index = build(indexes, store, reader, manifest)
    assert index_files(root) == [index.path.name] != [made["v3"]]
    indexes.keep_only("", {"other"})  # the dataset is gone from the lake: an index open here stays readable
    assert index_files(root) == [] and index.lookup("", "empty") is not None
    reader, manifest = snapshot(store, "v4")
    build(indexes, store, reader, manifest)
    indexes.forget("toy", "v4")
    assert index_files(root) == []
    assert indexes.stats.get("index_dropped") == 5
    indexes.close()


def test_a_private_index_dir_goes_at_close_and_a_dead_mounts_with_it(store: ObjectStore, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = tmp_path / "tierfs-manifests-999999999-abc"
    live = tmp_path / f"tierfs-manifests-{os.getppid()}-abc"
    for d in (dead, live):
        d.mkdir()
    reader, manifest = snapshot(store)
    indexes = ManifestIndexes(None)
    build(indexes, store, reader, manifest)
    (private,) = [p for p in tmp_path.iterdir() if p.name.startswith(f"tierfs-manifests-{os.getpid()}-")]
    assert private.stat().st_mode & 0o777 == 0o700 and len(index_files(private)) == 1
    assert not dead.exists() and live.exists()  # a live process' directory is its own
    indexes.close()
    assert not private.exists()


def cut_short(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-3])


def namespace(store: ObjectStore, indexes: ManifestIndexes | None, limit: int = 2) -> Namespace:
    return Namespace(store, 60.0, 100_000, trio.CapacityLimiter(limit), manifest_indexes=indexes)


async def test_concurrent_lookups_wait_for_one_build(store: ObjectStore, tmp_path: Path) -> None:
    reader, _ = snapshot(store)
    ns = namespace(store, ManifestIndexes(tmp_path / "manifests"))
    files = [e.path for e in reader if not e.is_dir]
    got: dict[str, int] = {}

    async def look(path: str) -> None:
        got[path] = (await ns.resolve(f".snapshots/toy/v1/{path}")).size

    async with trio.open_nursery() as nursery:
        for path in files:
            nursery.start_soon(look, path)
    assert got == {p: len(FILES[p]) if p in FILES else 5 for p in files}
    s = ns.snapshots.stats()
    assert (s["index_builds"], s["parts_decoded"], s["index_lookups"]) == (1, reader.part_count, len(files))
    listed = await ns.snapshots.list_dir(".snapshots/toy/v1/train/c2")
    assert [e.name for e in listed] == sorted(p.rsplit("/", 1)[1] for p in FILES if p.startswith("train/c2/"))
    with pytest.raises(NotFound):
        await ns.resolve(".snapshots/toy/v1/train/nope")
    ns.snapshots.close()


async def test_without_room_for_an_index_the_parts_are_read(store: ObjectStore, tmp_path: Path) -> None:
    reader, _ = snapshot(store)
    blocked = tmp_path / "manifests"
    blocked.write_text("a file where the directory would be")
    ns = namespace(store, ManifestIndexes(blocked))
    for e in reader:
        assert (await ns.resolve(f".snapshots/toy/v1/{e.path}")).is_dir == e.is_dir
    s = ns.snapshots.stats()
    assert (s["index_fallbacks"], s["index_builds"]) == (1, 0) and s["parts_decoded"] >= reader.part_count
    ns.snapshots.close()


async def test_a_corrupt_part_refuses_the_snapshot_whole_and_once(store: ObjectStore, tmp_path: Path) -> None:
    snapshot(store)
    cut_short(Path(store.full(f"{snapshot_dir('toy', 'v1')}/part-00004.jsonl.gz")))
    ns = namespace(store, ManifestIndexes(tmp_path / "manifests"))
    for path in ("labels.csv", "train/c0/000.jpg"):  # (in parts that are sound, and that are not)
        with pytest.raises(ManifestError, match="part 4 fails its checksum"):
            await ns.resolve(f".snapshots/toy/v1/{path}")
    assert ns.snapshots.stats()["parts_decoded"] == 4  # read up to the bad part once, not at every lookup
    assert list((tmp_path / "manifests").iterdir()) == []
    ns.snapshots.close()


async def test_a_lookup_waits_only_for_the_part_it_needs(store: ObjectStore, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """In a mount the index is built in the background: the first ls of a big snapshot waits for one part."""
    reader, _ = snapshot(store)
    last = reader.part_key(reader.part_count - 1)
    held, reached = threading.Event(), threading.Event()
    read_all = store.read_all

    def read_part(key: str) -> bytes:
        if key == last:  # the builder stops before the last part until the test lets it go on
            reached.set()
            held.wait(30)
        return read_all(key)

    monkeypatch.setattr(store, "read_all", read_part)
    ns = namespace(store, ManifestIndexes(tmp_path / "manifests"), limit=4)
    async with trio.open_nursery() as nursery:
        ns.start(nursery)
        top = await ns.snapshots.list_dir(".snapshots/toy/v1")  # in the first part
        assert sorted(e.name for e in top) == sorted({p.split("/")[0] for p in FILES} | {"not-utf8-\udcff"})
        assert (await ns.resolve(".snapshots/toy/v1/labels.csv")).size == len(FILES["labels.csv"])
        await trio.to_thread.run_sync(reached.wait, 30)
        s = ns.snapshots.stats()
        assert s["index_builds"] == 0 and s["parts_decoded"] == reader.part_count - 1  # still building
        waiting = trio.Event()

        async def deep() -> None:  # in the last part: waits for it
            entry = await ns.resolve(".snapshots/toy/v1/é x/\u2028 #?")
            assert entry.size == 3
            waiting.set()

        nursery.start_soon(deep)
        await trio.testing.wait_all_tasks_blocked()
        assert not waiting.is_set()
        held.set()
        await waiting.wait()
        s = ns.snapshots.stats()
        assert (s["index_builds"], s["parts_decoded"]) == (1, reader.part_count)
        nursery.cancel_scope.cancel()
    ns.snapshots.close()


async def test_open_snapshots_are_kept_up_to_their_bound(store: ObjectStore) -> None:
    """Up to max_open snapshots stay open (meta.json read once each); past it the least recently used go."""
    for i in range(20):
        create_snapshot(store, "datasets/toy", f"v{i}", part_entries=50)
    fetched: list[str] = []

    async def fetch(key: str) -> bytes:
        if key.endswith("/meta.json"):
            fetched.append(key)
        return await trio.to_thread.run_sync(store.read_all, key)

    async def no_listing(path: str) -> list[Entry]:
        raise NotFound(path)

    tree = SnapshotTree(no_listing, fetch, trio.CapacityLimiter(2), max_open=16)
    for _ in range(2):
        for i in range(16):
            assert (await tree.entry(f".snapshots/toy/v{i}/labels.csv")).size == len(FILES["labels.csv"])
    assert len(fetched) == 16  # the second round from the open ones
    for i in range(16, 20):
        await tree.entry(f".snapshots/toy/v{i}/labels.csv")
    await tree.entry(".snapshots/toy/v15/labels.csv")  # the most recently used stay
    await tree.entry(".snapshots/toy/v0/labels.csv")  # the least recently used: gone, read again
    assert len(fetched) == 21


async def test_a_snapshot_node_keeps_its_ref_packed(store: ObjectStore, tmp_path: Path) -> None:
    """Each node of a snapshot holds its ref as the index does (a third of the memory) and gives it back whole."""
    reader, _ = snapshot(store)
    ns = namespace(store, ManifestIndexes(tmp_path / "manifests"))
    snaps = await ns.lookup(ROOT_INODE, ".snapshots")
    toy = await ns.lookup(snaps.inode, "toy")
    v1 = await ns.lookup(toy.inode, "v1")
    train = await ns.lookup(v1.inode, "train")
    c3 = await ns.lookup(train.inode, "c3")
    for e in await ns.list_dir(c3.inode):
        node = ns.entry_node(c3.path, e)
        assert isinstance(node._ref, PackedRef) and node.ref == e.ref
        want = reader.lookup("train/c3", e.name)
        assert want is not None and node.ref == want.ref()
    top = await ns.lookup(v1.inode, "labels.csv")  # (in the snapshot's root)
    assert isinstance(top._ref, PackedRef) and top.ref == (await ns.resolve(".snapshots/toy/v1/labels.csv")).ref
    node, ref, keep_cache = await ns.open(top.inode)
    assert (ref, keep_cache, node.cached_ref) == (top.ref, True, None) and not being_written(node)
    ns.release(node)
    ns.snapshots.close()


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 48 KiB tmpfs (too small for an index of the test's manifest), unmounted whatever happened."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    d = tmp_path / "tiny"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(d)], check=True)
    try:
        yield d
    finally:
        if subprocess.run(["umount", str(d)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(d)], check=False)


async def test_a_disk_that_fills_during_a_build_leaves_the_parts_to_answer(store: ObjectStore,
                                                                          tiny_disk: Path) -> None:
    reader, _ = snapshot(store)
    ns = namespace(store, ManifestIndexes(tiny_disk / "manifests"))
    for e in reader:
        assert (await ns.resolve(f".snapshots/toy/v1/{e.path}")).is_dir == e.is_dir
    s = ns.snapshots.stats()
    assert (s["index_fallbacks"], s["index_builds"]) == (1, 0), s
    assert [p for p in (tiny_disk / "manifests").iterdir()] == []  # (the temp file and its lock are gone)
    ns.snapshots.close()
