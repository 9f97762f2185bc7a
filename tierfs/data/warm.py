"""Warming: fetch a list of files into the tiers before the readers get there.

A warm job reads its list (paths relative to the mount, in the order the
sampler will read them) and fetches every block of each file through the
block reader, ``jobs`` files at a time, so they land in RAM, Redis and disk.
With a ``lead``, it stays at most that many files ahead of the readers: the
mount tells it which listed files were opened, and it waits when it is too far
ahead, so it neither floods the cache with the far future nor evicts what the
readers are about to use.

One job at a time; a new request replaces the running one.

A job runs in the mount's nursery, so nothing may escape it: a listed path
that does not resolve to a file (not there, a directory, bytes that are no
name) is one failed file, and a job that cannot go on (its list unreadable)
ends as ``failed`` with the reason in its progress and one log line. The list
is read as bytes, each line a name the way the mount decodes names (so a name
that is not UTF-8 is warmed like any other).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from tierfs.data.reader import BlockReader
from tierfs.refs import ObjectRef

log = logging.getLogger(__name__)

Resolve = Callable[[str], Awaitable[ObjectRef | None]]


@dataclass
class WarmJob:
    list_file: str
    jobs: int = 8
    lead: int = 0  # 0: no bound, warm everything as fast as possible
    total: int = 0
    done: int = 0
    failed: int = 0
    bytes: int = 0
    consumed: int = 0  # listed files the readers have opened (the highest index + 1)
    state: str = "running"  # running, done, failed, replaced, cancelled
    error: str = ""  # why it failed
    first_failure: str = ""  # the first file that could not be warmed, and why
    started: float = field(default_factory=time.monotonic)
    window: OrderedDict[str, int] = field(default_factory=OrderedDict)
    cancel: trio.CancelScope = field(default_factory=trio.CancelScope)

    def progress(self) -> dict[str, Any]:
        return {"list": self.list_file, "state": self.state, "total": self.total, "done": self.done,
                "failed": self.failed, "bytes": self.bytes, "consumed": self.consumed, "lead": self.lead,
                "seconds": round(time.monotonic() - self.started, 2), "error": self.error,
                "first_failure": self.first_failure}


class Warmer:
    def __init__(self, reader: BlockReader, resolve: Resolve, work_dir: Path | None = None):
        self.reader = reader
        self.resolve = resolve
        self.work_dir = work_dir
        self.job: WarmJob | None = None
        self._moved = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._starting = trio.Lock()  # two requests at once must not copy into one list file together

    def attach(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    async def start(self, list_file: str, jobs: int, lead: int) -> WarmJob:
        async with self._starting:
            return await self._start(list_file, jobs, lead)

    async def _start(self, list_file: str, jobs: int, lead: int) -> WarmJob:
        if self._nursery is None:
            raise RuntimeError("warming needs a running mount")
        nursery = self._nursery
        if self.job is not None and self.job.state == "running":
            self.job.cancel.cancel()
            self.job.state = "replaced"
        # A private copy, so the caller may remove its file as soon as the job is
        # started; one per job, so a job ending as the next starts removes its own.
        # (A list of millions of paths: copied and counted in a thread, off the loop.)
        try:
            copy, total = await trio.to_thread.run_sync(_copy_and_count, list_file, self.work_dir)
        except OSError as exc:
            raise FileNotFoundError(f"warm list {list_file}: {exc.strerror or exc}") from None
        job = WarmJob(copy, max(1, jobs), max(0, lead), total)
        self.job = job
        nursery.start_soon(self._run, job)
        return job

    def opened(self, path: str) -> None:
        """The mount opened ``path``: if it is listed ahead, the readers have got that far."""
        job = self.job
        if job is None or job.state != "running" or not job.lead:
            return
        idx = job.window.get(path)
        if idx is not None and idx + 1 > job.consumed:
            job.consumed = idx + 1
            while job.window and next(iter(job.window.values())) <= idx:
                job.window.popitem(last=False)
            self._moved.set()
            self._moved = trio.Event()

    async def _run(self, job: WarmJob) -> None:
        try:
            with job.cancel:
                await self._warm(job)
                job.state = "done"
                log.info("warm %s: %d files, %d bytes, %d failed%s, in %.1f s", job.list_file, job.done, job.bytes,
                         job.failed, f" (first: {job.first_failure})" if job.first_failure else "",
                         time.monotonic() - job.started)
        except Exception as exc:  # (a task of the mount's nursery: nothing may escape it)
            while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
                exc = exc.exceptions[0]  # (what went wrong, not the nursery it went wrong in)
            job.state, job.error = "failed", f"{type(exc).__name__}: {exc}"
            log.warning("warm %s failed after %d of %d files: %s", job.list_file, job.done, job.total, job.error)
        finally:
            if job.state == "running":
                job.state = "cancelled"
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_unlink_quietly, job.list_file)

    async def _warm(self, job: WarmJob) -> None:
        send, receive = trio.open_memory_channel[tuple[int, str]](0)
        async with trio.open_nursery() as nursery:
            for _ in range(job.jobs):
                nursery.start_soon(self._worker, job, receive.clone())
            async with send:
                async for idx, path in _paths(job.list_file):
                    while job.lead and idx >= job.consumed + job.lead:
                        await self._moved.wait()
                    if job.lead:
                        job.window[path] = idx
                    await send.send((idx, path))
            await receive.aclose()

    async def _worker(self, job: WarmJob, receive: trio.MemoryReceiveChannel[tuple[int, str]]) -> None:
        async with receive:
            async for _idx, path in receive:
                try:
                    ref = await self.resolve(path)
                    if ref is None:
                        raise IsADirectoryError(f"{path} is a directory")
                    nblocks = -(-ref.size // self.reader.block_size)
                    for i in range(nblocks):
                        data = await self.reader.warm(ref, i)
                        job.bytes += len(data)
                except Exception as exc:
                    job.failed += 1
                    if not job.first_failure:
                        job.first_failure = f"{path}: {type(exc).__name__}: {exc}"
                    log.debug("warm: %s: %s", path, exc)
                job.done += 1


def _copy_and_count(list_file: str, work_dir: Path | None) -> tuple[str, int]:
    """A private copy of the list (in ``work_dir``, or the temp dir), and how many paths it holds."""
    fd, copy = tempfile.mkstemp(prefix="warm-list.", suffix=".txt", dir=work_dir)
    os.close(fd)
    try:
        shutil.copyfile(list_file, copy)
        with open(copy, "rb") as fh:
            return copy, sum(1 for line in fh if line.strip())
    except BaseException:
        os.unlink(copy)
        raise


async def _paths(list_file: str) -> AsyncIterator[tuple[int, str]]:
    """(index, path) of each listed file; the file is read in batches off the loop."""
    fh = await trio.to_thread.run_sync(lambda: open(list_file, "rb"))  # noqa: SIM115 - closed below
    idx = 0
    try:
        while True:
            batch = await trio.to_thread.run_sync(fh.readlines, 1 << 16)
            if not batch:
                return
            for line in batch:
                p = os.fsdecode(line.strip()).strip("/")  # (as the mount decodes a name: surrogateescape)
                if p:
                    yield idx, p
                    idx += 1
    finally:
        fh.close()


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass  # (removed already, by a tmp cleaner say: it was the job's own copy)


def write_list(paths: Iterator[str] | list[str], mountpoint: Path, out: Path) -> int:
    """Write a warm list of paths relative to ``mountpoint``; returns how many."""
    n = 0
    root = str(mountpoint.absolute()).rstrip("/") + "/"
    with open(out, "w", encoding="utf-8", errors="surrogateescape") as fh:  # (names as the mount decodes them)
        for p in paths:
            p = str(p)
            if p.startswith(root):
                p = p[len(root):]
            fh.write(p.lstrip("/") + "\n")
            n += 1
    return n
