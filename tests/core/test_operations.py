"""The pyfuse3 Operations called directly, without the kernel."""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyfuse3
import pytest

from tierfs.config import load
from tierfs.errors import StoreError
from tierfs.mount import Components, build
from tierfs.namespace.inodes import ROOT_INODE
from tierfs.store.objects import ObjectStore


def _comps(tmp_path: Path, **settings: str) -> Iterator[Components]:
    import fsspec

    fs = fsspec.filesystem("memory", skip_instance_cache=True)
    root = f"/ops{tmp_path.name}"
    fs.pipe(f"{root}/ds/a.bin", b"A" * 10_000)
    fs.pipe(f"{root}/ds/empty", b"")
    s = load(None, {"lake_url": f"memory://{root}", "cache_dir": str(tmp_path / "cache"), "block_size": "4KiB",
                    **settings})
    c = build(s, ObjectStore(fs, root, s.lake_url))
    yield c
    c.close()
    fs.rm(root, recursive=True)


@pytest.fixture
def comps(tmp_path: Path) -> Iterator[Components]:
    yield from _comps(tmp_path)


@pytest.fixture
def comps_ttl0(tmp_path: Path) -> Iterator[Components]:
    """Metadata TTL 0: every listing and stat is due for refresh as soon as it is seen."""
    yield from _comps(tmp_path, metadata_ttl="0")


async def test_lookup_read_release(comps: Any) -> None:
    ops = comps.operations
    ds = await ops.lookup(ROOT_INODE, b"ds", None)
    a = await ops.lookup(ds.st_ino, b"a.bin", None)
    assert a.st_size == 10_000
    fi = await ops.open(a.st_ino, 0, None)
    assert await ops.read(fi.fh, 4000, 3000) == b"A" * 3000
    assert await ops.read(fi.fh, 9999, 100) == b"A"
    assert await ops.read(fi.fh, 20_000, 100) == b""
    xattrs = await ops.listxattr(a.st_ino, None)
    assert b"user.tierfs.tier" in xattrs and b"user.tierfs.etag" in xattrs
    assert await ops.getxattr(a.st_ino, b"user.tierfs.tier", None) == b"backend"
    await ops.read(fi.fh, 0, 10)
    assert await ops.getxattr(a.st_ino, b"user.tierfs.tier", None) == b"ram"
    await ops.release(fi.fh)


async def test_errors_become_fuse_errors(comps: Any) -> None:
    ops = comps.operations
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.lookup(ROOT_INODE, b"missing", None)
    assert e.value.errno == errno.ENOENT
    ds = await ops.lookup(ROOT_INODE, b"ds", None)
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.open(ds.st_ino, 0, None)
    assert e.value.errno == errno.EISDIR
    a = await ops.lookup(ds.st_ino, b"a.bin", None)
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.getattr(99999, None)
    assert e.value.errno == errno.ESTALE
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.getxattr(a.st_ino, b"user.other", None)
    assert e.value.errno == pyfuse3.ENOATTR


async def test_unexpected_exception_is_eio(comps: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    ops = comps.operations

    async def boom(*a: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(comps.namespace, "lookup", boom)
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.lookup(ROOT_INODE, b"ds", None)
    assert e.value.errno == errno.EIO


async def test_stats_xattr(comps: Any) -> None:
    ops = comps.operations
    stats = json.loads(await ops.getxattr(ROOT_INODE, b"user.tierfs.stats", None))
    assert set(stats["tiers"]) == {"ram", "disk"}
    assert {"requests", "bytes", "errors", "retries"} <= set(stats["backend"])
    for t in stats["tiers"].values():
        assert {"hits", "misses", "bytes_served", "bytes_held", "entries", "evictions"} <= set(t)


async def test_a_multi_block_read_keeps_the_errno_of_what_failed(comps: Any) -> None:
    """A read over several blocks fetches them concurrently: its error is the block's, not a bare EIO."""
    ops = comps.operations
    ds = await ops.lookup(ROOT_INODE, b"ds", None)
    a = await ops.lookup(ds.st_ino, b"a.bin", None)
    fi = await ops.open(a.st_ino, 0, None)
    comps.store.fs.rm(f"{comps.store.root}/ds/a.bin")  # gone upstream, after the open
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.read(fi.fh, 0, 10_000)  # three 4 KiB blocks
    assert e.value.errno == errno.ENOENT
    await ops.release(fi.fh)


async def test_rename_under_a_file_is_enotdir_not_a_new_name(comps: Any) -> None:
    ops = comps.operations
    ds = await ops.lookup(ROOT_INODE, b"ds", None)
    a = await ops.lookup(ds.st_ino, b"a.bin", None)
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.rename(ds.st_ino, b"empty", a.st_ino, b"x", 0, None)
    assert e.value.errno == errno.ENOTDIR
    assert comps.store.exists("ds/empty") and not comps.store.exists("ds/a.bin/x")


async def _readdir(ops: Any, inode: int, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    names: list[str] = []

    def reply(token: Any, name: bytes, attrs: Any, next_id: int) -> bool:
        names.append(os.fsdecode(name))
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    fh = (await ops.opendir(inode, None)).fh
    try:
        await ops.readdir(fh, 0, None)
    finally:
        await ops.releasedir(fh)
    return names


async def test_metadata_is_served_stale_while_the_store_is_down(comps_ttl0: Components, monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    ops, store = comps_ttl0.operations, comps_ttl0.store
    ds = await ops.lookup(ROOT_INODE, b"ds", None)
    assert await _readdir(ops, ds.st_ino, monkeypatch) == ["a.bin", "empty"]  # the one listing of ds
    a_node = comps_ttl0.namespace.inodes.by_path("ds/a.bin")  # known from readdirplus, never looked up
    assert a_node is not None
    a_ino = a_node.inode

    down = True
    list_dir, stat = store.list_dir, store.stat
    calls = {"list_dir": 0, "stat": 0}

    def outage(real: Any, name: str) -> Any:
        def call(path: str) -> Any:
            calls[name] += 1
            if down:
                raise StoreError(f"{name} {path}: injected outage")
            return real(path)
        return call

    monkeypatch.setattr(store, "list_dir", outage(list_dir, "list_dir"))
    monkeypatch.setattr(store, "stat", outage(stat, "stat"))
    caplog.set_level(logging.WARNING)

    empty = await ops.lookup(ds.st_ino, b"empty", None)  # the first lookup of that name
    assert empty.st_size == 0
    assert (await ops.getattr(a_ino, None)).st_size == 10_000
    assert (await ops.getattr(ds.st_ino, None)).st_ino == ds.st_ino
    assert await _readdir(ops, ds.st_ino, monkeypatch) == ["a.bin", "empty"]
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.lookup(ds.st_ino, b"missing", None)
    assert e.value.errno == errno.ENOENT  # what the stale listing says
    logged = [r.args[1] for r in caplog.records if r.name == "tierfs.namespace.stale" and isinstance(r.args, tuple)]
    assert "ds" in logged and len(logged) == len(set(logged))  # one line per path, not one per request

    # Back: the background refresh lists ds again, without a request asking for it.
    down = False
    listed = calls["list_dir"]
    assert comps_ttl0.namespace.outage.pending() > 0
    await comps_ttl0.namespace.refresh_stale()  # one round of the mount's background task
    assert comps_ttl0.namespace.outage.pending() == 0 and calls["list_dir"] > listed
