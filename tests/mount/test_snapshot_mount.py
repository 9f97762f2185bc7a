"""The .snapshots/ tree in a real mount, and tierfs:// without one."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import fsspec
import pytest
from helpers import assert_one_line_error, drop_page_cache, mounted, random_bytes, run_tierfs, write_tree

from tierfs.config import load
from tierfs.store.objects import ObjectStore
from tierfs.versions.create import create_snapshot

pytestmark = pytest.mark.mount
MiB = 1 << 20


@pytest.fixture
def versioned_lake(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path / "lake"
    files = {f"train/c{i % 4}/{i:03d}.jpg": random_bytes(20_000 + i, seed=i) for i in range(40)}
    files["shard.tar"] = random_bytes(3 * MiB + 5, seed=77)
    files["empty"] = b""
    files["odd name #1 ?é.txt"] = b"odd"
    write_tree(root / "datasets/toy", files)
    run_tierfs("snapshot", "create", f"file://{root}", "datasets/toy", "v1", "-m", "first", check=True)
    return root, files


def tree_bytes(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in d.rglob("*") if p.is_file()}


def test_snapshot_tree_is_frozen_and_read_only(versioned_lake: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    root, files = versioned_lake
    # change the source after the snapshot: overwrite, delete, add
    (root / "datasets/toy/train/c0/000.jpg").write_bytes(b"overwritten")
    (root / "datasets/toy/shard.tar").unlink()
    (root / "datasets/toy/new.txt").write_bytes(b"new")
    with mounted(f"file://{root}", tmp_path / "mnt", tmp_path / "cache", "--block-size", "1MiB",
                 "--metadata-ttl", "1") as m:
        snap = m.mountpoint / ".snapshots"
        assert os.listdir(snap) == ["toy"]
        assert os.listdir(snap / "toy") == ["v1"]
        assert tree_bytes(snap / "toy" / "v1") == files  # byte-identical to the source at snapshot time
        assert ".snapshots" in os.listdir(m.mountpoint) and ".tierfs" not in os.listdir(m.mountpoint)
        f = snap / "toy/v1/train/c1/001.jpg"
        for attempt in (lambda: f.write_bytes(b"x"), lambda: (snap / "toy/v1/x").write_bytes(b"x"),
                        lambda: f.unlink(), lambda: (snap / "toy/v1/d").mkdir(),
                        lambda: os.rename(f, snap / "toy/v1/y"), lambda: os.chmod(f, 0o777)):
            with pytest.raises(OSError) as e:
                attempt()
            assert e.value.errno == errno.EROFS
        assert f.stat().st_mode & 0o222 == 0

        # a new snapshot appears without a remount, within the metadata TTL
        run_tierfs("snapshot", "create", f"file://{root}", "datasets/toy", "v2", check=True)
        time.sleep(1.5)
        assert sorted(os.listdir(snap / "toy")) == ["v1", "v2"]
        assert (snap / "toy/v2/train/c0/000.jpg").read_bytes() == b"overwritten"
        assert not (snap / "toy/v2/shard.tar").exists()
        assert (snap / "toy/v1/train/c0/000.jpg").read_bytes() == files["train/c0/000.jpg"]


def test_live_and_snapshot_share_cache_blocks(versioned_lake: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    root, files = versioned_lake
    run_tierfs("snapshot", "create", f"file://{root}", "datasets/toy", "v2", check=True)  # nothing changed
    # (No passthrough: a whole-file copy of the shard, shared too, would double the bytes counted.)
    with mounted(f"file://{root}", tmp_path / "mnt", tmp_path / "cache", "--block-size", "1MiB",
                 "--no-passthrough") as m:
        live = m.mountpoint / "datasets/toy"
        assert tree_bytes(live) == files
        after_live = m.backend_bytes()
        drop_page_cache()
        for v in ("v1", "v2"):
            assert tree_bytes(m.mountpoint / ".snapshots/toy" / v) == files
        manifests = m.backend_bytes() - after_live
        assert manifests < 20_000  # only the (small) manifests were fetched: no file bytes
        held = m.stats()["tiers"]["disk"]["bytes_held"]
        assert held < sum(len(b) for b in files.values()) + 20_000  # one set of blocks, not three


def test_corrupt_manifest_is_refused_in_the_mount(versioned_lake: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    root, _ = versioned_lake
    meta = root / ".tierfs/snapshots/toy/v1/meta.json"
    meta.write_bytes(meta.read_bytes()[:-40])
    with mounted(f"file://{root}", tmp_path / "mnt", tmp_path / "cache") as m:
        assert os.listdir(m.mountpoint / ".snapshots/toy") == []  # refused, not half-served
        with pytest.raises(OSError):
            os.listdir(m.mountpoint / ".snapshots/toy/v1")
        assert "toy@v1 is truncated or not JSON" in m.log_tail()
    res = run_tierfs("snapshot", "show", f"file://{root}", "toy", "v1")
    assert res.returncode == 1 and "truncated or not JSON" in res.stderr and "Traceback" not in res.stderr


def test_fsspec_protocol_reads_snapshots_without_a_mount(versioned_lake: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    root, files = versioned_lake
    (root / "datasets/toy/train/c0/000.jpg").write_bytes(b"changed later")
    lake = f"file://{root}"
    with fsspec.open("tierfs://toy@v1/train/c0/000.jpg", lake=lake, cache_dir=str(tmp_path / "c1")) as fh:
        assert fh.read() == files["train/c0/000.jpg"]
    fs = fsspec.filesystem("tierfs", lake=lake, cache_dir=str(tmp_path / "c2"), block_size="1MiB")
    try:
        assert fs.ls("", detail=False) == ["toy@v1", "datasets"]  # the snapshots, then the live view's top
        assert sorted(fs.ls("toy@v1/train", detail=False)) == [f"toy@v1/train/c{i}" for i in range(4)]
        assert fs.cat("toy@v1/shard.tar") == files["shard.tar"]
        assert fs.cat_file("toy@v1/shard.tar", start=MiB - 3, end=MiB + 3) == files["shard.tar"][MiB - 3 : MiB + 3]
        with fs.open("toy@v1/shard.tar") as fh:
            fh.seek(2 * MiB)
            assert fh.read(10) == files["shard.tar"][2 * MiB : 2 * MiB + 10]
        assert fs.info("toy@v1/empty")["size"] == 0 and fs.cat("toy@v1/empty") == b""
        before = fs.stats()["backend"]["bytes"]
        fs.cat("toy@v1/shard.tar")
        assert fs.stats()["backend"]["bytes"] == before  # second read from the tiers
        with pytest.raises(FileNotFoundError):
            fs.cat("toy@v9/x")
        with pytest.raises(FileNotFoundError):
            fs.cat("toy@v1/nope")
        # The live view: any path whose first name has no '@', read through the same tiers.
        assert fs.cat("datasets/toy/train/c0/000.jpg") == b"changed later"
        assert fs.info("datasets/toy")["type"] == "directory"
        assert "datasets/toy/train" in fs.ls("datasets/toy", detail=False)
        assert fs.cat_file("tierfs://datasets/toy/shard.tar", start=5, end=9) == files["shard.tar"][5:9]
        with pytest.raises(FileNotFoundError):
            fs.cat("datasets/toy/nope")
        with pytest.raises(PermissionError, match="read-only"):
            fs.open("datasets/toy/new.txt", "wb")
    finally:
        fs.close()


def test_many_cold_snapshot_lookups_at_once_with_tiny_limiters(tmp_path: Path) -> None:
    """A DataLoader starting an epoch under .snapshots/: 64 workers, each looking up a file no one asked for yet."""
    root = tmp_path / "lake"
    # Class folders, as a dataset has: the kernel sends lookups in one directory
    # one at a time, in different directories all at once.
    files = {f"c{i:02d}/{i:03d}.jpg": random_bytes(1000 + i, seed=i) for i in range(64)}
    write_tree(root / "datasets/toy", files)
    # One manifest entry per part: every lookup below needs a part of its own, fetched cold.
    create_snapshot(ObjectStore.open(load(None, {"lake_url": f"file://{root}"})), "datasets/toy", "v1",
                    part_entries=1)
    config = tmp_path / "tiny.toml"
    config.write_text("[store]\n" + "".join(f"{kind}_concurrency = 2\n" for kind in
                                             ("metadata", "read", "prefetch", "manifest", "write")))
    with mounted(f"file://{root}", tmp_path / "mnt", tmp_path / "cache", config=config) as m:
        snap = m.mountpoint / ".snapshots/toy/v1"
        assert sorted(os.listdir(snap)) == sorted({name.split("/")[0] for name in files})
        start = threading.Barrier(len(files))
        results: dict[str, object] = {}

        def worker(i: int, name: str) -> None:
            try:
                start.wait()
                results[name] = os.stat(snap / name).st_size if i % 2 else (snap / name).read_bytes()
            except Exception as exc:
                results[name] = exc

        threads = [threading.Thread(target=worker, args=(i, n), daemon=True) for i, n in enumerate(files)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60  # a guard against a hang, not a timing check
        for t in threads:
            t.join(timeout=max(0.1, deadline - time.monotonic()))
        hung = sum(t.is_alive() for t in threads)
        if hung:
            m.kill9()  # frees the threads stuck in the kernel before failing
        assert hung == 0, f"{hung} of {len(threads)} lookups never returned"
        for i, (name, data) in enumerate(files.items()):
            assert results[name] == (len(data) if i % 2 else data), name


def test_snapshot_commands_take_the_mount_path(versioned_lake: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    """LAKE_URL may be a mount's root: the lake it serves, so the snapshots made with it are the ones it shows."""
    root, files = versioned_lake
    with mounted(f"file://{root}", tmp_path / "mnt", tmp_path / "cache", "--metadata-ttl", "1") as m:
        mnt = str(m.mountpoint)
        listed = run_tierfs("snapshot", "list", mnt, check=True).stdout
        assert listed.startswith("toy@v1\t") and len(listed.splitlines()) == 1, listed
        run_tierfs("snapshot", "create", mnt, "datasets/toy", "v2", check=True)
        time.sleep(1.5)  # the metadata TTL
        assert sorted(os.listdir(m.mountpoint / ".snapshots/toy")) == ["v1", "v2"]
        assert (m.mountpoint / ".snapshots/toy/v2/shard.tar").read_bytes() == files["shard.tar"]
        assert (root / ".tierfs/snapshots/toy/v2/meta.json").is_file()  # in the lake, not through the mount
        assert "toy@v2" in run_tierfs("snapshot", "show", mnt, "toy", "v2", check=True).stdout
        # A folder inside the mount names no lake: said in one line, not listed as an empty local lake.
        assert_one_line_error(run_tierfs("snapshot", "list", f"{mnt}/datasets"), f"inside the tierfs mount {mnt}",
                              f"file://{root}")


