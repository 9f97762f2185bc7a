"""Names this mount shows before the lake has them: staged files and empty directories.

A file being written exists on local disk (staged) until its upload; an empty
directory of an object store has no object to exist by. Both are kept here
and laid over the lake's listings, so that this mount sees its own changes at
once. Other nodes see a file once its upload is acknowledged, and an empty
directory once a file is written into it.

Both are indexed by directory, so that a lookup or a listing costs the names
it concerns, not a scan of every staged file (a checkpoint of many shards
being written must not slow down every lookup of a dataset).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from typing import Protocol

from tierfs.refs import ObjectRef
from tierfs.store.objects import Entry


class Staged(Protocol):
    """What the overlay needs of a staged file."""

    @property
    def size(self) -> int: ...

    @property
    def mtime_ns(self) -> int: ...

    def ref(self) -> ObjectRef: ...


class Overlay:
    def __init__(self) -> None:
        self._files: dict[str, Staged] = {}
        self._dirs: set[str] = set()
        # Directory path -> {name in it: how many overlay paths are at or below that name}.
        self._names: dict[str, dict[str, int]] = {}

    def __len__(self) -> int:
        return len(self._files)

    # -- files ------------------------------------------------------------
    def add_file(self, path: str, staged: Staged) -> None:
        if path not in self._files:
            self._count(path, 1)
        self._files[path] = staged

    def file(self, path: str) -> Staged | None:
        return self._files.get(path)

    def remove_file(self, path: str, staged: Staged | None = None) -> None:
        if path in self._files and (staged is None or self._files[path] is staged):
            del self._files[path]
            self._count(path, -1)

    # -- directories --------------------------------------------------------
    def add_dir(self, path: str) -> None:
        if path not in self._dirs:
            self._dirs.add(path)
            self._count(path, 1)

    def remove_dir(self, path: str) -> None:
        if path in self._dirs:
            self._dirs.remove(path)
            self._count(path, -1)

    def has_dir(self, path: str) -> bool:
        """An empty directory made here, or a directory that holds staged files."""
        # (The root is no directory of the overlay's: every path is below it.)
        return path in self._dirs or (path != "" and path in self._names)

    # -- both ---------------------------------------------------------------
    def entry(self, path: str) -> Entry | None:
        if not self._files and not self._dirs:
            return None  # the usual case: every lookup of a dataset passes here
        staged = self._files.get(path)
        name = posixpath.basename(path)
        if staged is not None:
            return Entry(name, False, staged.size, staged.mtime_ns, staged.ref())
        if self.has_dir(path):
            return Entry(name, True)
        return None

    def entries(self, dir_path: str) -> list[Entry]:
        """The names directly in ``dir_path`` that the overlay adds."""
        prefix = dir_path + "/" if dir_path else ""
        out = []
        for name in sorted(self._names.get(dir_path, ())):
            entry = self.entry(prefix + name)
            if entry is not None:
                out.append(entry)
        return out

    def move(self, old: str, new: str) -> None:
        """Rename ``old`` (a file, or a directory with everything below it) to ``new``."""
        files = [(p, self._files[p]) for p in self._paths(old) if p in self._files]
        dirs = [d for d in self._paths(old) if d in self._dirs]
        for p, _ in files:
            self.remove_file(p)
        for d in dirs:
            self.remove_dir(d)
        for p, staged in files:
            self.add_file(new + p[len(old):], staged)
        for d in dirs:
            self.add_dir(new + d[len(old):])

    def files_under(self, path: str) -> list[tuple[str, Staged]]:
        if path == "":
            return list(self._files.items())
        return [(p, self._files[p]) for p in self._paths(path) if p in self._files]

    # -- the index ------------------------------------------------------------
    def _paths(self, path: str) -> Iterator[str]:
        """``path`` and every path below it that the overlay has a file or directory at (or below)."""
        todo = [path]
        while todo:
            p = todo.pop()
            yield p
            prefix = p + "/" if p else ""
            todo.extend(prefix + name for name in self._names.get(p, ()))

    def _count(self, path: str, delta: int) -> None:
        """One more (or one less) overlay path at ``path``: counted in every directory above it."""
        while path:
            parent, name = posixpath.split(path)
            counts = self._names.setdefault(parent, {})
            counts[name] = counts.get(name, 0) + delta
            if not counts[name]:
                del counts[name]
                if not counts:
                    del self._names[parent]
            path = parent
