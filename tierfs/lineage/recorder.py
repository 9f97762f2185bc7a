"""The daemon's side of lineage: record each job's first open of every file, flush in batches.

On the read path (``opened``, called by the FUSE adapter for each read-only
open of a lake file) a job costs one set lookup, and on a first open one
append to its buffer: no I/O, no await. A task of the mount's nursery puts
the buffers into the lake every ``flush_seconds`` (and when one holds
``batch`` reads) as whole part objects, each a store call with its deadline,
in a worker thread under the write limiter. ``stop`` flushes and writes the
job's stop record; so does the unmount for jobs still running. A daemon that
dies (kill -9, a crash) loses the reads not yet flushed: at most the last
``flush_seconds``; the parts already written stay whole.

With a ``pid``, only opens by that process and its descendants count: the
FUSE request names the calling thread, whose thread group and parents are
read from ``/proc`` (an in-memory file system: no disk is waited on) once
per thread id and then cached for the job.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from tierfs.control import Refused
from tierfs.errors import UserError
from tierfs.limits import in_thread
from tierfs.lineage.record import Read, encode_part, job_dir, part_key, view_of
from tierfs.refs import ObjectRef
from tierfs.store.objects import ObjectStore

log = logging.getLogger(__name__)

MAX_BUFFERED = 1_000_000  # reads held for a store that cannot be written to; beyond it they are counted as lost
_PID_CACHE = 65_536


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def _status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith((b"Tgid:", b"PPid:")):
                    k, v = line.split(b":", 1)
                    out[k.decode()] = int(v)
    except (OSError, ValueError):
        pass
    return out


def descends(pid: int, root: int) -> bool:
    """Whether the thread or process ``pid`` is ``root`` or runs in one of its descendants."""
    for _ in range(128):  # (a bound on the walk: parents form a tree, but /proc changes under it)
        if pid <= 1:
            return root == pid
        st = _status(pid)
        if not st:
            return False
        if pid == root or st.get("Tgid") == root:
            return True
        pid = st.get("PPid", 0)
    return False


@dataclass
class Job:
    name: str
    root_pid: int | None  # None: every process's opens
    started_at: str
    seen: set[tuple[str, str, str]] = field(default_factory=set)  # (view, path, identity)
    buffer: list[Read] = field(default_factory=list)
    parts: int = 0
    count: int = 0
    lost: int = 0
    in_tree: dict[int, bool] = field(default_factory=dict)
    flush_seconds: float = 5.0
    flushed_at: float = 0.0  # trio clock
    lock: trio.Lock = field(default_factory=trio.Lock)

    def covers(self, pid: int) -> bool:
        if self.root_pid is None:
            return True
        hit = self.in_tree.get(pid)
        if hit is None:
            hit = descends(pid, self.root_pid)
            if len(self.in_tree) >= _PID_CACHE:
                self.in_tree.clear()
            self.in_tree[pid] = hit
        return hit


class LineageRecorder:
    def __init__(self, store: ObjectStore, limiter: trio.CapacityLimiter, flush_seconds: float = 5.0,
                 batch: int = 50_000):
        self.store = store
        self.limiter = limiter
        self.flush_seconds = flush_seconds
        self.batch = batch
        self.jobs: dict[str, Job] = {}
        self._wake = trio.Event()
        self._host = socket.gethostname()

    # -- the read path ------------------------------------------------------
    def opened(self, mount_path: str, ref: ObjectRef, mtime_ns: int, pid: int) -> None:
        """A read-only open of ``mount_path`` whose bytes are ``ref``, by the thread ``pid``."""
        if not self.jobs:
            return
        view, path = view_of(mount_path)
        seen = (view, path, ref.identity())
        for job in self.jobs.values():
            if seen in job.seen or not job.covers(pid):
                continue
            job.seen.add(seen)
            job.count += 1
            if len(job.buffer) >= MAX_BUFFERED:
                job.lost += 1
                continue
            job.buffer.append(Read(view, path, ref, mtime_ns, pid, time.time()))
            if len(job.buffer) >= self.batch:
                self._wake.set()

    # -- control requests ---------------------------------------------------
    async def control(self, req: dict[str, Any]) -> dict[str, Any]:
        op, name = req.get("op"), req.get("name")
        if not isinstance(name, str):
            raise Refused(errno.EINVAL, "a lineage request names its job: {\"name\": NAME}")
        try:
            job_dir(name)
        except UserError as exc:
            raise Refused(errno.EINVAL, f"{exc}") from None
        if op == "lineage_start":
            pid = req.get("pid")
            if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool)):
                raise Refused(errno.EINVAL, "pid is a number")
            flush = req.get("flush_seconds", self.flush_seconds)
            if not isinstance(flush, int | float) or isinstance(flush, bool) or not 0.05 <= flush <= 3600:
                raise Refused(errno.EINVAL, "flush_seconds is a number of seconds from 0.05 to 3600")
            return await self.start(name, pid, float(flush))
        if op == "lineage_stop":
            return await self.stop(name, "stopped")
        raise Refused(errno.EINVAL, f"no such request: {op!r}")

    async def start(self, name: str, pid: int | None, flush_seconds: float = 5.0) -> dict[str, Any]:
        if name in self.jobs:
            raise Refused(errno.EEXIST, f"lineage job {name!r} is already running on this mount")
        if pid is not None and pid <= 0:
            raise Refused(errno.ESRCH, f"no process {pid} on this host")
        job = Job(name, pid, _now(), flush_seconds=flush_seconds, flushed_at=trio.current_time())
        self.jobs[name] = job  # (held while the start record is written: a second start is refused meanwhile)
        self._wake.set()  # (the flusher's next tick may come sooner for this job)
        try:
            async with job.lock:
                record = {"name": name, "host": self._host, "daemon_pid": os.getpid(), "lake": self.store.url,
                          "pid": pid, "started_at": job.started_at}
                await in_thread(self._put_new, f"{job_dir(name)}/start.json", _json(record), pid,
                                limiter=self.limiter)
        except BaseException:
            self.jobs.pop(name, None)
            raise
        log.info("lineage job %s started%s", name, f" (process tree of {pid})" if pid else "")
        return {"name": name}

    def _put_new(self, key: str, data: bytes, pid: int | None) -> None:
        if pid is not None and not os.path.exists(f"/proc/{pid}"):
            raise Refused(errno.ESRCH, f"no process {pid} on this host")
        if self.store.exists(key):
            raise Refused(errno.EEXIST, f"lineage job {self.store.url}/{key.rsplit('/', 1)[0]} already exists "
                                        "(a read-set is kept as it was recorded): choose another name")
        self.store.put_bytes(key, data)

    async def stop(self, name: str, reason: str) -> dict[str, Any]:
        job = self.jobs.get(name)
        if job is None:
            raise Refused(errno.ENOENT, f"no lineage job {name!r} is running on this mount")
        async with job.lock:  # (after a start record still being written, or a flush)
            if self.jobs.get(name) is not job:
                raise Refused(errno.ENOENT, f"no lineage job {name!r} is running on this mount")
            del self.jobs[name]  # no read counts from here
            await self._flush_locked(job)
            if job.buffer:
                raise Refused(errno.EIO, f"the last {len(job.buffer)} reads of {name!r} could not be written "
                                         "to the lake; the job is stopped without them")
            record = {"name": name, "host": self._host, "started_at": job.started_at, "stopped_at": _now(),
                      "reason": reason, "count": job.count, "lost": job.lost, "parts": job.parts}
            await in_thread(self.store.put_bytes, f"{job_dir(name)}/stop.json", _json(record), limiter=self.limiter)
        log.info("lineage job %s %s: %d files", name, reason, job.count)
        return {"name": name, "count": job.count, "parts": job.parts, "lost": job.lost}

    # -- flushing -----------------------------------------------------------
    async def run(self) -> None:
        """Flush each job's buffer every ``flush_seconds`` of its own (sooner when one fills), until cancelled."""
        while True:
            now = trio.current_time()
            due = min((j.flushed_at + j.flush_seconds for j in self.jobs.values()), default=now + self.flush_seconds)
            with trio.move_on_at(due):
                await self._wake.wait()
            self._wake = trio.Event()
            now = trio.current_time()
            for job in list(self.jobs.values()):
                if job.flushed_at + job.flush_seconds <= now or len(job.buffer) >= self.batch:
                    async with job.lock:
                        await self._flush_locked(job)
                    job.flushed_at = now

    async def _flush_locked(self, job: Job) -> None:
        if not job.buffer:
            return
        batch, n = job.buffer, job.parts + 1
        job.buffer = []
        try:
            await in_thread(lambda: self.store.put_bytes(part_key(job.name, n), encode_part(batch)),
                            limiter=self.limiter)
        except Exception as exc:  # (a task of the mount's nursery; the batch is kept and tried again)
            log.warning("lineage job %s: writing part %d failed (%s: %s); kept for the next flush",
                        job.name, n, type(exc).__name__, exc)
            job.buffer = batch + job.buffer  # the same part number again: a whole object, written over
            return
        job.parts = n

    async def close(self) -> None:
        """At unmount: stop every job still running (flushed, with its stop record)."""
        for name in list(self.jobs):
            try:
                await self.stop(name, "unmounted")
            except Exception as exc:
                log.warning("lineage job %s could not be stopped at unmount: %s", name, exc)


def _json(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode("utf-8", "surrogateescape")
