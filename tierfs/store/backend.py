"""One backend per provider, behind one small interface: the bottom of the read path.

A backend moves bytes and listings by key and knows its provider's quirks,
error codes and options; nothing above it asks which provider it is. Each
method is ONE attempt: :class:`tierfs.store.objects.ObjectStore` owns the
retry budget, the deadline and the counters. A method that runs an fsspec
coroutine does so through :meth:`Backend.run`, which bounds it by the time
left to the call in progress, so a store that stalls instead of failing
turns into an error within the deadline.

This base class is also the generic backend, for any URL fsspec knows: it
reads and writes through fsspec's sync API and cannot make its reads
conditional, so it checks what it can (the length).
"""

from __future__ import annotations

import datetime as dt
import os
import posixpath
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from tierfs.config import Settings
from tierfs.errors import Archived, BadKey, StoreError, UserError
from tierfs.refs import ObjectRef

if TYPE_CHECKING:
    import fsspec


@dataclass(frozen=True, slots=True)
class Entry:
    """One name in a listing: a file (with its ObjectRef) or a directory."""

    name: str
    is_dir: bool
    size: int = 0
    mtime_ns: int = 0
    ref: ObjectRef | None = None
    storage_class: str = ""  # where the store reports one (S3, GCS, Azure)


@dataclass
class Tree:
    """Folders' entries below a folder, from one flat listing (``Backend.list_tree``)."""

    folders: dict[str, list[Entry]]  # folder (a lake path) -> its entries, as list_dir gives them
    whole: bool  # the listed folder itself is in ``folders`` (and with it every folder below it)


class Changed(StoreError):
    """The object is no longer the version the read named (a precondition failed): never other bytes."""


#: Storage classes whose objects must be restored before they can be read.
ARCHIVE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE", "Archive"})


class Deadline(threading.local):
    """When the store call running in this thread must end (monotonic seconds; inf: none)."""

    until: float = float("inf")

    def left(self) -> float:
        return self.until - time.monotonic()


