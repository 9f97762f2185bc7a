"""The write path of the live view: staged files in, acknowledged objects out.

A file opened for writing gets a staged file on local disk (``staging.py``).
Writes land there; ``close`` (FUSE flush) and ``fsync`` upload it and return
only once the object store has acknowledged the upload. The new object's
blocks are then put into the disk tier under its new ObjectRef, so reading
back what was just written is a cache hit. A failed upload answers EIO and
keeps the staged file, which stays readable here and is uploaded again by the
next close or fsync, or by the retry loop.

Nothing here blocks the trio loop: the staged file's reads, writes and journal
records run in worker threads (one call at a time per staged file, in the
order they came), store calls in the store's.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import posixpath
import time
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import trio

from tierfs.data.reader import BlockReader
from tierfs.errors import NoSpace, NotFound, StoreError
from tierfs.metrics import WRITE_COUNTERS, Counters
from tierfs.namespace.live import Namespace
from tierfs.refs import ObjectRef
from tierfs.store.objects import Entry, ObjectStore
from tierfs.store.upload import Uploader
from tierfs.write.fill import Fills
from tierfs.write.staging import CLEAN, DIRTY, StagedFile, Staging
from tierfs.write.tree import rename_tree

log = logging.getLogger(__name__)

RETRY_FIRST, RETRY_MAX = 5.0, 300.0  # seconds between retries of failed uploads

T = TypeVar("T")

# What _let_go leaves to do on disk and in the store for a staged file it took out of the mount.
UNRECORD, DROP = "unrecord", "drop"


class Writer(Fills):
    def __init__(self, store: ObjectStore, uploader: Uploader, reader: BlockReader, namespace: Namespace,
                 staging: Staging, limiter: trio.CapacityLimiter, rename_concurrency: int = 16,
                 staging_limiter: trio.CapacityLimiter | None = None):
        self.store = store
        self.uploader = uploader
        self.reader = reader
        self.ns = namespace
        self.staging = staging
        self.limiter = limiter  # the store's calls
        # The staging disk's small calls have threads of their own: a slow
        # store never holds up reads and writes of the bytes already here.
        self.staging_limiter = staging_limiter or trio.CapacityLimiter(16)
        self._disk_locks: weakref.WeakKeyDictionary[StagedFile, trio.Lock] = weakref.WeakKeyDictionary()
        self._closed: weakref.WeakSet[StagedFile] = weakref.WeakSet()  # fd closed (its number may be reused)
        self._changing: weakref.WeakKeyDictionary[StagedFile, trio.Event] = weakref.WeakKeyDictionary()
        self.rename_concurrency = rename_concurrency
        self._staged: dict[str, StagedFile] = {}  # by lake key
        self._failed: set[StagedFile] = set()  # closed, upload not acknowledged: retried
        self._wake = trio.Event()
        self._nursery: trio.Nursery | None = None
        self.stats = Counters(WRITE_COUNTERS, gauges={
            "staged_files": lambda: len(self._staged),
            "pending_uploads": lambda: len(self._failed),
        })

    # -- start-up ------------------------------------------------------------
    def recover(self) -> str:
        """Take over what a previous run left in staging; a note for the user ('' if nothing)."""
        left = self.staging.leftovers()
        pending, unclosed = left.pending, left.unclosed
        for sf in pending:
            self._register(sf)
            self._failed.add(sf)
        notes = []
        if pending:
            self.stats.add("recovered", len(pending))
            log.warning("%d file(s) closed before a crash were not acknowledged by the store; uploading them now: %s",
                        len(pending), ", ".join(sf.key for sf in pending))
            notes.append(f"uploading {len(pending)} file(s) left staged by the previous run")
        if unclosed:
            log.warning("%d file(s) were being written, never closed, when the previous run ended; "
                        "they are not uploaded and are kept in %s: %s",
                        len(unclosed), self.staging.unclosed_dir, ", ".join(unclosed))
            notes.append(f"{len(unclosed)} unclosed file(s) from the previous run kept in {self.staging.unclosed_dir}")
        if left.damaged:
            # (each is logged with how its bytes differ by leftovers)
            notes.append(f"{len(left.damaged)} file(s) closed in the previous run not uploaded: their staged bytes "
                         f"are not the ones closed (a power cut?); the lake keeps what it had, the bytes are kept in "
                         f"{self.staging.unclosed_dir}")
        return "; ".join(notes)

    def start(self, nursery: trio.Nursery) -> None:
        """Run the retry loop and the filling of tiers after uploads in the mount's nursery."""
        self._nursery = nursery
        nursery.start_soon(self.retry_loop)

    async def retry_loop(self) -> None:
        """Upload again, with backoff, whatever was closed but not acknowledged."""
        delay = RETRY_FIRST
        while True:
            for sf in list(self._failed):
                if sf.handles:
                    continue  # its own close will upload it
                try:
                    await self.commit(sf)
                    log.info("uploaded %s (staged, retried)", sf.key)
                    delay = RETRY_FIRST
                except Exception as exc:
                    why = f"{type(exc).__name__}: {exc}"
                    # (commit logs the store's failures and its own; anything else once per file)
                    if not isinstance(exc, (StoreError, OSError)) and why != sf.error:
                        sf.error = why
                        log.error("retrying the upload of %s failed: %s", sf.key, why)
            with trio.move_on_after(delay if self._failed else RETRY_MAX):
                await self._wake.wait()
            self._wake = trio.Event()
            if self._failed:
                delay = min(delay * 2, RETRY_MAX)

    # -- files ------------------------------------------------------------------
    def staged(self, key: str) -> StagedFile | None:
        return self._staged.get(key)

    async def create(self, key: str) -> StagedFile:
        old = self._staged.get(key)
        if old is not None:
            await self._forget_now(old)
        sf = await trio.to_thread.run_sync(self.staging.create, key, limiter=self.staging_limiter)
        old = self._staged.get(key)
        if old is not None:  # created again meanwhile: the later one is the file
            self._forget(old)
        self._register(sf)
        sf.handles += 1
        return sf

    async def open(self, key: str, ref: ObjectRef | None, truncate: bool) -> StagedFile:
        """The staged file of ``key`` (one per key, shared by its handles), created over ``ref`` if new."""
        sf = self._staged.get(key)
        if sf is None:
            new = await trio.to_thread.run_sync(self.staging.create, key, ref, limiter=self.staging_limiter)
            sf = self._staged.get(key)
            if sf is None:
                sf = new
                self._register(sf)
            else:  # opened again meanwhile: one staged file per key, so this one goes
                self._forget(new)
        sf.handles += 1
        if truncate and sf.size:
            await self.truncate(sf, 0)
        return sf

    async def write(self, sf: StagedFile, offset: int, data: bytes) -> int:
        async with self._change(sf):  # an upload takes all of this write or none of it
            # The old bytes are needed unless this write covers all of them.
            await self._before_change(sf, not (offset == 0 and len(data) >= sf.size))
            try:
                n = await self._fd_call(sf, os.pwrite, sf.fd, data, offset)
            except OSError as exc:
                # The file now lacks bytes its writer meant it to have: it must not
                # replace the object in the lake (a good older checkpoint, say).
                sf.write_error = exc.strerror or str(exc)
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    log.error("the staging disk is full (%s); free space there or set [cache] dir elsewhere; "
                              "%s will not be uploaded and the lake keeps what it had", self.staging.root, sf.key)
                raise
            sf.size = max(sf.size, offset + n)
            self._changed(sf)
        return n

    async def read(self, sf: StagedFile, offset: int, size: int) -> bytes:
        if not sf.materialized and sf.base is not None:
            data, _ = await self.reader.read(sf.base, offset, size)
            return data
        change = self._changing.get(sf)
        if change is not None:
            await change.wait()  # a write that came first is read
        return await self._fd_call(sf, os.pread, sf.fd, size, offset)

    async def truncate(self, sf: StagedFile, size: int) -> None:
        async with self._change(sf):
            await self._before_change(sf, size > 0)
            await self._fd_call(sf, os.ftruncate, sf.fd, size)
            sf.size = size
            self._changed(sf)

    async def set_mtime(self, key: str, mtime_ns: int) -> None:
        """utimens: kept where the store lets us set it (a local lake), else until the next refresh."""
        sf = self._staged.get(key)
        if sf is not None:
            sf.mtime_ns = sf.user_mtime_ns = mtime_ns
            if sf.dirty:
                return  # applied after its upload
        try:
            if await trio.to_thread.run_sync(self.store.set_mtime, key, mtime_ns, limiter=self.limiter):
                self.ns.changed(key, await trio.to_thread.run_sync(self.store.stat, key, limiter=self.limiter))
        except NotFound:
            pass  # a directory of an object store, or a file not uploaded yet

    async def commit(self, sf: StagedFile) -> Entry | None:
        """Upload ``sf`` if it changed; returns once the store has acknowledged it (close, fsync).

        Raises StoreError (EIO) if the upload fails; the staged bytes are kept.
        """
        async with sf.upload_lock:
            if not sf.dirty or sf.unlinked:
                return None
            if sf.write_error:
                raise NoSpace(f"{sf.key} is not uploaded: a write to it failed ({sf.write_error})")
            generation = sf.generation
            # The bytes on disk first, then the pending record naming them (their
            # size and checksum): what a power cut leaves is never taken for them.
            t_seal = time.monotonic()
            try:
                await self._fd_call(sf, self.staging.seal, sf)
            except OSError as exc:
                if sf.unlinked:  # (replaced or deleted meanwhile, its fd closed: nothing to upload)
                    return None
                log.error("%s is not uploaded: its staged bytes could not be made durable in %s (%s)",
                          sf.key, self.staging.root, exc.strerror or exc)
                raise
            if sf.unlinked:  # replaced or deleted meanwhile: nothing to upload, and no record may outlive it
                await self._on_disk(sf, self.staging.unrecord, sf)
                return None
            t0 = time.monotonic()
            sealing = t0 - t_seal
            try:
                entry = await trio.to_thread.run_sync(
                    self.uploader.upload, sf.data, sf.key, self.staging.upload_state(sf), limiter=self.limiter)
            except Exception as exc:
                if not sf.unlinked:  # (replaced or deleted meanwhile: nothing to retry)
                    self._failed.add(sf)
                    self._wake.set()  # the retry loop takes it from here
                self.stats.add("upload_errors")
                sf.error = f"{type(exc).__name__}: {exc}"
                log.error("upload of %s failed (%s); its bytes stay staged in %s and the upload is retried",
                          sf.key, sf.error, sf.data)
                raise StoreError(f"upload of {sf.key} failed: {exc}") from None
            sf.uploaded_generation = generation
            sf.error = ""
            self._failed.discard(sf)
            try:  # (durable: it replaces a pending record)
                await self._mark(sf, CLEAN)
            except OSError as exc:  # the store has it all the same: the close succeeds
                log.warning("%s is uploaded, but its staging record could not say so (%s); "
                            "a restart would upload the same bytes again", sf.key, exc.strerror or exc)
            self.stats.add("uploads")
            self.stats.add("bytes_written", sf.size)
            if sf.user_mtime_ns and await trio.to_thread.run_sync(
                    self.store.set_mtime, sf.key, sf.user_mtime_ns, limiter=self.limiter):
                entry = await trio.to_thread.run_sync(self.store.stat, sf.key, limiter=self.limiter)
            log.info("uploaded %s: %d bytes in %.2f s (on the staging disk before that in %.2f s)", sf.key, sf.size,
                     time.monotonic() - t0, sealing)
        self.ns.changed(sf.key, entry)
        # The close returns now; the blocks go into the disk tier behind it. Until
        # they are in, reads of the file are served from the staged bytes.
        await self._start_fill(sf, entry)
        return entry

    def release(self, sf: StagedFile) -> bool:
        """A handle on ``sf`` closed; True if that discarded it (the lake's version is the file again)."""
        sf.handles = max(0, sf.handles - 1)
        if sf.handles:
            return False
        if sf.write_error:
            log.warning("discarded the staged %s (a write to it failed); the lake keeps what it had", sf.key)
            self._forget(sf)
            return True
        if sf.unlinked or not sf.dirty:
            if not sf.filling:
                self._forget(sf)
        elif sf not in self._failed:
            # Closed without a flush that uploaded it (a flush that was interrupted): upload in the background.
            self._failed.add(sf)
            self._wake.set()
        return False

    async def keep_for_handles(self, key: str, sf: StagedFile | None, ref: ObjectRef | None) -> StagedFile | None:
        """Hold the bytes open handles read before ``key`` is unlinked or replaced in the lake.

        POSIX keeps an unlinked open file readable until its last close; here
        its bytes may live only in the lake object about to go. A staged file
        not yet materialized gets its object's bytes copied in; handles that
        read the lake object (``ref``) get a staged file of their own, out of
        the journal, that lives as long as they do. Returns that file (or None).
        """
        if sf is not None:
            async with sf.upload_lock:
                if not sf.materialized and sf.base is not None:
                    await self._materialize(sf)
                    sf.materialized = True
            return None
        if ref is None:
            return None
        kept = await trio.to_thread.run_sync(self.staging.create, key, ref, limiter=self.staging_limiter)
        await self._materialize(kept)
        kept.materialized, kept.unlinked, kept.state = True, True, CLEAN
        await self._on_disk(kept, self.staging.unrecord, kept)
        return kept

    # -- names ------------------------------------------------------------------
    async def unlink(self, key: str) -> None:
        sf = self._staged.get(key)
        if sf is not None:
            async with sf.upload_lock:
                await self._forget_now(sf)
        await trio.to_thread.run_sync(self.store.delete, key, limiter=self.limiter)
        self.ns.changed(key, None)

    async def mkdir(self, key: str) -> None:
        if await trio.to_thread.run_sync(self.store.make_dir, key, limiter=self.limiter):
            self.ns.changed(key, Entry(posixpath.basename(key), True))
        else:
            self.ns.overlay.add_dir(key)

    async def rmdir(self, key: str) -> None:
        self.ns.overlay.remove_dir(key)
        await trio.to_thread.run_sync(self.store.remove_dir, key, limiter=self.limiter)
        self.ns.changed(key, None)

    async def rename(self, old: str, new: str, is_dir: bool) -> None:
        """Rename a file or a directory (the caller has checked the target)."""
        target = self._staged.get(new)
        if target is not None:
            await self._forget_now(target)
        if is_dir:
            async with contextlib.AsyncExitStack() as stack:
                # No upload into the old tree may land behind the copy.
                below = [f for key, f in self._staged.items() if key.startswith(old + "/")]
                for f in below:
                    self._hold_fill(f)
                    await stack.enter_async_context(f.upload_lock)
                moved = await rename_tree(self.store, old, new, self.limiter, self.rename_concurrency)
                self.stats.add("renamed_objects", moved)
                below = [f for f in below if not f.dropped]
                for f in below:
                    self._rekey(f, new + f.key[len(old):])
                self.ns.moved(old, new, Entry(posixpath.basename(new), True))
                for f in below:
                    await self._journal_key(f)
            for f in below:
                await self._refill(f)
            return
        sf = self._staged.get(old)
        if sf is not None:
            self._hold_fill(sf)  # a fill under the old name is of no use: it is filled under the new one
            async with sf.upload_lock:  # no upload or fill of it runs meanwhile
                moved = not sf.dropped  # (it may have settled while we waited)
                if moved:
                    if sf.uploaded_generation >= 0 or sf.base is not None:
                        try:
                            await trio.to_thread.run_sync(self.store.move, old, new, limiter=self.limiter)
                            self.stats.add("renamed_objects")
                        except NotFound:
                            pass  # never uploaded after all
                    self._rekey(sf, new)
                    overlay_entry = self.ns.overlay.entry(new)
                    assert overlay_entry is not None
                    self.ns.moved(old, new, overlay_entry)
                    await self._journal_key(sf)
            await self._refill(sf)  # (the lock let go: the fill takes it)
            if moved:
                return
        await trio.to_thread.run_sync(self.store.move, old, new, limiter=self.limiter)
        self.stats.add("renamed_objects")
        entry = await trio.to_thread.run_sync(self.store.stat, new, limiter=self.limiter)
        self.ns.moved(old, new, entry)

    # -- internals -------------------------------------------------------------
    def _register(self, sf: StagedFile) -> None:
        self._staged[sf.key] = sf
        self.ns.overlay.add_file(sf.key, sf)

    def _rekey(self, sf: StagedFile, key: str) -> None:
        """``sf`` is ``key`` in the mount from now on; its journal record follows (_journal_key)."""
        self._staged.pop(sf.key, None)
        self.ns.overlay.remove_file(sf.key, sf)
        sf.key = key
        if sf.base is not None and not sf.materialized:
            sf.base = ObjectRef(key, sf.base.size, sf.base.etag, sf.base.version)
        self._register(sf)

    async def _journal_key(self, sf: StagedFile) -> None:
        """Write ``sf``'s record under its new key.

        The caller holds ``sf.upload_lock``, as every change of the record but
        its removal does: no other rekey or mark of ``sf`` comes in between.
        """
        # Shielded: a record left under the old key would upload the file there after a crash.
        with trio.CancelScope(shield=True):
            await self._on_disk(sf, self.staging.rekey, sf, sf.key)

    async def _mark(self, sf: StagedFile, state: str) -> None:
        """Journal ``sf`` as ``state``; returns once its record says so."""
        if sf.state != state:
            await self._on_disk(sf, self.staging.mark, sf, state)

    def _forget(self, sf: StagedFile) -> None:
        """Take ``sf`` out of the mount now; its record, bytes and upload go in the background."""
        todo = self._let_go(sf)
        if not todo:
            return
        if self._nursery is not None:
            self._nursery.start_soon(self._clean_up_quietly, sf, todo)
            return
        # The writer driven without its nursery (tests of the layers below the mount): here and now.
        if todo == UNRECORD:
            self.staging.unrecord(sf)
        else:
            self._discard_upload(sf)
            self._closed.add(sf)
            self.staging.drop(sf)

    async def _forget_now(self, sf: StagedFile) -> None:
        """_forget, returning once its record is gone: from then on a crash never uploads it."""
        await self._clean_up(sf, self._let_go(sf))

    def _let_go(self, sf: StagedFile) -> str:
        """The part of forgetting ``sf`` that the mount sees; returns what is left to do (UNRECORD, DROP, '')."""
        sf.unlinked = True  # whatever still holds it (an upload, a handle) must not bring it back
        if self._staged.get(sf.key) is sf:
            del self._staged[sf.key]
        self.ns.overlay.remove_file(sf.key, sf)
        self._failed.discard(sf)
        if sf.dropped:
            return ""
        if sf.handles or sf.filling:
            # Still open (POSIX: an unlinked file lives until its last close),
            # or its fd is being read into the tiers. Closing the fd now would
            # hand its number to the next staged file, and this file's reads
            # and writes would land in that one. Its record goes now, so a
            # crash never uploads it; the last release (or the fill) closes it.
            return UNRECORD
        sf.dropped = True
        return DROP

    async def _clean_up(self, sf: StagedFile, todo: str) -> None:
        if todo == UNRECORD:
            await self._on_disk(sf, self.staging.unrecord, sf)
        elif todo == DROP:
            # The abort of an unfinished upload is a store call (network): on
            # the store's threads, holding no staging thread meanwhile.
            await trio.to_thread.run_sync(self._discard_upload, sf, limiter=self.limiter)
            async with self._disk_lock(sf):  # after the calls using the fd, before any that come later
                self._closed.add(sf)  # (first: should the close fail halfway, nothing uses the fd again)
                await trio.to_thread.run_sync(self.staging.drop, sf, limiter=self.staging_limiter)

    async def _clean_up_quietly(self, sf: StagedFile, todo: str) -> None:
        """_clean_up in the background: a failure is logged, never the end of the mount."""
        try:
            await self._clean_up(sf, todo)
        except Exception as exc:
            log.warning("cleaning up the staged %s failed: %s", sf.key, exc)

    def _discard_upload(self, sf: StagedFile) -> None:
        state = self.staging.upload_state(sf)
        if state.exists():
            self.uploader.discard(state)

    @contextlib.asynccontextmanager
    async def _change(self, sf: StagedFile) -> AsyncIterator[None]:
        """Hold ``sf.upload_lock`` for a write or truncate; a read that comes meanwhile waits for it.

        A change that finds the lock free takes effect before any read that
        comes after it, as when it ran on the loop in one go: the lock is taken
        without a checkpoint, so no read can slip in between. One that waits for
        an upload lets reads go on meanwhile (they get the bytes being uploaded).
        """
        try:
            sf.upload_lock.acquire_nowait()
        except trio.WouldBlock:
            await sf.upload_lock.acquire()
        done = self._changing[sf] = trio.Event()
        try:
            yield
        finally:
            done.set()
            if self._changing.get(sf) is done:
                del self._changing[sf]
            sf.upload_lock.release()

    async def _on_disk(self, sf: StagedFile, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on ``sf``'s staged bytes or record, in a staging thread.

        One call at a time per staged file, in the order they came (trio's
        locks are fair): a read sees the writes that came before it, records
        are written in the order of the state changes, and the fd is closed
        only once the calls using it are done.
        """
        async with self._disk_lock(sf):
            return await trio.to_thread.run_sync(fn, *args, limiter=self.staging_limiter)

    async def _fd_call(self, sf: StagedFile, fn: Callable[..., T], *args: Any) -> T:
        """_on_disk for a call on ``sf.fd``: EBADF once it is closed, never another file's bytes under its number."""
        async with self._disk_lock(sf):
            if sf in self._closed:
                raise OSError(errno.EBADF, f"the staged file of {sf.key} is closed")
            return await trio.to_thread.run_sync(fn, *args, limiter=self.staging_limiter)

    def _disk_lock(self, sf: StagedFile) -> trio.Lock:
        lock = self._disk_locks.get(sf)
        if lock is None:
            lock = self._disk_locks[sf] = trio.Lock()
        return lock

    async def _before_change(self, sf: StagedFile, needs_old_bytes: bool) -> None:
        """Bring in the old bytes; journal ``sf`` as dirty. The caller holds ``sf.upload_lock``."""
        if not sf.materialized:
            if needs_old_bytes:
                await self._materialize(sf)
            sf.materialized = True
        if sf.state == CLEAN:
            await self._mark(sf, DIRTY)

    async def _materialize(self, sf: StagedFile) -> None:
        """Copy the object a file was opened over into its staged file (read-modify-write)."""
        base = sf.base
        assert base is not None
        for index in range((base.size + self.reader.block_size - 1) // self.reader.block_size):
            # Into no tier: these bytes are about to be replaced (appending to a large file must not push
            # the dataset out of RAM, nor fill Redis, with its old version).
            data, _ = await self.reader.block(base, index, fill=False)
            await self._fd_call(sf, os.pwrite, sf.fd, data, index * self.reader.block_size)

    def _changed(self, sf: StagedFile) -> None:
        sf.generation += 1
        sf.mtime_ns = time.time_ns()
        sf.base = None if sf.materialized else sf.base

    def stop(self) -> None:
        """At unmount: say what is left to upload (the next start does it)."""
        left = [sf.key for sf in self._staged.values() if sf.dirty and not sf.unlinked]
        if left:
            log.warning("%d staged file(s) not uploaded at unmount; the next mount uploads the closed ones: %s",
                        len(left), ", ".join(left))

