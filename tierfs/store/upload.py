"""Uploads of local files into the lake: atomic, multipart, parallel, resumable.

An object appears in the lake only once all of its bytes are there: S3
completes a multipart upload in one step, GCS and Azure commit an upload at
its end, and a local lake receives the file under ``.tierfs/upload/`` and is
renamed into place. Nothing half-written is ever visible as an object.

On S3, a file larger than one part travels as a multipart upload with up to
``concurrency`` parts in flight (memory: that many parts). Its progress (the
upload id and the parts the store has acknowledged) is saved to a state file
after every part, so an interrupted upload — a failed request, a killed
process — goes on from where it stopped instead of starting again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fsspec.asyn import sync

from tierfs import statefile
from tierfs.errors import StoreError
from tierfs.store.objects import Entry, ObjectStore

log = logging.getLogger(__name__)

Progress = Callable[[int], None]


@dataclass
class UploadState:
    """What a resumable upload has done so far."""

    key: str
    size: int
    mtime_ns: int
    part_size: int
    upload_id: str = ""
    parts: dict[int, str] = field(default_factory=dict)  # part number -> ETag

    @classmethod
    def load(cls, path: Path | None) -> UploadState | None:
        raw = statefile.load(path) if path is not None else None
        if not isinstance(raw, dict):
            return None
        try:
            raw["parts"] = {int(k): str(v) for k, v in raw.get("parts", {}).items()}
            return cls(**raw)
        except (ValueError, TypeError, AttributeError):  # not a state this version wrote
            return None

    def save(self, path: Path | None) -> None:
        if path is not None:
            statefile.save(path, asdict(self))

    def matches(self, key: str, size: int, mtime_ns: int, part_size: int) -> bool:
        return (self.key, self.size, self.mtime_ns, self.part_size) == (key, size, mtime_ns, part_size)


class Uploader:
    def __init__(self, store: ObjectStore, part_size: int = 16 << 20, concurrency: int = 4):
        self.store = store
        self.part_size = part_size
        self.concurrency = max(1, concurrency)

    @property
    def multipart(self) -> bool:
        return hasattr(self.store.fs, "_call_s3")

    def upload(self, local: Path, key: str, state_path: Path | None = None,
               progress: Progress | None = None) -> Entry:
        """Put ``local`` at ``key``; returns the new object's entry (its ObjectRef).

        Blocking (run it in a worker thread). Failures are retried with backoff
        (resuming a multipart upload); what is left is a StoreError.
        """
        st = os.stat(local)
        if self.multipart and st.st_size > self.part_size:
            def call() -> None:
                self._multipart(local, key, st.st_size, st.st_mtime_ns, state_path, progress)
        else:
            def call() -> None:
                self._whole(local, key)
                if progress is not None:
                    progress(st.st_size)
        self.store.call(call, f"upload {key}")
        self.store.stats.add("bytes_written", st.st_size)
        self.store.stats.add("uploads")
        if state_path is not None:
            state_path.unlink(missing_ok=True)
        return self.store.stat(key)

    def discard(self, state_path: Path) -> None:
        """Forget an unfinished upload (its file is gone): abort it so its parts are freed."""
        state = UploadState.load(state_path)
        state_path.unlink(missing_ok=True)
        if state is None or not state.upload_id or not self.multipart:
            return
        fs = self.store.fs
        bucket, key, _ = fs.split_path(self.store.full(state.key))
        try:
            fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=state.upload_id)
        except Exception as exc:  # an upload the store no longer knows: nothing to free
            log.debug("abort of upload %s of %s: %s", state.upload_id, state.key, exc)

    # -- one request, or the store's own atomic upload -------------------------
    def _whole(self, local: Path, key: str) -> None:
        fs, full = self.store.fs, self.store.full(key)
        parent = os.path.dirname(full)
        if self.store.is_local:
            # A rename inside the lake's filesystem is the atomic step.
            tmp_dir = self.store.full(".tierfs/upload")
            fs.makedirs(tmp_dir, exist_ok=True)
            tmp = f"{tmp_dir}/{uuid.uuid4().hex}"
            try:
                fs.put_file(str(local), tmp)
                fs.makedirs(parent, exist_ok=True)
                os.replace(tmp, full)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            return
        if parent:
            fs.makedirs(parent, exist_ok=True)
        fs.put_file(str(local), full)

    # -- S3 multipart ------------------------------------------------------------
    def _multipart(self, local: Path, key: str, size: int, mtime_ns: int,
                   state_path: Path | None, progress: Progress | None) -> None:
        state = UploadState.load(state_path)
        if state is None or not state.matches(key, size, mtime_ns, self.part_size):
            if state is not None:
                self.discard(state_path)  # type: ignore[arg-type]
            state = UploadState(key, size, mtime_ns, self.part_size)
        fs = self.store.fs
        sync(fs.loop, self._multipart_async, local, state, state_path, progress)

    async def _multipart_async(self, local: Path, state: UploadState, state_path: Path | None,
                               progress: Progress | None) -> None:
        fs = self.store.fs
        bucket, key, _ = fs.split_path(self.store.full(state.key))
        if state.upload_id:
            state.parts = await self._acknowledged_parts(bucket, key, state.upload_id)
            if state.parts is None:  # the store forgot the upload: start again
                state.upload_id, state.parts = "", {}
        if not state.upload_id:
            mpu = await fs._call_s3("create_multipart_upload", Bucket=bucket, Key=key)
            state.upload_id = mpu["UploadId"]
            state.parts = {}
            state.save(state_path)
        count = max(1, -(-state.size // state.part_size))
        done = sum(min(state.part_size, state.size - (n - 1) * state.part_size) for n in state.parts)
        if progress is not None and done:
            progress(done)
        todo = [n for n in range(1, count + 1) if n not in state.parts]
        slots = asyncio.Semaphore(self.concurrency)
        loop = asyncio.get_running_loop()

        async def part(number: int) -> None:
            async with slots:
                start = (number - 1) * state.part_size
                length = min(state.part_size, state.size - start)
                body = await loop.run_in_executor(None, _pread, local, start, length)
                if len(body) != length:
                    raise StoreError(f"{local} changed while it was uploaded")
                out = await fs._call_s3("upload_part", Bucket=bucket, Key=key, PartNumber=number,
                                        UploadId=state.upload_id, Body=body)
                state.parts[number] = out["ETag"]
                state.save(state_path)
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
        await fs._call_s3("complete_multipart_upload", Bucket=bucket, Key=key, UploadId=state.upload_id,
                          MultipartUpload={"Parts": parts})
        fs.invalidate_cache(self.store.full(state.key))

    async def _acknowledged_parts(self, bucket: str, key: str, upload_id: str) -> Any:
        """Parts the store holds for an upload, or None if it no longer knows the upload."""
        fs = self.store.fs
        parts: dict[int, str] = {}
        marker = 0
        while True:
            try:
                out = await fs._call_s3("list_parts", Bucket=bucket, Key=key, UploadId=upload_id,
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


def _pread(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as fh:
        return os.pread(fh.fileno(), length, offset)
