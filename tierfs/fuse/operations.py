"""The kernel boundary: pyfuse3 requests -> namespace and block reader calls.

No storage I/O here. Every handler runs under :func:`_guard`, which turns
errors into ``FUSEError`` once (an exception of any other type would stop the
whole filesystem) and counts the request.
"""

from __future__ import annotations

import errno
import functools
import itertools
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import pyfuse3

from tierfs.data.readahead import ReadAhead
from tierfs.data.reader import BlockReader
from tierfs.data.warm import Warmer
from tierfs.errors import ReadOnly, to_errno
from tierfs.fuse.attrs import AttrMaker
from tierfs.metrics import FUSE_SECONDS, Counters
from tierfs.namespace.inodes import ROOT_INODE, Node
from tierfs.namespace.live import Namespace
from tierfs.refs import ObjectRef
from tierfs.store.objects import Entry

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
XATTR_PREFIX = "user.tierfs."
FUSE_OPS = ("lookup", "getattr", "readdir", "open", "read", "release", "statfs", "getxattr", "errors")
_COUNTED = frozenset(FUSE_OPS)


def _guard(fn: F) -> F:
    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: TierfsOperations, *args: Any) -> Any:
        if name in _COUNTED:
            self.ops.add(name)
        t0 = time.perf_counter()
        try:
            return await fn(self, *args)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:
            code = to_errno(exc)
            if code == errno.EIO:
                self.ops.add("errors")
                log.warning("%s failed: %s: %s", name, type(exc).__name__, exc,
                            exc_info=log.isEnabledFor(logging.DEBUG))
            raise pyfuse3.FUSEError(code) from None
        finally:
            FUSE_SECONDS.labels(name).observe(time.perf_counter() - t0)

    return cast(F, wrapper)


@dataclass
class _FileHandle:
    node: Node
    ref: ObjectRef
    ra: ReadAhead


@dataclass
class _DirHandle:
    node: Node
    entries: list[Entry]


class TierfsOperations(pyfuse3.Operations):
    def __init__(self, namespace: Namespace, reader: BlockReader, attrs: AttrMaker,
                 stats: Callable[[], dict[str, Any]], read_ahead_blocks: int = 8,
                 warmer: Warmer | None = None):
        super().__init__()
        self.warmer = warmer
        self.read_ahead_blocks = read_ahead_blocks
        self.ns = namespace
        self.reader = reader
        self.attrs = attrs
        self.stats = stats
        self.ops = Counters(FUSE_OPS)
        self._files: dict[int, _FileHandle] = {}
        self._dirs: dict[int, _DirHandle] = {}
        self._fh = itertools.count(1)

    def open_files(self) -> int:
        return len(self._files)

    # -- names ------------------------------------------------------------
    @_guard
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        node = await self.ns.lookup(parent_inode, os.fsdecode(name))
        self.ns.remember(node)
        return self.attrs(node)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            self.ns.forget(inode, count)

    @_guard
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self.attrs(await self.ns.getattr(inode))

    # -- directories --------------------------------------------------------
    @_guard
    async def opendir(self, inode: int, ctx: Any) -> int:
        node = self.ns.node(inode)
        entries = await self.ns.list_dir(inode)
        fh = next(self._fh)
        self._dirs[fh] = _DirHandle(node, entries)
        return fh

    @_guard
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        handle = self._dirs[fh]
        for i in range(start_id, len(handle.entries)):
            entry = handle.entries[i]
            node = self.ns.entry_node(handle.node.path, entry)
            if not pyfuse3.readdir_reply(token, os.fsencode(entry.name), self.attrs(node), i + 1):
                break
            self.ns.remember(node)  # readdirplus counts as a lookup

    @_guard
    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # -- files ----------------------------------------------------------------
    @_guard
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise ReadOnly("the live view is read-only")
        node, ref, keep_cache = await self.ns.open(inode)
        if self.warmer is not None:
            self.warmer.opened(node.path)
        fh = next(self._fh)
        self._files[fh] = _FileHandle(node, ref, ReadAhead(self.reader.block_size, self.read_ahead_blocks))
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fh), keep_cache=keep_cache)

    @_guard
    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self._files[fh]
        data, source = await self.reader.read(handle.ref, off, size)
        if source:
            handle.node.last_tier = source
        self.reader.read_ahead(handle.ra, handle.ref, off, len(data))
        return data

    @_guard
    async def release(self, fh: int) -> None:
        handle = self._files.pop(fh, None)
        if handle is not None:
            self.ns.release(handle.node)

    # -- the rest -------------------------------------------------------------
    @_guard
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = s.f_bfree = s.f_bavail = 1 << 40  # an object store has no fixed size
        s.f_files = s.f_ffree = s.f_favail = 1 << 32
        s.f_namemax = 1024
        return s

    @_guard
    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        value = self._xattrs(self.ns.node(inode)).get(os.fsdecode(name))
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value()

    @_guard
    async def listxattr(self, inode: int, ctx: Any) -> Sequence[bytes]:
        return [os.fsencode(n) for n in self._xattrs(self.ns.node(inode))]

    def _xattrs(self, node: Node) -> dict[str, Callable[[], bytes]]:
        out: dict[str, Callable[[], bytes]] = {}
        if node.inode == ROOT_INODE:
            out[XATTR_PREFIX + "stats"] = lambda: json.dumps(self.stats()).encode()
            out[XATTR_PREFIX + "pid"] = lambda: str(os.getpid()).encode()
            warmer = self.warmer
            if warmer is not None and warmer.job is not None:
                job = warmer.job
                out[XATTR_PREFIX + "warm"] = lambda: json.dumps(job.progress()).encode()
        ref = node.ref
        if ref is not None:
            out[XATTR_PREFIX + "key"] = lambda: ref.key.encode()
            out[XATTR_PREFIX + "etag"] = lambda: ref.etag.encode()
            if ref.version:
                out[XATTR_PREFIX + "version"] = lambda: ref.version.encode()
            out[XATTR_PREFIX + "tier"] = lambda: node.last_tier.encode()
        return out

    # -- writes: the live view is read-only until writes land ------------------
    async def setattr(self, *args: Any) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def mknod(self, *args: Any) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def mkdir(self, *args: Any) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def unlink(self, *args: Any) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def rmdir(self, *args: Any) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def symlink(self, *args: Any) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def rename(self, *args: Any) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def link(self, *args: Any) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def create(self, *args: Any) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        raise pyfuse3.FUSEError(errno.EROFS)

    @_guard
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        """The one writable attribute: ``user.tierfs.warm`` on the root starts a warm job.

        Its value is JSON: {"list": FILE, "jobs": N, "lead": N} (see tierfs warm).
        """
        if inode != ROOT_INODE or os.fsdecode(name) != XATTR_PREFIX + "warm" or self.warmer is None:
            raise pyfuse3.FUSEError(errno.EROFS)
        try:
            req = json.loads(value)
            self.warmer.start(str(req["list"]), int(req.get("jobs", 8)), int(req.get("lead", 0)))
        except (ValueError, KeyError, TypeError):
            raise pyfuse3.FUSEError(errno.EINVAL) from None

    async def removexattr(self, *args: Any) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)
