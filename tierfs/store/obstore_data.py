"""The obstore half of the S3, GCS and Azure backends: the GIL-free client on the data path.

obstore (Rust's ``object_store``) releases the GIL in its sync calls and runs
them on one shared multi-threaded runtime, so the worker threads that store
calls run in (under the mount's limiters) really run in parallel, where
fsspec funnels every request through its one asyncio thread. Its own retries
are off (tierfs has one retry budget, ``ObjectStore.call``) and each request
is bounded by the attempt timeout. The client is made on first use and at
the latest by ``check()`` at mount: never before the daemon has forked, as
obstore is not fork-safe.

Each provider says how to make its client from the fsspec filesystem's own
options (``new_client``) and which operations go this way; what obstore or
the provider's emulator cannot do stays on fsspec, with the reason beside it.
"""

from __future__ import annotations

import datetime as dt
import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import obstore

from tierfs.config import Settings
from tierfs.refs import ObjectRef
from tierfs.store.backend import Backend, BucketKeys, Changed, Entry, Tree, check_key_shape, expected_etag, join_key
from tierfs.store.retry import is_temp_failure

if TYPE_CHECKING:
    import fsspec


def client_options(timeout: float, endpoint: str = "") -> Any:
    """HTTP options: one attempt's timeout (connect: at most 10 s), plain HTTP only to an http:// endpoint."""
    return {"timeout": f"{max(1, round(timeout))}s",
            "connect_timeout": f"{max(1, min(10, round(timeout)))}s",
            "allow_http": endpoint.startswith("http://")}


def retries_off(timeout: float) -> Any:
    return {"max_retries": 0, "retry_timeout": dt.timedelta(seconds=timeout)}


def is_precondition(exc: BaseException) -> bool:
    return type(exc).__name__ == "PreconditionError"


def is_invalid_path(exc: BaseException) -> bool:
    """A key obstore cannot name: it refuses control characters (and, in listings, empty segments)."""
    return type(exc).__name__ == "InvalidPathError" or (
        isinstance(exc, ValueError) and str(exc).startswith("Could not parse path"))


@dataclass
class Listing:
    """One level of an obstore listing, relative to the directory listed."""

    dirs: set[str] = field(default_factory=set)
    objects: list[tuple[str, Any]] = field(default_factory=list)  # (name, obstore's ObjectMeta)
    marker: bool = False  # the directory's own ``dir/`` marker was listed


