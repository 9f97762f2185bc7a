"""Names this mount shows before the lake has them: staged files and empty directories.

A file being written exists on local disk (staged) until its upload; an empty
directory of an object store has no object to exist by. Both are kept here
and laid over the lake's listings, so that this mount sees its own changes at
once. Other nodes see a file once its upload is acknowledged, and an empty
directory once a file is written into it.
"""

from __future__ import annotations

import posixpath
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

    def __len__(self) -> int:
        return len(self._files)

    # -- files ------------------------------------------------------------
    def add_file(self, path: str, staged: Staged) -> None:
        self._files[path] = staged

    def file(self, path: str) -> Staged | None:
        return self._files.get(path)

    def remove_file(self, path: str, staged: Staged | None = None) -> None:
        if staged is None or self._files.get(path) is staged:
            self._files.pop(path, None)

    # -- directories --------------------------------------------------------
    def add_dir(self, path: str) -> None:
        self._dirs.add(path)

    def remove_dir(self, path: str) -> None:
        self._dirs.discard(path)

    def has_dir(self, path: str) -> bool:
        """An empty directory made here, or a directory that holds staged files."""
        if path in self._dirs:
            return True
        below = path + "/"
        return any(p.startswith(below) for p in self._files) or any(d.startswith(below) for d in self._dirs)

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
        if not self._files and not self._dirs:
            return []
        prefix = dir_path + "/" if dir_path else ""
        names: set[str] = set()
        for p in (*self._files, *self._dirs):
            if p.startswith(prefix) and p != dir_path:
                names.add(p[len(prefix):].split("/", 1)[0])
        out = []
        for name in sorted(names):
            entry = self.entry(prefix + name)
            if entry is not None:
                out.append(entry)
        return out

    def move(self, old: str, new: str) -> None:
        """Rename ``old`` (a file, or a directory with everything below it) to ``new``."""
        below = old + "/"

        def moved(p: str) -> str:
            return new + p[len(old):] if p == old or p.startswith(below) else p

        self._files = {moved(p): s for p, s in self._files.items()}
        self._dirs = {moved(d) for d in self._dirs}

    def files_under(self, path: str) -> list[tuple[str, Staged]]:
        below = path + "/" if path else ""
        return [(p, s) for p, s in self._files.items() if p == path or p.startswith(below)]
