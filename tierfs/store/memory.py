"""A lake in memory (``memory://``), for fast unit tests: fsspec's memory filesystem.

It has no ETags; the stand-in (creation time and size, see Backend.entry) is
checked before a read, so a test that rewrites an object sees what a real
store's If-Match gives.
"""

from __future__ import annotations

import posixpath
from typing import ClassVar

from tierfs.refs import ObjectRef
from tierfs.store.backend import Backend, Changed, expected_etag


class MemoryBackend(Backend):
    provider: ClassVar[str] = "memory"

    def read_range(self, ref: ObjectRef, start: int, end: int) -> bytes:
        expected = expected_etag(ref)
        if expected:
            now = self.entry(posixpath.basename(ref.key), ref.key, self.fs.info(self.full(ref.key))).ref
            if now is None or now.etag != expected:
                raise Changed(f"{ref.key} changed upstream (it is not the version this read was for)")
        return super().read_range(ref, start, end)
