"""Google Cloud Storage (and its emulators): gcsfs, every read pinned to the generation it expects.

Every GCS object carries a generation, versioned bucket or not, and a read
that names one gets exactly those bytes or a 404: a rewrite upstream between
two block reads of one file can never mix versions. An upload's identity is
the object resource the upload itself answers with. Storage classes are left
to the bucket's own lifecycle rules (`tierfs lifecycle export`).

The data path is still gcsfs here, not obstore: obstore's GCS client against
the emulators the tests run (fake-gcs-server, gcp-storage-emulator) has not
been tried yet, so the GIL-free path covers S3 only for now.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from tierfs.refs import ObjectRef
from tierfs.store.backend import Backend, BucketKeys, Changed, Entry, mtime_ns_of, require_identity, same_object

#: Uploads above this size go up as a resumable upload, in chunks of it (a multiple of 256 KiB).
_CHUNK = 16 << 20


class GcsBackend(BucketKeys, Backend):
    provider: ClassVar[str] = "gcs"

    # -- metadata -----------------------------------------------------------
    def list_dir(self, rel: str) -> list[Entry]:
        return [e for e in super().list_dir(rel) if e.name]

    # -- data ---------------------------------------------------------------
    def read_range(self, ref: ObjectRef, start: int, end: int) -> bytes:
        fs: Any = self.fs
        generation = ref.version or None
        try:
            data: bytes = self.run(fs._cat_file_sequential, self.full(ref.key), start=start, end=end,
                                   generation=generation)
        except FileNotFoundError:
            if generation and not self.version_aware:
                # Unversioned: the generation read is gone because the object was rewritten.
                raise Changed(f"{ref.key} changed upstream (generation {generation} is gone)") from None
            raise
        return data

    def read_all(self, key: str) -> bytes:
        fs: Any = self.fs
        data: bytes = self.run(fs._cat_file_sequential, self.full(key))
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
