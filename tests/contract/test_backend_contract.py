"""One contract, every backend: the same tests against a local lake, memory, and each real server.

The servers are the ones tests start on loopback: SeaweedFS (versioned and
not), fake-gcs-server and Azurite. A second client plays the other writer
that changes the lake behind tierfs' back.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import pytest
from helpers import random_bytes

from tierfs.config import load
from tierfs.errors import NotFound
from tierfs.store.objects import Changed, ObjectStore
from tierfs.store.upload import Uploader

MiB = 1 << 20


@dataclass
class Lake:
    store: ObjectStore
    upstream: Callable[[str, bytes], None]  # another writer, straight to the lake
    versioned: bool = False
    stat_brings_bytes: bool = False  # a GET answers a first lookup's stat (stat_and_bytes), not a HEAD


def _store(url: str, config: Path | None) -> ObjectStore:
    settings = load(config, {"lake_url": url})
    return ObjectStore.open(settings)


@pytest.fixture(params=["file", "memory", "s3", "s3-versioned", "gcs", "azure"])
def lake(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lake]:
    kind = request.param
    if kind == "file":
        root = tmp_path / "lake"
        root.mkdir()

        def local_put(key: str, data: bytes) -> None:
            p = root / key
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(p.name + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, p)

        yield Lake(_store(f"file://{root}", None), local_put)
    elif kind == "memory":
        root = f"/contract-{uuid.uuid4().hex[:8]}"
        mem = fsspec.filesystem("memory")
        mem.mkdir(root)
        try:
            yield Lake(_store(f"memory://{root}", None), lambda k, d: mem.pipe(f"{root}/{k}", d))
        finally:
            mem.rm(root, recursive=True)
    elif kind.startswith("s3"):
        server = request.getfixturevalue("s3_server")
        fs = server.fs()
        bucket = f"contract-{uuid.uuid4().hex[:8]}"
        fs.mkdir(bucket)
        if kind == "s3-versioned":
            fs.make_bucket_versioned(bucket, True)
        cfg = server.s3_config(tmp_path / "s3.toml")
        yield Lake(_store(f"s3://{bucket}/pre", cfg), lambda k, d: fs.pipe(f"{bucket}/pre/{k}", d),
                   versioned=kind == "s3-versioned", stat_brings_bytes=True)
    elif kind == "gcs":
        gcs = request.getfixturevalue("gcs")
        fs = gcs.fs()
        fs.mkdir("contract-gcs")
        cfg = gcs.config(tmp_path / "gcs.toml")
        yield Lake(_store("gs://contract-gcs/pre", cfg), lambda k, d: fs.pipe(f"contract-gcs/pre/{k}", d))
    else:
        azure = request.getfixturevalue("azure")
        fs = azure.fs()
        fs.mkdir("contract-az")
        cfg = azure.config(tmp_path / "az.toml")
        yield Lake(_store("az://contract-az/pre", cfg), lambda k, d: fs.pipe(f"contract-az/pre/{k}", d),
                   stat_brings_bytes=True)


def test_put_answers_the_identity_a_stat_gives(lake: Lake) -> None:
    store = lake.store
    entry = store.put_bytes("d/a.bin", b"a" * 1000)
    assert entry.ref is not None and entry.size == 1000
    stat = store.stat("d/a.bin")
    assert stat.ref is not None
    assert (entry.ref.etag, entry.ref.size) == (stat.ref.etag, stat.ref.size)
    if entry.ref.version or stat.ref.version:
        assert entry.ref.version == stat.ref.version


def test_list_stat_read(lake: Lake) -> None:
    store = lake.store
    data = random_bytes(300_000, seed=1)
    store.put_bytes("d/x.bin", data)
    store.put_bytes("d/sub/y.bin", b"y")
    store.put_bytes("top.txt", b"top")
    names = {e.name: e for e in store.list_dir("d")}
    assert set(names) == {"x.bin", "sub"} and names["sub"].is_dir and not names["x.bin"].is_dir
    assert {e.name for e in store.list_dir("")} >= {"d", "top.txt"}
    ref = names["x.bin"].ref
    assert ref is not None and ref.size == len(data) and ref.key == "d/x.bin"
    assert store.read_range(ref, 1000, 5000) == data[1000:5000]
    assert store.read_all("d/x.bin") == data
    assert store.stat("d").is_dir
    with pytest.raises(NotFound):
        store.stat("d/nope.bin")
    with pytest.raises(NotFound):
        store.list_dir("no/such/dir")


def test_a_stat_with_bytes_names_what_a_stat_names(lake: Lake) -> None:
    """``stat_and_bytes`` (a first lookup's stat): the Entry a stat gives, and, where the store brings them
    in the same request, all the bytes of a file within the limit; a folder, an empty file, a file larger
    than the limit and a missing name answer as a stat does."""
    store = lake.store
    small, large = random_bytes(100_000, seed=4), random_bytes(300_000, seed=5)
    store.put_bytes("s/small.bin", small)
    store.put_bytes("s/large.bin", large)
    store.put_bytes("s/empty.bin", b"")
    store.put_bytes("s/sub/y.bin", b"y")
    for name, data in (("small.bin", small), ("large.bin", large), ("empty.bin", b"")):
        entry, got = store.stat_and_bytes(f"s/{name}", 256 * 1024)
        stat = store.stat(f"s/{name}")
        assert entry.ref is not None and stat.ref is not None
        assert (entry.ref.etag, entry.ref.size, entry.ref.version) == (stat.ref.etag, stat.ref.size, stat.ref.version)
        assert got is None or (got == data and len(data) <= 256 * 1024), name
        if name == "small.bin":
            assert (got is not None) is lake.stat_brings_bytes
    assert store.stat_and_bytes("s/sub", 256 * 1024)[0].is_dir
    with pytest.raises(NotFound):
        store.stat_and_bytes("s/nope.bin", 256 * 1024)


def test_a_flat_listing_gives_each_folder_what_its_own_listing_does(lake: Lake) -> None:
    """``list_tree`` (fast-list): where the store can, every folder below one, as ``list_dir`` gives it, from
    one flat listing; None past the limit; a folder holding an empty object is left to its own listing."""
    store = lake.store
    for key in ("t/a.txt", "t/b/c.txt", "t/b/d/e.txt", "t/b/d/f.txt", "t/g/h.txt", "t/z/empty.txt"):
        store.put_bytes(key, b"" if key.endswith("empty.txt") else key.encode())
    tree = store.list_tree("t", 100)
    if not store.lists_trees():
        assert tree is None
        return
    assert tree is not None and tree.whole
    assert set(tree.folders) == {"t", "t/b", "t/b/d", "t/g"}  # (t/z holds an empty object: listed on its own)

    def shape(entries: list[Any]) -> list[tuple[Any, ...]]:
        return sorted((e.name, e.is_dir, e.size, e.ref.key if e.ref else "", e.ref.etag if e.ref else "")
                      for e in entries)

    for folder, entries in tree.folders.items():
        assert shape(entries) == shape(store.list_dir(folder)), folder
    assert store.list_tree("t", 5) is None  # six objects below t
    assert store.list_tree("t/b", 3) is not None


def test_a_read_never_returns_another_versions_bytes(lake: Lake) -> None:
    """A same-size rewrite by another writer between two reads of one ref: the old bytes, or Changed."""
    store = lake.store
    old, new = random_bytes(200_000, seed=2), random_bytes(200_000, seed=3)
    store.put_bytes("f.bin", old)
    ref = store.stat("f.bin").ref
    assert ref is not None
    assert store.read_range(ref, 0, 100_000) == old[:100_000]
    lake.upstream("f.bin", new)
    try:
        second = store.read_range(ref, 100_000, 200_000)
    except Changed:
        assert not lake.versioned or not ref.version  # a pinned version stays readable
        return
    assert second == old[100_000:], "bytes of the new version served under the old identity"


def test_delete_copy_move(lake: Lake) -> None:
    store = lake.store
    store.put_bytes("m/a.bin", b"abc")
    store.copy("m/a.bin", "m/b.bin")
    assert store.read_all("m/b.bin") == b"abc"
    store.move("m/b.bin", "n/c.bin")
    assert store.read_all("n/c.bin") == b"abc" and not store.exists("m/b.bin")
    store.delete("m/a.bin")
    assert not store.exists("m/a.bin")
    store.delete("m/a.bin")  # deleting what is gone is not an error


def test_upload_of_a_file_answers_its_identity(lake: Lake, tmp_path: Path) -> None:
    """Whole and (on S3) multipart uploads: the entry returned is the object the lake now holds."""
    store = lake.store
    big = tmp_path / "big.bin"
    big.write_bytes(random_bytes(11 * MiB + 3, seed=4))
    entry = Uploader(store, part_size=5 * MiB).upload(big, "ckpt/big.bin", tmp_path / "state.json")
    stat = store.stat("ckpt/big.bin")
    assert entry.ref is not None and stat.ref is not None
    assert (entry.ref.etag, entry.ref.size) == (stat.ref.etag, stat.ref.size)
    assert store.read_range(entry.ref, 5 * MiB - 10, 5 * MiB + 10) == big.read_bytes()[5 * MiB - 10: 5 * MiB + 10]
