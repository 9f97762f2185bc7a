"""Read the lake without a mount: the ``tierfs://`` fsspec protocol.

    import fsspec
    with fsspec.open("tierfs://imagenet@v2.0/train/n01440764/x.JPEG", lake="s3://ml-lake") as f:
        data = f.read()                     # a snapshot: DATASET@NAME/path
    fs = fsspec.filesystem("tierfs", lake="s3://ml-lake")
    fs.ls("imagenet@v2.0/train")
    fs.cat_file("datasets/imagenet/train/n01440764/x.JPEG")   # the live view: any other path

Paths whose first name holds an ``@`` are ``DATASET@NAME/path/inside/the/snapshot``;
every other path is the live view, read-only here (a top-level name of the
lake that holds an ``@`` is read through a mount instead). The root lists the
snapshots and the live view's top level. Bytes come through the
same tier chain as the mount (RAM, then the disk cache, then the store), so a
notebook and a mount on one machine can share a cache dir's contents (not at
the same time: a cache dir has one user; a locked one is skipped with a warning).
This is the second composition root beside ``mount.py``.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import trio
from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from tierfs.config import Settings, load
from tierfs.data.reader import BlockReader
from tierfs.errors import BadKey, NotFound, UserError
from tierfs.refs import ObjectRef
from tierfs.store.objects import Entry, ObjectStore
from tierfs.tiers.base import Tier
from tierfs.tiers.chain import TierChain
from tierfs.tiers.disk import DiskTier
from tierfs.tiers.ram import RamTier
from tierfs.tiers.seal import cache_key
from tierfs.versions.catalog import list_datasets, list_snapshots
from tierfs.versions.manifest import RESERVED, ManifestEntry, ManifestReader

log = logging.getLogger(__name__)


class TierfsFileSystem(AbstractFileSystem):  # type: ignore[misc]
    protocol = "tierfs"
    root_marker = ""

    def __init__(self, lake: str, config: str | None = None, cache_dir: str | None = None,
                 cache_size: str | None = None, ram_size: str | None = "256MiB",
                 block_size: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        settings: Settings = load(config, {"lake_url": lake, "cache_dir": cache_dir, "cache_size": cache_size,
                                           "ram_size": ram_size, "block_size": block_size})
        self.settings = settings
        self.store = ObjectStore.open(settings)
        self.tiers: list[Tier] = []
        if settings.ram_size > 0:
            self.tiers.append(RamTier(settings.ram_size))
        if settings.cache_size > 0:
            cdir = Path(cache_dir) if cache_dir else Path(str(settings.resolved_cache_dir()) + "-fsspec")
            try:
                self.tiers.append(DiskTier(cdir, settings.cache_size, settings.high_watermark, settings.low_watermark,
                                           data_key=cache_key(settings, cdir)))
            except UserError as exc:
                log.warning("tierfs://: no disk tier (%s)", exc)
        self._readers: dict[tuple[str, str], ManifestReader] = {}
        self._lock = threading.Lock()

    # -- paths ------------------------------------------------------------------
    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = str(path)
        if path.startswith("tierfs://"):
            path = path[len("tierfs://"):]
        return path.strip("/")

    @staticmethod
    def _is_live(path: str) -> bool:
        return bool(path) and "@" not in path.partition("/")[0]

    def _split(self, path: str) -> tuple[ManifestReader | None, str, str]:
        """(reader, dataset@name, inner path); reader None for '' (the list of snapshots)."""
        path = self._strip_protocol(path)
        if not path:
            return None, "", ""
        head, _, inner = path.partition("/")
        dataset, at, name = head.partition("@")
        if not at or not dataset or not name:
            raise FileNotFoundError(f"{path}: expected DATASET@NAME/path (a snapshot) or a path of the live view")
        key = (dataset, name)
        with self._lock:
            reader = self._readers.get(key)
        if reader is None:
            try:
                reader = ManifestReader.open(dataset, name, self.store.read_all)
            except UserError as exc:
                raise FileNotFoundError(str(exc)) from None
            with self._lock:
                self._readers[key] = reader
        return reader, head, inner

    # -- listing ------------------------------------------------------------------
    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        if self._is_live(path):
            return self._live_ls(path, detail)
        reader, head, inner = self._split(path)
        if reader is None:
            out: list[dict[str, Any]] = [
                {"name": f"{m.dataset}@{m.name}", "size": 0, "type": "directory"}
                for ds in list_datasets(self.store) for m in list_snapshots(self.store, ds)
            ]
            out += [o for o in self._live_ls("", True) if "@" not in o["name"] and o["name"] != RESERVED]
        else:
            entries = list(reader.list_dir(inner))
            if not entries and inner:
                info = self.info(path)
                if info["type"] == "file":
                    return [info] if detail else [info["name"]]
                raise FileNotFoundError(path)
            out = [self._info(head, e) for e in entries]
        return out if detail else [o["name"] for o in out]

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        if self._is_live(path):
            return self._live_info(path)
        reader, head, inner = self._split(path)
        if reader is None or not inner:
            return {"name": head, "size": 0, "type": "directory"}
        parent, _, name = inner.rpartition("/")
        e = reader.lookup(parent, name)
        if e is None:
            raise FileNotFoundError(path)
        return self._info(head, e)

    @staticmethod
    def _info(head: str, e: ManifestEntry) -> dict[str, Any]:
        return {"name": f"{head}/{e.path}", "size": e.size, "type": "directory" if e.is_dir else "file",
                "mtime": e.mtime_ns / 1e9, "sha256": e.sha256, "version": e.version}

    # -- the live view --------------------------------------------------------------
    def _live_ls(self, path: str, detail: bool) -> list[Any]:
        try:
            entries = self.store.list_dir(path)
        except BadKey as exc:
            raise FileNotFoundError(str(exc)) from None
        except NotFound:
            info = self._live_info(path)  # a file: fsspec lists it as itself
            return [info] if detail else [info["name"]]
        out = [self._live_entry(path, e) for e in sorted(entries, key=lambda e: e.name)]
        return out if detail else [o["name"] for o in out]

    def _live_info(self, path: str) -> dict[str, Any]:
        try:
            return self._live_entry(path.rpartition("/")[0], self.store.stat(path))
        except NotFound:
            raise FileNotFoundError(path) from None
        except BadKey as exc:
            raise FileNotFoundError(str(exc)) from None

    @staticmethod
    def _live_entry(parent: str, e: Entry) -> dict[str, Any]:
        name = f"{parent}/{e.name}" if parent else e.name
        info: dict[str, Any] = {"name": name, "size": e.size, "type": "directory" if e.is_dir else "file"}
        if not e.is_dir:
            info["mtime"] = e.mtime_ns / 1e9
        return info

    # -- bytes --------------------------------------------------------------------
    def _ref(self, path: str) -> ObjectRef:
        path = self._strip_protocol(path)
        if self._is_live(path):
            try:
                entry = self.store.stat(path)
            except NotFound:
                raise FileNotFoundError(path) from None
            except BadKey as exc:
                raise FileNotFoundError(str(exc)) from None
            if entry.ref is None:
                raise IsADirectoryError(f"{path} is a directory")
            return entry.ref
        reader, _head, inner = self._split(path)
        if reader is None or not inner:
            raise IsADirectoryError(f"{path or 'tierfs://'} is a directory (a snapshot, or the list of them)")
        parent, _, name = inner.rpartition("/")
        e = reader.lookup(parent, name)
        if e is None:
            raise FileNotFoundError(path)
        ref = e.ref()
        if ref is None:
            raise IsADirectoryError(f"{path} is a directory")
        return ref

    def read_ref(self, ref: ObjectRef, start: int, end: int) -> bytes:
        async def run() -> bytes:
            chain = TierChain(self.tiers, trio.CapacityLimiter(4))
            reader = BlockReader(self.store, chain, self.settings.block_size, trio.CapacityLimiter(8))
            data, _ = await reader.read(ref, start, max(0, end - start))
            return data

        return trio.run(run)

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        ref = self._ref(path)
        s = 0 if start is None else (start if start >= 0 else max(0, ref.size + start))
        e = ref.size if end is None else (end if end >= 0 else max(0, ref.size + end))
        return self.read_ref(ref, s, min(e, ref.size))

    def _open(self, path: str, mode: str = "rb", block_size: Any = None, autocommit: bool = True,
              cache_options: Any = None, **kwargs: Any) -> TierfsFile:
        if mode != "rb":
            raise PermissionError("tierfs:// is read-only: write through a mount (tierfs mount) or the store")
        ref = self._ref(path)
        return TierfsFile(self, path, ref, block_size=block_size or self.settings.block_size,
                          cache_type="none", size=ref.size)

    def stats(self) -> dict[str, Any]:
        return {"tiers": {t.name: t.stats.snapshot() for t in self.tiers}, "backend": self.store.stats.snapshot()}

    def close(self) -> None:
        for t in self.tiers:
            t.close()
        self.tiers = []


class TierfsFile(AbstractBufferedFile):  # type: ignore[misc]
    def __init__(self, fs: TierfsFileSystem, path: str, ref: ObjectRef, **kwargs: Any):
        self.ref = ref
        super().__init__(fs, path, mode="rb", **kwargs)

    def _fetch_range(self, start: int, end: int) -> bytes:
        data: bytes = self.fs.read_ref(self.ref, start, min(end, self.ref.size))
        return data
