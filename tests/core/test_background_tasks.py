"""Background tasks of the mount (warm jobs, tier fills, gauges) log their errors and go on.

Each runs in the mount's root nursery: an exception escaping one would cancel
the nursery, and with it the FUSE loop — the mount would die of a warm list or
a cache disk. These tests run the tasks in a nursery of their own and fail if
anything escapes it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import fsspec
import pytest
import trio
import trio.testing

from tierfs import mount as mount_mod
from tierfs.config import load
from tierfs.mount import build
from tierfs.namespace.inodes import ROOT_INODE
from tierfs.store.objects import ObjectStore


@pytest.fixture
def comps(tmp_path: Path) -> Any:
    fs = fsspec.filesystem("memory", skip_instance_cache=True)
    root = f"/b{tmp_path.name}"
    for i in range(4):
        fs.pipe(f"{root}/ds/{i}.bin", bytes([65 + i]) * 10_000)
    settings = load(None, {"lake_url": f"memory://{root}", "cache_dir": str(tmp_path / "cache"),
                           "block_size": "4KiB", "store_retries": "1", "ram_size": "0"})
    c = build(settings, ObjectStore(fs, root, settings.lake_url, retries=1))
    yield c
    c.close()
    fs.rm(root, recursive=True)


async def _wait_state(job: Any) -> None:
    with trio.fail_after(10):
        while job.state == "running":  # noqa: ASYNC110 - polling a job's state, set by another task
            await trio.sleep(0.02)


async def test_a_warm_job_whose_list_vanished_fails_alone(comps: Any, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    warmer = comps.operations.warmer
    lst = tmp_path / "list.txt"
    lst.write_text("ds/0.bin\n")
    async with trio.open_nursery() as nursery:
        warmer.attach(nursery)
        job = await warmer.start(str(lst), 2, 0)
        os.unlink(job.list_file)  # its private copy, gone before the job reads it (a tmp cleaner)
        await _wait_state(job)
        assert job.state == "failed" and "No such file" in job.progress()["error"]
        # the mount's other work goes on: a new job runs
        job2 = await warmer.start(str(lst), 2, 0)
        await _wait_state(job2)
        assert job2.state == "done" and job2.done == 1
        nursery.cancel_scope.cancel()
    assert any("warm" in r.getMessage() and "failed" in r.getMessage() for r in caplog.records
               if r.levelno >= logging.WARNING)


async def test_a_warm_list_of_bad_lines_warms_the_good_ones(comps: Any, tmp_path: Path) -> None:
    warmer = comps.operations.warmer
    lst = tmp_path / "list.txt"
    lst.write_bytes(b"ds/0.bin\nds/\xff\xfe.bin\nds\nno/such/file\nds/1.bin\n")
    async with trio.open_nursery() as nursery:
        warmer.attach(nursery)
        job = await warmer.start(str(lst), 2, 0)
        assert job.total == 5
        await _wait_state(job)
        nursery.cancel_scope.cancel()
    prog = job.progress()
    assert (prog["state"], prog["done"], prog["failed"], prog["bytes"]) == ("done", 5, 3, 20_000), prog


async def test_a_tier_fill_that_fails_loses_nothing_and_stops_nothing(comps: Any, monkeypatch: pytest.MonkeyPatch,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    ops, writer = comps.operations, comps.writer
    disk = comps.disk()

    def broken_put(*a: Any) -> None:
        raise PermissionError(1, "Operation not permitted")  # the cache dir made unwritable mid-run

    monkeypatch.setattr(disk, "put", broken_put)

    def broken_drop(sf: Any) -> None:
        raise PermissionError(13, "Permission denied", str(sf.data))  # the staging dir, too

    monkeypatch.setattr(writer.staging, "drop", broken_drop)
    async with trio.open_nursery() as nursery:
        writer.start(nursery)
        ds = await ops.lookup(ROOT_INODE, b"ds", None)
        for name in (b"new1.bin", b"new2.bin"):
            fi, _ = await ops.create(ds.st_ino, name, 0o644, os.O_WRONLY | os.O_CREAT, None)
            await ops.write(fi.fh, 0, b"N" * 9000)
            await ops.flush(fi.fh)  # uploaded; the fill behind it fails
            await ops.release(fi.fh)
        await trio.sleep(0.2)
        assert comps.store.read_all("ds/new2.bin") == b"N" * 9000
        node = await ops.lookup(ds.st_ino, b"0.bin", None)
        fi = await ops.open(node.st_ino, os.O_RDONLY, None)
        assert await ops.read(fi.fh, 0, 10_000) == b"A" * 10_000  # reads go on
        await ops.release(fi.fh)
        for _ in range(100):  # the fill (and the staged file's drop after it) starts a moment after the upload
            if "Permission denied" in caplog.text:
                break
            await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert "Permission denied" in caplog.text


def test_the_gauge_refresh_survives_its_tier(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    class Sick:
        name = "redis"

        def refresh_gauges(self) -> None:
            calls.append(1)
            if len(calls) == 1:
                raise ValueError("a reply tierfs did not expect")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mount_mod._refresh_gauges, Sick())
            await trio.sleep(12)
            nursery.cancel_scope.cancel()

    # Virtual time, jumped only when the loop has idled 50 ms for real (so never past a thread's answer).
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0.05))
    assert len(calls) >= 2
    assert "a reply tierfs did not expect" in caplog.text
