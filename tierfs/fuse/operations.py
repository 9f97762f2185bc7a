"""The kernel boundary: pyfuse3 requests -> namespace and block reader calls.

No storage I/O here. Every handler runs under :func:`_guard`, which turns
errors into ``FUSEError`` once (an exception of any other type would stop the
whole filesystem) and counts the request.
"""

from __future__ import annotations

import collections
import errno
import functools
import itertools
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar, cast

import pyfuse3
import trio

from tierfs.control import Refused
from tierfs.data.readahead import ReadAhead
from tierfs.data.reader import BlockReader
from tierfs.data.warm import Warmer
from tierfs.errors import Exists, NotEmpty, NotFound, NotPermitted, ReadOnly, leaf, to_errno
from tierfs.fuse.attrs import AttrMaker
from tierfs.fuse.passthrough import Mode, Passthrough
from tierfs.lineage.recorder import LineageRecorder
from tierfs.metrics import FUSE_SECONDS, Counters, observe
from tierfs.namespace.inodes import ROOT_INODE, Node
from tierfs.namespace.live import RESERVED, Namespace
from tierfs.namespace.prefixes import holds, under
from tierfs.namespace.snapshots import in_tree
from tierfs.refs import ObjectRef
from tierfs.store.objects import Changed, Entry
from tierfs.write.staging import StagedFile
from tierfs.write.writer import Writer

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
XATTR_PREFIX = "user.tierfs."
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2  # linux/fs.h
FUSE_NAME_MAX = 1024  # the kernel refuses longer names before asking the filesystem
FUSE_OPS = ("lookup", "getattr", "readdir", "open", "read", "release", "statfs", "getxattr", "errors",
            "create", "write", "flush", "fsync", "setattr", "mkdir", "rmdir", "unlink", "rename")
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
            what = leaf(exc)
            if code == errno.EIO:
                self.ops.add("errors")
                self.recent_errors.append((round(time.time()), name, f"{type(what).__name__}: {what}"[:300]))
                log.warning("%s failed: %s: %s", name, type(what).__name__, what,
                            exc_info=log.isEnabledFor(logging.DEBUG))
            elif log.isEnabledFor(logging.DEBUG):
                log.debug("%s answered %s: %s: %s", name, errno.errorcode.get(code, code), type(what).__name__, what,
                          exc_info=True)
            raise pyfuse3.FUSEError(code) from None
        finally:
            observe(FUSE_SECONDS, name, time.perf_counter() - t0)

    return cast(F, wrapper)


@dataclass
class _FileHandle:
    node: Node
    ref: ObjectRef
    ra: ReadAhead
    staged: StagedFile | None = None  # reads and writes go to the staged bytes
    writable: bool = False
    mode: Mode = Mode.CACHED  # how the kernel serves it (passthrough.py)
    ino: int = 0  # the inode the kernel opened (the node's may differ once its name means another)
    base: int = -1  # a member of a tar shard: its bytes are ``size`` bytes of ``ref``'s from here
    size: int = 0


@dataclass
class _DirHandle:
    node: Node
    entries: list[Entry]
    # (name, is_dir, inode) of each entry replied so far, in order: the digest of what the kernel holds
    replied: list[tuple[str, bool, int]] = field(default_factory=list)


