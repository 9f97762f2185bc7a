"""The trio loop keeps serving while the write path waits on a slow disk or store.

Each case makes one blocking call of an operation slow (0.5 s in the thread
that makes it) and records which thread made each call: none may be the
loop's own thread. (A thread check, not a stopwatch: a watchdog timing the
loop's gaps also measured whatever else the machine was doing.)
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import fsspec
import pyfuse3
import pytest
import trio
import trio.testing

from tierfs import statefile
from tierfs.config import load
from tierfs.mount import build
from tierfs.namespace.inodes import ROOT_INODE
from tierfs.store.objects import ObjectStore
from tierfs.store.upload import UploadState

SLOW = 0.5  # seconds each slowed call blocks its thread


@pytest.fixture
def comps(tmp_path: Path) -> Iterator[Any]:
    fs = fsspec.filesystem("memory", skip_instance_cache=True)
    root = f"/l{tmp_path.name}"
    fs.pipe(f"{root}/ds/a.bin", b"A" * 10_000)
    settings = load(None, {"lake_url": f"memory://{root}", "cache_dir": str(tmp_path / "cache"),
                           "block_size": "4KiB", "store_retries": "1"})
    c = build(settings, ObjectStore(fs, root, settings.lake_url, retries=1))
    yield c
    c.close()
    if fs.exists(root):
        fs.rm(root, recursive=True)


class Slow:
    """Replace ``owner.name`` by a version that blocks its caller for SLOW seconds first.

    Made on the loop's thread; counts its calls, and those made on that thread.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, owner: Any, name: str):
        self.calls = 0
        self.on_loop = 0
        loop = threading.get_ident()
        real = getattr(owner, name)

        def slow(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            self.on_loop += threading.get_ident() == loop
            time.sleep(SLOW)
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, slow)

    @property
    def off_loop(self) -> bool:
        """Called at least once, and never on the loop's thread."""
        return self.calls >= 1 and self.on_loop == 0


async def _create(ops: Any, name: bytes, data: bytes) -> tuple[int, int]:
    ds = await ops.lookup(ROOT_INODE, b"ds", None)
    fi, attrs = await ops.create(ds.st_ino, name, 0o644, os.O_RDWR | os.O_CREAT, None)
    await ops.write(fi.fh, 0, data)
    return fi.fh, attrs.st_ino


async def _open_existing(ops: Any) -> int:
    ds = await ops.lookup(ROOT_INODE, b"ds", None)
    a = await ops.lookup(ds.st_ino, b"a.bin", None)
    fi = await ops.open(a.st_ino, os.O_RDWR, None)
    return int(fi.fh)


async def _failed_multipart(comps: Any, monkeypatch: pytest.MonkeyPatch, name: bytes) -> None:
    """A closed file whose multipart upload failed midway: its upload is still open in the store."""
    ops, store = comps.operations, comps.store
    fh, _ = await _create(ops, name, b"M" * 9000)
    real_put = store.fs.put_file

    def down(*a: Any, **kw: Any) -> Any:
        raise ConnectionError("injected: connection reset by peer")

    monkeypatch.setattr(store.fs, "put_file", down)
    with pytest.raises(pyfuse3.FUSEError):
        await ops.flush(fh)
    monkeypatch.setattr(store.fs, "put_file", real_put)
    await ops.release(fh)
    sf = comps.writer.staged(f"ds/{name.decode()}")
    UploadState(sf.key, sf.size, 0, 1 << 20, upload_id="u-1", parts={1: "e1"}).save(
        comps.writer.staging.upload_state(sf))
    monkeypatch.setattr(store.backend, "multipart", True)


