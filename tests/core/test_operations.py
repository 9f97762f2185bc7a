"""The pyfuse3 Operations called directly, without the kernel."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pyfuse3
import pytest

from tierfs.config import load
from tierfs.mount import build
from tierfs.namespace.inodes import ROOT_INODE
from tierfs.store.objects import ObjectStore


@pytest.fixture
def comps(tmp_path: Path) -> Any:
    import fsspec

    fs = fsspec.filesystem("memory", skip_instance_cache=True)
    root = f"/ops{tmp_path.name}"
    fs.pipe(f"{root}/ds/a.bin", b"A" * 10_000)
    fs.pipe(f"{root}/ds/empty", b"")
    settings = load(None, {"lake_url": f"memory://{root}", "cache_dir": str(tmp_path / "cache"), "block_size": "4KiB"})
    c = build(settings, ObjectStore(fs, root, settings.lake_url))
    yield c
    c.close()
    fs.rm(root, recursive=True)


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