def test_a_snapshot_a_mount_will_not_show_is_named_at_the_command(tmp_path: Path) -> None:
    """A mount shows the snapshots made with its own lake URL; `create` and `list` name the mounts that differ."""
    root = tmp_path / "lake"
    files = {f"train/c{i}/{i}.jpg": random_bytes(1000 + i, seed=i) for i in range(3)}
    write_tree(root / "datasets/toy", files)
    with mounted(f"file://{root}/datasets", tmp_path / "mnt", tmp_path / "cache", "--metadata-ttl", "1") as m:
        mnt = str(m.mountpoint)
        made = run_tierfs("snapshot", "create", f"file://{root}", "datasets/toy", "v1", check=True)
        assert made.stdout.startswith("created toy@v1 ")
        assert f"the mount at {mnt} serves file://{root}/datasets" in made.stderr, made.stderr
        assert f"tierfs snapshot create {mnt} toy v1" in made.stderr, made.stderr
        listed = run_tierfs("snapshot", "list", f"file://{root}", check=True)
        assert listed.stdout.startswith("toy@v1\t") and f"the mount at {mnt}" in listed.stderr, listed.stderr
        time.sleep(1.5)
        assert os.listdir(m.mountpoint / ".snapshots") == []  # as said
        # What the note says to run makes the snapshot the mount shows, and says nothing more.
        again = run_tierfs("snapshot", "create", mnt, "toy", "v1", check=True)
        assert again.stderr == "", again.stderr
        time.sleep(1.5)
        assert os.listdir(m.mountpoint / ".snapshots/toy") == ["v1"]
        assert (m.mountpoint / ".snapshots/toy/v1/train/c1/1.jpg").read_bytes() == files["train/c1/1.jpg"]
    # The other way round: a mount of the lake's root does not show a snapshot made with a prefix's URL.
    with mounted(f"file://{root}", tmp_path / "mnt", tmp_path / "cache2") as m:
        made = run_tierfs("snapshot", "create", f"file://{root}/datasets", "toy", "v2", check=True)
        assert f"tierfs snapshot create {m.mountpoint} datasets/toy v2" in made.stderr, made.stderr


