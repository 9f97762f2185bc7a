"""FUSE passthrough of cached files: the kernel reads them from the disk tier, not through us.

A file whose whole content is one block on the disk tier (plain, its checksum
checked at open) is opened with that block file as its *backing file*: read,
pread, mmap and splice of the open file are then served by the kernel from the
block file and never reach this daemon. A file of several blocks gets a
whole-file copy on the disk tier once all its blocks are there (written in the
background from the checked blocks, when an open or a close finds them
complete), and is passed through to that. Everything else is served as before.

The kernel's rules, kept here per inode:

- while an inode has passthrough opens, every open of it must be passed
  through to the same backing file. Later opens of the same bytes reuse its
  backing id. An open that needs other bytes (the object changed upstream) or
  must not touch the block file (a writer) is answered ``Mode.RENUMBER``: the
  mount gives the name a new inode, as a local filesystem does for a file
  replaced under its name, and answers ESTALE, on which the kernel looks the
  name up again and retries the open once, on the new inode. The old inode
  keeps serving its open files the bytes they opened.
- while an inode has page-cache opens, none is passed through;
- a passthrough open never asks to keep the page cache.

A backing id outlives its last open (idle, up to a count and a size): the
next open of the same bytes is answered from memory, with no check, thread
or ioctl, which is what makes a warm open cheap. An idle backing pins no mode
on the inode in the kernel, so any open may follow it.

What the daemon counts as a release may lag the kernel, never lead it, so
these counts are at worst cautious (an open served the ordinary way).
"""

from __future__ import annotations

import collections
import errno
import logging
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import pyfuse3
import trio

from tierfs.limits import in_thread
from tierfs.metrics import Counters
from tierfs.refs import ObjectRef
from tierfs.tiers.disk import DiskTier
from tierfs.tiers.ram import RamTier

log = logging.getLogger(__name__)


_ASSEMBLY_TRIES = 5
_IDLE_MAX = 4096  # backing files kept registered with no open using them
_IDLE_BYTES = 1 << 30  # ... and their bytes
# What a refused backing file means for every later one too (no capability, a cache stacked too deep).
_FOR_GOOD = frozenset({errno.EPERM, errno.EACCES, errno.ELOOP, errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL})
_MISSING = object()


class Mode(Enum):
    CACHED = "cached"  # the kernel's page cache of the FUSE file; reads come to us
    PASSTHROUGH = "passthrough"  # the kernel reads the backing file itself
    RENUMBER = "renumber"  # the inode is passed through to other bytes: give the name a new inode


@dataclass
class _Backing:
    ref: ObjectRef
    backing_id: int
    opens: int