async def test_unlink_aborts_a_multipart_upload_off_the_loop(comps: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    ops, writer = comps.operations, comps.writer
    await _failed_multipart(comps, monkeypatch, b"ckpt.pt")
    aborted: list[tuple[str, str]] = []
    monkeypatch.setattr(comps.store.backend, "abort_multipart", lambda key, uid: aborted.append((key, uid)))
    slow = Slow(monkeypatch, comps.store.backend, "abort_multipart")
    ds = await ops.lookup(ROOT_INODE, b"ds", None)
    await ops.unlink(ds.st_ino, b"ckpt.pt", None)
    assert slow.off_loop and slow.calls == 1 and aborted == [("ds/ckpt.pt", "u-1")]
    assert writer.staged("ds/ckpt.pt") is None
    assert [p.name for p in writer.staging.root.iterdir() if p.is_file()] == ["lock"]  # record, bytes, upload state: gone
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.lookup(ds.st_ino, b"ckpt.pt", None)
    assert e.value.errno == errno.ENOENT


async def test_rename_over_a_staged_file_aborts_its_upload_off_the_loop(
        comps: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    ops, writer = comps.operations, comps.writer
    fh, _ = await _create(ops, b"new.pt", b"N" * 100)
    await ops.flush(fh)
    await ops.release(fh)
    await _failed_multipart(comps, monkeypatch, b"target.pt")
    monkeypatch.setattr(comps.store.backend, "abort_multipart", lambda key, uid: None)
    slow = Slow(monkeypatch, comps.store.backend, "abort_multipart")
    ds = await ops.lookup(ROOT_INODE, b"ds", None)
    await ops.rename(ds.st_ino, b"new.pt", ds.st_ino, b"target.pt", 0, None)
    assert slow.off_loop
    assert comps.store.read_all("ds/target.pt") == b"N" * 100
    assert writer.staged("ds/target.pt") is None


@pytest.mark.parametrize("call", ["pwrite", "journal"])
async def test_a_write_waits_for_the_staging_disk_off_the_loop(
        comps: Any, monkeypatch: pytest.MonkeyPatch, call: str) -> None:
    ops = comps.operations
    fh = await _open_existing(ops)  # read-modify-write: the lake's bytes are copied in, the record turns dirty
    slow = Slow(monkeypatch, os, "pwrite") if call == "pwrite" else Slow(monkeypatch, statefile, "save")
    await ops.write(fh, 100, b"middle")
    monkeypatch.undo()
    assert slow.off_loop
    assert await ops.read(fh, 0, 10_000) == b"A" * 100 + b"middle" + b"A" * 9894
    await ops.flush(fh)
    await ops.release(fh)
    assert comps.store.read_all("ds/a.bin") == b"A" * 100 + b"middle" + b"A" * 9894


async def test_a_read_of_a_staged_file_waits_off_the_loop(comps: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    ops = comps.operations
    fh, _ = await _create(ops, b"r.bin", b"R" * 5000)
    slow = Slow(monkeypatch, os, "pread")
    got: list[bytes] = []

    async def read() -> None:
        got.append(await ops.read(fh, 1000, 10))

    await read()
    assert slow.off_loop and slow.calls == 1 and got == [b"R" * 10]
    await ops.release(fh)


async def test_truncate_waits_off_the_loop(comps: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    ops = comps.operations
    fh, ino = await _create(ops, b"t.bin", b"T" * 5000)
    slow = Slow(monkeypatch, os, "ftruncate")
    attr = SimpleNamespace(st_size=10)
    fields = SimpleNamespace(update_size=True, update_mtime=False)  # (pyfuse3's own is read-only)
    await ops.setattr(ino, attr, fields, fh, None)
    monkeypatch.undo()
    assert slow.off_loop and slow.calls == 1
    assert await ops.read(fh, 0, 100) == b"T" * 10
    await ops.release(fh)


@pytest.mark.parametrize("what", ["create", "open", "close"])
async def test_journal_records_are_written_off_the_loop(
        comps: Any, monkeypatch: pytest.MonkeyPatch, what: str) -> None:
    ops, store = comps.operations, comps.store
    ds = await ops.lookup(ROOT_INODE, b"ds", None)
    a = await ops.lookup(ds.st_ino, b"a.bin", None)
    fh = 0
    if what == "close":
        fh, _ = await _create(ops, b"c.bin", b"C" * 100)
    slow = Slow(monkeypatch, statefile, "save")

    async def act() -> None:
        nonlocal fh
        if what == "create":
            fi, _ = await ops.create(ds.st_ino, b"c.bin", 0o644, os.O_RDWR | os.O_CREAT, None)
            fh = fi.fh
        elif what == "open":
            fh = (await ops.open(a.st_ino, os.O_RDWR, None)).fh
        else:
            await ops.flush(fh)  # the record turns pending before the upload, clean after it

    await act()
    monkeypatch.undo()
    assert slow.off_loop
    await ops.write(fh, 0, b"x")
    await ops.flush(fh)
    await ops.release(fh)
    assert store.read_all("ds/c.bin" if what != "open" else "ds/a.bin")[:1] == b"x"


async def test_the_last_close_of_an_unlinked_file_cleans_up_off_the_loop(
        comps: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    ops, writer = comps.operations, comps.writer
    async with trio.open_nursery() as nursery:
        writer.start(nursery)
        fh, _ = await _create(ops, b"u.bin", b"U" * 100)
        sf = writer.staged("ds/u.bin")
        ds = await ops.lookup(ROOT_INODE, b"ds", None)
        slow = Slow(monkeypatch, writer.staging, "unrecord")
        await ops.unlink(ds.st_ino, b"u.bin", None)
        assert slow.off_loop and slow.calls == 1
        assert await ops.read(fh, 0, 200) == b"U" * 100  # open: its bytes live on
        slow = Slow(monkeypatch, writer.staging, "drop")
        await ops.release(fh)
        with trio.fail_after(5):
            while slow.calls == 0 or not sf.dropped:  # noqa: ASYNC110 - waiting on a worker thread
                await trio.sleep(0.05)
        await trio.sleep(SLOW + 0.1)
        nursery.cancel_scope.cancel()
    assert slow.off_loop
    with pytest.raises(OSError) as e:
        os.fstat(sf.fd)  # closed
    assert e.value.errno == errno.EBADF


async def test_a_warm_list_is_copied_off_the_loop(comps: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ops = comps.operations
    listed = tmp_path / "list.txt"
    listed.write_text("ds/a.bin\n")
    slow = Slow(monkeypatch, shutil, "copyfile")
    async with trio.open_nursery() as nursery:
        ops.warmer.attach(nursery)
        value = f'{{"list": "{listed}", "jobs": 2, "lead": 0}}'.encode()
        await ops.setxattr(ROOT_INODE, b"user.tierfs.warm", value, None)
        listed.unlink()  # the caller may remove its list once the job is started
        with trio.fail_after(10):
            while ops.warmer.job.state == "running":  # noqa: ASYNC110 - polling the job's progress
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert slow.off_loop and slow.calls == 1
    assert (ops.warmer.job.state, ops.warmer.job.total, ops.warmer.job.done) == ("done", 1, 1)


async def test_a_read_sees_the_writes_that_came_before_it(comps: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Off the loop, a write still lands before a read that comes after it (and not before one that came first)."""
    ops = comps.operations
    fh = await _open_existing(ops)
    await ops.write(fh, 0, b"1")
    await ops.flush(fh)  # uploaded: the record is clean, so the next write journals it dirty first
    Slow(monkeypatch, statefile, "save")
    got: dict[str, bytes] = {}

    async def read(name: str) -> None:
        got[name] = await ops.read(fh, 0, 4)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read, "before")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(ops.write, fh, 1, b"2")  # waits on its journal record (slow) ...
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(read, "after")  # ... and a read that comes meanwhile waits for it
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(ops.write, fh, 2, b"3")
    assert got["before"] == b"1AAA"
    assert got["after"] in (b"12AA", b"123A")  # (the second write came while it waited: either is right)
    assert await ops.read(fh, 0, 4) == b"123A"
    await ops.release(fh)


async def test_unlinking_a_lake_file_open_for_reading_keeps_its_bytes_off_the_loop(
        comps: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    ops = comps.operations
    ds = await ops.lookup(ROOT_INODE, b"ds", None)
    a = await ops.lookup(ds.st_ino, b"a.bin", None)
    fh = (await ops.open(a.st_ino, os.O_RDONLY, None)).fh
    slow = Slow(monkeypatch, os, "pwrite")  # its bytes are copied into a staged file before the object goes
    await ops.unlink(ds.st_ino, b"a.bin", None)
    monkeypatch.undo()
    assert slow.off_loop
    assert not comps.store.exists("ds/a.bin")
    assert await ops.read(fh, 0, 20_000) == b"A" * 10_000  # POSIX: still readable through its handle
    await ops.release(fh)
