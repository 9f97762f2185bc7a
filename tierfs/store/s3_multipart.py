"""S3's multipart requests, for S3Backend: resumable uploads, and copies of objects too large for one CopyObject.

Both run on s3fs' event loop (botocore), each as one coroutine bounded by
the call's deadline, parts in parallel under a semaphore. An upload saves
its state after each acknowledged part, so a daemon that died resumes it; a
copy is short-lived and is aborted on any failure. Every part of a copy is
conditional on the source's ETag (and pinned to its version), so the parts
all come from one version of the source or the copy fails.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from tierfs.errors import StoreError
from tierfs.refs import ObjectRef
from tierfs.store.backend import Entry


class S3Multipart:
    """Multipart uploads and copies; mixed into S3Backend, whose bucket, keys and loop they use."""

    bucket: str
    fs: Any
    attempt_timeout: float
    version_aware: bool
    _path: Callable[[str], str]
    full: Callable[[str], str]
    run: Callable[..., Any]
    run_for: Callable[..., Any]
    deadline: Any
    #: The largest object one CopyObject copies (S3's limit); larger ones are copied in parts.
    copy_in_one_max: int = 5 << 30
    #: The size of each part of a multipart copy (S3 takes 5 MiB to 5 GiB).
    copy_part_size: int = 512 << 20

    # -- uploads: resumable, with the state the caller saves after each part --------------
    def multipart_upload(self, local: Path, key: str, state: Any, save: Callable[[], None],
                         concurrency: int, progress: Callable[[int], None] | None) -> Entry:
        # A whole multipart upload is bounded by the call's deadline, not one attempt's timeout.
        out: Entry = self.run_for(self.deadline.left(), self._multipart_async, local, key, state, save,
                                  concurrency, progress)
        return out

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
        loop = asyncio.get_running_loop()

        async def part(number: int) -> None:
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

        await _all(part, todo, concurrency)
        parts = [{"PartNumber": n, "ETag": state.parts[n]} for n in sorted(state.parts)]
        out = await fs._call_s3("complete_multipart_upload", Bucket=self.bucket, Key=name,
                                UploadId=state.upload_id, MultipartUpload={"Parts": parts})
        fs.invalidate_cache(self.full(key))
        return self._completed(key, state.size, out)

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

    # -- copies: UploadPartCopy, each part If-Match the source's ETag ----------------------------
    def copy_in_parts(self, ref: ObjectRef, dst: str, source: dict[str, str], condition: dict[str, str]) -> Entry:
        out: Entry = self.run_for(self.deadline.left(), self._copy_parts_async, ref, dst, source, condition)
        return out

    async def _copy_parts_async(self, ref: ObjectRef, dst: str, source: dict[str, str],
                                condition: dict[str, str]) -> Entry:
        fs: Any = self.fs
        name = self._path(dst)
        upload_id = (await fs._call_s3("create_multipart_upload", Bucket=self.bucket, Key=name))["UploadId"]
        step = self.copy_part_size
        etags: dict[int, str] = {}

        async def part(number: int) -> None:
            start = (number - 1) * step
            length = min(step, ref.size - start)
            out = await asyncio.wait_for(
                fs._call_s3("upload_part_copy", Bucket=self.bucket, Key=name, PartNumber=number, UploadId=upload_id,
                            CopySource=source, CopySourceRange=f"bytes={start}-{start + length - 1}", **condition),
                timeout=self.attempt_timeout + length / (1 << 20))
            etags[number] = out["CopyPartResult"]["ETag"]

        try:
            await _all(part, list(range(1, -(-ref.size // step) + 1)), 8)
            parts = [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]
            out = await fs._call_s3("complete_multipart_upload", Bucket=self.bucket, Key=name, UploadId=upload_id,
                                    MultipartUpload={"Parts": parts})
        except BaseException:
            try:  # parts the store keeps are billed: abort, best effort (the failure is what is raised)
                await asyncio.wait_for(fs._call_s3("abort_multipart_upload", Bucket=self.bucket, Key=name,
                                                   UploadId=upload_id), timeout=self.attempt_timeout)
            except Exception:
                pass
            raise
        return self._completed(dst, ref.size, out)

    def _completed(self, key: str, size: int, out: dict[str, Any]) -> Entry:
        """The object CompleteMultipartUpload (or CopyObject) answered for: its ETag and version are this request's."""
        etag = str(out.get("ETag") or out.get("CopyObjectResult", {}).get("ETag") or "").strip('"')
        version = str(out.get("VersionId") or "") if self.version_aware else ""
        return Entry(posixpath.basename(key), False, size, time.time_ns(), ObjectRef(key, size, etag, version))


async def _all(job: Callable[[int], Coroutine[Any, Any, None]], numbers: list[int], concurrency: int) -> None:
    """``job(n)`` for each part number, ``concurrency`` at a time; the first failure cancels the rest and is raised."""
    slots = asyncio.Semaphore(max(1, concurrency))

    async def bounded(number: int) -> None:
        async with slots:
            await job(number)

    tasks = [asyncio.ensure_future(bounded(n)) for n in numbers]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _pread(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as fh:
        return os.pread(fh.fileno(), length, offset)
