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
from typing import Protocol

from tierfs.namespace.pathindex import PathIndex
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
        self._paths = PathIndex()  # the paths of both, by directory

    def __len__(self) -> int:
        return len(self._files)

    # -- files ------------------------------------------------------------
    def add_file(self, path: str, staged: Staged) -> None:
        if path not in self._files:
            self._paths.add(path)
        self._files[path] = staged

    def file(self, path: str) -> Staged | None:
        return self._files.get(path)

    def remove_file(self, path: str, staged: Staged | None = None) -> None:
        if path in self._files and (staged is None or self._files[path] is staged):
            del self._files[path]
            self._paths.remove(path)

    # -- directories --------------------------------------------------------
    def add_dir(self, path: str) -> None:
        if path not in self._dirs:
            self._dirs.add(path)
            self._paths.add(path)

    def remove_dir(self, path: str) -> None:
        if path in self._dirs:
            self._dirs.remove(path)
            self._paths.remove(path)

    def has_dir(self, path: str) -> bool:
        """An empty directory made here, or a directory that holds staged files."""
        # (The root is no directory of the overlay's: every path is below it.)
        return path in self._dirs or (path != "" and self._paths.has_below(path))

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
        for name in sorted(self._paths.names(dir_path)):
            entry = self.entry(prefix + name)
            if entry is not None:
                out.append(entry)
        return out

    def move(self, old: str, new: str) -> None:
        """Rename ``old`` (a file, or a directory with everything below it) to ``new``."""
        moving = list(self._paths.below(old))
        files = [(p, self._files[p]) for p in moving if p in self._files]
        dirs = [d for d in moving if d in self._dirs]
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
        return [(p, self._files[p]) for p in self._paths.below(path) if p in self._files]
