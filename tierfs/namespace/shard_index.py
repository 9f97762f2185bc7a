"""Member indexes of tar shards, one per shard ObjectRef, kept beside the cache.

An index is built once per shard identity (key + version or etag + size: a
shard rewritten upstream has a new identity and gets a new index) by scanning
its headers through the tier chain (``tar_members.scan``), and written as one
file, ``<cache>/shards/<digest>.json`` (directory 0700, files 0600, written to
a temp name, fsync'd and renamed). A listing or a lookup is one read of that
index: from memory while a few recent ones are kept there, else one file
read. Concurrent lookups of one shard share one build (single-flight).
The directory keeps at most ``max_files`` indexes: past that, the least
recently used go (a load marks its file used).

A disk that refuses the file only costs the index's persistence: it is
built again at the next mount.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections import OrderedDict
from pathlib import Path

import trio

from tierfs.data.singleflight import SingleFlight
from tierfs.limits import in_thread
from tierfs.metrics import Counters
from tierfs.namespace.tar_members import MemberTree, Read, Scan, scan
from tierfs.refs import ObjectRef

log = logging.getLogger(__name__)

FORMAT = 1
SHARD_COUNTERS = ("index_reads", "index_loads", "index_builds", "index_errors", "members_indexed")


class ShardIndexes:
    def __init__(self, root: Path | None, limiter: trio.CapacityLimiter, keep: int = 16, max_files: int = 10_000):
        """``root``: where index files go (None: memory only). ``keep``: indexes kept in memory."""
        self.root = root
        self.max_files = max_files
        self.limiter = limiter  # (the manifest limiter: index files are read and written in its threads)
        self.stats = Counters(SHARD_COUNTERS)
        self._kept: OrderedDict[str, MemberTree] = OrderedDict()
        self._keep = keep
        self._flights: SingleFlight[MemberTree] = SingleFlight()

    async def tree(self, ref: ObjectRef, read: Read) -> MemberTree:
        """The member tree of the shard ``ref`` names (``read``: its bytes, for a build)."""
        self.stats.add("index_reads")
        ident = _digest(ref)
        tree = self._kept.get(ident)
        if tree is not None:
            self._kept.move_to_end(ident)
            return tree
        tree = await self._flights.run(ident, lambda: self._get(ident, ref, read))
        self._kept[ident] = tree
        while len(self._kept) > self._keep:
            self._kept.popitem(last=False)
        return tree

    async def _get(self, ident: str, ref: ObjectRef, read: Read) -> MemberTree:
        if self.root is not None:
            members = await in_thread(self._load, ident, ref, limiter=self.limiter)
            if members is not None:
                self.stats.add("index_loads")
                return await in_thread(MemberTree.of, members, limiter=self.limiter)
        found: Scan = await scan(read, ref.size)
        self.stats.add("index_builds")
        self.stats.add("members_indexed", len(found.members))
        if found.problem:
            self.stats.add("index_errors")
            log.warning("shard %s is not a whole tar (%s): %d members listed", ref.key, found.problem,
                        len(found.members))
        if self.root is not None:
            await in_thread(self._save, ident, ref, found.members, limiter=self.limiter)
        return await in_thread(MemberTree.of, found.members, limiter=self.limiter)

    # -- in worker threads ------------------------------------------------------
    def _path(self, ident: str) -> Path:
        assert self.root is not None
        return self.root / f"{ident}.json"

    def _load(self, ident: str, ref: ObjectRef) -> dict[str, tuple[int, int]] | None:
        try:
            path = self._path(ident)
            raw = json.loads(path.read_bytes())
            os.utime(path)  # (used: the last to go when the directory is trimmed)
            if raw.get("format") != FORMAT or raw.get("identity") != _identity(ref):
                return None
            return {str(name): (int(off), int(size)) for name, off, size in raw["members"]}
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("member index of shard %s unreadable (%s): built again", ref.key, exc)
            return None

    def _save(self, ident: str, ref: ObjectRef, members: dict[str, tuple[int, int]]) -> None:
        assert self.root is not None
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            body = json.dumps({"format": FORMAT, "identity": _identity(ref), "key": ref.key,
                               "members": [[n, o, s] for n, (o, s) in members.items()]},
                              ensure_ascii=False).encode("utf-8", "surrogateescape")
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".json")  # (mode 0600)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(body)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self._path(ident))
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            self._trim()
        except OSError as exc:
            log.warning("member index of shard %s not kept on disk (%s): built again at the next mount",
                        ref.key, exc)


    def _trim(self) -> None:
        assert self.root is not None
        files = list(self.root.glob("*.json"))
        if len(files) <= self.max_files:
            return
        aged = sorted(files, key=lambda p: p.stat().st_mtime if p.exists() else 0.0)
        for old in aged[: len(files) - self.max_files]:
            old.unlink(missing_ok=True)


def _identity(ref: ObjectRef) -> str:
    return f"{ref.identity()}\0{ref.size}"


def _digest(ref: ObjectRef) -> str:
    return hashlib.blake2b(_identity(ref).encode("utf-8", "surrogateescape"), digest_size=20).hexdigest()
