"""S3 and S3-compatible servers (SeaweedFS, MinIO, moto): obstore on the data path, s3fs for the rest.

Reads, listings, stats and single-request puts go through obstore (the
GIL-free client, its retries off: ``obstore_data``). Every read names the
bytes it expects: ``If-Match`` the ETag, and the version id where the bucket
keeps versions. A put's identity is the PUT's (or CompleteMultipartUpload's)
own answer.

s3fs (botocore) serves what obstore has no call for: resumable multipart
uploads with their state, copies conditional on the source's ETag
(``s3_copy.py``), storage classes, restores, version listings and bucket
lifecycle configuration.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, ClassVar

import obstore

from tierfs.config import Settings
from tierfs.errors import Archived, NotFound, StoreError, UserError
from tierfs.refs import ObjectRef
from tierfs.store.backend import Backend, Entry, join_key, require_identity, same_object
from tierfs.store.local import archived_message
from tierfs.store.obstore_data import ObstoreBackend, client_options, retries_off
from tierfs.store.s3_copy import S3Copies
from tierfs.store.s3_versioning import bucket_versioned, endpoint_and_region

if TYPE_CHECKING:
    import fsspec

log = logging.getLogger(__name__)

#: S3 servers that refuse a self-copy under MetadataDirective=COPY even when the class changes (SeaweedFS).
_SELF_COPY_REFUSED = "self-copy-needs-replace"
#: One versioning query at a time (the mount's thread and a first lookup may both ask).
_VERSIONS_LOCK = threading.Lock()


class S3Backend(S3Copies, ObstoreBackend):
    provider: ClassVar[str] = "s3"
    multipart: ClassVar[bool] = True

    #: ObjectStore.open makes no fsspec filesystem for this backend: s3fs (botocore, aiohttp) costs
    #: 0.3 s of import, and the data path, listings and stats never use it.
    lazy_fs: ClassVar[bool] = True

    def __init__(self, fs: fsspec.AbstractFileSystem | None, root: str, url: str, settings: Settings | None = None):
        self._fs_lock = threading.Lock()
        self._fs: Any = None
        self._versions_setting = ""  # "auto" or "on" while the bucket's versioning is yet to be asked
        self._versions_asked: threading.Thread | None = None
        self._version_aware = False
        super().__init__(fs, root, url, settings)
        from tierfs.store.objects import storage_options

        # Given a filesystem (tests, tools), its own options; else the lake's, as s3fs would get them.
        self.options: dict[str, Any] = dict(fs.storage_options) if fs is not None else storage_options(self.settings)

    @staticmethod
    def root_of(url: str) -> str:
        """``bucket/prefix`` of an s3:// URL, as s3fs strips it."""
        return url.split("://", 1)[1].split("?", 1)[0].strip("/")

    @property
    def fs(self) -> Any:
        """The s3fs filesystem, made (and s3fs imported) on first use: multipart, copies, classes, versions."""
        if self._fs is None:
            with self._fs_lock:
                if self._fs is None:
                    import s3fs

                    fs = s3fs.S3FileSystem(**self.options, version_aware=self._version_aware)
                    fs.retries = 1  # s3fs' own retry loop: one attempt; tierfs retries
                    self._fs = fs
        return self._fs

    @fs.setter
    def fs(self, value: Any) -> None:
        if value is not None:
            value.retries = 1
        self._fs = value

    def new_client(self) -> Any:
        return _obstore_for(self.options, self.bucket, self.attempt_timeout)

    def check(self) -> dict[str, Any]:
        """The lake's root can be listed: one obstore listing where the credentials are explicit.

        Without explicit keys botocore's whole credential chain (profiles, web identity, the
        instance's metadata) decides, as s3fs does it.
        """
        if not _explicit_credentials(self.options):
            return super().check()
        import obstore.exceptions as obx

        try:
            found = obstore.list_with_delimiter(self.obs, f"{self.prefix}/" if self.prefix else None)
        except obx.NotFoundError as exc:
            raise FileNotFoundError(self.root) from exc
        except (obx.PermissionDeniedError, obx.UnauthenticatedError) as exc:
            raise PermissionError(_refusal(str(exc))) from exc
        except obx.GenericError as exc:  # (obstore names few of S3's statuses)
            if "403 Forbidden" in str(exc) or "401 Unauthorized" in str(exc):
                raise PermissionError(_refusal(str(exc))) from exc
            if "404 Not Found" in str(exc):
                raise FileNotFoundError(self.root) from exc
            raise
        if self.prefix and not (found["common_prefixes"] or found["objects"]):
            if self._path_is_object(self.prefix):
                return {"type": "file"}
            raise FileNotFoundError(self.root)
        return {"type": "directory"}

    def _path_is_object(self, key: str) -> bool:
        try:
            obstore.head(self.obs, key)
        except FileNotFoundError:
            return False
        return True

    # -- versions: asked once, off the start-up path --------------------------------
    @property
    def version_aware(self) -> bool:
        if self._versions_setting:
            # Within this call's deadline: a versioning query that stalls leaves the bucket unversioned here.
            self._learn_versions(wait=max(0.05, min(self.settings.store_metadata_deadline, self.deadline.left())))
        return self._version_aware

    @version_aware.setter
    def version_aware(self, value: bool) -> None:
        self._versions_setting = ""
        self._version_aware = value

    def defer_versions(self, setting: str) -> None:
        """Ask whether the bucket keeps versions when first needed (or ``ask_versions_now``), not at open."""
        self._versions_setting = setting
        if setting == "on":
            self.version_aware = True

    def ask_versions_now(self) -> None:
        """Start the versioning query in a thread (a mount does this once it is ready)."""
        if self._versions_setting and self._versions_asked is None:
            self._versions_asked = threading.Thread(target=self._learn_versions, name="tierfs-versions", daemon=True)
            self._versions_asked.start()

    def _learn_versions(self, wait: float = -1) -> None:
        if not _VERSIONS_LOCK.acquire(timeout=wait):
            return  # another thread is still asking
        try:
            setting = self._versions_setting
            if not setting:
                return
            try:
                wanted = self.wants_versions(setting)
            except Exception:  # no such bucket, no permission: check() says so
                wanted = False
            self.version_aware = wanted
        finally:
            _VERSIONS_LOCK.release()

    # -- metadata -------------------------------------------------------------------
    def list_dir(self, rel: str) -> list[Entry]:
        if self.version_aware:
            # obstore's listings carry no version ids, and a versioned lake's refs pin them.
            return Backend.list_dir(self, rel)
        return super().list_dir(rel)

    def lists_trees(self) -> bool:
        return not self.version_aware  # (as list_dir: obstore's listings carry no version ids)

    def _stat_object(self, rel: str, meta: Any) -> Entry:
        if self.version_aware and not meta.get("version"):
            return self.entry(posixpath.basename(rel), rel, self.fs.info(self.full(rel)))
        return super()._stat_object(rel, meta)

    # -- data -------------------------------------------------------------------------
    def read_range(self, ref: ObjectRef, start: int, end: int) -> bytes:
        try:
            return self._get(ref.key, self._expecting(ref, start, end), ref)
        except FileNotFoundError:
            if not (ref.version and self.version_aware):
                raise
            return self._read_same_bytes(ref, start, end)

    def _read_same_bytes(self, ref: ObjectRef, start: int, end: int) -> bytes:
        """The version ``ref`` pins is gone: read the current version if it holds the same bytes.

        A storage-class transition copies an object onto itself and deletes the
        version it copied from; same size and ETag mean the same bytes.
        """
        now = self.stat(ref.key)
        if now.ref is None or now.ref.size != ref.size or now.ref.etag != ref.etag or not now.ref.version:
            raise NotFound(f"{ref.key} version {ref.version}")
        log.info("%s: version %s is gone; reading version %s, the same bytes", ref.key, ref.version, now.ref.version)
        options: Any = {"range": (start, end), "version": now.ref.version, "if_match": f'"{ref.etag}"'}
        return self._get(ref.key, options, ref)

    def read_all(self, key: str) -> bytes:
        return self._get(key, None)

    def archived(self, ref: ObjectRef, exc: BaseException | None) -> Archived | None:
        if exc is not None and (error_code_of(exc) == "InvalidObjectState" or "InvalidObjectState" in str(exc)):
            return Archived(archived_message(self.url, ref.key, "an S3 archive class"))
        return None

    # -- writes ---------------------------------------------------------------------------
    def put_file(self, local: Path, key: str) -> Entry:
        size = os.stat(local).st_size
        out = obstore.put(self.obs, self._path(key), local, use_multipart=False)
        return self.put_entry(key, size, out)

    def delete(self, key: str) -> None:
        obstore.delete(self.obs, self._path(key))

    def delete_if(self, key: str, ref: ObjectRef) -> bool:
        """A HEAD right before the DELETE; skipped if the ETag (and, versioned, the version id) changed.

        S3 offers no conditional DELETE, so a PUT landing in the window
        between the two (one round trip) is deleted. In a versioned bucket
        the delete is a plain one all the same, as S3's own expiration is: a
        delete marker on top, the version evaluated kept as a noncurrent one
        (for the noncurrent rules), and what the window caught kept too. A
        delete by version id would instead erase that version for good, and
        the version below it would come back as the object.
        """
        require_identity(ref)
        try:
            now = self.stat(key)
        except FileNotFoundError:
            return False
        if now.is_dir or not same_object(now.ref, ref):
            return False
        self.delete(key)
        return True

    def remove_dir(self, rel: str) -> None:
        """Delete the directory's ``rel/`` marker, if the server keeps one (SeaweedFS does, for every emptied one).

        Through s3fs: obstore cannot name a key that ends in '/'. A HEAD
        first, so that a versioned bucket gets no delete marker for a key it
        never held. SeaweedFS keeps a directory that still has entries whatever
        its marker's DELETE says; elsewhere the marker is one object among others.
        """
        fs: Any = self.fs
        key = self._path(rel).rstrip("/") + "/"
        try:
            self.run(fs._call_s3, "head_object", Bucket=self.bucket, Key=key)
        except FileNotFoundError:
            return
        self.run(fs._call_s3, "delete_object", Bucket=self.bucket, Key=key)
        fs.invalidate_cache(self.full(rel))

    def copy(self, src: str, dst: str) -> None:
        obstore.copy(self.obs, self._path(src), self._path(dst))

    def move(self, src: str, dst: str) -> None:
        obstore.rename(self.obs, self._path(src), self._path(dst))

    # -- multipart: resumable, with the state the caller saves after each part --------------
    def multipart_upload(self, local: Path, key: str, state: Any, save: Callable[[], None],
                         concurrency: int, progress: Callable[[int], None] | None) -> Entry:
        out: Entry = self.run(self._multipart_async, local, key, state, save, concurrency, progress)
        return out

    def run(self, coro_fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        from fsspec.asyn import sync

        # A whole multipart upload is bounded by the call's deadline, not one attempt's timeout.
        timeout = max(0.05, self.deadline.left()) if coro_fn == self._multipart_async else None
        if timeout is None:
            return super().run(coro_fn, *args, **kwargs)

        return sync(self.fs.loop, coro_fn, *args, timeout=timeout, **kwargs)

    async def _multipart_async(self, local: Path, key: str, state: Any, save: Callable[[], None],
                               concurrency: int, progress: Callable[[int], None] | None) -> Entry:
        fs: Any = self.fs
        name = self._path(key)
        if state.upload_id:
            state.parts = await self._acknowledged_parts(name, state.upload_id)
            if state.parts is None:  # the store forgot the upload: start again
                state.upload_id, state.parts = "", {}
        if not state.upload_id:
            mpu = await fs._call_s3("create_multipart_upload", Bucket=self.bucket, Key=name)
            state.upload_id = mpu["UploadId"]
            state.parts = {}
            save()
        count = max(1, -(-state.size // state.part_size))
        done = sum(min(state.part_size, state.size - (n - 1) * state.part_size) for n in state.parts)
        if progress is not None and done:
            progress(done)
        todo = [n for n in range(1, count + 1) if n not in state.parts]
        import asyncio  # (here only: a mount that never writes a large file never loads it)

        slots = asyncio.Semaphore(max(1, concurrency))
        loop = asyncio.get_running_loop()

        async def part(number: int) -> None:
            async with slots:
                start = (number - 1) * state.part_size
                length = min(state.part_size, state.size - start)
                body = await loop.run_in_executor(None, _pread, local, start, length)
                if len(body) != length:
                    raise StoreError(f"{local} changed while it was uploaded")
                out = await asyncio.wait_for(
                    fs._call_s3("upload_part", Bucket=self.bucket, Key=name, PartNumber=number,
                                UploadId=state.upload_id, Body=body),
                    timeout=max(self.attempt_timeout, length / (1 << 20)))  # a part: 1 s per MiB at least
                state.parts[number] = out["ETag"]
                save()
                if progress is not None:
                    progress(length)

        tasks = [asyncio.ensure_future(part(n)) for n in todo]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        parts = [{"PartNumber": n, "ETag": state.parts[n]} for n in sorted(state.parts)]
        out = await fs._call_s3("complete_multipart_upload", Bucket=self.bucket, Key=name,
                                UploadId=state.upload_id, MultipartUpload={"Parts": parts})
        fs.invalidate_cache(self.full(key))
        etag = str(out.get("ETag") or "").strip('"')
        version = str(out.get("VersionId") or "") if self.version_aware else ""
        return Entry(posixpath.basename(key), False, state.size, time.time_ns(),
                     ObjectRef(key, state.size, etag, version))

    async def _acknowledged_parts(self, name: str, upload_id: str) -> Any:
        """Parts the store holds for an upload, or None if it no longer knows the upload."""
        fs: Any = self.fs
        parts: dict[int, str] = {}
        marker = 0
        while True:
            try:
                out = await fs._call_s3("list_parts", Bucket=self.bucket, Key=name, UploadId=upload_id,
                                        PartNumberMarker=marker)
            except FileNotFoundError:
                return None
            except Exception as exc:
                if "NoSuchUpload" in str(exc):
                    return None
                raise
            for p in out.get("Parts", []):
                parts[int(p["PartNumber"])] = str(p["ETag"])
            if not out.get("IsTruncated"):
                return parts
            marker = int(out["NextPartNumberMarker"])

    def abort_multipart(self, key: str, upload_id: str) -> None:
        fs: Any = self.fs
        self.run(fs._call_s3, "abort_multipart_upload", Bucket=self.bucket, Key=self._path(key), UploadId=upload_id)

    # -- versions --------------------------------------------------------------------
    def wants_versions(self, setting: str) -> bool:
        if setting == "on":
            return True
        # One signed GET where the credentials are at hand; s3fs (made for it, a second of CPU) only if not.
        timeout = max(0.05, min(self.settings.store_metadata_deadline, self.attempt_timeout))
        answer = bucket_versioned(self.options, self.bucket, timeout)
        if answer is not None:
            if answer and self._fs is not None and not self._fs.version_aware:
                self.fs = type(self._fs)(**{**self._fs.storage_options, "version_aware": True})
            return answer
        fs: Any = self.fs
        wanted = bool(self.run(fs._is_bucket_versioned, self.bucket))
        if wanted and not fs.version_aware:
            # s3fs reads a version id only when made version-aware (open_read of a pinned ref).
            self.fs = type(fs)(**{**fs.storage_options, "version_aware": True})
        return wanted

    def delete_version(self, key: str, version: str) -> None:
        fs: Any = self.fs
        self.call(lambda: self.run(fs._call_s3, "delete_object", Bucket=self.bucket, Key=self._path(key),
                                   VersionId=version), f"delete {key} version {version}")

    def noncurrent_versions(self) -> Iterator[dict[str, Any]]:
        fs: Any = self.fs
        base = f"{self.prefix}/" if self.prefix else ""
        kwargs: dict[str, str] = {"Bucket": self.bucket, "Prefix": base}
        newer: dict[str, float] = {}  # key -> LastModified of the newest version or marker seen so far
        while True:
            page: dict[str, Any] = self.call(lambda kw=dict(kwargs): self.run(fs._call_s3, "list_object_versions", **kw),  # type: ignore[misc]
                                             f"list {self.url} versions")
            events = [(v, False) for v in page.get("Versions", [])] + [(d, True) for d in page.get("DeleteMarkers", [])]
            # within a key, newest first; a page may split a key, so `newer` carries over
            events.sort(key=lambda e: (e[0]["Key"], -e[0]["LastModified"].timestamp()))
            for v, is_marker in events:
                key = v["Key"][len(base):]
                when = v["LastModified"].timestamp()
                if not v.get("IsLatest") and not is_marker and key in newer:
                    yield {"key": key, "version": v["VersionId"], "size": int(v.get("Size", 0)),
                           "storage_class": v.get("StorageClass", "STANDARD"), "since": newer[key]}
                newer[key] = when
            if not page.get("IsTruncated"):
                return
            kwargs["KeyMarker"] = page["NextKeyMarker"]
            kwargs["VersionIdMarker"] = page.get("NextVersionIdMarker", "")

    # -- storage classes --------------------------------------------------------------
    def objects_with_classes(self, walk: Iterator[Entry]) -> Iterator[Entry]:
        """Every object with its storage class: from s3fs' listings (obstore's carry no class)."""
        stack = [""]
        while stack:
            sub = stack.pop()
            try:
                entries = self.call(lambda s=sub: Backend.list_dir(self, s), f"list {sub or '/'}")  # type: ignore[misc]
            except (FileNotFoundError, NotFound):
                continue
            for e in sorted(entries, key=lambda e: e.name, reverse=True):
                if e.is_dir:
                    stack.append(join_key(sub, e.name))
                else:
                    yield Entry(join_key(sub, e.name), False, e.size, e.mtime_ns, e.ref, e.storage_class)

    def set_class(self, key: str, storage_class: str, pinned: frozenset[tuple[str, str]],
                  etag: str, listed_version: str) -> bool:
        """One CopyObject onto itself with the new class, If-Match the listed ETag.

        Where the server refuses that, a HEAD first and a copy that REPLACEs the
        metadata with the object's own. Either way the bytes copied are those of
        the version seen, so in a versioned bucket that version may go afterwards.
        """
        fs: Any = self.fs
        name = self._path(key)
        source = {"Bucket": self.bucket, "Key": name}

        def copy() -> tuple[str, dict[str, Any]] | None:
            try:
                if etag and _SELF_COPY_REFUSED not in self.quirks:
                    try:
                        out: dict[str, Any] = self.run(
                            fs._call_s3, "copy_object", Bucket=self.bucket, Key=name, CopySource=source,
                            CopySourceIfMatch=f'"{etag}"', StorageClass=storage_class, MetadataDirective="COPY")
                        return "", out
                    except OSError as exc:
                        if error_code_of(exc) != "InvalidRequest":
                            raise
                        self.quirks.add(_SELF_COPY_REFUSED)
                head = self.run(fs._call_s3, "head_object", Bucket=self.bucket, Key=name)
                if etag and head["ETag"].strip('"') != etag:
                    return None
                extra = {"ContentType": head["ContentType"]} if head.get("ContentType") else {}
                out = self.run(
                    fs._call_s3, "copy_object", Bucket=self.bucket, Key=name, CopySource=source,
                    CopySourceIfMatch=head["ETag"], StorageClass=storage_class, MetadataDirective="REPLACE",
                    Metadata=head.get("Metadata", {}), **extra)
                return str(head.get("VersionId") or ""), out
            except OSError as exc:
                if isinstance(exc, FileNotFoundError) or error_code_of(exc) == "PreconditionFailed":
                    return None  # changed or gone since it was listed
                raise

        done = self.call(copy, f"transition {key}")
        if done is None:
            log.info("%s changed since it was listed; left for the next run", key)
            return False
        seen, out = done
        if not seen and str(out.get("CopyObjectResult", {}).get("ETag", "")).strip('"') == etag:
            seen = listed_version  # the copy holds the listed bytes (for servers that do not name the source)
        old = str(out.get("CopySourceVersionId") or seen)
        new = str(out.get("VersionId") or "")
        if old not in ("", "null") and new and old != new and (key, old) not in pinned:
            self.delete_version(key, old)
        return True

    def restore(self, key: str, days: int) -> str:
        fs: Any = self.fs
        request = {"Days": days, "GlacierJobParameters": {"Tier": "Standard"}}
        try:
            self.call(lambda: self.run(fs._call_s3, "restore_object", Bucket=self.bucket, Key=self._path(key),
                                       RestoreRequest=request), f"restore {key}")
        except OSError as exc:
            code = error_code_of(exc)
            if code == "RestoreAlreadyInProgress":
                return f"{key}: a restore is already in progress"
            if code == "InvalidObjectState":
                raise UserError(f"{key} is not in an archive class; it can be read as it is") from None
            raise UserError(f"{self.url} refused to restore {key}: {exc.strerror or exc}") from None
        return (f"{key}: restore requested (S3 standard retrieval: 3-5 hours from GLACIER, up to 12 from "
                f"DEEP_ARCHIVE); the copy stays readable for {days} days")

    def install_rules(self, document: dict[str, Any]) -> None:
        fs: Any = self.fs
        self.run(fs._call_s3, "put_bucket_lifecycle_configuration", Bucket=self.bucket,
                 LifecycleConfiguration=document)

    def credentials_hint(self) -> str:
        return ("set [s3] key and secret in the config, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "or an AWS profile")


def _refusal(message: str) -> str:
    """S3's error code out of obstore's long message (``SignatureDoesNotMatch``), or its HTTP status."""
    code = re.search(r"<Code>([^<]+)</Code>", message)
    if code:
        return code.group(1)
    status = re.search(r"\b(40[13] \w+)", message)
    return status.group(1) if status else "refused"


def _explicit_credentials(options: dict[str, Any]) -> bool:
    return bool(options.get("anon") or (options.get("key") and options.get("secret"))
                or (os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY")))


def _obstore_for(options: dict[str, Any], bucket: str, timeout: float) -> Any:
    """An obstore S3Store with the lake's endpoint, region and credentials (s3fs' options), retries off."""
    from obstore.store import S3Store

    fs = SimpleNamespace(**options)
    endpoint, region = endpoint_and_region(options)
    config: Any = {}
    if endpoint:
        config["endpoint"] = endpoint
        config["virtual_hosted_style_request"] = False  # path style, as every S3-compatible server takes
    config["region"] = region
    if getattr(fs, "anon", False):
        config["skip_signature"] = True
    elif getattr(fs, "key", None) and getattr(fs, "secret", None):
        config["access_key_id"] = fs.key
        config["secret_access_key"] = fs.secret
        if getattr(fs, "token", None):
            config["token"] = fs.token
    elif getattr(fs, "profile", None):
        raise UserError("an AWS profile is set but obstore reads credentials from the environment only: set "
                        "[s3] key and secret (or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) instead")
    return S3Store(bucket, config=config, client_options=client_options(timeout, endpoint or ""),
                   retry_config=retries_off(timeout))


def error_code_of(exc: BaseException) -> str:
    from tierfs.store.objects import error_code

    return error_code(exc)




def _pread(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as fh:
        return os.pread(fh.fileno(), length, offset)
