"""The inode table: inode numbers for the paths the kernel currently knows.

A node lives while the kernel holds a lookup reference to it (``lookups``) or
a file handle is open on it (``opens``); ``forget`` drops both counts to zero
and the node is freed, so the table is bounded by what the kernel keeps, not by
the size of the lake.

The nodes are indexed by directory and name (a node holds its directory's
path, shared, and its name, not a path of its own: memory per node is what
bounds a walk of millions of files), so that a rename looks at the nodes it
moves and no others, however many the kernel holds.
"""

from __future__ import annotations

import errno
import itertools
from typing import Protocol

from tierfs.errors import TierfsError
from tierfs.namespace.pathindex import PathIndex
from tierfs.refs import ObjectRef

ROOT_INODE = 1


class StaleInode(TierfsError):
    errno = errno.ESTALE


class Node:
    """One inode. Its path is its directory's and its name: the directory's string is shared by every node in
    it (and the name, by the listing it came from), so a million nodes do not hold a million full paths."""

    __slots__ = (
        "inode", "parent", "name", "is_dir", "size", "mtime_ns", "_ref", "named",
        "lookups", "opens", "checked_at", "cached_ref", "last_tier", "read_only", "immutable", "listed",
        "base",
    )

    def __init__(self, inode: int, parent: str, name: str, is_dir: bool, read_only: bool = False,
                 immutable: bool = False):
        self.inode = inode
        self.parent = parent  # the directory's path ('' for the root's names)
        self.name = name  # '' for the root
        self.is_dir = is_dir
        self.size = 0
        self.mtime_ns = 0
        self._ref: ObjectRef | PackedRef | None = None
        self.named = True  # its path names it (False once unlinked or renamed over: it lives on by inode)
        self.lookups = 0
        self.opens = 0
        self.checked_at = 0.0  # monotonic time its metadata was last confirmed
        self.cached_ref: ObjectRef | None = None  # ref whose pages the kernel may hold
        self.last_tier = ""  # which tier served this file's last read
        self.read_only = read_only
        self.immutable = immutable  # in a snapshot or an immutable prefix: metadata and bytes never change
        self.listed = 0  # a directory: digest of the names the kernel may hold in its directory cache
        self.base = -1  # a member of a tar shard: where its bytes start in its ref's (the shard's); -1: all of them

    @property
    def path(self) -> str:
        return f"{self.parent}/{self.name}" if self.parent else self.name

    @property
    def ref(self) -> ObjectRef | None:
        r = self._ref
        if r is None or isinstance(r, ObjectRef):
            return r
        return r.unpack(self.parent, self.name)  # (a snapshot file's: decoded when asked for, at its open)

    @ref.setter
    def ref(self, value: ObjectRef | None) -> None:
        self._ref = value


class PackedRef(Protocol):
    """An ObjectRef kept in less memory (a snapshot file's, as its manifest's index holds it)."""

    def unpack(self, parent: str, name: str) -> ObjectRef: ...


class _Dir:
    """The live nodes in one directory, by name: a Node, or a list where several share a name (an unlinked
    file still open beside the file now named so)."""

    __slots__ = ("path", "names")

    def __init__(self, path: str):
        self.path = path
        self.names: dict[str, Node | list[Node]] = {}


def _nodes(slot: Node | list[Node] | None) -> list[Node]:
    return [] if slot is None else [slot] if isinstance(slot, Node) else list(slot)


