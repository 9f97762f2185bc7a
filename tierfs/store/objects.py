"""The object store: the lake's source of truth, reached through fsspec.

Only moves bytes and listings by key: list a prefix, stat a key, read a byte
range of an ObjectRef. Every call is blocking (fsspec's sync API runs its async
implementations on fsspec's own IO thread) and is made from worker threads;
each is retried with backoff on temporary failures and counted.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import posixpath
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from tierfs.config import Settings
from tierfs.errors import Archived, NameTooLong, NotFound, StoreError, UserError
from tierfs.metrics import BACKEND_COUNTERS, BACKEND_SECONDS, Counters
from tierfs.refs import ObjectRef
from tierfs.store.retry import is_credentials_error, is_temp_failure, retry_call

log = logging.getLogger(__name__)


#: Storage classes whose objects must be restored before they can be read.
ARCHIVE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE", "Archive"})
#: Azure's rule for container names.
_AZURE_CONTAINER = re.compile(r"(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")
#: Object stores whose limit is on the whole key (1024 bytes; Azure: characters), not on each component.
_KEY_LIMITED = frozenset({"S3FileSystem", "GCSFileSystem", "AzureBlobFileSystem"})
#: Where a local lake keeps an object's emulated storage class.
LOCAL_CLASS_XATTR = "user.tierfs.class"


@dataclass(frozen=True, slots=True)
class Entry:
    """One name in a listing: a file (with its ObjectRef) or a directory."""

    name: str
    is_dir: bool
    size: int = 0
    mtime_ns: int = 0
    ref: ObjectRef | None = None
    storage_class: str = ""  # where the store reports one (S3, GCS, Azure)


class ObjectStore:
    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, url: str, retries: int = 5):
        self.fs = fs
        self.root = root.rstrip("/")
        self.url = url
        self.retries = retries
        self.stats = Counters(BACKEND_COUNTERS)
        # s3fs reads a pinned version with a keyword, gcsfs with a "#generation" suffix.
        self.version_aware = bool(getattr(fs, "version_aware", False))
        self._generation_suffix = type(fs).__name__ == "GCSFileSystem"
        #: What this server was found to do differently, learnt while running (e.g. SeaweedFS' self-copy).
        self.quirks: set[str] = set()

    # -- construction ---------------------------------------------------
    @classmethod
    def open(cls, settings: Settings) -> ObjectStore:
        url = settings.lake_url
        if not url:
            raise UserError("no lake URL given: pass LAKE_URL or set [lake] url in the config file")
        options = storage_options(settings)
        if url.startswith(("az://", "abfs://", "abfss://")):
            container = url.split("://", 1)[1].split("/", 1)[0].split("@", 1)[0]
            if not _AZURE_CONTAINER.fullmatch(container):
                raise UserError(f"{url}: {container!r} is not an Azure container name (3 to 63 lowercase "
                                "letters, digits and single hyphens, starting and ending with a letter or digit)")
        if url.startswith(("gs://", "gcs://")):
            # gcsfs probes for hierarchical namespaces unless told not to; emulators do not answer it.
            os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        try:
            fs, root = url_to_fs(url, **options)
        except ImportError as exc:
            raise UserError(f"cannot open {url}: {exc} (pip install it into tierfs' environment)") from None
        except ValueError as exc:
            if "credential" in str(exc).lower():  # adlfs: no account name, key or connection string
                raise UserError(f"no usable credentials for {url}: {_credentials_hint(url)}") from None
            raise UserError(f"cannot open {url}: {exc}; use file:///path, memory://, s3://bucket/prefix, gs://… or az://…") from None
        except Exception as exc:  # client constructors raise their own trees
            raise UserError(f"cannot open {url}: {_one_line(exc)}") from None
        if _wants_versions(fs, root, settings.store_versions):
            fs, root = url_to_fs(url, **{**options, "version_aware": True})
        return cls(fs, root, url, retries=settings.store_retries)

    def check(self) -> None:
        """Make sure the lake's root exists and can be listed; one clear line if not."""
        try:
            info = retry_call(lambda: self.fs.info(self.full("")), attempts=min(self.retries, 2), what=f"stat {self.url}")
        except FileNotFoundError:
            raise UserError(f"lake {self.url} does not exist: check the bucket name and prefix") from None
        except PermissionError as exc:
            raise UserError(f"access to {self.url} was refused ({_one_line(exc)}): check the credentials") from None
        except Exception as exc:
            if is_credentials_error(exc):
                raise UserError(f"no usable credentials for {self.url} ({_one_line(exc)}): {_credentials_hint(self.url)}"
                                ) from None
            raise UserError(f"cannot reach {self.url}: {_one_line(exc)}; check the endpoint and network") from None
        if info.get("type") != "directory":
            raise UserError(f"lake {self.url} is a file, not a bucket or prefix")

    # -- reads ----------------------------------------------------------
    def list_dir(self, rel: str) -> list[Entry]:
        """Entries directly below ``rel`` (a '/'-separated path, '' = root)."""
        full = self.full(rel)

        def call() -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = self.fs.ls(full, detail=True)
            return out

        infos = self.call(call, f"list {rel or '/'}")
        entries = []
        prefix = full.rstrip("/")
        for info in infos:
            name = str(info["name"]).rstrip("/")
            if name == prefix or not name:
                continue  # some stores list the directory itself
            entries.append(self._entry(posixpath.basename(name), _join(rel, posixpath.basename(name)), info))
        return entries

    def stat(self, rel: str) -> Entry:
        info = self.call(lambda: self.fs.info(self.full(rel)), f"stat {rel}")
        return self._entry(posixpath.basename(rel), rel, info)

    def read_range(self, ref: ObjectRef, start: int, end: int) -> bytes:
        """Bytes [start, end) of the object ``ref`` names."""
        full, kwargs = self._versioned(ref)

        def call() -> bytes:
            data: bytes = self.fs.cat_file(full, start=start, end=end, **kwargs)
            return data

        self._refuse_archived(ref)
        try:
            data: bytes = self.call(call, f"read {ref.key} [{start}:{end}]")
        except NotFound:
            if not (ref.version and self.version_aware):
                raise
            data = self._read_same_bytes(ref, start, end)
        except Exception as exc:
            code = error_code(exc)
            if code == "InvalidObjectState":  # S3: GLACIER or DEEP_ARCHIVE, not restored
                raise self._archived(ref, "an S3 archive class") from None
            if code == "BlobArchived":  # Azure's Archive tier
                raise self._archived(ref, "Archive tier") from None
            raise
        self.stats.add("bytes", len(data))
        if len(data) != end - start:
            # The object changed or shrank since it was listed: never serve
            # bytes of another version under this ref.
            raise StoreError(
                f"{ref.key} changed upstream: wanted {end - start} bytes at {start}, got {len(data)}"
            )
        return data

    def _read_same_bytes(self, ref: ObjectRef, start: int, end: int) -> bytes:
        """The version ``ref`` pins is gone: read the current version if it holds the same bytes.

        A storage-class transition copies an object onto itself and deletes the
        version it copied from; same size and ETag mean the same bytes.
        """
        now = self.stat(ref.key)
        if now.ref is None or now.ref.size != ref.size or now.ref.etag != ref.etag or not now.ref.version:
            raise NotFound(f"{ref.key} version {ref.version}")
        log.info("%s: version %s is gone; reading version %s, the same bytes", ref.key, ref.version, now.ref.version)
        full, kwargs = self._versioned(now.ref)
        data: bytes = self.call(lambda: self.fs.cat_file(full, start=start, end=end, **kwargs),
                                f"read {ref.key} [{start}:{end}]")
        return data

    def read_all(self, key: str) -> bytes:
        """A whole object by key (small objects: manifests and the like)."""
        data: bytes = self.call(lambda: self.fs.cat_file(self.full(key)), f"read {key}")
        self.stats.add("bytes", len(data))
        return data

    def walk_files(self, rel: str) -> Iterator[Entry]:
        """Every file below ``rel``, depth first, one directory listing in memory at a time.

        ``Entry.name`` is the path relative to ``rel``.
        """
        stack = [""]
        while stack:
            sub = stack.pop()
            try:
                entries = self.list_dir(_join(rel, sub))
            except NotFound:
                continue
            for e in sorted(entries, key=lambda e: e.name, reverse=True):
                if e.is_dir:
                    stack.append(_join(sub, e.name))
                else:
                    yield Entry(_join(sub, e.name), False, e.size, e.mtime_ns, e.ref, e.storage_class)

    # -- writes -----------------------------------------------------------
    def put_bytes(self, key: str, data: bytes) -> None:
        parent = posixpath.dirname(self.full(key))

        def call() -> None:
            if parent:
                self.fs.makedirs(parent, exist_ok=True)
            self.fs.pipe_file(self.full(key), data)

        self.call(call, f"write {key}")
        self.stats.add("bytes_written", len(data))

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except NotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        try:
            self.call(lambda: self.fs.rm_file(self.full(key)), f"delete {key}")
        except NotFound:
            pass

    def delete_tree(self, rel: str) -> None:
        """Remove a prefix and everything under it (scratch areas)."""
        try:
            self.call(lambda: self.fs.rm(self.full(rel), recursive=True), f"delete {rel}")
        except NotFound:
            pass

    def move(self, src: str, dst: str) -> None:
        parent = posixpath.dirname(self.full(dst))

        def call() -> None:
            if parent:
                self.fs.makedirs(parent, exist_ok=True)
            self.fs.mv(self.full(src), self.full(dst))

        self.call(call, f"move {src} to {dst}")

    def copy(self, src: str, dst: str) -> None:
        """Copy one object inside the lake (server side where the store can)."""
        parent = posixpath.dirname(self.full(dst))

        def call() -> None:
            if parent and self.is_local:
                self.fs.makedirs(parent, exist_ok=True)
            self.fs.copy(self.full(src), self.full(dst))

        self.call(call, f"copy {src} to {dst}")

    def make_dir(self, rel: str) -> bool:
        """Create an empty directory where the store has them (a local lake); False where it has none."""
        if not self.is_local:
            return False
        self.call(lambda: os.mkdir(self.full(rel)), f"mkdir {rel}")
        return True

    def remove_dir(self, rel: str) -> None:
        """Remove an empty directory of a local lake (object stores have none to remove)."""
        if self.is_local:
            self.call(lambda: os.rmdir(self.full(rel)), f"rmdir {rel}")

    def rename_dir(self, src: str, dst: str) -> bool:
        """Rename a whole directory in one atomic step where the store can (a local lake)."""
        if not self.is_local:
            return False
        self.call(lambda: os.rename(self.full(src), self.full(dst)), f"rename {src} to {dst}")
        return True

    def set_mtime(self, rel: str, mtime_ns: int) -> bool:
        """Set an object's modification time where the store keeps one we may set (a local lake)."""
        if not self.is_local:
            return False
        self.call(lambda: os.utime(self.full(rel), ns=(mtime_ns, mtime_ns)), f"utime {rel}")
        return True

    def open_read(self, ref: ObjectRef) -> Any:
        full, kwargs = self._versioned(ref)
        self.stats.add("requests")
        return self.fs.open(full, "rb", **kwargs)

    @property
    def is_local(self) -> bool:
        return type(self.fs).__name__ == "LocalFileSystem"

    def local_class(self, key: str) -> str:
        """A local lake's emulated storage class of ``key`` ('' when none is set)."""
        try:
            return os.getxattr(self.full(key), LOCAL_CLASS_XATTR).decode()
        except OSError:
            return ""

    def set_local_class(self, key: str, storage_class: str) -> None:
        os.setxattr(self.full(key), LOCAL_CLASS_XATTR, storage_class.encode())

    def _refuse_archived(self, ref: ObjectRef) -> None:
        """A local lake emulates archive classes: refuse a read as S3 would."""
        if self.is_local:
            cls = self.local_class(ref.key)
            if cls in ARCHIVE_CLASSES:
                raise self._archived(ref, cls)

    def _archived(self, ref: ObjectRef, where: str) -> Archived:
        msg = (f"{ref.key} is archived ({where}): restore it first with `tierfs restore {self.url} {ref.key}` "
               "(hours on S3 Glacier and Azure Archive), then read again")
        log.warning("%s", msg)
        self.stats.add("errors")
        return Archived(msg)

    def _versioned(self, ref: ObjectRef) -> tuple[str, dict[str, Any]]:
        """Path and keywords that read exactly the version ``ref`` pins."""
        full = self.full(ref.key)
        if not (ref.version and self.version_aware):
            return full, {}
        if self._generation_suffix:
            return f"{full}#{ref.version}", {}
        return full, {"version_id": ref.version}

    def open_write(self, key: str) -> Any:
        self.stats.add("requests")
        parent = posixpath.dirname(self.full(key))
        if parent:
            self.fs.makedirs(parent, exist_ok=True)
        return self.fs.open(self.full(key), "wb")

    # -- names the store accepts -------------------------------------------
    # The one place that knows how long a name each store takes. A name past
    # these limits is refused where it is made (ENAMETOOLONG at create, mkdir,
    # rename): the store would refuse it only at the upload, after the bytes
    # were written, and again at every retry.

    @functools.cached_property
    def _name_limits(self) -> tuple[int, int]:
        """(longest path component, longest key with the lake's root), counted as ``key_length`` counts."""
        kind = type(self.fs).__name__
        if kind == "LocalFileSystem":
            root = self.full("")
            try:
                component = os.statvfs(root).f_namemax
            except OSError:
                component = 255
            try:
                path_max = os.pathconf(root, "PC_PATH_MAX")
            except (OSError, ValueError):
                path_max = 4096
            return component, path_max - 1  # PATH_MAX counts the terminating NUL
        if kind in _KEY_LIMITED:
            return 1024, 1024  # S3, GCS: 1024 bytes of UTF-8; Azure: 1024 characters; any split into components
        # memory://: nothing but memory bounds it. Another fsspec store: its
        # limits are not known here, and too strict a guess would hide objects
        # it holds; its own refusal (at the upload) is the check.
        return 1 << 16, 1 << 20

    def key_length(self, rel: str) -> int:
        """The length of ``rel``'s key as its store counts it: bytes (characters on Azure), root prefix included.

        On a local lake that is the whole path; the bucket (container) of an
        object store is not part of its keys.
        """
        full = self.full(rel)
        kind = type(self.fs).__name__
        if kind in _KEY_LIMITED:
            key = full.split("/", 1)[1] if "/" in full else ""
            return len(key) if kind == "AzureBlobFileSystem" else len(os.fsencode(key))
        return len(os.fsencode(full))  # (fsencode: the bytes the name came in as, UTF-8 or not)

    @property
    def key_max(self) -> int:
        """The longest key the store takes, root prefix included (see ``key_length``)."""
        return self._name_limits[1]

    @property
    def name_max(self) -> int:
        """The longest single name here: the store's limit per component, or what the root prefix leaves of a key."""
        component, key_max = self._name_limits
        return min(component, key_max - (self.key_length("x") - 1))

    def check_key(self, rel: str) -> None:
        """Raise NameTooLong unless the store can hold ``rel``: every component and the whole key within limits."""
        component, key_max = self._name_limits
        length = self.key_length(rel)
        if length > key_max:
            unit = "characters" if type(self.fs).__name__ == "AzureBlobFileSystem" else "bytes"
            raise NameTooLong(f"{rel}: a key of {length} {unit} with the lake's root; "
                              f"{self.url} takes at most {key_max}")
        if length > component:  # (a key shorter than the limit has no component longer than it)
            for name in rel.split("/"):
                if len(os.fsencode(name)) > component:
                    raise NameTooLong(f"{rel}: a name of {len(os.fsencode(name))} bytes; "
                                      f"{self.url} takes at most {component} per name")

    def check_move(self, old: str, new: str) -> None:
        """Raise NameTooLong, before anything moves, if a key below ``old`` would be too long below ``new``.

        Lists the whole tree, and only when the new name is the longer one.
        """
        if self.key_length(new) <= self.key_length(old):
            return  # no key below gets longer
        stack = [""]
        while stack:
            sub = stack.pop()
            try:
                entries = self.list_dir(_join(old, sub))
            except NotFound:
                continue  # (a directory only this mount knows of yet)
            for e in entries:
                rel = _join(sub, e.name)
                self.check_key(f"{new}/{rel}")  # directories too: on a local lake they are paths
                if e.is_dir:
                    stack.append(rel)

    # -- helpers --------------------------------------------------------
    def full(self, rel: str) -> str:
        if not rel:
            return self.root or self.fs.root_marker
        return f"{self.root}/{rel}" if self.root else rel

    def call(self, fn: Any, what: str) -> Any:
        self.stats.add("requests")
        t0 = time.perf_counter()
        try:
            return retry_call(fn, attempts=self.retries, what=what, on_retry=self._on_retry)
        except FileNotFoundError:
            raise NotFound(what) from None
        except Exception as exc:
            if is_temp_failure(exc):
                self.stats.add("errors")
                raise StoreError(f"{what}: {_one_line(exc)}") from exc
            raise
        finally:
            BACKEND_SECONDS.labels(what.split(" ", 1)[0]).observe(time.perf_counter() - t0)

    def _on_retry(self, exc: BaseException) -> None:
        self.stats.add("retries")
        self.stats.add("requests")

    def _entry(self, name: str, rel: str, info: dict[str, Any]) -> Entry:
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