class Backend:
    """The generic fsspec backend; providers subclass it and override what they do better."""

    provider: ClassVar[str] = "fsspec"
    #: Whether key lengths count characters (Azure) rather than bytes of UTF-8.
    counts_characters: ClassVar[bool] = False
    #: Whether uploads go up as resumable multipart uploads (S3).
    multipart: ClassVar[bool] = False

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, url: str, settings: Settings | None = None):
        self.fs = fs
        self.root = root.rstrip("/")
        self.url = url
        self.settings = settings or Settings(lake_url=url)
        self.attempt_timeout = self.settings.store_timeout
        self.deadline = Deadline()
        self.version_aware = False
        #: What this server was found to do differently, learnt while running (e.g. SeaweedFS' self-copy).
        self.quirks: set[str] = set()
        #: Runs one request with the store's retry budget and deadline; ObjectStore sets its own.
        self.call: Callable[[Callable[[], Any], str], Any] = lambda fn, what: fn()

    # -- keys --------------------------------------------------------------
    def full(self, rel: str) -> str:
        check_key_shape(rel)
        if not rel:
            return self.root or self.fs.root_marker
        return f"{self.root}/{rel}" if self.root else rel

    @property
    def name_limits(self) -> tuple[int, int]:
        """(longest path component, longest key with the lake's root), counted as ``key_length`` counts.

        Another fsspec store: its limits are not known here, and too strict a
        guess would hide objects it holds; its own refusal (at the upload) is
        the check.
        """
        return 1 << 16, 1 << 20

    def key_length(self, rel: str) -> int:
        """The length of ``rel``'s key as the store counts it, root prefix included."""
        return len(os.fsencode(self.full(rel)))  # (fsencode: the bytes the name came in as, UTF-8 or not)

    def run(self, coro_fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run an fsspec coroutine on its loop, cancelled when this call's deadline passes."""
        timeout = max(0.05, min(self.attempt_timeout, self.deadline.left()))
        from fsspec.asyn import sync

        return sync(self.fs.loop, coro_fn, *args, timeout=timeout, **kwargs)

    def run_for(self, seconds: float, coro_fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Like :meth:`run`, for a request whose time grows with its bytes: ``seconds`` instead of one attempt's."""
        from fsspec.asyn import sync

        return sync(self.fs.loop, coro_fn, *args, timeout=max(0.05, min(seconds, self.deadline.left())), **kwargs)

    def seconds_for(self, nbytes: int) -> float:
        """How long one request that moves ``nbytes`` may take: one attempt's time plus 1 s per MiB."""
        return self.attempt_timeout + nbytes / (1 << 20)

    # -- metadata -----------------------------------------------------------
    def check(self) -> dict[str, Any]:
        info: dict[str, Any] = self.fs.info(self.full(""))
        return info

    def list_dir(self, rel: str) -> list[Entry]:
        """Entries directly below ``rel`` (a '/'-separated path, '' = root)."""
        check_key_shape(rel)
        rel = rel.strip("/")
        full = self.full(rel)
        infos: list[dict[str, Any]] = self.fs.ls(full, detail=True)
        prefix = full.rstrip("/")
        out = []
        for info in infos:
            name = str(info["name"]).rstrip("/")
            if name == prefix or not name:
                continue  # some stores list the directory itself
            base = posixpath.basename(name)
            out.append(self.entry(base, join_key(rel, base), info))
        return out

    def stat(self, rel: str) -> Entry:
        return self.entry(posixpath.basename(rel), rel, self.fs.info(self.full(rel)))

    def lists_trees(self) -> bool:
        """Whether :meth:`list_tree` can answer here (else it is None, and costs no request)."""
        return False

    def list_tree(self, rel: str, limit: int) -> Tree | None:
        """Every folder below ``rel`` from one listing without a delimiter, if it holds at most ``limit``
        objects (rclone's --fast-list); None if it holds more, or this store's flat listings cannot say
        what its delimited ones do. Here: None."""
        return None

    def stats_bring_bytes(self) -> bool:
        """Whether :meth:`stat_and_bytes` can bring a file's bytes here (else it is a stat)."""
        return False

    def stat_and_bytes(self, rel: str, limit: int) -> tuple[Entry, bytes | None]:
        """:meth:`stat`, and the object's bytes if the same request can bring them: a file of at most
        ``limit`` bytes, all of it, of exactly the identity the Entry names; else None. Here: a stat only."""
        return self.stat(rel), None

    def entry(self, name: str, rel: str, info: dict[str, Any]) -> Entry:
        """An fsspec info dict as an Entry (the ObjectRef names the bytes: etag or version)."""
        mtime_ns = mtime_ns_of(info)
        if info.get("type") == "directory":
            return Entry(name, True, 0, mtime_ns)
        size = int(info.get("size") or 0)
        etag = str(info.get("ETag") or info.get("etag") or info.get("md5Hash") or "").strip('"')
        version = str(info.get("VersionId") or info.get("generation") or info.get("version_id") or "")
        if version == "None":
            version = ""
        if not etag:
            # Stores without etags (local, memory): inode + mtime + size names
            # the bytes well enough; an in-place rewrite changes mtime.
            etag = f"{info.get('ino', '')}-{mtime_ns:x}-{size:x}"
        storage_class = str(info.get("StorageClass") or info.get("storageClass") or info.get("access_tier") or "")
        return Entry(name, False, size, mtime_ns, ObjectRef(rel, size, etag, version), storage_class)

    # -- data ---------------------------------------------------------------
    def read_range(self, ref: ObjectRef, start: int, end: int) -> bytes:
        """Bytes [start, end) of exactly the object ``ref`` names, or Changed."""
        data: bytes = self.fs.cat_file(self.full(ref.key), start=start, end=end)
        return data

    def read_all(self, key: str) -> bytes:
        data: bytes = self.fs.cat_file(self.full(key))
        return data

    def open_read(self, ref: ObjectRef) -> Any:
        return self.fs.open(self.full(ref.key), "rb")

    def open_write(self, key: str) -> Any:
        parent = posixpath.dirname(self.full(key))
        if parent:
            self.fs.makedirs(parent, exist_ok=True)
        return self.fs.open(self.full(key), "wb")

    # -- writes: each returns the new object's Entry ----------------------------
    def put_file(self, local: Path, key: str) -> Entry:
        """Upload a local file in one piece (atomic: the object appears whole or not at all)."""
        full = self.full(key)
        parent = posixpath.dirname(full)
        if parent:
            self.fs.makedirs(parent, exist_ok=True)
        self.fs.put_file(str(local), full)
        # The generic fsspec API hands back no identity; the providers below take it from the PUT's answer.
        return self.stat(key)

    def put_bytes(self, key: str, data: bytes) -> Entry:
        full = self.full(key)
        parent = posixpath.dirname(full)
        if parent:
            self.fs.makedirs(parent, exist_ok=True)
        self.fs.pipe_file(full, data)
        return self.stat(key)

    def delete(self, key: str) -> None:
        self.fs.rm_file(self.full(key))

    def delete_if(self, key: str, ref: ObjectRef) -> bool:
        """Delete ``key`` only if it is still the object ``ref`` names; False if it changed or is gone.

        For a deletion decided on what a listing showed (a lifecycle
        expiration): an object rewritten since is another object, and stays.
        Each provider makes the check as close to the delete as it can (see
        theirs). Here, for any fsspec store, a stat right before the delete:
        a rewrite that lands between the two (one round trip) is deleted.
        """
        require_identity(ref)
        try:
            now = self.stat(key)
        except FileNotFoundError:
            return False
        if not same_object(now.ref, ref):
            return False
        self.delete(key)
        return True

    def delete_tree(self, rel: str) -> None:
        self.fs.rm(self.full(rel), recursive=True)

    def move(self, src: str, dst: str) -> None:
        parent = posixpath.dirname(self.full(dst))
        if parent:
            self.fs.makedirs(parent, exist_ok=True)
        self.fs.mv(self.full(src), self.full(dst))

    def copy(self, src: str, dst: str) -> None:
        """Copy one object inside the lake (server side where the store can)."""
        self.fs.copy(self.full(src), self.full(dst))

    def copy_ref(self, ref: ObjectRef, dst: str) -> Entry:
        """Copy exactly the object ``ref`` names to the new key ``dst``: the copy's Entry, or Changed.

        For a snapshot's copies, which must hold the bytes the manifest names,
        never a newer version's or a mix. Each provider copies server side and
        makes the copy conditional on ``ref``'s ETag or version (see theirs).
        Here, for any fsspec store, the bytes go through this process and the
        source is checked after: if it is no longer ``ref`` (or the length
        differs), the copy is deleted and Changed raised. A source gone is
        FileNotFoundError.
        """
        size = 0
        with self.open_read(ref) as src, self.open_write(dst) as out:
            while chunk := src.read(8 << 20):
                out.write(chunk)
                size += len(chunk)
        try:
            now = self.stat(ref.key)
        except FileNotFoundError:
            now = None
        if size != ref.size or now is None or not same_object(now.ref, ref):
            self.delete(dst)
            raise Changed(f"{ref.key} changed while it was copied")
        return self.stat(dst)

    # Directories and times exist only where the store has them (a local lake).
    def make_dir(self, rel: str) -> bool:
        return False

    def remove_dir(self, rel: str) -> None:
        """Remove an empty directory: a local lake's own, or the ``rel/`` marker an object store may keep.

        Object stores (S3, GCS, Azure) override this to delete the marker some
        servers and tools leave for a directory (SeaweedFS keeps one for every
        emptied directory; consoles make them), which would otherwise bring the
        directory back at the next listing. Another fsspec store: nothing to do.
        """
        return None

    def rename_dir(self, src: str, dst: str) -> bool:
        return False

    def set_mtime(self, rel: str, mtime_ns: int) -> bool:
        return False

    # -- multipart (S3) ---------------------------------------------------------
    def multipart_upload(self, local: Path, key: str, state: Any, save: Callable[[], None],
                         concurrency: int, progress: Callable[[int], None] | None) -> Entry:
        raise NotImplementedError(f"{self.provider} has no multipart uploads")

    def abort_multipart(self, key: str, upload_id: str) -> None:
        return None

    # -- versions and storage classes -------------------------------------------
    def wants_versions(self, setting: str) -> bool:
        """Whether to read pinned object versions: on, off, or (auto) if the bucket keeps them."""
        return False

    def archived(self, ref: ObjectRef, exc: BaseException | None) -> Archived | None:
        """The Archived error ``exc`` means (an archive class, not restored), or None."""
        return None

    def objects_with_classes(self, walk: Iterator[Entry]) -> Iterator[Entry]:
        """Every object of the lake (``walk``: the lake's files) with its storage class ('' where unknown)."""
        yield from walk

    def set_class(self, key: str, storage_class: str, pinned: frozenset[tuple[str, str]],
                  etag: str, listed_version: str) -> bool:
        raise UserError(f"{self.url} has no storage classes to change (a {self.provider} store)")

    def restore(self, key: str, days: int) -> str:
        raise UserError(f"{self.url} has no archive classes (a {self.provider} store)")

    def delete_version(self, key: str, version: str) -> None:
        raise UserError(f"{self.url} keeps no object versions to delete")

    def noncurrent_versions(self) -> Iterator[dict[str, Any]]:
        """Replaced or deleted versions still kept (and billed): key, version, size, class, since."""
        return iter(())

    def install_rules(self, document: dict[str, Any]) -> None:
        raise UserError(f"tierfs installs native lifecycle rules on S3 and GCS buckets; for {self.url}, "
                        "print them with `tierfs lifecycle export` and install them with the provider's CLI")

    def credentials_hint(self) -> str:
        return "check the store options in the config's [store] table"


def expected_etag(ref: ObjectRef) -> str:
    """The ETag a read of ``ref`` must find ('' when there is nothing to check it against).

    A ref with a content hash names a content-addressed copy (a snapshot's):
    its key is its hash, so it never changes, and the ETag it carries is the
    live object's it was frozen from, not its own.
    """
    if ref.content_hash or ref.etag.startswith("staged:"):
        return ""
    return ref.etag


def same_object(now: ObjectRef | None, ref: ObjectRef) -> bool:
    """Whether ``now`` (a fresh stat's ref) is the object ``ref`` named: its version, else its ETag."""
    if now is None:
        return False
    if ref.version and now.version:
        return now.version == ref.version and (not ref.etag or not now.etag or now.etag == ref.etag)
    return bool(ref.etag) and now.etag == ref.etag


def require_identity(ref: ObjectRef) -> None:
    if not (ref.etag or ref.version):
        raise ValueError(f"delete_if({ref.key}): the ref names no ETag or version to compare")


def mtime_ns_of(info: dict[str, Any]) -> int:
    for key in ("LastModified", "mtime", "last_modified", "updated", "created"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, dt.datetime):
            return int(value.timestamp() * 1e9)
        if isinstance(value, (int, float)):
            return int(value * 1e9)
        if isinstance(value, str):
            try:
                return int(dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1e9)
            except ValueError:
                continue
    return 0


def join_key(parent: str, name: str) -> str:
    """``parent/name`` as a key: no doubled or leading slash, whichever side is empty."""
    parent, name = parent.strip("/"), name.strip("/")
    return f"{parent}/{name}" if parent and name else parent or name


class BucketKeys:
    """Object stores whose limit is on the whole key inside the bucket (1024), not on each component."""

    counts_characters: ClassVar[bool] = False

    @property
    def name_limits(self) -> tuple[int, int]:
        return 1024, 1024  # S3, GCS: 1024 bytes of UTF-8; Azure: 1024 characters

    def key_length(self, rel: str) -> int:
        full: str = self.full(rel)  # type: ignore[attr-defined]
        key = full.split("/", 1)[1] if "/" in full else ""  # the bucket is not part of the key
        return len(key) if self.counts_characters else len(os.fsencode(key))


def check_key_shape(rel: str) -> None:
    """Refuse (BadKey) what is no key relative to the lake's root: the one key check at the store boundary.

    A key is '/'-separated names, none of them empty, '.' or '..', no NUL, no
    leading '/' (one trailing '/' names a directory). On a local lake anything
    else would reach files outside the lake's root; on an object store it would
    name objects that no path of the mount can.
    """
    if not rel:
        return
    if "\0" in rel or rel.startswith("/"):
        raise BadKey(f"{rel!r} is not a key of the lake: no leading '/' nor NUL, please")
    try:
        rel.encode("utf-8", "surrogateescape")  # (names from the kernel always are: bytes decoded this way)
    except UnicodeEncodeError:
        raise BadKey(f"{rel!r} is not a key of the lake: it holds a lone surrogate, no bytes of a name") from None
    for name in rel.removesuffix("/").split("/"):
        if name in ("", ".", ".."):
            raise BadKey(f"{rel!r} is not a key of the lake: its names may not be empty, '.' or '..'")


def is_listable_name(name: str) -> bool:
    """Whether a name a listing gave can be an entry of the mount (a key like 'a/../b' gives '..')."""
    return name not in ("", ".", "..") and "/" not in name and "\0" not in name
