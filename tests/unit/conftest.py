from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import fsspec
import pytest

from tierfs.store.objects import ObjectStore


class FlakyFS:
    """An fsspec filesystem that fails chosen calls a number of times: the backend seam."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.root_marker = inner.root_marker
        self.failures: dict[str, int] = {}
        self.calls: dict[str, int] = {}
        self.delay = 0.0

    def _maybe_fail(self, op: str) -> None:
        import time

        self.calls[op] = self.calls.get(op, 0) + 1
        if self.delay:
            time.sleep(self.delay)
        if self.failures.get(op, 0) > 0:
            self.failures[op] -= 1
            raise ConnectionError(f"injected {op} failure")

    def ls(self, path: str, detail: bool = True) -> Any:
        self._maybe_fail("ls")
        return self.inner.ls(path, detail=detail)

    def info(self, path: str) -> Any:
        self._maybe_fail("info")
        return self.inner.info(path)

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kw: Any) -> bytes:
        self._maybe_fail("cat_file")
        data: bytes = self.inner.cat_file(path, start=start, end=end)
        return data


@pytest.fixture
def memfs() -> Iterator[Any]:
    fs = fsspec.filesystem("memory", skip_instance_cache=True)
    root = f"/t{uuid.uuid4().hex[:8]}"
    fs.mkdir(root)
    yield fs, root
    fs.rm(root, recursive=True)


@pytest.fixture
def flaky(memfs: Any) -> tuple[FlakyFS, ObjectStore, Any]:
    fs, root = memfs
    f = FlakyFS(fs)
    store = ObjectStore(f, root, f"memory://{root}", retries=3)  # type: ignore[arg-type]
    return f, store, fs
