"""The inode table: inode numbers for the paths the kernel currently knows.

A node lives while the kernel holds a lookup reference to it (``lookups``) or
a file handle is open on it (``opens``); ``forget`` drops both counts to zero
and the node is freed, so the table is bounded by what the kernel keeps, not by
the size of the lake.

The nodes are indexed by path and by directory, so that a rename looks at
the nodes it moves and no others, however many the kernel holds.
"""

from __future__ import annotations

import errno
import itertools

from tierfs.errors import TierfsError
from tierfs.namespace.pathindex import PathIndex
from tierfs.refs import ObjectRef

ROOT_INODE = 1


class StaleInode(TierfsError):
    errno = errno.ESTALE


class Node:
    __slots__ = (
        "inode", "path", "is_dir", "size", "mtime_ns", "ref",
        "lookups", "opens", "checked_at", "cached_ref", "last_tier", "read_only", "immutable", "listed",
    )

    def __init__(self, inode: int, path: str, is_dir: bool, size: int = 0, mtime_ns: int = 0,
                 ref: ObjectRef | None = None, checked_at: float = 0.0, read_only: bool = False,
                 immutable: bool = False):
        self.inode = inode
        self.path = path
        self.is_dir = is_dir
        self.size = size
        self.mtime_ns = mtime_ns
        self.ref = ref
        self.lookups = 0
        self.opens = 0
        self.checked_at = checked_at  # monotonic time its metadata was last confirmed
        self.cached_ref: ObjectRef | None = None  # ref whose pages the kernel may hold
        self.last_tier = ""  # which tier served this file's last read
        self.read_only = read_only
        self.immutable = immutable  # in a snapshot or an immutable prefix: metadata and bytes never change
        self.listed = 0  # a directory: digest of the names the kernel may hold in its directory cache


class InodeTable:
    def __init__(self) -> None:
        self._by_inode: dict[int, Node] = {}
        self._by_path: dict[str, int] = {}  # the node each name currently means
        # Every live node by its path, named or not: an unlinked file that is
        # still open moves with its directory too.
        self._at: dict[str, dict[int, Node]] = {}
        self._paths = PathIndex()  # the paths of _at, by directory
        self._next = itertools.count(ROOT_INODE + 1)
        root = Node(ROOT_INODE, "", True)
        root.lookups = 1  # the kernel never forgets the root
        self._by_inode[ROOT_INODE] = root
        self._by_path[""] = ROOT_INODE
        self._track(root)

    def __len__(self) -> int:
        return len(self._by_inode)

    def get(self, inode: int) -> Node:
        node = self._by_inode.get(inode)
        if node is None:
            raise StaleInode(f"inode {inode} is not known")
        return node

    def by_path(self, path: str) -> Node | None:
        inode = self._by_path.get(path)
        return None if inode is None else self._by_inode[inode]

    def upsert(self, path: str, is_dir: bool, size: int, mtime_ns: int, ref: ObjectRef | None,
               checked_at: float, read_only: bool = False, immutable: bool = False) -> Node:
        """The node for ``path``, created or updated with fresh metadata.

        A path that turned from file to directory (or back) gets a new inode.
        An immutable node keeps what it was made with: the kernel keeps its
        attributes and pages for good, so they must stay those of one version
        (a later listing may have seen another: the user's dataset changed).
        """
        node = self.by_path(path)
        if node is not None and node.immutable:
            return node
        if node is not None and node.is_dir != is_dir:
            self._unlink_path(node)
            node = None
        if node is None:
            node = Node(next(self._next), path, is_dir, read_only=read_only, immutable=immutable)
            self._by_inode[node.inode] = node
            self._by_path[path] = node.inode
            self._track(node)
        node.size, node.mtime_ns, node.ref, node.checked_at = size, mtime_ns, ref, checked_at
        return node

    def rename(self, old: str, new: str) -> None:
        """``old`` (and, for a directory, everything below it) is now called ``new``."""
        target = self.by_path(new)
        if target is not None:
            self._unlink_path(target)
        moving = [n for p in list(self._paths.below(old)) for n in self._at[p].values()]
        # Only the names that meant these nodes move with them; an unlinked
        # node keeps following its directory but stays unlinked.
        named = [n for n in moving if self._by_path.get(n.path) == n.inode]
        for node in named:
            del self._by_path[node.path]
        for node in moving:
            self._untrack(node)
            node.path = new + node.path[len(old):]
            # Its ref names the object under the old key: ask the lake again at its next use
            # (a readdir would have refreshed it, but the kernel may list the moved directory from its cache).
            node.checked_at = 0.0
            self._track(node)
        for node in named:
            self._by_path[node.path] = node.inode

    def unlinked(self, path: str) -> None:
        """``path`` no longer names its node (the inode lives on while the kernel holds it)."""
        node = self.by_path(path)
        if node is not None:
            self._unlink_path(node)

    def unlink_node(self, node: Node) -> None:
        """``node``'s path no longer names it (if it still did); another node on that path is left alone."""
        self._unlink_path(node)

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
        if node.lookups == 0 and node.opens == 0 and node.inode != ROOT_INODE:
            del self._by_inode[node.inode]
            self._untrack(node)
            if self._by_path.get(node.path) == node.inode:
                del self._by_path[node.path]

    def _unlink_path(self, node: Node) -> None:
        # The old inode stays reachable by number until the kernel forgets it.
        if self._by_path.get(node.path) == node.inode:
            del self._by_path[node.path]

    # -- the path index -----------------------------------------------------------
    def _track(self, node: Node) -> None:
        self._at.setdefault(node.path, {})[node.inode] = node
        self._paths.add(node.path)

    def _untrack(self, node: Node) -> None:
        at = self._at[node.path]
        del at[node.inode]
        if not at:
            del self._at[node.path]
        self._paths.remove(node.path)
