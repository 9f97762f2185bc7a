"""What a written file leaves in the tiers: its uploaded bytes in the disk tier, and nothing else (Writer's mixin).

After an upload is acknowledged, the staged bytes are put into the disk tier
under the new object's ObjectRef, behind the close that waited for the
upload, so that reading the file back is a hit. Only the disk tier: a
checkpoint of gigabytes would push out of RAM the blocks the readers use,
and would fill the Redis the nodes share with bytes the others rarely read
(they fetch it once, into theirs). A read of the file afterwards promotes
what it reads, as any read does.

A checkpoint is often written under a temporary name and renamed into place
at once. A fill starts right after the close (reads are served from the
staged bytes until it is done, so ``FILL_AFTER`` stays 0: a delay there
kept a node serving its own bytes after another node's write to the same
key was past the metadata TTL; ``tests/servers/test_consistency.py``), and
a rename stops the fill of
the file, waiting or under way (taking back the blocks it had put under the
old name): the file is filled once the rename is done, under its final name,
the name it will be read by. A rename that comes after the fill is done
leaves the blocks under the old name; reading the new one fetches it again.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from tierfs.data.reader import BlockReader
from tierfs.namespace.live import Namespace
from tierfs.refs import BlockKey, block_span
from tierfs.store.objects import Entry, ObjectStore
from tierfs.tiers.disk import DiskTier
from tierfs.write.staging import StagedFile

log = logging.getLogger(__name__)

#: Seconds between an upload and its fill (see above: 0, so the staged bytes are not served past the TTL).
FILL_AFTER = 0.0


class Fills:
    """The fills of the files the mount wrote; mixed into Writer, whose reader, store and staged files it uses."""

    store: ObjectStore
    reader: BlockReader
    ns: Namespace
    limiter: trio.CapacityLimiter
    _nursery: trio.Nursery | None
    _forget: Callable[[StagedFile], None]
    _fd_call: Callable[..., Awaitable[Any]]

    async def _start_fill(self, sf: StagedFile, entry: Entry) -> None:
        """Put ``sf``'s bytes, just uploaded as ``entry``, into the disk tier: in the background where it can."""
        sf.filling, sf.refill = True, False
        sf.fill_scope = trio.CancelScope()  # made now: a rename before the fill starts stops it too
        if self._nursery is not None:
            self._nursery.start_soon(self._fill_then_settle, sf, entry)
        else:
            await self._fill_then_settle(sf, entry)

    def _hold_fill(self, sf: StagedFile) -> None:
        """A rename of ``sf`` comes: stop its fill, which is done again under the new name (``_refill``)."""
        if sf.filling and sf.fill_scope is not None:
            sf.refill = True
            sf.fill_scope.cancel()

    async def _refill(self, sf: StagedFile) -> None:
        """After a rename: fill ``sf`` under its new key, if a fill was stopped for the rename."""
        if not sf.refill:
            return
        sf.refill = False
        if sf.dropped or sf.unlinked or sf.dirty:
            return  # replaced, or written again: its next upload fills it
        entry = await trio.to_thread.run_sync(self.store.stat, sf.key, limiter=self.limiter)
        self.ns.changed(sf.key, entry)  # (the overlay still shows the staged bytes until the fill is done)
        await self._start_fill(sf, entry)

    async def _fill_then_settle(self, sf: StagedFile, entry: Entry) -> None:
        """Put the uploaded bytes into the disk tier (writes to ``sf`` wait meanwhile); drop ``sf`` if closed."""
        scope = sf.fill_scope or trio.CancelScope()
        try:
            with scope:
                await trio.sleep(FILL_AFTER if self._nursery is not None else 0)  # (no lock held meanwhile)
                async with sf.upload_lock:
                    if sf.generation == sf.uploaded_generation and not sf.unlinked:
                        t0 = time.monotonic()
                        await self._fill_tiers(sf, entry)
                        log.debug("%s put into the disk tier in %.2f s", sf.key, time.monotonic() - t0)
        except Exception as exc:  # the tiers are a cache: a failure here loses nothing
            log.warning("putting %s into the disk tier failed: %s", sf.key, exc)
        finally:
            sf.filling = False
            if sf.fill_scope is scope:
                sf.fill_scope = None
            stopped = scope.cancel_called and sf.refill  # (then the rename fills it again, and lets it go after)
            if not stopped and (sf.unlinked or (sf.handles == 0 and not sf.dirty)):
                self._forget(sf)  # (its disk work runs apart, and logs its failures: _clean_up_quietly)

    async def _fill_tiers(self, sf: StagedFile, entry: Entry) -> None:
        """Put what was just uploaded into the disk tier under its new ref: reading it back is a hit.

        Stopped (by a rename), it takes the blocks it put back out: they are
        under a name the file no longer has.
        """
        ref = entry.ref
        if ref is None or ref.size != sf.size:
            return
        block_size = self.reader.block_size
        put: list[BlockKey] = []
        try:
            for index in range((ref.size + block_size - 1) // block_size):
                start, end = block_span(index, block_size, ref.size)
                data = await self._fd_call(sf, os.pread, sf.fd, end - start, start)
                if len(data) != end - start:
                    return
                put.append(ref.block_key(index, block_size))
                # Awaited, not queued: the staged copy is dropped once this returns.
                await self.reader.chain.put(put[-1], data, into={DiskTier.name}, wait=True)
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                for key in put:
                    await self.reader.chain.evict(key, into={DiskTier.name})
            raise
