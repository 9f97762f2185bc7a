"""The object store: the lake's source of truth, one provider backend behind one facade.

The rest of tierfs talks to :class:`ObjectStore`: list a prefix, stat a key,
read a byte range of an ObjectRef, put an object and learn its identity. The
provider's quirks live in its backend (``local.py``, ``memory.py``, ``s3.py``,
``gcs.py``, ``azure.py``, or the generic fsspec one in ``backend.py``). Here
is what every call shares: one retry budget (jittered backoff, the clients'
own retries off) inside a total deadline per call — metadata and data
separately — and the counters. Every call is blocking and is made from a
worker thread.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from tierfs.config import Settings
from tierfs.errors import Archived, NameTooLong, NotFound, StoreError, UserError
from tierfs.metrics import BACKEND_COUNTERS, BACKEND_SECONDS, Counters, observe
from tierfs.refs import ObjectRef
from tierfs.store.backend import (
    ARCHIVE_CLASSES,
    Backend,
    Changed,
    Entry,
    Tree,
    is_listable_name,
    join_key,
    mtime_ns_of,
)
from tierfs.store.local import LOCAL_CLASS_XATTR
from tierfs.store.retry import is_credentials_error, is_temp_failure, retry_call

if TYPE_CHECKING:
    import fsspec

__all__ = ["ARCHIVE_CLASSES", "LOCAL_CLASS_XATTR", "Changed", "Entry", "ObjectStore", "error_code", "mtime_ns_of"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Azure's rule for container names.
_AZURE_CONTAINER = re.compile(r"(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")


class ObjectStore:
    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, url: str, retries: int = 5,
                 settings: Settings | None = None):
        settings = settings or Settings(lake_url=url)
        self.settings = settings
        self.url = url
        self.retries = retries
        self.read_deadline = settings.store_read_deadline
        self.metadata_deadline = settings.store_metadata_deadline
        self.stats = Counters(BACKEND_COUNTERS)
        self.backend = _backend_class(url)(fs, root, url, settings)
        self.backend.call = self.call
        self.root = self.backend.root

    # -- construction ---------------------------------------------------
    @classmethod
    def open(cls, settings: Settings) -> ObjectStore:
        url = settings.lake_url
        if not url:
            raise UserError("no lake URL given: pass LAKE_URL or set [lake] url in the config file")
        _check_url_shape(url)
        options = storage_options(settings)
        if url.startswith(("az://", "abfs://", "abfss://")):
            container = url.split("://", 1)[1].split("/", 1)[0].split("@", 1)[0]
            if not _AZURE_CONTAINER.fullmatch(container):
                raise UserError(f"{url}: {container!r} is not an Azure container name (3 to 63 lowercase "
                                "letters, digits and single hyphens, starting and ending with a letter or digit)")
        if url.startswith(("gs://", "gcs://")):
            # gcsfs probes for hierarchical namespaces unless told not to; emulators do not answer it.
            os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        backend_class = _backend_class(url)
        try:
            if getattr(backend_class, "lazy_fs", False):  # the backend makes its fsspec filesystem when needed
                fs, root = None, backend_class.root_of(url)  # type: ignore[attr-defined]
            else:
                from fsspec.core import url_to_fs

                fs, root = url_to_fs(url, **options)
        except ImportError as exc:
            raise UserError(f"cannot open {url}: {exc} (pip install it into tierfs' environment)") from None
        except ValueError as exc:
            if "credential" in str(exc).lower():  # adlfs: no account name, key or connection string
                raise UserError(f"no usable credentials for {url}: {_credentials_hint(url)}") from None
            raise UserError(f"cannot open {url}: {exc}; use file:///path, memory://, s3://bucket/prefix, gs://… or az://…") from None
        except Exception as exc:  # client constructors raise their own trees
            raise UserError(f"cannot open {url}: {_one_line(exc)}") from None
        try:
            store = cls(fs, root, url, retries=settings.store_retries, settings=settings)
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"cannot open {url}: {_one_line(exc)}") from None
        if settings.store_versions != "off":
            defer = getattr(store.backend, "defer_versions", None)
            if defer is not None:
                defer(settings.store_versions)  # asked when first needed, or once the mount is ready
            else:
                try:
                    store.backend.version_aware = store.backend.wants_versions(settings.store_versions)
                except Exception:  # no such bucket, no permission: check() will say so
                    store.backend.version_aware = False
        return store

    def ready(self) -> None:
        """The mount serves now: start what the backend deferred past start-up (S3's versioning query)."""
        ask = getattr(self.backend, "ask_versions_now", None)
        if ask is not None:
            ask()

    def check(self) -> None:
        """Make sure the lake's root exists and can be listed; one clear line if not."""
        try:
            info = retry_call(self.backend.check, attempts=min(self.retries, 2), what=f"stat {self.url}",
                              deadline=self.metadata_deadline)
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

    # -- what the backend is ------------------------------------------------
    @property
    def provider(self) -> str:
        return self.backend.provider

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return self.backend.fs

    @property
    def version_aware(self) -> bool:
        return self.backend.version_aware

    @property
    def quirks(self) -> set[str]:
        return self.backend.quirks

    @property
    def is_local(self) -> bool:
        return self.backend.provider == "local"

    def full(self, rel: str) -> str:
        return self.backend.full(rel)

    # -- reads ----------------------------------------------------------
    def list_dir(self, rel: str) -> list[Entry]:
        """Entries directly below ``rel`` (a '/'-separated path, '' = root)."""
        out: list[Entry] = self.call(lambda: self.backend.list_dir(rel), f"list {rel or '/'}")
        bad = [e.name for e in out if not is_listable_name(e.name)]
        if bad:
            # Keys like 'a/../b' or 'a//b' that another tool wrote: no path of the mount can name them.
            log.warning("%s: left out of the listing of %s/: %s (keys with empty, '.' or '..' names)",
                        self.url, rel, ", ".join(repr(b) for b in bad[:5]))
            out = [e for e in out if is_listable_name(e.name)]
        return out

    def stat(self, rel: str) -> Entry:
        out: Entry = self.call(lambda: self.backend.stat(rel), f"stat {rel}")
        return out

    def lists_trees(self) -> bool:
        return self.backend.lists_trees()

    def stats_bring_bytes(self) -> bool:
        return self.backend.stats_bring_bytes()

    def list_tree(self, rel: str, limit: int) -> Tree | None:
        """Every folder below ``rel`` from one flat listing of at most ``limit`` objects (None: more, or a
        name no path can hold: its folder is listed the usual way, which says so)."""
        out: Tree | None = self.call(lambda: self.backend.list_tree(rel, limit), f"list {rel or '/'} (flat)")
        if out is None or any(not is_listable_name(e.name) for es in out.folders.values() for e in es):
            return None
        return out

    def stat_and_bytes(self, rel: str, limit: int) -> tuple[Entry, bytes | None]:
        """:meth:`stat`, with a small file's bytes where the store brings them in the same request."""
        out: tuple[Entry, bytes | None] = self.call(lambda: self.backend.stat_and_bytes(rel, limit), f"stat {rel}")
        if out[1] is not None:
            self.stats.add("bytes", len(out[1]))
        return out

    def read_range(self, ref: ObjectRef, start: int, end: int, until: float | None = None) -> bytes:
        """Bytes [start, end) of exactly the object ``ref`` names; Changed (EIO) if it is another now.

        Within the read deadline, or by ``until`` (monotonic seconds) if that comes first: the retry
        of a read that failed has what is left of that read's deadline.
        """
        limit = self.read_deadline if until is None else min(self.read_deadline, until - time.monotonic())
        try:
            data: bytes = self.call(lambda: self.backend.read_range(ref, start, end),
                                    f"read {ref.key} [{start}:{end}]", deadline=limit)
        except Archived:
            self.stats.add("errors")
            raise
        except Exception as exc:
            archived = self.backend.archived(ref, exc)
            if archived is not None:
                self.stats.add("errors")
                log.warning("%s", archived)
                raise archived from None
            raise
        self.stats.add("bytes", len(data))
        if len(data) != end - start:
            # Shorter than the ref says: another version, whatever the store claimed.
            self.stats.add("errors")
            raise Changed(f"{ref.key} changed upstream: wanted {end - start} bytes at {start}, got {len(data)}")
        return data

    def read_all(self, key: str) -> bytes:
        """A whole object by key (small objects: manifests and the like)."""
        data: bytes = self.call(lambda: self.backend.read_all(key), f"read {key}", deadline=self.read_deadline)
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
                entries = self.list_dir(join_key(rel, sub))
            except NotFound:
                continue
            for e in sorted(entries, key=lambda e: e.name, reverse=True):
                if e.is_dir:
                    stack.append(join_key(sub, e.name))
                else:
                    yield Entry(join_key(sub, e.name), False, e.size, e.mtime_ns, e.ref, e.storage_class)

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except NotFound:
            return False
        return True

    def open_read(self, ref: ObjectRef) -> Any:
        self.stats.add("requests")
        return self.backend.open_read(ref)

    # -- writes -----------------------------------------------------------
    def put_bytes(self, key: str, data: bytes) -> Entry:
        """Put a small object; its Entry (identity) as the store answered the PUT."""
        entry: Entry = self.call(lambda: self.backend.put_bytes(key, data), f"write {key}",
                                 deadline=self.read_deadline)
        self.stats.add("bytes_written", len(data))
        return entry

    def open_write(self, key: str) -> Any:
        self.stats.add("requests")
        return self.backend.open_write(key)

    def delete(self, key: str) -> None:
        try:
            self.call(lambda: self.backend.delete(key), f"delete {key}")
        except NotFound:
            pass

    def delete_if(self, key: str, ref: ObjectRef) -> bool:
        """Delete ``key`` only if it is still the object ``ref`` names (its ETag, or version); True if deleted.

        False when it was rewritten since ``ref`` was taken, or is gone: what
        a deletion decided from a listing must not take (see Backend.delete_if
        for how close each store gets the check to the delete).
        """
        try:
            out: bool = self.call(lambda: self.backend.delete_if(key, ref), f"delete {key} if unchanged")
        except NotFound:
            return False
        return out

    def delete_tree(self, rel: str) -> None:
        """Remove a prefix and everything under it (scratch areas)."""
        try:
            self.call(lambda: self.backend.delete_tree(rel), f"delete {rel}", deadline=self.read_deadline)
        except NotFound:
            pass

    def move(self, src: str, dst: str) -> None:
        self.call(lambda: self.backend.move(src, dst), f"move {src} to {dst}", deadline=self.read_deadline)

    def copy(self, src: str, dst: str) -> None:
        """Copy one object inside the lake (server side where the store can)."""
        self.call(lambda: self.backend.copy(src, dst), f"copy {src} to {dst}", deadline=self.read_deadline)

    def copy_ref(self, ref: ObjectRef, dst: str) -> Entry:
        """Copy exactly the bytes ``ref`` names to the new key ``dst`` (server side where the store can).

        Changed if the source is another object now (nothing is left at
        ``dst`` then), NotFound if it is gone. The deadline grows with the
        object's size, as an upload's does.
        """
        entry: Entry = self.call(lambda: self.backend.copy_ref(ref, dst), f"copy {ref.key} to {dst}",
                                 deadline=self.read_deadline + ref.size / (1 << 20))
        return entry

    def make_dir(self, rel: str) -> bool:
        """Create an empty directory where the store has them (a local lake); False where it has none."""
        out: bool = self.call(lambda: self.backend.make_dir(rel), f"mkdir {rel}")
        return out

    def remove_dir(self, rel: str) -> None:
        """Remove an empty directory: a local lake's, or the marker object an object store may keep for it."""
        self.call(lambda: self.backend.remove_dir(rel), f"rmdir {rel}")

    def rename_dir(self, src: str, dst: str) -> bool:
        """Rename a whole directory in one atomic step where the store can (a local lake)."""
        out: bool = self.call(lambda: self.backend.rename_dir(src, dst), f"rename {src} to {dst}")
        return out

    def set_mtime(self, rel: str, mtime_ns: int) -> bool:
        """Set an object's modification time where the store keeps one we may set (a local lake)."""
        out: bool = self.call(lambda: self.backend.set_mtime(rel, mtime_ns), f"utime {rel}")
        return out

    # -- names the store accepts -------------------------------------------
    # A name past the backend's limits is refused where it is made
    # (ENAMETOOLONG at create, mkdir, rename): the store would refuse it only
    # at the upload, after the bytes were written, and again at every retry.

    def key_length(self, rel: str) -> int:
        """The length of ``rel``'s key as its store counts it (see Backend.key_length)."""
        return self.backend.key_length(rel)

    @property
    def key_max(self) -> int:
        """The longest key the store takes, root prefix included (see ``key_length``)."""
        return self.backend.name_limits[1]

    @property
    def name_max(self) -> int:
        """The longest single name here: the store's limit per component, or what the root prefix leaves of a key."""
        component, key_max = self.backend.name_limits
        return min(component, key_max - (self.key_length("x") - 1))

    def check_key(self, rel: str) -> None:
        """Raise NameTooLong unless the store can hold ``rel``: every component and the whole key within limits."""
        component, key_max = self.backend.name_limits
        length = self.key_length(rel)
        if length > key_max:
            unit = "characters" if self.backend.counts_characters else "bytes"
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
                entries = self.list_dir(join_key(old, sub))
            except NotFound:
                continue  # (a directory only this mount knows of yet)
            for e in entries:
                rel = join_key(sub, e.name)
                self.check_key(f"{new}/{rel}")  # directories too: on a local lake they are paths
                if e.is_dir:
                    stack.append(rel)

    # -- the retry budget -------------------------------------------------
    def call(self, fn: Callable[[], T], what: str, deadline: float | None = None, attempts: int | None = None) -> T:
        """``fn`` (one request) with retries on temporary failures, all of it within ``deadline`` seconds.

        Calls get the metadata deadline unless told otherwise. The deadline is
        also handed to the backend, which bounds each attempt by what is left
        of it, so a store that stalls gives up in time. A call inside another
        (a multipart upload's parts) never outlives the outer one.
        """
        self.stats.add("requests")
        limit = self.metadata_deadline if deadline is None else deadline
        t0 = time.perf_counter()
        bound = self.backend.deadline
        outer = bound.until
        bound.until = min(outer, time.monotonic() + limit)
        try:
            return retry_call(fn, attempts=self.retries if attempts is None else attempts, what=what,
                              on_retry=self._on_retry, deadline=bound.until - time.monotonic())
        except FileNotFoundError:
            raise NotFound(what) from None
        except Changed:
            self.stats.add("errors")
            raise
        except Exception as exc:
            if is_temp_failure(exc):
                self.stats.add("errors")
                raise StoreError(f"{what}: {_one_line(exc)}") from exc
            raise
        finally:
            bound.until = outer
            observe(BACKEND_SECONDS, what.split(" ", 1)[0], time.perf_counter() - t0)

    def _on_retry(self, exc: BaseException) -> None:
        self.stats.add("retries")
        self.stats.add("requests")


def _check_url_shape(url: str) -> None:
    """One line for the lake URLs users get wrong most: no scheme, or a web endpoint instead of a bucket."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        if url.startswith("/"):
            return  # an absolute local path: a file:// lake
        raise UserError(f"{url!r} is not a lake URL: give a scheme, e.g. s3://BUCKET/PREFIX, gs://BUCKET, "
                        f"az://CONTAINER or file:///ABSOLUTE/PATH")
    if scheme.lower() in ("http", "https"):
        host, _, bucket = rest.partition("/")
        hint = f"s3://{bucket.strip('/') or 'BUCKET'}" if host else "s3://BUCKET"
        raise UserError(f"{url} is a web address, not a lake URL: for an S3-compatible server give the bucket as "
                        f"{hint} and the server as [s3] endpoint_url = \"{scheme}://{host}\" in the config")


def _backend_class(url: str) -> type[Backend]:
    """The backend for a lake URL's scheme: the one place a provider is chosen."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else "file"
    if scheme in ("file", "local"):
        from tierfs.store.local import LocalBackend
        return LocalBackend
    if scheme == "memory":
        from tierfs.store.memory import MemoryBackend
        return MemoryBackend
    if scheme in ("s3", "s3a"):
        from tierfs.store.s3 import S3Backend
        return S3Backend
    if scheme in ("gs", "gcs"):
        from tierfs.store.gcs import GcsBackend
        return GcsBackend
    if scheme in ("az", "abfs", "abfss"):
        from tierfs.store.azure import AzureBackend
        return AzureBackend
    return Backend


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




def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
