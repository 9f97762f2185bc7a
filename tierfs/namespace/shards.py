"""Tar shards shown as directories of their members (``[shards] prefixes``).

A ``.tar`` object under one of the configured prefixes of the lake (in the
live view, or in a snapshot of such a prefix) is listed and looked up as a
read-only directory of the same name. Its entries are the tar's regular
members; a member path with '/' becomes subdirectories. A member is a
read-only file whose ObjectRef is the shard's, with the offset of its bytes
in the shard (``ShardEntry.base``): its reads are ranged reads of the shard
through the tier chain, so neighbouring members share blocks.

The member index is the shard ObjectRef's (``shard_index.py``): a shard
rewritten upstream shows its new members once its new ObjectRef is seen
(after the metadata TTL), and a snapshot's shards never change.
"""

from __future__ import annotations

from dataclasses import dataclass

from tierfs.data.readahead import ReadAhead
from tierfs.data.reader import BlockReader
from tierfs.namespace.prefixes import under
from tierfs.namespace.shard_index import ShardIndexes
from tierfs.namespace.tar_members import MemberTree
from tierfs.refs import ObjectRef
from tierfs.store.objects import Entry

SUFFIX = ".tar"


@dataclass(frozen=True, slots=True)
class ShardEntry(Entry):
    """A name inside a shard (or the shard itself, as a directory). ``base``: a member's data offset in the
    shard, whose ObjectRef is ``ref``; -1 for a directory."""

    base: int = -1


class ShardView:
    def __init__(self, prefixes: tuple[str, ...], indexes: ShardIndexes, reader: BlockReader):
        self.prefixes = prefixes
        self.indexes = indexes
        self.reader = reader

    def may_hold(self, path: str) -> bool:
        """Cheap: whether ``path`` could be a shard or lie in one (a '.tar' component, a prefix configured)."""
        return bool(self.prefixes) and (path.endswith(SUFFIX) or SUFFIX + "/" in path)

    def is_shard(self, lake_path: str | None, entry: Entry) -> bool:
        """``entry`` (at ``lake_path`` in the lake) is shown as a directory of its members."""
        return (lake_path is not None and not entry.is_dir and entry.ref is not None
                and entry.name.endswith(SUFFIX) and under(lake_path, self.prefixes))

    @staticmethod
    def as_dir(entry: Entry) -> ShardEntry:
        return ShardEntry(entry.name, True, 0, entry.mtime_ns)

    async def entry(self, shard: Entry, inner: str) -> Entry:
        """The entry of ``inner`` (a path inside the shard, not '') ; FileNotFoundError if it has none."""
        assert shard.ref is not None
        found = (await self._tree(shard.ref)).find(inner)
        if found is None:
            raise FileNotFoundError(inner)
        return self._entry(shard, found)

    async def list_dir(self, shard: Entry, inner: str) -> list[Entry]:
        """The entries of directory ``inner`` of the shard ('' its top), sorted: one index read."""
        assert shard.ref is not None
        tree = await self._tree(shard.ref)
        children = tree.dirs.get(inner)
        if children is None:
            if inner in tree.files:
                raise NotADirectoryError(inner)
            raise FileNotFoundError(inner)
        return [self._entry(shard, c) for c in children]

    async def _tree(self, ref: ObjectRef) -> MemberTree:
        ra = ReadAhead(self.reader.block_size, 8)

        async def read(offset: int, length: int) -> bytes:
            # The headers come in order: read ahead of them, as of a file read sequentially.
            self.reader.read_ahead(ra, ref, offset, length)
            data, _ = await self.reader.read(ref, offset, length)
            return data

        return await self.indexes.tree(ref, read)

    @staticmethod
    def _entry(shard: Entry, found: tuple[str, bool, int, int]) -> ShardEntry:
        name, is_dir, offset, size = found
        if is_dir:
            return ShardEntry(name, True, 0, shard.mtime_ns)
        return ShardEntry(name, False, size, shard.mtime_ns, shard.ref, base=offset)