def storage_options(settings: Settings) -> dict[str, Any]:
    """fsspec storage options for the lake: generic ones plus the [s3] table."""
    opts: dict[str, Any] = {"skip_instance_cache": True, "use_listings_cache": False}
    protocol = settings.lake_url.split("://", 1)[0] if "://" in settings.lake_url else "file"
    if protocol in ("s3", "s3a"):
        client_kwargs: dict[str, Any] = {}
        if settings.s3_endpoint_url:
            client_kwargs["endpoint_url"] = settings.s3_endpoint_url
        if settings.s3_region:
            client_kwargs["region_name"] = settings.s3_region
        opts["client_kwargs"] = client_kwargs
        # tierfs retries itself (with its own counters); keep botocore's short.
        opts["config_kwargs"] = {
            "connect_timeout": min(settings.store_timeout, 10),
            "read_timeout": settings.store_timeout,
            "retries": {"max_attempts": 1, "mode": "standard"},
        }
        if settings.s3_key:
            opts["key"] = settings.s3_key
        if settings.s3_secret:
            opts["secret"] = settings.s3_secret
        if settings.s3_profile:
            opts["profile"] = settings.s3_profile
        if settings.s3_anon:
            opts["anon"] = True
    opts.update(settings.store_options)
    return opts


def _wants_versions(fs: Any, root: str, setting: str) -> bool:
    """Whether to read object versions: on, off, or (auto) if the S3 bucket keeps them."""
    gcs = type(fs).__name__ == "GCSFileSystem"
    if setting == "off" or not (gcs or hasattr(fs, "is_bucket_versioned")):
        return False
    if setting == "on":
        return True
    bucket = root.split("/", 1)[0]
    try:
        if gcs:
            return bool(fs.info(bucket).get("versioning", {}).get("enabled"))
        return bool(fs.is_bucket_versioned(bucket))
    except Exception:  # no such bucket, no permission: check() will say so
        return False


def error_code(exc: BaseException) -> str:
    """The service's error code behind ``exc`` (S3's Error.Code, Azure's error_code), or ''.

    s3fs turns botocore's ClientError into a builtin OSError raised from it.
    """
    seen: BaseException | None = exc
    for _ in range(8):  # the chain is short; never follow a long (or odd) one far
        if seen is None:
            break
        code = getattr(seen, "error_code", None)
        if code:
            return str(code)
        response = getattr(seen, "response", None)
        if isinstance(response, dict) and response.get("Error", {}).get("Code"):
            return str(response["Error"]["Code"])
        seen = seen.__cause__ or seen.__context__
    return ""


def _credentials_hint(url: str) -> str:
    if url.startswith(("az://", "abfs://", "abfss://")):
        return ("set connection_string, or account_name and account_key, in the config's [store] options, "
                "or AZURE_STORAGE_CONNECTION_STRING")
    if url.startswith(("gs://", "gcs://")):
        return "set token in the config's [store] options, or GOOGLE_APPLICATION_CREDENTIALS"
    return ("set [s3] key and secret in the config, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "or an AWS profile")


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


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


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
