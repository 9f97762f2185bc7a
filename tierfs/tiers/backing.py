"""The disk tier's files for FUSE passthrough: the bytes a kernel may read without us.

A passthrough open needs one plain file holding exactly a file's bytes. For a
file of one block that is its block file; for a larger one, a whole-file copy
written from its blocks once they are all on the tier, kept as an entry like a
block (counted in the cache's size, evicted by the same policy) under the key
``ObjectRef.whole_key``. Block files are never changed in place (they land by
rename and leave by unlink), so an fd handed to the kernel keeps its bytes
for as long as it is open, evicted or not.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import xxhash

from tierfs.refs import BlockKey

if TYPE_CHECKING:
    from tierfs.metrics import Counters
    from tierfs.tiers.lmdb_index import BlockIndex
    from tierfs.tiers.seal import Sealer

log = logging.getLogger(__name__)

_CHECKED_MAX = 1 << 18  # blocks whose bytes passthrough checked this run, remembered (~30 MB at most)


def checksum(data: bytes) -> int:
    """A block's checksum, as the index keeps it."""
    return xxhash.xxh3_64_intdigest(data)


def _checksum_of(fd: int) -> tuple[int, int]:
    """(size, checksum) of a file read in chunks: a whole-file copy may be far larger than memory allows."""
    h, n = xxhash.xxh3_64(), 0
    while chunk := os.pread(fd, _CHUNK, n):
        h.update(chunk)
        n += len(chunk)
    return n, h.intdigest()


_CHUNK = 8 << 20


class _PartGone(Exception):
    """A block an assembly reads is no longer on the tier."""



class BackingFiles:
    """What DiskTier offers FUSE passthrough (a mixin: it uses the tier's index, paths and landing)."""

    index: BlockIndex
    sealer: Sealer | None
    stats: Counters
    _checked: dict[bytes, int]  # block digest -> inode of the block file whose bytes were checked

    if TYPE_CHECKING:  # DiskTier's
        def _path(self, hexkey: str) -> Path: ...
        def _drop(self, digests: list[bytes]) -> None: ...
        def _touch(self, digest: bytes) -> None: ...
        def _hit(self, data: bytes) -> bytes: ...
        def _may_land(self, n: int) -> bool: ...
        def _land(self, key: BlockKey, n: int, write: Callable[[BinaryIO], int]) -> None: ...
        def read_block(self, key: BlockKey) -> bytes | None: ...

    def holds(self, keys: list[BlockKey]) -> bool:
        """Whether every one of ``keys`` has an entry here (its bytes are checked when read)."""
        return all(self.index.may_hold(k.digest) for k in keys) and \
            all(self.index.lookup(k.digest) is not None for k in keys)

    def backing_fd(self, key: BlockKey, size: int) -> int | None:
        """An fd of ``key``'s block file if it holds exactly ``size`` plain bytes that pass their checksum.

        What FUSE passthrough serves a whole small file from. A block file is
        never changed once it has an entry (it is written new at its name before,
        and leaves by unlink), so
        the fd keeps these bytes for as long as it is open, evicted or not.
        Its bytes are checked against the checksum at the first such open in
        this process (the kernel reads them unchecked from then on); later
        opens of a block already checked cost a lookup and an open.
        None when the block is not here, is sealed (an encrypted cache), or fails.
        """
        if self.sealer is not None:
            return None
        meta = self.index.lookup(key.digest)
        if meta is None or meta[0] != size:
            return None
        try:
            fd = os.open(self._path(key.hex), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self._drop([key.digest])
            return None
        try:
            st = os.fstat(fd)
            if self._checked.get(key.digest) != st.st_ino:
                got, digest = _checksum_of(fd)
                if got != size or digest != meta[1]:
                    os.close(fd)
                    log.warning("disk cache: block %s failed its checksum (%d of %d bytes); dropped, refetching",
                                key.hex, got, size)
                    self.stats.add("errors")
                    self._drop([key.digest])
                    return None
                if len(self._checked) >= _CHECKED_MAX:
                    self._checked.pop(next(iter(self._checked)))
                self._checked[key.digest] = st.st_ino
            self._touch(key.digest)
            self._hit(b"")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def assemble(self, key: BlockKey, parts: list[BlockKey], size: int) -> bool:
        """Write the blocks ``parts`` (all on this tier) one after another as the plain file ``key``.

        The whole-file copy that FUSE passthrough serves a large file from;
        it is an entry like a block (counted, evicted), its checksum taken
        from the checked blocks it was written from. False when a part is
        gone (evicted meanwhile) or it does not fit.
        """
        if self.sealer is not None or not self._may_land(size):
            return False

        def write(fh: BinaryIO) -> int:
            h = xxhash.xxh3_64()
            for part in parts:
                data = self.read_block(part)  # (checked; not a hit: no reader asked for it)
                if data is None:
                    raise _PartGone(part.hex)
                fh.write(data)
                h.update(data)
            if fh.tell() != size:
                raise _PartGone(key.hex)
            return h.intdigest()

        try:
            self._land(key, size, write)
        except _PartGone:
            return False
        if self.index.lookup(key.digest) is None:
            return False
        with contextlib.suppress(OSError):
            self._checked[key.digest] = os.stat(self._path(key.hex)).st_ino
        return True
