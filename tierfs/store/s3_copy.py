"""S3's server-side copies of exactly the bytes an ObjectRef names (a snapshot's copies): a mixin of S3Backend.

obstore's copy takes no condition, so a small object with a plain (MD5)
ETag is copied through it (GIL-free) and the copy's ETag and size checked:
the same as the source's means the same bytes. Otherwise, or when that check
fails (the source changed, or this server gives copies other ETags, as
SSE-KMS does), CopyObject through s3fs with CopySourceIfMatch (and the
version id): those bytes or PreconditionFailed. Above 5 GiB, in parts
(UploadPartCopy), each part with the same condition, so the parts all come
from one version or the copy fails whole (and is aborted).
"""

from __future__ import annotations

import logging
import posixpath
import time
from collections.abc import Callable
from typing import Any

import obstore

from tierfs.refs import ObjectRef
from tierfs.store.backend import Changed, Entry

log = logging.getLogger(__name__)

#: Servers whose copies get another ETag than their source though the bytes are the same (SSE-KMS, SSE-C).
_COPY_ETAG_DIFFERS = "copy-etag-differs"
#: Objects up to this size are copied through obstore (one attempt's timeout); larger ones through s3fs.
_QUICK_COPY_MAX = 16 << 20


class S3Copies:
    """copy_ref for S3Backend, whose clients, bucket and keys it uses."""

    bucket: str
    fs: Any
    obs: Any
    url: str
    quirks: set[str]
    attempt_timeout: float
    version_aware: bool
    deadline: Any
    _path: Callable[[str], str]
    meta_entry: Callable[..., Entry]
    run_for: Callable[..., Any]
    seconds_for: Callable[[int], float]
    #: The largest object one CopyObject copies (S3's limit); larger ones are copied in parts.
    copy_in_one_max: int = 5 << 30
    #: The size of each part of a multipart copy (S3 takes 5 MiB to 5 GiB).
    copy_part_size: int = 512 << 20

    def copy_ref(self, ref: ObjectRef, dst: str) -> Entry:
        quick = (ref.size <= min(_QUICK_COPY_MAX, self.copy_in_one_max) and ref.etag and "-" not in ref.etag
                 and not ref.version and _COPY_ETAG_DIFFERS not in self.quirks)
        if quick:
            obstore.copy(self.obs, self._path(ref.key), self._path(dst))
            copied = self.meta_entry(posixpath.basename(dst), dst, obstore.head(self.obs, self._path(dst)))
            if copied.ref is not None and copied.ref.etag == ref.etag and copied.size == ref.size:
                return copied
            obstore.delete(self.obs, self._path(dst))  # not the bytes asked for: ask the server to check
        entry = self._copy_if_match(ref, dst)
        if quick:  # the source had not changed, yet the copy's ETag differed
            log.info("%s gives copies other ETags than their sources': copies are made with a condition", self.url)
            self.quirks.add(_COPY_ETAG_DIFFERS)
        return entry

    def _copy_if_match(self, ref: ObjectRef, dst: str) -> Entry:
        from tierfs.store.objects import error_code

        fs: Any = self.fs
        source = {"Bucket": self.bucket, "Key": self._path(ref.key)}
        if ref.version and self.version_aware:
            source["VersionId"] = ref.version
        condition = {"CopySourceIfMatch": f'"{ref.etag}"'} if ref.etag else {}
        try:
            if ref.size > self.copy_in_one_max:
                out = self.run_for(self.deadline.left(), self._copy_parts, ref, dst, source, condition)
            else:
                out = self.run_for(self.seconds_for(ref.size), fs._call_s3, "copy_object", Bucket=self.bucket,
                                   Key=self._path(dst), CopySource=source, **condition)
        except OSError as exc:
            if error_code(exc) == "PreconditionFailed":
                raise Changed(f"{ref.key} changed upstream (ETag is no longer {ref.etag})") from None
            raise
        etag = str(out.get("ETag") or out.get("CopyObjectResult", {}).get("ETag") or "").strip('"')
        version = str(out.get("VersionId") or "") if self.version_aware else ""
        return Entry(posixpath.basename(dst), False, ref.size, time.time_ns(), ObjectRef(dst, ref.size, etag, version))

    async def _copy_parts(self, ref: ObjectRef, dst: str, source: dict[str, str],
                          condition: dict[str, str]) -> dict[str, Any]:
        """A multipart upload of UploadPartCopy parts, 8 at a time; aborted on any failure."""
        fs: Any = self.fs
        name = self._path(dst)
        upload_id = (await fs._call_s3("create_multipart_upload", Bucket=self.bucket, Key=name))["UploadId"]
        step = self.copy_part_size
        etags: dict[int, str] = {}
        import asyncio  # (here only: a mount that never copies a large object never loads it)

        slots = asyncio.Semaphore(8)

        async def part(number: int) -> None:
            start = (number - 1) * step
            length = min(step, ref.size - start)
            async with slots:
                out = await asyncio.wait_for(
                    fs._call_s3("upload_part_copy", Bucket=self.bucket, Key=name, PartNumber=number,
                                UploadId=upload_id, CopySource=source,
                                CopySourceRange=f"bytes={start}-{start + length - 1}", **condition),
                    timeout=self.seconds_for(length))
            etags[number] = out["CopyPartResult"]["ETag"]

        tasks = [asyncio.ensure_future(part(n)) for n in range(1, -(-ref.size // step) + 1)]
        try:
            await asyncio.gather(*tasks)
            parts = [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]
            out: dict[str, Any] = await fs._call_s3("complete_multipart_upload", Bucket=self.bucket, Key=name,
                                                    UploadId=upload_id, MultipartUpload={"Parts": parts})
            return out
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            try:  # parts a store keeps are billed: abort, best effort (the failure is what is raised)
                await asyncio.wait_for(fs._call_s3("abort_multipart_upload", Bucket=self.bucket, Key=name,
                                                   UploadId=upload_id), timeout=self.attempt_timeout)
            except Exception:
                pass
            raise
