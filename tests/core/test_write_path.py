"""The write path driven through the pyfuse3 Operations, with failures injected at the store seam."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import fsspec
import pyfuse3
import pytest
import trio

from tierfs.config import load
from tierfs.mount import build
from tierfs.namespace.inodes import ROOT_INODE
from tierfs.store.objects import ObjectStore
from tierfs.write import writer as writer_mod


@pytest.fixture
def comps(tmp_path: Path) -> Any:
    fs = fsspec.filesystem("memory", skip_instance_cache=True)
    root = f"/w{tmp_path.name}"
    fs.pipe(f"{root}/ds/a.bin", b"A" * 10_000)
    settings = load(None, {"lake_url": f"memory://{root}", "cache_dir": str(tmp_path / "cache"),
                           "block_size": "4KiB", "store_retries": "1"})
    c = build(settings, ObjectStore(fs, root, settings.lake_url, retries=1))
    yield c
    c.close()
    fs.rm(root, recursive=True)


class _Down:
    """Makes a store call fail the way a network outage does."""

    def __init__(self, fs: Any, method: str, after: int = 0):
        self.fs, self.method, self.after = fs, method, after
        self.real = getattr(fs, method)
        self.calls = 0

    def __enter__(self) -> _Down:
        def broken(*a: Any, **kw: Any) -> Any:
            self.calls += 1
            if self.calls > self.after:
                raise ConnectionError("injected: connection reset by peer")
            return self.real(*a, **kw)

        setattr(self.fs, self.method, broken)
        return self

    def __exit__(self, *exc: object) -> None:
        setattr(self.fs, self.method, self.real)


async def _create(ops: Any, parent: int, name: bytes, data: bytes) -> tuple[int, int]:
    fi, attrs = await ops.create(parent, name, 0o644, os.O_WRONLY | os.O_CREAT, None)
    await ops.write(fi.fh, 0, data)
    return fi.fh, attrs.st_ino


async def test_upload_failure_is_eio_and_the_bytes_stay_staged(comps: Any) -> None:
    ops, store = comps.operations, comps.store
    ds = await ops.lookup(ROOT_INODE, b"ds", None)
    fh, ino = await _create(ops, ds.st_ino, b"ckpt.pt", b"W" * 9000)
    with _Down(store.fs, "put_file"), pytest.raises(pyfuse3.FUSEError) as e:
        await ops.flush(fh)
    assert e.value.errno == errno.EIO
    assert not store.exists("ds/ckpt.pt")
    assert await ops.read(fh, 0, 9000) == b"W" * 9000  # staged bytes, readable
    staging = comps.writer.staging.root
    records = [json.loads(p.read_text()) for p in staging.glob("*.json") if not p.name.endswith(".upload.json")]
    # journalled for a restart, with the size and checksum of what was closed
    assert [(r["key"], r["state"], r["size"]) for r in records] == [("ds/ckpt.pt", "pending", 9000)]
    assert comps.stats()["writes"]["pending_uploads"] == 1
    await ops.fsync(fh, False)  # the store is back: the next fsync uploads it
    assert store.read_all("ds/ckpt.pt") == b"W" * 9000
    assert comps.stats()["writes"]["pending_uploads"] == 0
    await ops.release(fh)
    assert not list(staging.glob("*.data"))  # acknowledged and closed: nothing left staged


async def test_a_failed_close_is_retried_in_the_background(comps: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_mod, "RETRY_FIRST", 0.05)
    ops, store = comps.operations, comps.store
    ds = await ops.lookup(ROOT_INODE, b"ds", None)
    fh, _ = await _create(ops, ds.st_ino, b"late.pt", b"L" * 100)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(comps.writer.retry_loop)
        with _Down(store.fs, "put_file"):
            with pytest.raises(pyfuse3.FUSEError):
                await ops.flush(fh)
            await ops.release(fh)
            await trio.sleep(0.3)  # retries keep failing while the store is down
            assert not store.exists("ds/late.pt")
        with trio.fail_after(10):
            while not store.exists("ds/late.pt"):  # noqa: ASYNC110 - polling the store, not a task
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert store.read_all("ds/late.pt") == b"L" * 100
    assert comps.stats()["writes"]["upload_errors"] >= 2


async def test_directory_rename_failing_midway_keeps_the_source_whole(comps: Any) -> None:
    ops, store = comps.operations, comps.store
    for i in range(20):
        store.put_bytes(f"run/f{i:02d}", b"%d" % i)
    await ops.lookup(ROOT_INODE, b"run", None)
    with _Down(store.fs, "copy", after=7), pytest.raises(pyfuse3.FUSEError) as e:
        await ops.rename(ROOT_INODE, b"run", ROOT_INODE, b"done", 0, None)
    assert e.value.errno == errno.EIO
    assert [e.name for e in store.list_dir("run")] == [f"f{i:02d}" for i in range(20)]  # source whole
    await ops.rename(ROOT_INODE, b"run", ROOT_INODE, b"done", 0, None)  # the same rename, again
    assert sorted(e.name for e in store.list_dir("done")) == [f"f{i:02d}" for i in range(20)]
    assert not store.exists("run/f00")
    assert store.read_all("done/f13") == b"13"


async def test_rename_flags_and_targets(comps: Any) -> None:
    ops, store = comps.operations, comps.store
    store.put_bytes("x/a", b"a")
    store.put_bytes("x/b", b"b")
    store.put_bytes("y/c", b"c")
    x = await ops.lookup(ROOT_INODE, b"x", None)
    for flags, dst_parent, dst, code in ((1, x.st_ino, b"b", errno.EEXIST),  # RENAME_NOREPLACE
                                         (2, x.st_ino, b"b", errno.EINVAL),  # RENAME_EXCHANGE
                                         (0, ROOT_INODE, b"y", errno.EISDIR)):
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.rename(x.st_ino, b"a", dst_parent, dst, flags, None)
        assert e.value.errno == code
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.rename(ROOT_INODE, b"x", ROOT_INODE, b"y", 0, None)
    assert e.value.errno == errno.ENOTEMPTY
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.rename(ROOT_INODE, b"x", x.st_ino, b"inside", 0, None)
    assert e.value.errno == errno.EINVAL


async def test_a_read_only_prefix_cannot_be_deleted_or_moved_from_above(comps: Any) -> None:
    """The prefix's own name (a file, or the directory) and the directories above it are protected too."""
    ops, store = comps.operations, comps.store
    store.put_bytes("ds/labels.csv", b"l")
    store.put_bytes("ds/frozen/x.bin", b"x")
    ops.read_only_prefixes = ("ds/labels.csv", "ds/frozen")
    ds = await ops.lookup(ROOT_INODE, b"ds", None)
    for call in (lambda: ops.unlink(ds.st_ino, b"labels.csv", None),  # the prefix names a file: it stays
                 lambda: ops.rename(ds.st_ino, b"labels.csv", ds.st_ino, b"other.csv", 0, None),
                 lambda: ops.rename(ROOT_INODE, b"ds", ROOT_INODE, b"moved", 0, None)):  # would move ds/frozen
        with pytest.raises(pyfuse3.FUSEError) as e:
            await call()
        assert e.value.errno == errno.EROFS
    assert store.read_all("ds/labels.csv") == b"l" and store.read_all("ds/frozen/x.bin") == b"x"
    assert not store.exists("moved/a.bin")
