"""A lake in memory (``memory://``), for fast unit tests: fsspec's memory filesystem.

It has no ETags; the stand-in (creation time and size, see Backend.entry) is
checked before a read, so a test that rewrites an object sees what a real
store's If-Match gives.
"""

from __future__ import annotations

import posixpath
from typing import ClassVar

from tierfs.refs import ObjectRef
from tierfs.store.backend import Backend, Changed, expected_etag, require_identity, same_object


class MemoryBackend(Backend):
    provider: ClassVar[str] = "memory"

    def read_range(self, ref: ObjectRef, start: int, end: int) -> bytes:
        expected = expected_etag(ref)
        if expected:
            now = self.entry(posixpath.basename(ref.key), ref.key, self.fs.info(self.full(ref.key))).ref
            if now is None or now.etag != expected:
                raise Changed(f"{ref.key} changed upstream (it is not the version this read was for)")
        return super().read_range(ref, start, end)

    def delete_if(self, key: str, ref: ObjectRef) -> bool:
        """The stand-in ETag compared, then the delete (a write from another thread between the two is deleted;
        a memory lake lives in one test process)."""
        require_identity(ref)
        full = self.full(key)
        try:
            now = self.entry(posixpath.basename(key), key, self.fs.info(full)).ref
        except FileNotFoundError:
            return False
        if not same_object(now, ref):
            return False
        self.fs.rm_file(full)
        return True