class TierfsOperations(pyfuse3.Operations):
    def __init__(self, namespace: Namespace, reader: BlockReader, attrs: AttrMaker,
                 stats: Callable[[], dict[str, Any]], read_ahead_blocks: int = 8,
                 warmer: Warmer | None = None, writer: Writer | None = None,
                 passthrough: Passthrough | None = None):
        super().__init__()
        # Asked of the kernel at INIT (pyfuse3 with tierfs' patch); each open then decides.
        self.passthrough = passthrough or Passthrough(None, reader.block_size, trio.CapacityLimiter(1), False)
        self.enable_passthrough = self.passthrough.wanted
        self.passthrough_stack_depth = self.passthrough.stack_depth
        self.max_background = 0  # the kernel's background slots asked for at INIT (0: the kernel's 12)
        self.initialized = trio.Event()
        self.writer = writer  # None: a read-only mount
        self.read_only_prefixes: tuple[str, ...] = ()
        self.allow_delete = True
        self.warmer = warmer
        self.lineage: LineageRecorder | None = None  # read-sets (tierfs/lineage/recorder.py)
        self.read_ahead_blocks = read_ahead_blocks
        self.ns = namespace
        self.reader = reader
        self.attrs = attrs
        self.stats = stats
        self.ops = Counters(FUSE_OPS)
        self.recent_errors: collections.deque[tuple[int, str, str]] = collections.deque(maxlen=5)  # tierfs status
        self._files: dict[int, _FileHandle] = {}
        self._dirs: dict[int, _DirHandle] = {}
        self._fh = itertools.count(1)

    def open_files(self) -> int:
        return len(self._files)

    def init(self) -> None:
        """pyfuse3 calls this once it has answered the kernel's INIT (what passthrough waits for)."""
        self.initialized.set()

    # -- names ------------------------------------------------------------
    @_guard
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        text = os.fsdecode(name)
        parent = self.ns.node(parent_inode)
        path = f"{parent.path}/{text}" if parent.path else text
        self._check_name(path)  # the lake can hold no such name
        try:
            node = await self.ns.lookup(parent_inode, text)
        except NotFound as exc:
            if exc.errno == errno.ENOENT and self.ns.under_immutable_prefix(path):
                return self.attrs.missing()  # never there until remount: no lookup of it again
            raise
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
    async def opendir(self, inode: int, ctx: Any) -> pyfuse3.FileInfo:
        node = self.ns.node(inode)
        entries = await self.ns.list_dir(inode)
        fh = next(self._fh)
        self._dirs[fh] = _DirHandle(node, entries)
        # The kernel's directory cache: kept across opens while the names are
        # the ones it was given, with the same inode numbers (a snapshot's
        # never change; the live view's within the TTL). The kernel drops it
        # itself when this mount changes the directory. (Never listed to the
        # kernel yet: nothing to keep, and no digest of 5,000 names to make.)
        keep = node.immutable or (node.listed != 0 and node.listed == self._listed(node.path, entries))
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fh), cache_readdir=True, keep_cache=keep)

    def _listed(self, path: str, entries: list[Entry]) -> int:
        """A digest of a listing as the kernel would hold it: names, types and the inode numbers they have now."""
        return hash(tuple((e.name, e.is_dir, self.ns.inode_of(path, e.name)) for e in entries))

    @_guard
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        handle = self._dirs[fh]
        replied = handle.replied
        for i in range(start_id, len(handle.entries)):
            entry = handle.entries[i]
            node = self.ns.entry_node(handle.node.path, entry)
            if not pyfuse3.readdir_reply(token, os.fsencode(entry.name), self.attrs(node), i + 1):
                return
            self.ns.remember(node)  # readdirplus counts as a lookup
            if len(replied) == i:
                replied.append((entry.name, entry.is_dir, node.inode))
        # The kernel has the whole listing now (what opendir compares with to keep its cache).
        handle.node.listed = hash(tuple(replied)) if len(replied) == len(handle.entries) else \
            self._listed(handle.node.path, handle.entries)

    @_guard
    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # -- files ----------------------------------------------------------------
    @_guard
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        writable = bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND))
        node = self.ns.node(inode)
        if writable:
            writer = self._writer_for(node)
            if node.is_dir:
                raise IsADirectoryError(node.path)
            self._page_cache_open(node)  # counted from here: no passthrough of this inode starts meanwhile
            try:
                staged = writer.staged(node.path)
                base = None if staged is not None else (await self.ns.getattr(inode)).ref
                staged = await writer.open(node.path, base, truncate=bool(flags & os.O_TRUNC))
            except BaseException:
                self.passthrough.release(inode, Mode.CACHED)
                raise
            return self._new_handle(node, staged, writable=True)
        if self.writer is not None:
            staged = self.writer.staged(node.path)
            if staged is not None:
                self._page_cache_open(node)
                staged.handles += 1
                return self._new_handle(node, staged, writable=False)
        node, ref, keep_cache = await self.ns.open(inode)
        if node.base >= 0:
            return self._open_member(node, ref, keep_cache, inode)
        if self.warmer is not None:
            self.warmer.opened(node.path)
        if self.lineage is not None:
            self.lineage.opened(node.path, ref, node.mtime_ns, getattr(ctx, "pid", 0))
        try:
            mode, backing_id = await self.passthrough.open_read(inode, ref)
        except BaseException:
            self.ns.release(node)
            raise
        if mode is Mode.RENUMBER:
            self.ns.release(node)
            self._renumber(node)
        if mode is Mode.PASSTHROUGH:
            node.cached_ref = None  # the FUSE page cache was bypassed: keep nothing of it at the next open
        fh = next(self._fh)
        self._files[fh] = _FileHandle(node, ref, ReadAhead(self.reader.block_size, self.read_ahead_blocks), mode=mode,
                                      ino=inode)
        if mode is Mode.CACHED and not keep_cache:  # the kernel will ask for the first bytes at once
            self.reader.read_first_block(ref)
        # A read-only open has nothing to flush at close: no FLUSH round trip.
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fh), keep_cache=keep_cache and mode is Mode.CACHED,
                                backing_id=backing_id, noflush=True)

    def _open_member(self, node: Node, ref: ObjectRef, keep_cache: bool, inode: int) -> pyfuse3.FileInfo:
        """A member of a tar shard: read through the page cache (never passed through: the disk tier's file
        is the whole shard's), from its first byte in the shard on."""
        try:
            self._page_cache_open(node)
        except BaseException:
            self.ns.release(node)
            raise
        ra = ReadAhead(self.reader.block_size, self.read_ahead_blocks)
        ra.next_offset = node.base  # (sequential from the member's start)
        fh = next(self._fh)
        self._files[fh] = _FileHandle(node, ref, ra, ino=inode, base=node.base, size=node.size)
        if not keep_cache and node.size:
            self.reader.read_first_block(ref, node.base // self.reader.block_size)
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fh), keep_cache=keep_cache, noflush=True)

    def _page_cache_open(self, node: Node) -> None:
        """Count an open the kernel serves through its page cache; never one of an inode passed through."""
        if self.passthrough.open_other(node.inode) is Mode.RENUMBER:
            self._renumber(node)

    def _renumber(self, node: Node) -> NoReturn:
        """The inode is passed through to other bytes: the name gets a new one, and the kernel retries."""
        self.ns.renumber(node)
        raise pyfuse3.FUSEError(errno.ESTALE)

    def _new_handle(self, node: Node, staged: StagedFile, writable: bool) -> pyfuse3.FileInfo:
        """A handle on staged bytes; its page-cache open is counted by the caller."""
        self.ns.opened(node)
        node.cached_ref = None  # the kernel's pages of the old object must not be kept
        fh = next(self._fh)
        self._files[fh] = _FileHandle(node, staged.ref(), ReadAhead(self.reader.block_size, 0), staged, writable,
                                      ino=node.inode)
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fh), keep_cache=False, noflush=not writable)

    @_guard
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: Any) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent, path = self._new_name(parent_inode, name)
        writer = self._writer_for(parent)
        old = self.ns.inodes.by_path(path)  # a name the kernel thought gone, whose node is still passed through
        if old is not None and self.passthrough.backed(old.inode):
            self.ns.renumber(old)
        staged = await writer.create(path)
        node = self.ns.staged_node(path)
        self.ns.remember(node)
        self._page_cache_open(node)
        return self._new_handle(node, staged, writable=True), self.attrs(node)

    @_guard
    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:  # type: ignore[override]
        # (pyfuse3 replies with any buffer, PyObject_GetBuffer: its stub says bytes)
        handle = self._files[fh]
        if handle.staged is not None and self.writer is not None:
            handle.node.last_tier = "staged"
            return await self.writer.read(handle.staged, off, size)
        try:
            if handle.base >= 0:
                data, source = await self.reader.read_part(handle.ref, handle.base, handle.size, off, size, handle.ra)
            else:
                # Advice as the read arrives, not as it completes: the kernel sends several at once.
                self.reader.read_ahead(handle.ra, handle.ref, off, size)
                data, source = await self.reader.read_view(handle.ref, off, size, random=not handle.ra.sequential)
        except Exception as exc:
            # The object was rewritten upstream since this file was opened: this
            # read is EIO (never the new bytes under the old identity), and the
            # next open asks the lake again. (A read of several blocks fails as a group.)
            if isinstance(exc, Changed) or (isinstance(exc, BaseExceptionGroup) and exc.subgroup(Changed)):
                self.ns.stale(handle.node)
            raise
        if source:
            handle.node.last_tier = source
        return data

    @_guard
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self._files[fh]
        if not handle.writable or handle.staged is None or self.writer is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        n = await self.writer.write(handle.staged, off, buf)
        handle.node.size = handle.staged.size
        return n

    @_guard
    async def flush(self, fh: int) -> None:
        """Every close(2) of a written file: upload it, answer once the store has it."""
        if self.writer is None:
            raise pyfuse3.FUSEError(errno.ENOSYS)  # nothing to flush, ever: the kernel stops asking
        await self._commit(self._files[fh])

    @_guard
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self._commit(self._files[fh])

    async def _commit(self, handle: _FileHandle) -> None:
        if not handle.writable or handle.staged is None or self.writer is None:
            return
        entry = await self.writer.commit(handle.staged)
        if entry is not None:
            handle.node.size, handle.node.mtime_ns = entry.size, entry.mtime_ns

    @_guard
    async def release(self, fh: int) -> None:
        handle = self._files.pop(fh, None)
        if handle is None:
            return
        self.passthrough.release(handle.ino, handle.mode)
        if handle.mode is Mode.CACHED and handle.staged is None and handle.base < 0:
            self.passthrough.assemble_soon(handle.ref)  # read through: passed through from its next open, if whole
        if handle.staged is not None and self.writer is not None and self.writer.release(handle.staged):
            # What this mount knew of the file came from writes that were thrown
            # away: ask the lake again (the kernel drops its attributes after a
            # write, and pages at the next open).
            self.ns.stale(handle.node)
        self.ns.release(handle.node)


    # -- the rest -------------------------------------------------------------
    @_guard
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = s.f_bfree = s.f_bavail = 1 << 40  # an object store has no fixed size
        s.f_files = s.f_ffree = s.f_favail = 1 << 32
        if self.writer is not None:
            # What a write can use is the staging disk's room (every byte is staged before its upload): a
            # df-based check before a checkpoint must see that, not the lake's endless size.
            st = await trio.to_thread.run_sync(os.statvfs, self.writer.staging.root)
            s.f_bsize, s.f_frsize = st.f_bsize, st.f_frsize
            s.f_blocks, s.f_bfree, s.f_bavail = st.f_blocks, st.f_bfree, st.f_bavail
        s.f_namemax = min(self.ns.store.name_max, FUSE_NAME_MAX)
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

    # -- changes to names and attributes ----------------------------------------
    @_guard
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: int | None, ctx: Any) -> pyfuse3.EntryAttributes:
        """truncate and mtime (kept where the store keeps it); mode and owner are accepted, not kept."""
        node = self.ns.node(inode)
        writer = self._writer_for(node)
        if fields.update_size:
            if node.is_dir:
                raise IsADirectoryError(node.path)
            handle = self._files.get(fh) if fh is not None else None
            if handle is not None and handle.writable and handle.staged is not None:
                await writer.truncate(handle.staged, attr.st_size)
                node.size = handle.staged.size
            else:  # truncate(2) by name: a change that must be in the lake when the call returns
                staged = writer.staged(node.path)
                base = None if staged is not None else (await self.ns.getattr(inode)).ref
                staged = await writer.open(node.path, base, truncate=False)
                try:
                    await writer.truncate(staged, attr.st_size)
                    node.size = staged.size
                    await writer.commit(staged)
                finally:
                    writer.release(staged)
        if fields.update_mtime:
            node.mtime_ns = attr.st_mtime_ns
            await writer.set_mtime(node.path, attr.st_mtime_ns)
        return self.attrs(node)

    @_guard
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        parent, path = self._new_name(parent_inode, name)
        writer = self._writer_for(parent)
        if await self._exists(path):
            raise Exists(path)
        await writer.mkdir(path)
        node = self.ns.entry_node(parent.path, Entry(os.fsdecode(name), True))
        self.ns.remember(node)
        return self.attrs(node)

    @_guard
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        parent, path = self._new_name(parent_inode, name)
        writer = self._writer_for(parent)
        node = await self.ns.lookup(parent_inode, os.fsdecode(name))
        if node.read_only:
            raise ReadOnly(path)  # (a tar shard shown as a directory: the object is no directory to remove)
        if not node.is_dir:
            raise NotADirectoryError(path)
        if await self.ns.list_dir(node.inode):
            raise NotEmpty(path)
        self._may_delete(path)
        await writer.rmdir(path)

    @_guard
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        parent, path = self._new_name(parent_inode, name)
        writer = self._writer_for(parent)
        node = await self.ns.lookup(parent_inode, os.fsdecode(name))
        if node.is_dir:
            raise IsADirectoryError(path)
        self._may_delete(path)
        await self._keep_open_bytes(node)
        await writer.unlink(path)

    @_guard
    async def rename(self, parent_old: int, name_old: bytes, parent_new: int, name_new: bytes,
                     flags: int, ctx: Any) -> None:
        old_parent, old = self._new_name(parent_old, name_old)
        new_parent, new = self._new_name(parent_new, name_new)
        writer = self._writer_for(old_parent)
        self._writer_for(new_parent)
        if flags & RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)  # not offered: an object store cannot swap two names
        src = await self.ns.lookup(parent_old, os.fsdecode(name_old))
        try:
            dst: Node | None = await self.ns.lookup(parent_new, os.fsdecode(name_new))
        except NotFound:
            dst = None
        if holds(old, self.read_only_prefixes) or src.read_only or (dst is not None and dst.read_only):
            raise ReadOnly(old)  # it would take a read-only part of the lake along (or move a tar shard's view)
        if dst is not None:
            if flags & RENAME_NOREPLACE:
                raise Exists(new)
            self._may_delete(new)  # what the target held is gone after the rename
            if dst.is_dir and not src.is_dir:
                raise IsADirectoryError(new)
            if src.is_dir and not dst.is_dir:
                raise NotADirectoryError(new)
            if dst.is_dir and await self.ns.list_dir(dst.inode):
                raise NotEmpty(new)
        if src.is_dir and (new + "/").startswith(old + "/"):
            raise pyfuse3.FUSEError(errno.EINVAL)
        if dst is not None and not dst.is_dir:
            await self._keep_open_bytes(dst)  # replaced: its open handles keep reading what they opened
        if src.is_dir:
            # Every key below must fit under the new name, checked before anything moves.
            for key, _ in self.ns.overlay.files_under(old):  # staged here, not in the lake yet
                self._check_name(new + key[len(old):])
            await trio.to_thread.run_sync(self.ns.store.check_move, old, new, limiter=self.ns.limiter)
        if dst is not None and dst.is_dir:
            await writer.rmdir(new)
        await writer.rename(old, new, src.is_dir)

    async def _keep_open_bytes(self, node: Node) -> None:
        """Before ``node``'s object leaves the lake (unlink, rename over it): keep it readable by its handles."""
        if not node.opens or self.writer is None:
            return
        handles = [h for h in self._files.values() if h.node is node]
        staged = {id(h.staged): h.staged for h in handles if h.staged is not None}
        for sf in staged.values():
            await self.writer.keep_for_handles(node.path, sf, None)
        by_ref: dict[ObjectRef, list[_FileHandle]] = {}
        for h in handles:
            if h.staged is None:
                by_ref.setdefault(h.ref, []).append(h)
        for ref, group in by_ref.items():
            kept = await self.writer.keep_for_handles(node.path, None, ref)
            if kept is not None:
                kept.handles += len(group)
                for h in group:
                    h.staged = kept

    def _writer_for(self, node: Node) -> Writer:
        """The writer, if ``node`` may be changed; EROFS in snapshots, read-only prefixes and read-only mounts."""
        if self.writer is None or node.read_only or in_tree(node.path) or self._protected(node.path):
            raise ReadOnly(node.path or "/")
        return self.writer

    def _protected(self, path: str) -> bool:
        return under(path, self.read_only_prefixes)

    def _may_delete(self, path: str) -> None:
        """With deletes forbidden ([mount] allow_delete = false): EPERM, so `rm -rf` on one node cannot empty the lake."""
        if not self.allow_delete:
            raise NotPermitted(f"deleting {path} is not allowed on this mount ([mount] allow_delete = false)")

    def _new_name(self, parent_inode: int, name: bytes) -> tuple[Node, str]:
        parent = self.ns.node(parent_inode)
        if not parent.is_dir:
            raise NotADirectoryError(parent.path)  # never a new name below a file
        text = os.fsdecode(name)
        if parent.path == "" and text in RESERVED:
            raise ReadOnly(text)
        path = f"{parent.path}/{text}" if parent.path else text
        if self._protected(path):
            raise ReadOnly(path)  # (the prefix's own name too: its parent may be writable)
        self._check_name(path)
        return parent, path

    def _check_name(self, path: str) -> None:
        """ENAMETOOLONG now for a name the lake cannot hold, rather than EIO from its upload at close."""
        if not in_tree(path):  # (snapshot paths are not keys; that tree is read-only)
            self.ns.store.check_key(path)

    async def _exists(self, path: str) -> bool:
        try:
            await self.ns.resolve(path)
        except NotFound:
            return False
        return True

    async def mknod(self, *args: Any) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EPERM)  # regular files come by create; no devices, fifos, sockets

    async def symlink(self, *args: Any) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EPERM)  # an object store has no links

    async def link(self, *args: Any) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EPERM)

    @_guard
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        """The writable attributes, on the root only (root only may set them):

        ``user.tierfs.warm`` starts a warm job; its value is JSON
        {"list": FILE, "jobs": N, "lead": N} (see tierfs warm).
        ``user.tierfs.log_level`` sets how much the daemon logs (debug, info,
        warning, error) while it runs (tierfs log-level).

        The same requests come through the control socket (``tierfs/control.py``),
        which a --read-only mount's kernel lets through.
        """
        attr = os.fsdecode(name)
        if inode != ROOT_INODE or attr not in (XATTR_PREFIX + "warm", XATTR_PREFIX + "log_level"):
            raise pyfuse3.FUSEError(errno.EROFS)
        if getattr(ctx, "uid", 0) not in (0, os.getuid()):
            raise pyfuse3.FUSEError(errno.EPERM)
        try:
            if attr == XATTR_PREFIX + "log_level":
                await self.control({"op": "log_level", "level": value.decode(errors="replace")})
            else:
                try:
                    req = json.loads(value)
                except ValueError:
                    raise Refused(errno.EINVAL, "not JSON") from None
                if not isinstance(req, dict):
                    raise pyfuse3.FUSEError(errno.EINVAL)
                await self.control({**req, "op": "warm"})
        except Refused as exc:
            raise pyfuse3.FUSEError(exc.errno) from None

    async def control(self, req: dict[str, Any]) -> dict[str, Any] | None:
        """Carry out a control request (from the socket or a setxattr); ``Refused`` with the reason if not."""
        op = req.get("op")
        if isinstance(op, str) and op.startswith("lineage_"):
            if self.lineage is None:
                raise Refused(errno.EROFS, "this mount records no lineage")
            return await self.lineage.control(req)
        if op == "log_level":
            level = str(req.get("level", "")).strip().upper()
            if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
                raise Refused(errno.EINVAL, f"{level.lower()!r} is not a log level (debug, info, warning, error)")
            logging.getLogger("tierfs").setLevel(level)
            logging.getLogger("tierfs").warning("log level set to %s", level.lower())
        elif op == "warm":
            if self.warmer is None:
                raise Refused(errno.EROFS, "this mount has no warm job")
            try:
                list_file, jobs, lead = str(req["list"]), int(req.get("jobs", 8)), int(req.get("lead", 0))
            except (ValueError, KeyError, TypeError):
                raise Refused(errno.EINVAL, "a warm request is {\"list\": FILE, \"jobs\": N, \"lead\": N}") from None
            try:
                await self.warmer.start(list_file, jobs, lead)
            except FileNotFoundError as exc:
                raise Refused(errno.ENOENT, f"{exc}") from None
        else:
            raise Refused(errno.EINVAL, f"no such request: {op!r}")
        return None

    async def removexattr(self, *args: Any) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)
