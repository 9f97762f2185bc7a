"""Where the manifest indexes of a mount live, and how their space stays bounded.

With a disk tier, in ``<cache dir>/manifests/`` (0700), kept across mounts:
the cache dir is flock'd by its one mount, so nothing else writes there.
Without one (or with a cache key: an index holds the manifest's names and
keys in plaintext), in a private temp dir of this process, removed at
unmount (and, after a kill, by the next mount that makes one).

A file is named ``<dataset>-<name>-<manifest>-<sum>.mdb``: hashes of the
dataset's and the snapshot's names (so the files of one snapshot are found
without opening any), of the manifest's meta.json (its content: a snapshot
made again under the same name has another) and of the file's own bytes.
Files are dropped when their snapshot is no longer in the lake's listing or
is made again, and past ``max_files`` / ``max_bytes`` the least recently
opened go (never one open in this mount). Leftovers of a build a crash
interrupted (``.build-*``) go at the first use of the directory.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
import weakref
from pathlib import Path

import lmdb

from tierfs.metrics import Counters
from tierfs.versions.manifest import ManifestError, ManifestReader
from tierfs.versions.manifest_index import (
    BUILDING,
    SUFFIX,
    IndexBuilder,
    IndexUnavailable,
    ManifestIndex,
    file_digest,
    unavailable,
)

log = logging.getLogger(__name__)

_NAME = re.compile(r"([0-9a-f]{16})-([0-9a-f]{16})-([0-9a-f]{32})-([0-9a-f]{32})" + re.escape(SUFFIX))
_PRIVATE = "tierfs-manifests-"
INDEX_COUNTERS = ("index_builds", "index_build_ms", "index_reused", "index_rebuilt", "index_fallbacks",
                  "index_dropped", "index_lookups", "parts_decoded")


def _h16(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def manifest_id(meta_json: bytes) -> str:
    """A manifest's name: the hash of its meta.json, which covers every part's hash."""
    return hashlib.sha256(meta_json).hexdigest()[:32]


class ManifestIndexes:
    def __init__(self, root: Path | None, max_files: int = 64, max_bytes: int = 8 << 30):
        """``root``: the directory to keep indexes in across mounts; None: a private one, removed at close."""
        self._root = root
        self._made: Path | None = None  # the directory, once made and swept
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.stats = Counters(INDEX_COUNTERS)
        self._lock = threading.Lock()
        self._open: weakref.WeakValueDictionary[str, ManifestIndex] = weakref.WeakValueDictionary()
        self._checked: set[str] = set()  # files whose hash this process checked (or wrote)

    @property
    def private(self) -> bool:
        return self._root is None

    # -- in worker threads --------------------------------------------------------
    def open(self, reader: ManifestReader, manifest: str) -> ManifestIndex | None:
        """The index of ``manifest`` if one is here and sound; None if it must be built.

        A file whose bytes are not those its name carries, or that is not this
        manifest's index, is removed (and counted in ``index_rebuilt``).
        """
        try:
            return self._open_file(reader, manifest)
        except OSError as exc:  # (the directory cannot be made, listed or cleaned)
            raise self._unavailable(reader, exc) from None

    def _open_file(self, reader: ManifestReader, manifest: str) -> ManifestIndex | None:
        meta = reader.meta
        for path in sorted(self._dir().glob(f"{self._stem(meta.dataset, meta.name, manifest)}-*{SUFFIX}")):
            found = _NAME.fullmatch(path.name)
            if found is None:
                continue
            index = self._open.get(path.name)
            if index is not None:
                return index  # (open already: LMDB opens a file once per process)
            try:
                if path.name not in self._checked:
                    if file_digest(path) != found.group(4):
                        raise ManifestError("its bytes are not those it was written with (truncated or altered)")
                    self._checked.add(path.name)
                index = ManifestIndex(path, manifest, meta.prefix, sum(p["count"] for p in meta.parts))
            except (OSError, lmdb.Error, ManifestError) as exc:
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                log.warning("manifest %s: its local index %s is damaged (%s); it is built again",
                            reader.where, path.name, why)
                self.stats.add("index_rebuilt")
                self._checked.discard(path.name)
                self._remove(path)
                continue
            with contextlib.suppress(OSError):
                os.utime(path)  # (the age the bound evicts by: the last open)
            self._open[path.name] = index
            self.stats.add("index_reused")
            return index
        return None

    def builder(self, reader: ManifestReader, manifest: str) -> IndexBuilder:
        try:
            return IndexBuilder(self._dir(), self._stem(reader.meta.dataset, reader.meta.name, manifest), reader,
                                manifest)
        except (OSError, lmdb.Error) as exc:
            raise self._unavailable(reader, exc) from None

    def commit(self, builder: IndexBuilder) -> ManifestIndex:
        """Put a built index in place, drop the snapshot's older ones and what the bounds leave no room for."""
        meta = builder.reader.meta
        try:
            path = builder.finish()
            with self._lock:
                self._checked.add(path.name)
                index = ManifestIndex(path, builder.manifest, meta.prefix, builder.entries)
                self._open[path.name] = index
            self.stats.add("index_builds")
            self._drop(meta.dataset, meta.name, keep=path.name)
            self._bound()
            return index
        except (OSError, lmdb.Error) as exc:
            builder.abort()
            raise self._unavailable(builder.reader, exc) from None

    def forget(self, dataset: str, name: str) -> None:
        """The snapshot is gone from the lake: its indexes go (one open here stays readable until closed)."""
        self._drop(dataset, name)

    def keep_only(self, dataset: str, names: set[str]) -> None:
        """The lake lists these snapshots of ``dataset`` (or, with dataset '', these datasets): drop the rest."""
        if self._made is None:
            return
        want = {_h16(n) for n in names}
        ds = _h16(dataset) if dataset else ""
        for path, found in self._files():
            gone = found.group(1) not in want if not ds else found.group(1) == ds and found.group(2) not in want
            if gone:
                self._remove(path)
                self.stats.add("index_dropped")

    def close(self) -> None:
        """At unmount: close what is open; a private directory is removed."""
        for index in list(self._open.values()):
            index.close()
        if self.private and self._made is not None:
            shutil.rmtree(self._made, ignore_errors=True)
            self._made = None

    # -- internals ------------------------------------------------------------------
    def _stem(self, dataset: str, name: str, manifest: str) -> str:
        return f"{_h16(dataset)}-{_h16(name)}-{manifest}"

    def _dir(self) -> Path:
        with self._lock:
            if self._made is None:
                self._made = self._make()
            return self._made

    def _make(self) -> Path:
        if self._root is None:
            base = Path(tempfile.gettempdir())
            _sweep_private(base)
            return Path(tempfile.mkdtemp(prefix=f"{_PRIVATE}{os.getpid()}-", dir=base))  # 0700
        root = self._root
        st = os.lstat(root) if os.path.lexists(root) else None
        if st is not None and (stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode)):
            raise OSError(errno.ENOTDIR, f"{root} is not a directory of tierfs' own")
        root.mkdir(mode=0o700, exist_ok=True)
        os.chmod(root, 0o700)
        for leftover in root.iterdir():
            if leftover.name.startswith(BUILDING) or not _NAME.fullmatch(leftover.name):
                self._remove(leftover)  # a build a crash interrupted (or a file of no index of ours)
        return root

    def _files(self) -> list[tuple[Path, re.Match[str]]]:
        assert self._made is not None
        out = []
        for path in self._made.iterdir():
            found = _NAME.fullmatch(path.name)
            if found is not None:
                out.append((path, found))
        return out

    def _drop(self, dataset: str, name: str, keep: str = "") -> None:
        if self._made is None:
            return
        ds, nm = _h16(dataset), _h16(name)
        for path, found in self._files():
            if found.group(1) == ds and found.group(2) == nm and path.name != keep:
                self._remove(path)
                self.stats.add("index_dropped")

    def _bound(self) -> None:
        """Past the bounds, remove the least recently opened files that are not open in this process."""
        files = []
        for path, _ in self._files():
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            files.append((st.st_mtime, st.st_blocks * 512, path))
        files.sort()
        count, held = len(files), sum(size for _, size, _ in files)
        for _, size, path in files:
            if count <= self.max_files and held <= self.max_bytes:
                break
            if path.name in self._open:
                continue
            self._remove(path)
            self.stats.add("index_dropped")
            count, held = count - 1, held - size

    def _remove(self, path: Path) -> None:
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            pass

    def _unavailable(self, reader: ManifestReader, exc: BaseException) -> IndexUnavailable:
        return unavailable(reader.where, self._made or self._root or "a temp dir", exc)


def _sweep_private(base: Path) -> None:
    """Remove the private index directories that mounts killed before their unmount left behind."""
    try:
        candidates = [p for p in base.iterdir() if p.name.startswith(_PRIVATE)]
    except OSError:
        return
    for path in candidates:
        pid = path.name[len(_PRIVATE):].split("-", 1)[0]
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not pid.isdigit() or not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or _alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