class Passthrough:
    def __init__(self, disk: DiskTier | None, block_size: int, limiter: trio.CapacityLimiter, wanted: bool,
                 ram: RamTier | None = None):
        self.disk = disk
        self.ram = ram  # a small file it holds is served from memory, not passed through to the disk
        self.block_size = block_size
        self.limiter = limiter
        self.capable = may_pass_through()
        self.wanted = wanted and disk is not None and disk.sealer is None and self.capable
        # Asked at INIT: how deep the disk tier's filesystem is stacked (0: ext4, xfs; 1: overlayfs).
        self.stack_depth = stack_depth(disk.root) if disk is not None else 0
        self.on = False
        self.note = "not started" if self.wanted else self._why_not(wanted)
        self.stats = Counters(("passthrough_opens", "passthrough_bytes", "renumbered", "whole_file_copies"))
        self._backing: dict[int, _Backing] = {}
        self._cached: collections.Counter[int] = collections.Counter()
        self._idle: collections.OrderedDict[int, None] = collections.OrderedDict()  # registered, no open uses them
        self._idle_bytes = 0
        self._nursery: trio.Nursery | None = None
        self._assembling: set[ObjectRef] = set()
        self._assembly_limiter = trio.CapacityLimiter(1)  # one whole-file copy written at a time

    def _why_not(self, wanted: bool) -> str:
        if not wanted:
            return "off ([fuse] passthrough = false)"
        if self.disk is None:
            return "off (no disk tier to pass through to)"
        if self.disk.sealer is not None:
            return "off (the disk cache is encrypted: its block files are not the files' bytes)"
        return "off (the daemon lacks CAP_SYS_ADMIN in the initial user namespace, which backing files need)"

    def start(self, probe: Path, nursery: trio.Nursery) -> str:
        """Once the kernel's INIT is answered: is passthrough on? One line for the log and stats."""
        self._nursery = nursery
        if not self.wanted:
            return self.note
        if not hasattr(pyfuse3, "passthrough_enabled"):
            self.note = "off (this pyfuse3 lacks tierfs' patch: run scripts/build_pyfuse3.sh)"
        elif not pyfuse3.passthrough_enabled():
            self.note = "off (the kernel does not offer it: Linux >= 6.9 with CONFIG_FUSE_PASSTHROUGH)"
        else:
            try:
                fd = os.open(probe, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    pyfuse3.passthrough_close(pyfuse3.passthrough_open(fd))
                finally:
                    os.close(fd)
            except OSError as exc:
                self.note = f"off (the kernel refused a backing file: {_why(exc)}; it needs CAP_SYS_ADMIN)"
            else:
                self.on = True
                self.note = "on (files whose bytes are all on the disk tier)"
        return self.note

    async def open_read(self, inode: int, ref: ObjectRef) -> tuple[Mode, int]:
        """The mode of a read-only open of ``ref``, and its backing id (0 unless passed through)."""
        backing = self._backing.get(inode)
        if backing is not None and backing.opens:
            if backing.ref == ref:
                return self._reuse(inode, backing)
            return self._renumber()
        if backing is not None:  # idle: no open uses it, the kernel holds no mode for the inode
            if backing.ref == ref and not self._cached[inode]:
                return self._reuse(inode, backing)  # (no check, no thread, no ioctl: the warm path)
            if backing.ref != ref:
                self._close(inode)
        if not self.on or self._cached[inode] or ref.size <= 0 or self.disk is None:
            return self._page_cache(inode)
        if self.ram is not None and ref.size <= self.block_size and self.ram.holds(ref.block_key(0, self.block_size)):
            return self._page_cache(inode)  # RAM is nearer than the disk: read it from there (and keep its pages)
        whole = ref.size > self.block_size
        key = ref.whole_key(self.block_size) if whole else ref.block_key(0, self.block_size)
        # (The disk tier's in-memory filter first: a cold open pays no thread hop for a file surely not there.)
        fd = await in_thread(self.disk.backing_fd, key, ref.size, limiter=self.limiter) \
            if self.disk.may_hold(key) else None
        if fd is None:
            if whole:
                self.assemble_soon(ref)
            return self._page_cache(inode)
        try:
            # (Another open of this inode may have been decided while the block was checked.)
            backing = self._backing.get(inode)
            if backing is None and not self._cached[inode]:
                backing = self._backing[inode] = _Backing(ref, pyfuse3.passthrough_open(fd), 0)
                self._idle_bytes += ref.size
                self._idle[inode] = None
        except OSError as exc:
            if exc.errno in _FOR_GOOD:
                log.warning("passthrough: the kernel refused a backing file (%s); serving every file the ordinary "
                            "way from now on", _why(exc))
                self.on, self.note = False, f"off (the kernel refused a backing file: {_why(exc)})"
            else:  # (ENOMEM, ENFILE, ...: this open only)
                log.info("passthrough: no backing file for %s (%s); served the ordinary way", ref.key, _why(exc))
            return self._page_cache(inode)
        finally:
            os.close(fd)  # the kernel holds its own reference from passthrough_open
        if backing is None or (not backing.opens and self._cached[inode]):
            return self._page_cache(inode)  # (a page-cache open began while the block was checked)
        if backing.ref != ref:
            return self._renumber() if backing.opens else self._page_cache(inode)
        return self._reuse(inode, backing)

    def _reuse(self, inode: int, backing: _Backing) -> tuple[Mode, int]:
        if not backing.opens:
            self._idle.pop(inode, None)
            self._idle_bytes -= backing.ref.size
        backing.opens += 1
        self._counted(backing.ref)
        return Mode.PASSTHROUGH, backing.backing_id

    def open_other(self, inode: int) -> Mode:
        """The mode of any other open (a writer, a staged file): never beside a passthrough open."""
        if self.backed(inode):
            return self._renumber()[0]
        return self._page_cache(inode)[0]

    def assemble_soon(self, ref: ObjectRef) -> None:
        """If all blocks of a large file are on the disk tier, write its whole-file copy (in the background)."""
        if (not self.on or self.disk is None or self._nursery is None or ref.size <= self.block_size
                or ref in self._assembling):
            return
        self._assembling.add(ref)
        self._nursery.start_soon(self._assemble, ref)

    async def _assemble(self, ref: ObjectRef) -> None:
        try:
            # The blocks a read just fetched land on the disk behind its replies: give them a few seconds.
            for _ in range(_ASSEMBLY_TRIES):
                if await in_thread(self._assemble_now, ref, limiter=self._assembly_limiter) is not _MISSING:
                    return
                await trio.sleep(1)
        except Exception as exc:  # (a task of the mount's nursery: a copy not written is a file not passed through)
            log.warning("passthrough: writing the whole-file copy of %s failed: %s: %s", ref.key,
                        type(exc).__name__, exc)
        finally:
            self._assembling.discard(ref)

    def _assemble_now(self, ref: ObjectRef) -> object:
        """Write the copy if all blocks are here; _MISSING if some are not (yet)."""
        assert self.disk is not None
        whole = ref.whole_key(self.block_size)
        parts = [ref.block_key(i, self.block_size) for i in range(-(-ref.size // self.block_size))]
        if self.disk.holds([whole]):
            return None
        if not self.disk.holds(parts):
            return _MISSING
        if self.disk.assemble(whole, parts, ref.size):
            self.stats.add("whole_file_copies")
        return None

    def backed(self, inode: int) -> bool:
        """Whether an open of ``inode`` is passed through now (the kernel holds its backing file)."""
        backing = self._backing.get(inode)
        return backing is not None and backing.opens > 0

    def release(self, inode: int, mode: Mode) -> None:
        if mode is Mode.CACHED:
            self._cached[inode] -= 1
            if self._cached[inode] <= 0:
                del self._cached[inode]
        elif mode is Mode.PASSTHROUGH:
            backing = self._backing.get(inode)
            if backing is None or not backing.opens:
                return
            backing.opens -= 1
            if backing.opens == 0:
                # Kept registered, idle, so the next open of the file is answered at once; the oldest
                # idle ones are closed past a count and a size (the disk space of an evicted one comes
                # back at its close).
                self._idle[inode] = None
                self._idle_bytes += backing.ref.size
                while self._idle and (len(self._idle) > _IDLE_MAX or self._idle_bytes > _IDLE_BYTES):
                    self._close(next(iter(self._idle)))

    def _close(self, inode: int) -> None:
        backing = self._backing.pop(inode)
        if inode in self._idle:
            del self._idle[inode]
            self._idle_bytes -= backing.ref.size
        try:
            pyfuse3.passthrough_close(backing.backing_id)
        except OSError as exc:
            log.warning("passthrough: releasing backing id %d failed: %s", backing.backing_id, exc)

    def snapshot(self) -> dict[str, object]:
        return {"passthrough": self.note, "backing_files": len(self._backing) - len(self._idle),
                "idle_backing_files": len(self._idle), **self.stats.snapshot()}

    def _counted(self, ref: ObjectRef) -> None:
        self.stats.add("passthrough_opens")
        self.stats.add("passthrough_bytes", ref.size)

    def _renumber(self) -> tuple[Mode, int]:
        self.stats.add("renumbered")
        return Mode.RENUMBER, 0

    def _page_cache(self, inode: int) -> tuple[Mode, int]:
        self._cached[inode] += 1
        return Mode.CACHED, 0


def _why(exc: OSError) -> str:
    return os.strerror(exc.errno) if exc.errno else str(exc)


def may_pass_through() -> bool:
    """Whether this process holds CAP_SYS_ADMIN in the initial user namespace (what backing files need)."""
    try:
        status = Path("/proc/self/status").read_text()
        caps = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("CapEff:")), 16)
        uid_map = Path("/proc/self/uid_map").read_text().split()
    except (OSError, StopIteration, ValueError):
        return False
    return bool(caps & (1 << _CAP_SYS_ADMIN)) and uid_map[:3] == ["0", "0", "4294967295"]


def stack_depth(path: Path) -> int:
    """How many filesystems are stacked under ``path``'s: 1 on overlayfs (a container's root), else 0."""
    best, fstype = "", ""
    try:
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                fields = line.split()
                point, kind = fields[4], fields[fields.index("-") + 1]
                if (str(path) + "/").startswith(point.rstrip("/") + "/") and len(point) >= len(best):
                    best, fstype = point, kind
    except (OSError, ValueError, IndexError):
        return 0
    return 1 if fstype in ("overlay", "ecryptfs") or fstype.startswith("fuse") else 0


_CAP_SYS_ADMIN = 21