@pytest.fixture
def parted_lake(tmp_path: Path) -> tuple[Path, dict[str, bytes], int]:
    """A dataset whose manifest is cut into many parts (8 entries each), with names a listing must keep."""
    root = tmp_path / "lake"
    files = {f"train/c{i % 5}/{i:03d}.jpg": random_bytes(100 + i, seed=i) for i in range(120)}
    files.update({"odd name #1 ?é.txt": b"odd", "train/c0/\u2028line": b"sep", "top": b"t"})
    write_tree(root / "datasets/toy", files)
    create_snapshot(ObjectStore.open(load(None, {"lake_url": f"file://{root}"})), "datasets/toy", "v1",
                    part_entries=8)
    parts = len(list((root / ".tierfs/snapshots/toy/v1").glob("part-*")))
    assert parts > 10
    return root, files, parts


def check_snapshot_tree(snap: Path, files: dict[str, bytes]) -> None:
    """Lookups (before any listing: each a LOOKUP), listings and bytes of every file, and names not there."""
    for rel, data in files.items():
        assert os.stat(snap / rel).st_size == len(data), rel
    assert sorted(os.listdir(snap)) == sorted({rel.split("/")[0] for rel in files})
    for d in {rel.rsplit("/", 1)[0] for rel in files if "/" in rel}:
        assert sorted(os.listdir(snap / d)) == sorted(r.rsplit("/", 1)[1] for r in files if r.startswith(d + "/")
                                                      and "/" not in r[len(d) + 1:]), d
    assert tree_bytes(snap) == files
    for missing in ("nope", "train/nope", "train/c1/000.jpg"):  # (000 is in c0)
        assert not (snap / missing).exists()


