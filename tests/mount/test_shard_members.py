"""Members of tar / WebDataset shards as ordinary read-only files (issue 18), in real mounts."""

from __future__ import annotations

import errno
import io
import os
import random
import tarfile
from pathlib import Path

import pytest
from helpers import SeaweedS3, drop_page_cache, mounted, random_bytes, run_tierfs, wait_for, write_tree

pytestmark = pytest.mark.mount


def make_tar(files: dict[str, bytes], fmt: int = tarfile.GNU_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def extracted(raw: bytes) -> dict[str, bytes]:
    """What tarfile itself extracts: the reference the mount must match."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        for m in tar.getmembers():
            f = tar.extractfile(m) if m.isfile() else None
            if f is not None:
                out[m.name] = f.read()
    return out


def tree_bytes(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def wds_members(n: int, seed: int) -> dict[str, bytes]:
    """A WebDataset shard's members: key.ext files, sizes around and across block boundaries."""
    out: dict[str, bytes] = {}
    for i in range(n):
        out[f"{i:06d}.jpg"] = random_bytes(3000 + 997 * i, seed=seed + i)
        out[f"{i:06d}.cls"] = b"%d" % (i % 10)
    out["nested/deeper/" + "long" * 40 + ".json"] = b'{"long": "name"}'  # a GNU long name, in subdirectories
    return out


def check_shard(shard_dir: Path, raw: bytes) -> None:
    members = extracted(raw)
    assert shard_dir.is_dir() and shard_dir.stat().st_mode & 0o222 == 0
    top = sorted({m.split("/")[0] for m in members})
    assert sorted(os.listdir(shard_dir)) == top
    for name, data in members.items():
        assert (shard_dir / name).stat().st_size == len(data), name
    assert tree_bytes(shard_dir) == members
    rng = random.Random(5)
    big = max(members, key=lambda k: len(members[k]))
    fd = os.open(shard_dir / big, os.O_RDONLY)
    try:
        data = members[big]
        for _ in range(50):
            off = rng.randrange(0, len(data) + 10)
            n = rng.randrange(1, 20_000)
            assert os.pread(fd, n, off) == data[off : off + n]
    finally:
        os.close(fd)


def test_members_of_a_local_shard(tmp_path: Path) -> None:
    members = wds_members(12, seed=1)
    raw = make_tar(members)
    root = tmp_path / "lake"
    write_tree(root, {"datasets/wds/shard-000.tar": raw, "datasets/wds/notes.txt": b"plain",
                      "datasets/other/raw.tar": raw})
    with mounted(f"file://{root}", tmp_path / "mnt", tmp_path / "cache", "--block-size", "16KiB",
                 "--shard-members", "datasets/wds") as m:
        wds = m.mountpoint / "datasets/wds"
        assert sorted(os.listdir(wds)) == ["notes.txt", "shard-000.tar"]
        check_shard(wds / "shard-000.tar", raw)
        # The members' reads were ranged reads of the shard: never the shard twice.
        assert m.backend_bytes() <= len(raw)
        # Outside the prefixes a .tar is the object it is.
        assert (m.mountpoint / "datasets/other/raw.tar").read_bytes() == raw
        member = wds / "shard-000.tar/000003.jpg"
        for attempt in (lambda: member.write_bytes(b"x"), lambda: (wds / "shard-000.tar/new").write_bytes(b"x"),
                        lambda: member.unlink(), lambda: (wds / "shard-000.tar/d").mkdir()):
            with pytest.raises(OSError) as e:
                attempt()
            assert e.value.errno == errno.EROFS
        with pytest.raises(FileNotFoundError):
            (wds / "shard-000.tar/absent.jpg").stat()
        assert os.listdir(m.cache_dir / "shards")  # the index is kept beside the cache


def test_a_config_prefix_and_a_malformed_shard(tmp_path: Path) -> None:
    good = make_tar({"a.txt": b"A" * 5000, "b.txt": b"B" * 7000, "c.txt": b"C"})
    root = tmp_path / "lake"
    write_tree(root, {"wds/cut.tar": good[: 512 + 5120 + 512 + 100], "wds/junk.tar": random_bytes(4096, seed=3),
                      "wds/ok.tar": good})
    cfg = tmp_path / "t.toml"
    cfg.write_text('[shards]\nprefixes = ["wds/"]\n')
    with mounted(f"file://{root}", tmp_path / "mnt", tmp_path / "cache", config=cfg) as m:
        wds = m.mountpoint / "wds"
        assert os.listdir(wds / "junk.tar") == []
        for attempt in (lambda: os.rmdir(wds / "junk.tar"), lambda: os.rename(wds / "junk.tar", wds / "moved"),
                        lambda: os.rename(wds / "ok.tar/a.txt", wds / "a.txt")):
            with pytest.raises(OSError) as e:
                attempt()
            assert e.value.errno == errno.EROFS
        assert (root / "wds/junk.tar").read_bytes() == random_bytes(4096, seed=3)  # the object is untouched
        assert os.listdir(wds / "cut.tar") == ["a.txt"]  # what parsed before the damage
        assert (wds / "cut.tar/a.txt").read_bytes() == b"A" * 5000
        assert tree_bytes(wds / "ok.tar") == extracted(good)
        assert m.stats()["shards"]["index_errors"] == 2
    log = (tmp_path / "cache/tierfs.log").read_text()
    assert log.count("is not a whole tar") == 2 and "Traceback" not in log


def test_a_shard_rewritten_upstream_shows_its_new_members(tmp_path: Path) -> None:
    old = make_tar({"x.txt": b"old x", "y.txt": b"old y"})
    new = make_tar({"x.txt": b"new x!", "z.txt": b"z"})
    root = tmp_path / "lake"
    write_tree(root, {"wds/s.tar": old})
    with mounted(f"file://{root}", tmp_path / "mnt", tmp_path / "cache", "--metadata-ttl", "1",
                 "--shard-members", "wds") as m:
        shard = m.mountpoint / "wds/s.tar"
        assert sorted(os.listdir(shard)) == ["x.txt", "y.txt"]
        assert (shard / "x.txt").read_bytes() == b"old x"
        fd = os.open(shard / "y.txt", os.O_RDONLY)
        try:
            tmp = root / "wds/.s.tar.new"
            tmp.write_bytes(new)
            os.replace(tmp, root / "wds/s.tar")
            drop_page_cache()
            # Opened before the rewrite: the old shard's bytes (from the cache) or EIO, never the new ones.
            try:
                assert os.pread(fd, 100, 0) == b"old y"
            except OSError as exc:
                assert exc.errno == errno.EIO
        finally:
            os.close(fd)
        wait_for(lambda: sorted(os.listdir(shard)) == ["x.txt", "z.txt"], 30, "the new members")
        wait_for(lambda: (shard / "x.txt").read_bytes() == b"new x!", 30, "the new bytes")
        assert (shard / "z.txt").read_bytes() == b"z"
        assert m.stats()["shards"]["index_builds"] == 2


def test_members_inside_a_snapshot(tmp_path: Path) -> None:
    raw = make_tar(wds_members(6, seed=20))
    root = tmp_path / "lake"
    write_tree(root, {"datasets/wds/shard-000.tar": raw})
    run_tierfs("snapshot", "create", f"file://{root}", "datasets/wds", "v1", check=True)
    (root / "datasets/wds/shard-000.tar").write_bytes(make_tar({"changed": b"after the snapshot"}))
    with mounted(f"file://{root}", tmp_path / "mnt", tmp_path / "cache", "--block-size", "16KiB",
                 "--shard-members", "datasets/wds") as m:
        check_shard(m.mountpoint / ".snapshots/wds/v1/shard-000.tar", raw)
        assert os.listdir(m.mountpoint / "datasets/wds/shard-000.tar") == ["changed"]


def test_listing_a_10000_member_shard_is_one_index_read(tmp_path: Path) -> None:
    members = {f"{i:05d}.cls": b"%d" % i for i in range(10_000)}
    raw = make_tar(members, tarfile.USTAR_FORMAT)
    root = tmp_path / "lake"
    write_tree(root, {"wds/big.tar": raw})
    with mounted(f"file://{root}", tmp_path / "mnt", tmp_path / "cache", "--shard-members", "wds") as m:
        shard = m.mountpoint / "wds/big.tar"
        assert shard.is_dir()  # (this lookup builds the index)
        before = m.stats()["shards"]
        names = os.listdir(shard)
        after = m.stats()["shards"]
        assert names == sorted(members) and len(names) == 10_000
        assert after["index_reads"] - before["index_reads"] == 1
        assert after["index_builds"] == 1
        assert (shard / "09999.cls").read_bytes() == b"9999"


def test_members_of_a_shard_on_s3(s3_server: SeaweedS3, tmp_path: Path) -> None:
    raw = make_tar(wds_members(10, seed=40), tarfile.PAX_FORMAT)
    s3_server.upload("shards", {"datasets/wds/shard-000.tar": raw})
    cfg = s3_server.s3_config(tmp_path / "s3.toml")
    with mounted("s3://shards", tmp_path / "mnt", tmp_path / "cache", "--block-size", "16KiB",
                 "--metadata-ttl", "1", "--shard-members", "datasets/wds", config=cfg) as m:
        shard = m.mountpoint / "datasets/wds/shard-000.tar"
        check_shard(shard, raw)
        assert m.backend_bytes() <= len(raw)
        # Rewritten in the bucket (a new ETag): its new members once the TTL has passed.
        s3_server.upload("shards", {"datasets/wds/shard-000.tar": make_tar({"only.txt": b"rewritten"})})
        wait_for(lambda: os.listdir(shard) == ["only.txt"], 30, "the rewritten shard's members")
        assert (shard / "only.txt").read_bytes() == b"rewritten"


def test_the_next_mount_reads_the_kept_index_and_cache_clear_removes_it(tmp_path: Path) -> None:
    raw = make_tar(wds_members(8, seed=60))
    root = tmp_path / "lake"
    write_tree(root, {"wds/s.tar": raw})
    args = (f"file://{root}", tmp_path / "mnt", tmp_path / "cache", "--shard-members", "wds", "--cache-size", "0")
    with mounted(*args) as m:  # (no disk tier: no index kept either, and no blocks to find next time)
        assert sorted(os.listdir(m.mountpoint / "wds/s.tar"))
        assert m.stats()["shards"]["index_builds"] == 1
    cache = tmp_path / "cache2"
    args = (f"file://{root}", tmp_path / "mnt", cache, "--shard-members", "wds")
    with mounted(*args) as m:
        tree_bytes(m.mountpoint / "wds/s.tar")
        assert m.stats()["shards"]["index_builds"] == 1
        m.fills_settled()
    with mounted(*args) as m:
        assert tree_bytes(m.mountpoint / "wds/s.tar") == extracted(raw)
        shards = m.stats()["shards"]
        assert (shards["index_builds"], shards["index_loads"]) == (0, 1)
        assert m.backend_bytes() == 0  # every member from the disk tier
    assert (cache / "shards").exists()
    run_tierfs("cache", "clear", "--cache-dir", str(cache), "--yes", check=True)
    assert not (cache / "shards").exists()


def test_reading_a_large_member_sequentially_reads_ahead(tmp_path: Path) -> None:
    big = {"a.bin": random_bytes(3 << 20, seed=70), "b.bin": random_bytes(2 << 20, seed=71)}
    raw = make_tar(big)
    root = tmp_path / "lake"
    write_tree(root, {"wds/s.tar": raw})
    with mounted(f"file://{root}", tmp_path / "mnt", tmp_path / "cache", "--block-size", "64KiB",
                 "--shard-members", "wds", "--no-passthrough") as m:
        shard = m.mountpoint / "wds/s.tar"
        assert sorted(os.listdir(shard)) == ["a.bin", "b.bin"]  # (the index: header blocks only)
        before = m.stats()["prefetched_blocks"]
        with open(shard / "a.bin", "rb", buffering=0) as fh:
            got = b"".join(iter(lambda: fh.read(128 << 10), b""))
        assert got == big["a.bin"]
        assert m.stats()["prefetched_blocks"] > before
        assert (shard / "b.bin").read_bytes() == big["b.bin"]
        assert m.backend_bytes() <= len(raw)