class ObstoreBackend(BucketKeys, Backend):
    """A bucket (or container) store whose data path is obstore; fsspec stays for the rest."""

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, url: str, settings: Settings | None = None):
        super().__init__(fs, root, url, settings)
        self.bucket, _, self.prefix = self.root.partition("/")
        self._obs: Any = None

    def new_client(self) -> Any:
        """The provider's obstore store for ``self.bucket``, with the fsspec filesystem's endpoint and credentials."""
        raise NotImplementedError

    @property
    def obs(self) -> Any:
        """The obstore client, made on first use (it is not fork-safe: never before the daemon starts)."""
        if self._obs is None:
            self._obs = self.new_client()
        return self._obs

    def check(self) -> dict[str, Any]:
        info = super().check()
        # Made now, at mount (after the daemon forked): making it loads the TLS roots and costs
        # 30-60 ms of held GIL, which the first lookup of a cold mount would otherwise wait for.
        _ = self.obs
        return info

    def _path(self, rel: str) -> str:
        """The key inside the bucket."""
        check_key_shape(rel)
        rel = rel.strip("/")
        return f"{self.prefix}/{rel}" if self.prefix and rel else (self.prefix or rel)

    # -- data ---------------------------------------------------------------------
    def _expecting(self, ref: ObjectRef, start: int, end: int) -> Any:
        """GET options for bytes [start, end) of exactly ``ref``: If-Match its ETag, and its version if pinned."""
        options: Any = {"range": (start, end)}
        if expected_etag(ref):
            options["if_match"] = f'"{ref.etag}"'
        if ref.version and self.version_aware:
            options["version"] = ref.version
        return options

    def _get(self, key: str, options: Any, ref: ObjectRef | None = None,
             fallback: Callable[[], bytes] | None = None) -> bytes:
        """One GET of ``key``; a failed If-Match is Changed; a key obstore cannot name goes to ``fallback``."""
        try:
            return bytes(obstore.get(self.obs, self._path(key), options=options).bytes())
        except Exception as exc:
            if is_precondition(exc) and ref is not None:
                raise Changed(f"{ref.key} changed upstream (ETag is no longer {ref.etag})") from None
            if fallback is not None and is_invalid_path(exc):
                return fallback()
            raise

    # -- metadata ---------------------------------------------------------------------
    def list_dir(self, rel: str) -> list[Entry]:
        listing = self._list(rel)
        if listing is None:
            return Backend.list_dir(self, rel)
        entries = self._entries(rel, listing)
        # An emptied directory on a server that keeps its marker (SeaweedFS) exists, empty.
        if not entries and rel and not listing.marker and not self._unlisted_marker(rel, folder_blob=True):
            raise FileNotFoundError(rel)
        return entries

    def stat(self, rel: str) -> Entry:
        path = self._path(rel)
        if not path:
            return Entry("", True)
        try:
            return self._stat_object(rel, obstore.head(self.obs, path))
        except FileNotFoundError:
            pass
        except Exception as exc:
            if not is_invalid_path(exc):
                raise
            return Backend.stat(self, rel)
        return self._folder(rel)

    def stats_bring_bytes(self) -> bool:
        return True

    def stat_and_bytes(self, rel: str, limit: int) -> tuple[Entry, bytes | None]:
        """One GET of the first ``limit`` bytes where a stat would HEAD: the answer holds what a HEAD's
        does (the whole size, ETag, version), and a small file's bytes come with it, so the open and read
        that follow a first lookup cost no request. A file larger than ``limit`` costs those bytes more
        than a HEAD; an empty file (a range of nothing is refused) and an archived one cost a request
        more; a folder what a stat does."""
        path = self._path(rel)
        if not path or limit <= 0:
            return self.stat(rel), None
        try:
            result = obstore.get(self.obs, path, options={"range": (0, limit)})
            data = bytes(result.bytes())
        except FileNotFoundError:
            return self._folder(rel), None
        except Exception as exc:
            if is_temp_failure(exc):
                raise
            # Whatever refuses the bytes but not the metadata (an empty object's range, an archived
            # object, a key obstore cannot name): the stat says what it is.
            return self.stat(rel), None
        entry = self._stat_object(rel, result.meta)
        ref = entry.ref
        etag = str(result.meta.get("e_tag") or "").strip('"')
        whole = ref is not None and len(data) == ref.size and (not ref.etag or ref.etag == etag)
        return entry, data if whole else None

    def lists_trees(self) -> bool:
        return True

    def list_tree(self, rel: str, limit: int) -> Tree | None:
        """One flat listing below ``rel`` (ListObjectsV2 and its kin without a delimiter), its keys
        arranged as folders; None past ``limit`` objects or for a key obstore cannot name.

        A folder holding an empty object is left out (it is listed as it
        always is): in a flat listing obstore names a folder's marker
        (``x/``) and an empty file (``x``) alike, which only a delimited
        listing tells apart. Nothing here relies on the order of the keys
        (SeaweedFS lists a folder's keys folder by folder, not in byte order).
        """
        if not self.lists_trees() or limit <= 0:
            return None
        rel = rel.strip("/")
        path = self._path(rel)
        base = f"{path}/" if path else ""
        folders: dict[str, Listing] = {rel: Listing()}
        unsure: set[str] = set()
        seen = 0
        try:
            for chunk in obstore.list(self.obs, path or None, chunk_size=1000):
                for m in chunk:
                    seen += 1
                    if seen > limit:
                        return None
                    key = m["path"]
                    if key == path or not key.startswith(base):
                        continue  # (the folder's own marker)
                    *dirs, name = key[len(base):].split("/")
                    folder = rel
                    for part in dirs:
                        folders[folder].dirs.add(part)
                        folder = join_key(folder, part)
                        if folder not in folders:
                            folders[folder] = Listing()
                    if not int(m["size"]):
                        unsure.add(folder)
                    folders[folder].objects.append((name, m))
        except Exception as exc:
            if is_invalid_path(exc):
                return None
            raise
        out = {f: self._entries(f, listing) for f, listing in folders.items() if f not in unsure}
        return Tree(out, rel in out)

    def _folder(self, rel: str) -> Entry:
        """What a name with no object is: a folder if anything lies below it; else FileNotFoundError."""
        below = self._anything_below(rel)
        if below is None:
            return Backend.stat(self, rel)
        if below or self._unlisted_marker(rel, folder_blob=False):
            return Entry(posixpath.basename(rel), True)
        raise FileNotFoundError(rel)

    def _anything_below(self, rel: str) -> bool | None:
        """Whether any object (the folder's own marker too) lies below ``rel``: the first page of a
        listing, never the rest of it, however large the folder; None: ask through fsspec."""
        path = self._path(rel)
        try:
            for chunk in obstore.list(self.obs, path, chunk_size=1):
                return bool(chunk)
        except Exception as exc:
            if is_invalid_path(exc):
                return None
            raise
        return False

    def _stat_object(self, rel: str, meta: Any) -> Entry:
        return self.meta_entry(posixpath.basename(rel), rel, meta)

    def _unlisted_marker(self, rel: str, folder_blob: bool) -> bool:
        """Whether a marker that obstore's listings cannot show makes ``rel`` a directory (Azure has such).

        ``folder_blob``: a blob named ``rel`` itself may be that marker (no HEAD has ruled it out).
        """
        return False

    def _list(self, rel: str) -> Listing | None:
        """One level below ``rel`` through obstore; None: list it through fsspec.

        As for a key there obstore cannot parse ('a/../b', 'a//b', control
        characters: another tool's), which fsspec hands on, and
        ObjectStore.list_dir leaves out the names no path can hold.
        """
        path = self._path(rel)
        try:
            out = obstore.list_with_delimiter(self.obs, path or None)
        except Exception as exc:
            if is_invalid_path(exc):
                return None
            raise
        base = f"{path}/" if path else ""
        listing = Listing()
        for p in out["common_prefixes"]:
            name = p[len(base):].rstrip("/")
            if name:
                listing.dirs.add(name)
        for m in out["objects"]:
            if m["path"] == path:
                # The directory's own ``path/`` marker (obstore drops the trailing slash).
                listing.marker = True
                continue
            name = m["path"][len(base):]
            if name and not name.endswith("/"):  # (a directory marker some servers keep)
                listing.objects.append((name, m))
        return listing

    def _entries(self, rel: str, listing: Listing) -> list[Entry]:
        entries = [Entry(name, True) for name in sorted(listing.dirs)]
        entries += [self.meta_entry(name, join_key(rel, name), m) for name, m in listing.objects]
        return entries

    def meta_entry(self, name: str, rel: str, meta: Any) -> Entry:
        """An obstore ObjectMeta (a listing's, a HEAD's) as an Entry; its ETag without quotes."""
        size = int(meta["size"])
        mtime = meta.get("last_modified")
        mtime_ns = int(mtime.timestamp() * 1e9) if isinstance(mtime, dt.datetime) else 0
        etag = str(meta.get("e_tag") or "").strip('"')
        version = str(meta.get("version") or "") if self.version_aware else ""
        return Entry(name, False, size, mtime_ns, ObjectRef(rel, size, etag, version))

    # -- writes ---------------------------------------------------------------------------
    def put_bytes(self, key: str, data: bytes) -> Entry:
        out = obstore.put(self.obs, self._path(key), data, use_multipart=False)
        return self.put_entry(key, len(data), out)

    def put_entry(self, key: str, size: int, out: Any) -> Entry:
        """The new object as the store answered the PUT: its ETag and version are ours, never another writer's."""
        etag = str(out.get("e_tag") or "").strip('"')
        version = str(out.get("version") or "") if self.version_aware else ""
        return Entry(posixpath.basename(key), False, size, time.time_ns(), ObjectRef(key, size, etag, version))
