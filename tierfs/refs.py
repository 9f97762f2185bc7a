"""ObjectRef and BlockKey: the identity of bytes, and of one block of them.

An ObjectRef names *which* bytes a path meant when it was looked at: the store
key plus a version id, or an etag and size where the store keeps no versions.
Cache keys are derived from it (docs/design.md, invariant 1), so an object that
changes upstream gets new keys and stale blocks are never served for it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ObjectRef:
    key: str  # path of the object inside the lake, '/'-separated, no leading '/'
    size: int
    etag: str = ""  # etag, or a stand-in (mtime+size) for stores that have none
    version: str = ""  # version id / generation where the store keeps versions
    content_hash: str = ""  # sha256 of the bytes where known (snapshot manifests)
    # The identity the bytes had in the live view when a snapshot froze them;
    # a snapshot's copy then shares cache blocks with the live object it came from.
    cache_id: str = ""

    def identity(self) -> str:
        """What makes two refs name the same bytes.

        A snapshot carries the live identity it was frozen from; a version id
        is stable for its key; a content hash names bytes wherever they live;
        otherwise key + etag + size.
        """
        if self.cache_id:
            return self.cache_id
        if self.content_hash:
            return f"sha256:{self.content_hash}"
        if self.version:
            return f"v:{self.key}\0{self.version}"
        return f"e:{self.key}\0{self.etag}\0{self.size}"

    def block_key(self, index: int, block_size: int) -> BlockKey:
        return BlockKey.of(self, index, block_size)

    def whole_key(self, block_size: int) -> BlockKey:
        """Key of the whole file as one entry (the disk tier's copy that FUSE passthrough serves)."""
        return BlockKey.of(self, WHOLE_FILE, block_size)


WHOLE_FILE = -1  # the block index that names a whole-file copy


@dataclass(frozen=True, slots=True)
class BlockKey:
    """Key of one block in every tier: a digest of the ref's identity + index."""

    digest: bytes  # 20 bytes

    @classmethod
    def of(cls, ref: ObjectRef, index: int, block_size: int) -> BlockKey:
        # The block size is part of the key: block 3 of a 4 MiB split is not
        # block 3 of a 1 MiB split, and the block size may change between mounts.
        h = hashlib.blake2b(digest_size=20)
        h.update(ref.identity().encode("utf-8", "surrogateescape"))
        h.update(b"\0%d\0%d" % (block_size, index))
        return cls(h.digest())

    @property
    def hex(self) -> str:
        return self.digest.hex()

    def __str__(self) -> str:
        return self.hex


def block_span(index: int, block_size: int, object_size: int) -> tuple[int, int]:
    """Byte range [start, end) of block ``index`` of an object."""
    start = index * block_size
    return start, min(start + block_size, object_size)


def blocks_for_range(offset: int, length: int, block_size: int, object_size: int) -> range:
    """Indexes of the blocks that hold bytes [offset, offset+length) of an object."""
    end = min(offset + length, object_size)
    if offset >= end:
        return range(0)
    return range(offset // block_size, (end - 1) // block_size + 1)
