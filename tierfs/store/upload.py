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

import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tierfs import statefile
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
        return self.store.backend.multipart

    def upload(self, local: Path, key: str, state_path: Path | None = None,
               progress: Progress | None = None) -> Entry:
        """Put ``local`` at ``key``; returns the new object's entry, its ObjectRef as the store answered.

        Blocking (run it in a worker thread). Failures are retried with backoff
        (resuming a multipart upload); what is left is a StoreError.
        """
        st = os.stat(local)
        backend = self.store.backend
        # An upload may take as long as its bytes need: the read deadline plus 1 s per MiB.
        deadline = self.store.read_deadline + st.st_size / (1 << 20)
        if self.multipart and st.st_size > self.part_size:
            def call() -> Entry:
                return self._multipart(local, key, st.st_size, st.st_mtime_ns, state_path, progress)
        else:
            def call() -> Entry:
                entry = backend.put_file(local, key)
                if progress is not None:
                    progress(st.st_size)
                return entry
        entry: Entry = self.store.call(call, f"upload {key}", deadline=deadline)
        self.store.stats.add("bytes_written", st.st_size)
        self.store.stats.add("uploads")
        if state_path is not None:
            state_path.unlink(missing_ok=True)
        return entry

    def discard(self, state_path: Path) -> None:
        """Forget an unfinished upload (its file is gone): abort it so its parts are freed."""
        state = UploadState.load(state_path)
        state_path.unlink(missing_ok=True)
        if state is None or not state.upload_id or not self.multipart:
            return
        try:
            self.store.backend.abort_multipart(state.key, state.upload_id)
        except Exception as exc:  # an upload the store no longer knows: nothing to free
            log.debug("abort of upload %s of %s: %s", state.upload_id, state.key, exc)

    def _multipart(self, local: Path, key: str, size: int, mtime_ns: int,
                   state_path: Path | None, progress: Progress | None) -> Entry:
        state = UploadState.load(state_path)
        if state is None or not state.matches(key, size, mtime_ns, self.part_size):
            if state is not None:
                self.discard(state_path)  # type: ignore[arg-type]
            state = UploadState(key, size, mtime_ns, self.part_size)
        current = state
        return self.store.backend.multipart_upload(local, key, state, lambda: current.save(state_path),
                                                   self.concurrency, progress)
