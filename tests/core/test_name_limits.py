"""Name limits at the Operations level: every call that makes a name checks it, not only the kernel's lookup."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pyfuse3
import pytest

from tierfs.config import load
from tierfs.errors import NameTooLong
from tierfs.mount import build
from tierfs.namespace.inodes import ROOT_INODE
from tierfs.store.objects import ObjectStore


@pytest.fixture
def comps(tmp_path: Path) -> Iterator[Any]:
    lake = tmp_path / "lake"
    (lake / "ds").mkdir(parents=True)
    (lake / "ds/a.bin").write_bytes(b"a")
    settings = load(None, {"lake_url": f"file://{lake}", "cache_dir": str(tmp_path / "cache")})
    c = build(settings)
    yield c
    c.close()


async def _refused(call: Any) -> None:
    with pytest.raises(pyfuse3.FUSEError) as e:
        await call
    assert e.value.errno == errno.ENAMETOOLONG


async def test_every_call_that_makes_a_name_checks_it(comps: Any, tmp_path: Path) -> None:
    ops, limit = comps.operations, comps.store.name_max
    long = b"n" * (limit + 1)
    ds = await ops.lookup(ROOT_INODE, b"ds", None)
    await _refused(ops.create(ds.st_ino, long, 0o644, 0, None))  # (as when the kernel skipped the lookup)
    await _refused(ops.mkdir(ROOT_INODE, long, 0o755, None))
    await _refused(ops.rename(ds.st_ino, b"a.bin", ROOT_INODE, long, 0, None))
    await _refused(ops.lookup(ds.st_ino, long, None))
    assert comps.writer.stats.snapshot()["staged_files"] == 0
    assert (await ops.statfs(None)).f_namemax == limit
    fi, attr = await ops.create(ds.st_ino, b"b" * limit, 0o644, 0, None)
    await ops.write(fi.fh, 0, b"fits")
    await ops.flush(fi.fh)
    await ops.release(fi.fh)
    assert (tmp_path / "lake/ds" / ("b" * limit)).read_bytes() == b"fits"


def test_each_store_knows_its_limits(tmp_path: Path) -> None:
    local = ObjectStore(fsspec.filesystem("file"), str(tmp_path), f"file://{tmp_path}")
    assert local.name_max == os.statvfs(tmp_path).f_namemax
    assert local.key_max == os.pathconf(tmp_path, "PC_PATH_MAX") - 1
    local.check_key("a" * local.name_max)
    with pytest.raises(NameTooLong):
        local.check_key("a" * (local.name_max + 1))
    with pytest.raises(NameTooLong):
        local.check_key("x/" + "é" * (local.name_max // 2 + 1))  # bytes, not characters, on any component

    class S3FileSystem(fsspec.AbstractFileSystem):  # named as s3fs' class: the limits go by the store
        pass

    class AzureBlobFileSystem(fsspec.AbstractFileSystem):
        pass

    s3 = ObjectStore(S3FileSystem(skip_instance_cache=True), "bucket/pre", "s3://bucket/pre")
    assert s3.key_length("a") == len("pre/a") and s3.name_max == 1024 - len("pre/")
    s3.check_key("a/" * 300 + "b" * (1024 - 4 - 600))  # 1024 bytes of key, in many parts
    with pytest.raises(NameTooLong):
        s3.check_key("é" * 511)  # 1022 bytes after a prefix of 4
    bucket_root = ObjectStore(S3FileSystem(skip_instance_cache=True), "bucket", "s3://bucket")
    assert bucket_root.name_max == 1024
    azure = ObjectStore(AzureBlobFileSystem(skip_instance_cache=True), "container/pre", "az://container/pre")
    azure.check_key("é" * (1024 - 4))  # Azure counts characters
    with pytest.raises(NameTooLong):
        azure.check_key("é" * (1024 - 3))
