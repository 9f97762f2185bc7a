"""An index of paths by directory, for the namespace's tables (inodes, listings, overlay).

Each table keeps its entries by path in a dict; this index says which of
those paths lie below a directory, so that a rename, a listing of the names
in a directory or a "does anything live below here" costs the paths
concerned, never a scan of the whole table.
"""

from __future__ import annotations

from collections.abc import Iterator


class PathIndex:
    """A multiset of paths ("a/b/c"; "" is the root), walkable by directory."""

    def __init__(self) -> None:
        self._here: dict[str, int] = {}  # path -> how many times it was added
        # directory -> {name in it: how many added paths are at or below that name}
        self._names: dict[str, dict[str, int]] = {}

    def add(self, path: str) -> None:
        self._here[path] = self._here.get(path, 0) + 1
        self._count(path, 1)

    def remove(self, path: str) -> None:
        """Take one ``path`` out (it must be in)."""
        left = self._here[path] - 1
        if left:
            self._here[path] = left
        else:
            del self._here[path]
        self._count(path, -1)

    def __contains__(self, path: str) -> bool:
        return path in self._here

    def has_below(self, path: str) -> bool:
        """Whether some path in the index lies strictly below ``path``."""
        return path in self._names

    def names(self, path: str) -> list[str]:
        """The names directly in ``path`` through which paths of the index lie (unsorted)."""
        return list(self._names.get(path, ()))

    def below(self, path: str) -> Iterator[str]:
        """The distinct paths of the index at ``path`` or below it (take them all before changing the index)."""
        todo = [path]
        while todo:
            p = todo.pop()
            if p in self._here:
                yield p
            prefix = p + "/" if p else ""
            todo.extend(prefix + name for name in self._names.get(p, ()))

    def _count(self, path: str, delta: int) -> None:
        while path:
            parent, _, name = path.rpartition("/")  # (paths are normalised: no empty names; faster than posixpath)
            counts = self._names.setdefault(parent, {})
            left = counts.get(name, 0) + delta
            if left:
                counts[name] = left
            else:
                del counts[name]
                if not counts:
                    del self._names[parent]
            path = parent
