"""The tar header walk that finds a shard's members (tierfs/namespace/tar_members.py), and the index kept of it."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import trio

from tierfs.namespace.shard_index import ShardIndexes
from tierfs.namespace.tar_members import MemberTree, clean_name, scan
from tierfs.refs import ObjectRef


def make_tar(files: dict[str, bytes], fmt: int = tarfile.GNU_FORMAT, extra: list[tarfile.TarInfo] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info in extra or []:
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def reader_of(raw: bytes, reads: list[tuple[int, int]] | None = None):  # type: ignore[no-untyped-def]
    async def read(offset: int, length: int) -> bytes:
        if reads is not None:
            reads.append((offset, length))
        return raw[offset : offset + length]

    return read


def extracted(raw: bytes) -> dict[str, bytes]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        for m in tar.getmembers():
            if m.isfile():
                f = tar.extractfile(m)
                assert f is not None
                out[m.name] = f.read()
    return out


async def members_bytes(raw: bytes) -> dict[str, bytes]:
    found = await scan(reader_of(raw), len(raw))
    assert found.problem == ""
    return {name: raw[off : off + size] for name, (off, size) in found.members.items()}


async def test_ustar_members_and_their_bytes() -> None:
    files = {"000.jpg": os.urandom(1000), "000.cls": b"7", "001.jpg": os.urandom(513), "empty": b""}
    raw = make_tar(files, tarfile.USTAR_FORMAT)
    assert await members_bytes(raw) == extracted(raw) == files


async def test_gnu_long_names() -> None:
    long = "d/" + "x" * 150 + "/" + "y" * 120 + ".jpg"
    files = {long: b"long", "short": b"s"}
    raw = make_tar(files, tarfile.GNU_FORMAT)
    assert b"././@LongLink" in raw
    assert await members_bytes(raw) == files


async def test_pax_path_and_names_not_ascii() -> None:
    files = {"é/" + "z" * 200 + ".txt": b"pax name", "ü.cls": b"1"}
    raw = make_tar(files, tarfile.PAX_FORMAT)
    assert await members_bytes(raw) == files


async def test_directories_and_links_are_skipped() -> None:
    d = tarfile.TarInfo("sub")
    d.type = tarfile.DIRTYPE
    link = tarfile.TarInfo("sub/link")
    link.type, link.linkname = tarfile.SYMTYPE, "../a"
    raw = make_tar({"sub/a": b"a"}, extra=[d, link])
    assert await members_bytes(raw) == {"sub/a": b"a"}


async def test_a_truncated_tar_lists_what_parsed() -> None:
    raw = make_tar({"a": b"A" * 600, "b": b"B" * 5000, "c": b"C"})
    cut = raw[: 512 + 1024 + 512 + 100]  # in b's data
    found = await scan(reader_of(cut), len(cut))
    assert list(found.members) == ["a"]
    assert "truncated" in found.problem


async def test_garbage_is_no_member_and_no_exception() -> None:
    for raw in (os.urandom(4096), b"not a tar", b""):
        found = await scan(reader_of(raw), len(raw))
        assert found.members == {}
    found = await scan(reader_of(b"x" * 2048), 2048)
    assert found.problem.startswith("bad header")


async def test_a_later_member_of_the_same_name_wins_and_names_are_cleaned() -> None:
    raw = make_tar({"./a": b"old", "/abs/b": b"b", "../escape": b"no"})
    raw2 = make_tar({"a": b"new"})
    found = await scan(reader_of(raw[:-1024] + raw2), len(raw) - 1024 + len(raw2))
    assert sorted(found.members) == ["a", "abs/b"]
    assert clean_name("../x") is None and clean_name("a//b/./c") == "a/b/c"


def test_member_tree_dirs() -> None:
    tree = MemberTree.of({"a/b/c.jpg": (512, 3), "a/d.cls": (1536, 1), "top": (2560, 0), "a": (3072, 1)})
    assert tree.dirs[""] == [("a", True, 0, 0), ("top", False, 2560, 0)]
    assert tree.dirs["a"] == [("b", True, 0, 0), ("d.cls", False, 1536, 1)]
    assert tree.find("a/b/c.jpg") == ("c.jpg", False, 512, 3)
    assert tree.find("a/b") == ("b", True, 0, 0)
    assert tree.find("nope") is None


async def test_the_index_is_built_once_per_identity_and_kept_on_disk(tmp_path: Path) -> None:
    raw = make_tar({f"{i:05d}.txt": b"%d" % i for i in range(300)})
    ref = ObjectRef("wds/s.tar", len(raw), etag="e1")
    reads: list[tuple[int, int]] = []
    idx = ShardIndexes(tmp_path / "shards", trio.CapacityLimiter(2))
    trees = []

    async def one() -> None:
        trees.append(await idx.tree(ref, reader_of(raw, reads)))

    async with trio.open_nursery() as n:  # concurrent lookups share one build
        for _ in range(5):
            n.start_soon(one)
    assert idx.stats.get("index_builds") == 1 and len(trees[0].files) == 300
    assert all(t is trees[0] for t in trees)
    files = list((tmp_path / "shards").iterdir())
    assert len(files) == 1 and files[0].stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "shards").stat().st_mode & 0o777 == 0o700
    assert len(json.loads(files[0].read_bytes())["members"]) == 300

    again = ShardIndexes(tmp_path / "shards", trio.CapacityLimiter(2))  # the next mount: one file read
    reads.clear()
    assert (await again.tree(ref, reader_of(raw, reads))).files == trees[0].files
    assert reads == [] and again.stats.get("index_loads") == 1 and again.stats.get("index_builds") == 0

    changed = ObjectRef("wds/s.tar", len(raw), etag="e2")  # rewritten upstream: a new index
    await again.tree(changed, reader_of(raw))
    assert again.stats.get("index_builds") == 1


async def test_the_index_directory_keeps_at_most_max_files(tmp_path: Path) -> None:
    raw = make_tar({"a": b"a"})
    idx = ShardIndexes(tmp_path / "shards", trio.CapacityLimiter(2), keep=1, max_files=3)
    for i in range(5):
        await idx.tree(ObjectRef(f"s{i}.tar", len(raw), etag="e"), reader_of(raw))
    assert len(list((tmp_path / "shards").glob("*.json"))) == 3