class InodeTable:
    def __init__(self) -> None:
        self._by_inode: dict[int, Node] = {}
        # Every live node but the root, by directory and name, named or not: an
        # unlinked file that is still open moves with its directory too.
        self._dirs: dict[str, _Dir] = {}
        self._tree = PathIndex()  # the directories of _dirs: a rename walks those below it only
        self._next = itertools.count(ROOT_INODE + 1)
        self._root = Node(ROOT_INODE, "", "", True)
        self._root.lookups = 1  # the kernel never forgets the root
        self._by_inode[ROOT_INODE] = self._root

    def __len__(self) -> int:
        return len(self._by_inode)

    def get(self, inode: int) -> Node:
        node = self._by_inode.get(inode)
        if node is None:
            raise StaleInode(f"inode {inode} is not known")
        return node

    def by_path(self, path: str) -> Node | None:
        """The node ``path`` names now (not one unlinked from it)."""
        if not path:
            return self._root
        parent, _, name = path.rpartition("/")
        return self.child(parent, name)

    def child(self, parent: str, name: str) -> Node | None:
        d = self._dirs.get(parent)
        if d is None:
            return None
        slot = d.names.get(name)
        if isinstance(slot, Node):
            return slot if slot.named else None
        return next((n for n in slot if n.named), None) if slot is not None else None

    def upsert(self, path: str, is_dir: bool, size: int, mtime_ns: int, ref: ObjectRef | None,
               checked_at: float, read_only: bool = False, immutable: bool = False) -> Node:
        parent, _, name = path.rpartition("/")
        return self.upsert_child(parent, name, is_dir, size, mtime_ns, ref, checked_at, read_only, immutable)

    def upsert_child(self, parent: str, name: str, is_dir: bool, size: int, mtime_ns: int,
                     ref: ObjectRef | PackedRef | None, checked_at: float, read_only: bool = False,
                     immutable: bool = False, base: int = -1) -> Node:
        """The node for ``name`` in directory ``parent``, created or updated with fresh metadata.

        A path that turned from file to directory (or back) gets a new inode.
        An immutable node keeps what it was made with: the kernel keeps its
        attributes and pages for good, so they must stay those of one version
        (a later listing may have seen another: the user's dataset changed).
        """
        node = self.child(parent, name)
        if node is not None and node.immutable:
            return node
        if node is not None and node.is_dir != is_dir:
            node.named = False
            node = None
        if node is None:
            node = Node(next(self._next), parent, name, is_dir, read_only, immutable)
            self._by_inode[node.inode] = node
            self._track(node, parent)
        node.size, node.mtime_ns, node._ref, node.checked_at, node.base = size, mtime_ns, ref, checked_at, base
        return node

    def rename(self, old: str, new: str) -> None:
        """``old`` (and, for a directory, everything below it) is now called ``new``."""
        target = self.by_path(new)
        if target is not None:
            target.named = False
        old_parent, _, old_name = old.rpartition("/")
        d = self._dirs.get(old_parent)
        # At ``old`` itself only the node the name means moves: an unlinked one there is another file that
        # had the name (open still), and it stays what it is.
        top = [n for n in _nodes(d.names.get(old_name) if d is not None else None) if n.named]
        below = [n for p in list(self._tree.below(old)) for slot in self._dirs[p].names.values()
                 for n in _nodes(slot)]
        new_parent, _, new_name = new.rpartition("/")
        for node in top + below:
            self._untrack(node)
        # Only the nodes a name meant are named at their new path; an unlinked
        # node keeps following its directory but stays unlinked.
        for node in top:
            node.name = new_name
            self._moved(node, new_parent)
        for node in below:
            self._moved(node, new + node.parent[len(old):])

    def _moved(self, node: Node, parent: str) -> None:
        # Its ref names the object under the old key: ask the lake again at its next use
        # (a readdir would have refreshed it, but the kernel may list the moved directory from its cache).
        node.checked_at = 0.0
        self._track(node, parent)

    def unlinked(self, path: str) -> None:
        """``path`` no longer names its node (the inode lives on while the kernel holds it)."""
        node = self.by_path(path)
        if node is not None and node is not self._root:
            node.named = False

    def unlink_node(self, node: Node) -> None:
        """``node``'s path no longer names it (if it still did); another node on that path is left alone."""
        if node is not self._root:
            node.named = False

    def forget(self, inode: int, count: int) -> None:
        node = self._by_inode.get(inode)
        if node is None or inode == ROOT_INODE:
            return
        node.lookups = max(0, node.lookups - count)
        self._maybe_free(node)

    def opened(self, node: Node) -> None:
        node.opens += 1

    def closed(self, node: Node) -> None:
        node.opens = max(0, node.opens - 1)
        self._maybe_free(node)

    def _maybe_free(self, node: Node) -> None:
        if node.lookups == 0 and node.opens == 0 and self._by_inode.get(node.inode) is node and node is not self._root:
            del self._by_inode[node.inode]
            self._untrack(node)

    # -- by directory ---------------------------------------------------------------
    def _track(self, node: Node, parent: str) -> None:
        d = self._dirs.get(parent)
        if d is None:
            d = self._dirs[parent] = _Dir(parent)
            self._tree.add(parent)
        node.parent = d.path  # (one string for the whole directory)
        slot = d.names.get(node.name)
        if slot is None:
            d.names[node.name] = node
            return
        others = _nodes(slot)
        if node.named:
            for other in others:
                other.named = False  # (moved onto a name another node had: that one is renamed over)
        d.names[node.name] = [*others, node]

    def _untrack(self, node: Node) -> None:
        d = self._dirs[node.parent]
        slot = d.names[node.name]
        if isinstance(slot, Node):
            del d.names[node.name]
        else:
            slot.remove(node)
            if len(slot) == 1:
                d.names[node.name] = slot[0]
        if not d.names:
            del self._dirs[node.parent]
            self._tree.remove(node.parent)