def test_snapshot_lookups_come_from_a_local_index_the_next_mount_reuses(
        parted_lake: tuple[Path, dict[str, bytes], int], tmp_path: Path) -> None:
    root, files, parts = parted_lake
    cache = tmp_path / "cache"
    with mounted(f"file://{root}", tmp_path / "mnt", cache) as m:
        check_snapshot_tree(m.mountpoint / ".snapshots/toy/v1", files)
        s = m.stats()["manifests"]
        # Built once, each part read and decoded once, however many lookups came meanwhile and after.
        assert (s["index_builds"], s["parts_decoded"], s["index_rebuilt"], s["index_fallbacks"]) == (1, parts, 0, 0), s
        assert s["index_lookups"] >= len(files)
    indexes = list((cache / "manifests").iterdir())
    assert len(indexes) == 1 and indexes[0].suffix == ".mdb", indexes
    assert (cache / "manifests").stat().st_mode & 0o777 == 0o700 and indexes[0].stat().st_mode & 0o777 == 0o600

    # The next mount reads no part: they are not even in the lake any more.
    hidden = tmp_path / "parts"
    hidden.mkdir()
    for p in (root / ".tierfs/snapshots/toy/v1").glob("part-*"):
        p.rename(hidden / p.name)
    with mounted(f"file://{root}", tmp_path / "mnt", cache) as m:
        before = m.stats()["backend"]
        check_snapshot_tree(m.mountpoint / ".snapshots/toy/v1", files)
        after = m.stats()
        s = after["manifests"]
        assert (s["index_builds"], s["index_reused"], s["parts_decoded"]) == (0, 1, 0), s
        meta = (root / ".tierfs/snapshots/toy/v1/meta.json").stat().st_size
        file_bytes = sum(len(b) for b in files.values())
        assert after["backend"]["bytes"] - before["bytes"] <= meta + file_bytes  # meta.json and the files: no part
    for p in hidden.iterdir():
        p.rename(root / ".tierfs/snapshots/toy/v1" / p.name)


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_a_damaged_manifest_index_is_built_again_not_served(
        parted_lake: tuple[Path, dict[str, bytes], int], tmp_path: Path, damage: str) -> None:
    root, files, parts = parted_lake
    cache = tmp_path / "cache"
    with mounted(f"file://{root}", tmp_path / "mnt", cache) as m:
        assert os.stat(m.mountpoint / ".snapshots/toy/v1/top").st_size == 1
    (index,) = (cache / "manifests").iterdir()
    raw = bytearray(index.read_bytes())
    if damage == "truncated":
        raw = raw[: len(raw) // 2]
    else:  # one bit of an entry's value: "0" (a size) becomes "1"... whichever byte it is, it is not the file's
        raw[len(raw) // 3] ^= 0x01
    index.write_bytes(bytes(raw))
    with mounted(f"file://{root}", tmp_path / "mnt", cache) as m:
        check_snapshot_tree(m.mountpoint / ".snapshots/toy/v1", files)
        s = m.stats()["manifests"]
        assert (s["index_rebuilt"], s["index_builds"], s["parts_decoded"]) == (1, 1, parts), s
        assert "its local index" in m.log_tail() and "is damaged" in m.log_tail()
    (again,) = (cache / "manifests").iterdir()
    assert again.read_bytes() != bytes(raw)


def test_without_a_disk_tier_the_manifest_index_is_private_and_goes_at_unmount(
        parted_lake: tuple[Path, dict[str, bytes], int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, files, _ = parted_lake
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))  # (the daemon's temp dir)
    dead = tmp / "tierfs-manifests-999999999-x"  # what a killed mount left: swept by the next that makes one
    dead.mkdir()
    with mounted(f"file://{root}", tmp_path / "mnt", tmp_path / "cache", "--cache-size", "0") as m:
        check_snapshot_tree(m.mountpoint / ".snapshots/toy/v1", files)
        (private,) = tmp.iterdir()
        assert private.name.startswith(f"tierfs-manifests-{m.pid}-") and private.stat().st_mode & 0o777 == 0o700
        assert len(list(private.glob("*.mdb"))) == 1
        assert not (tmp_path / "cache" / "manifests").exists()
    assert list(tmp.iterdir()) == []
