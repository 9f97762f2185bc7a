"""Google Cloud Storage (and its emulators): reads through obstore, pinned to the generation they expect.

Every GCS object carries a generation, versioned bucket or not, and a read
that names one gets exactly those bytes or a 404: a rewrite upstream between
two block reads of one file can never mix versions. An upload's identity is
the object resource the upload itself answers with. Storage classes are left
to the bucket's own lifecycle rules (`tierfs lifecycle export`).

Ranged and whole reads go through obstore (``obstore_data``: GIL-free, its
retries off), which speaks GCS's XML API. The rest stays on gcsfs (the JSON
API), each for a reason:

- listings: obstore's (XML) listing carries no generation, and a ref without
  one could not pin its reads (fake-gcs-server ignores If-Match, and the XML
  ETag is not the JSON one);
- stats: a stat must name an object as a listing does, and obstore's HEAD
  answers the XML API's ETag where gcsfs gives the JSON API's (on GCS itself
  they differ: one object would get two identities);
- uploads, copies and moves: fake-gcs-server serves no XML-API PUT
  ("invalid uploadType"), and the JSON upload answers with the generation;
- deletes, generations, bucket metadata: calls obstore does not have.

gcp-storage-emulator serves none of obstore's requests (its GETs have no
Last-Modified; HEAD, XML listings and DELETE answer 501): the tests use it
for bucket lifecycle rules only, which stay on gcsfs.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import posixpath
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from tierfs.refs import ObjectRef
from tierfs.store.backend import Backend, Changed, Entry, mtime_ns_of, require_identity, same_object
from tierfs.store.obstore_data import ObstoreBackend, client_options, retries_off

#: Uploads above this size go up as a resumable upload, in chunks of it (a multiple of 256 KiB).
_CHUNK = 16 << 20


class GcsBackend(ObstoreBackend):
    provider: ClassVar[str] = "gcs"

    def new_client(self) -> Any:
        return _obstore_for(self.fs, self.bucket, self.attempt_timeout)

    # -- metadata: listings and stats through gcsfs (the module's docstring says why) --
    def list_dir(self, rel: str) -> list[Entry]:
        return [e for e in Backend.list_dir(self, rel) if e.name]

    def stat(self, rel: str) -> Entry:
        return Backend.stat(self, rel)

    def lists_trees(self) -> bool:
        return False  # (listings through gcsfs, as above)

    def stats_bring_bytes(self) -> bool:
        return False  # (a stat through gcsfs, as above)

    def stat_and_bytes(self, rel: str, limit: int) -> tuple[Entry, bytes | None]:
        return Backend.stat_and_bytes(self, rel, limit)

    # -- data ---------------------------------------------------------------
    def read_range(self, ref: ObjectRef, start: int, end: int) -> bytes:
        generation = ref.version or None
        options: Any = {"range": (start, end)}
        if generation:
            options["version"] = generation  # ?generation=: exactly those bytes, or 404
        try:
            return self._get(ref.key, options, fallback=lambda: self._gcsfs_read(ref.key, start, end, generation))
        except FileNotFoundError:
            if generation and not self.version_aware:
                # Unversioned: the generation read is gone because the object was rewritten.
                raise Changed(f"{ref.key} changed upstream (generation {generation} is gone)") from None
            raise

    def read_all(self, key: str) -> bytes:
        return self._get(key, None, fallback=lambda: self._gcsfs_read(key))

    def _gcsfs_read(self, key: str, start: int | None = None, end: int | None = None,
                    generation: str | None = None) -> bytes:
        """A read through gcsfs, for a key obstore cannot name (control characters: GCS allows a tab)."""
        fs: Any = self.fs
        data: bytes = self.run(fs._cat_file_sequential, self.full(key), start=start, end=end, generation=generation)
        return data

    def open_read(self, ref: ObjectRef) -> Any:
        path = self.full(ref.key)
        return self.fs.open(f"{path}#{ref.version}" if ref.version and self.version_aware else path, "rb")

    # -- writes ----------------------------------------------------------------
    def put_file(self, local: Path, key: str) -> Entry:
        size = os.stat(local).st_size
        with open(local, "rb") as fh:
            if size <= _CHUNK:
                return self._upload(key, fh.read())
            return self._upload_resumable(key, fh, size)

    def put_bytes(self, key: str, data: bytes) -> Entry:
        return self._upload(key, data)

    def _upload(self, key: str, data: bytes) -> Entry:
        from gcsfs.core import simple_upload

        bucket, name, _ = self.fs.split_path(self.full(key))
        out = self.run(simple_upload, self.fs, bucket, name, data)
        return self._answer(key, out)

    def _upload_resumable(self, key: str, fh: Any, size: int) -> Entry:
        from gcsfs.core import initiate_upload, upload_chunk

        bucket, name, _ = self.fs.split_path(self.full(key))
        location = self.run(initiate_upload, self.fs, bucket, name, "application/octet-stream")
        out = None
        for offset in range(0, size, _CHUNK):
            chunk = fh.read(_CHUNK)
            out = self.run(upload_chunk, self.fs, location, chunk, offset, size, "application/octet-stream")
        return self._answer(key, out)

    def _answer(self, key: str, out: Any) -> Entry:
        """The object resource the upload answered: its generation is this upload's, never another writer's."""
        self.fs.invalidate_cache(self.full(key))
        if not isinstance(out, dict) or "generation" not in out:
            return self.stat(key)  # an emulator that answers without the resource
        size = int(out.get("size") or 0)
        etag = str(out.get("md5Hash") or out.get("etag") or "").strip('"')
        return Entry(posixpath.basename(key), False, size, mtime_ns_of(out),
                     ObjectRef(key, size, etag, str(out["generation"])), str(out.get("storageClass") or ""))

    def copy_ref(self, ref: ObjectRef, dst: str) -> Entry:
        """A server-side rewrite of exactly the generation ``ref`` records (``sourceGeneration``).

        A generation gone (rewritten since) is a 404: Changed. A ref without a
        generation is checked after instead: the source must still be it.
        """
        fs: Any = self.fs
        sb, sk, _ = fs.split_path(self.full(ref.key))
        db, dk, _ = fs.split_path(self.full(dst))
        out: dict[str, Any] = {}
        try:
            while not out.get("done"):  # a large object may take several calls, each resuming by token
                out = self.run_for(self.seconds_for(ref.size), fs._call, "POST", "b/{}/o/{}/rewriteTo/b/{}/o/{}",
                                   sb, sk, db, dk, sourceGeneration=ref.version or None,
                                   rewriteToken=out.get("rewriteToken"), json_out=True)
        except FileNotFoundError:
            if ref.version:
                raise Changed(f"{ref.key} changed upstream (generation {ref.version} is gone)") from None
            raise
        if not ref.version and not same_object(self.stat(ref.key).ref, ref):
            self.delete(dst)
            raise Changed(f"{ref.key} changed while it was copied")
        return self._answer(dst, out.get("resource"))

    def delete_if(self, key: str, ref: ObjectRef) -> bool:
        """DELETE with ifGenerationMatch: GCS itself refuses (412) if the object is another generation now.

        A stat comes first all the same: it finds the generation where the ref
        has none, and it is the only check on emulators that ignore the
        condition (fake-gcs-server deletes whatever generation is there), so
        a test of this against one sees a rewrite made before the call.
        """
        require_identity(ref)
        fs: Any = self.fs
        try:
            now = self.stat(key)
        except FileNotFoundError:
            return False
        if now.ref is None or not same_object(now.ref, ref):
            return False
        generation = ref.version or now.ref.version
        if not generation:
            self.delete(key)  # no generation given: the stat was the check
            return True
        bucket, name, _ = fs.split_path(self.full(key))
        try:
            self.run(fs._call, "DELETE", "b/{}/o/{}", bucket, name, ifGenerationMatch=generation)
        except (FileNotFoundError, FileExistsError):  # gone, or 412: another generation now
            return False
        finally:
            fs.invalidate_cache(self.full(key))
        return True

    def remove_dir(self, rel: str) -> None:
        """Delete the ``rel/`` placeholder object a console or another tool may have made for the directory."""
        fs: Any = self.fs
        bucket, name, _ = fs.split_path(self.full(rel))
        try:
            self.run(fs._call, "DELETE", "b/{}/o/{}", bucket, name.rstrip("/") + "/")
        except FileNotFoundError:
            return
        finally:
            fs.invalidate_cache(self.full(rel))

    # -- versions -------------------------------------------------------------------
    def wants_versions(self, setting: str) -> bool:
        if setting == "on":
            wanted = True
        else:
            bucket = self.root.split("/", 1)[0]
            wanted = bool(self.fs.info(bucket).get("versioning", {}).get("enabled"))
        if wanted and not getattr(self.fs, "version_aware", False):
            fs: Any = self.fs
            self.fs = type(fs)(**{**fs.storage_options, "version_aware": True})
        return wanted

    def noncurrent_versions(self) -> Iterator[dict[str, Any]]:
        """GCS generations with a timeDeleted: replaced or deleted, still kept (and billed)."""
        base = self.full("").rstrip("/") + "/"
        found = self.call(lambda: self.fs.find(self.full(""), versions=True, detail=True), f"list {self.url} generations")
        for info in found.values():
            if not info.get("timeDeleted"):
                continue
            yield {"key": str(info["name"])[len(base):], "version": str(info["generation"]),
                   "size": int(info.get("size") or 0), "storage_class": str(info.get("storageClass") or "STANDARD"),
                   "since": mtime_ns_of({"updated": info["timeDeleted"]}) / 1e9}

    def restore(self, key: str, days: int) -> str:
        return f"{key}: GCS reads ARCHIVE objects directly; nothing to restore"

    def install_rules(self, document: dict[str, Any]) -> None:
        fs: Any = self.fs
        bucket = self.root.split("/", 1)[0]
        self.run(fs._call, "PATCH", "b/{}", bucket, json=document, json_out=True)

    def credentials_hint(self) -> str:
        return "set token in the config's [store] options, or GOOGLE_APPLICATION_CREDENTIALS"


def _obstore_for(fs: Any, bucket: str, timeout: float) -> Any:
    """An obstore GCSStore at gcsfs' endpoint (or the emulator's), with gcsfs' credentials, retries off.

    Whatever gcsfs authenticated with (a service account, application default
    credentials, a token) is handed over as tokens gcsfs refreshes; no
    credentials (token="anon") means unsigned requests.
    """
    from obstore.store import GCSStore

    endpoint = str(fs._location).rstrip("/")  # endpoint_url, else STORAGE_EMULATOR_HOST, else GCS itself
    config: Any = {"base_url": endpoint}
    provider = None
    if fs.credentials.credentials is None:
        config["skip_signature"] = True
    else:
        provider = functools.partial(_gcsfs_token, fs.credentials)
    return GCSStore(bucket, config=config, client_options=client_options(timeout, endpoint),
                    retry_config=retries_off(timeout), credential_provider=provider)


def _gcsfs_token(credentials: Any) -> Any:
    """obstore's credential provider: the access token gcsfs holds, refreshed by gcsfs when it nears expiry."""
    credentials.maybe_refresh()
    held = credentials.credentials
    expiry = getattr(held, "expiry", None)  # google-auth: naive UTC
    return {"token": str(held.token), "expires_at": expiry.replace(tzinfo=dt.UTC) if isinstance(expiry, dt.datetime) else None}
