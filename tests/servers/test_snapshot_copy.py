"""Copy-mode snapshots against real stores: SeaweedFS (S3), fake-gcs-server, Azurite and a local lake.

Each object is copied server side, conditional on the identity the listing
gave it. A hook right before a copy (the store's copy_ref) makes a writer
act exactly there: rewrite the source, or delete it. Whatever happens, the
snapshot holds one version of each file, the one its manifest names.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import random_bytes, write_tree

from tierfs.config import load
from tierfs.errors import StoreError
from tierfs.refs import ObjectRef
from tierfs.store.objects import ObjectStore
from tierfs.versions.catalog import open_snapshot
from tierfs.versions.create import create_snapshot

pytestmark = [pytest.mark.servers,
              pytest.mark.filterwarnings("ignore:Sending a large body:ResourceWarning")]  # adlfs' fixture uploads
MiB = 1 << 20
_BUCKETS = itertools.count()  # the S3 server lives for the session: a bucket per test


@dataclass
class Lake:
    store: ObjectStore
    put: Callable[[str, bytes], None]  # straight to the server, as another writer would
    remove: Callable[[str], None]


@pytest.fixture(params=["s3", "gcs", "azure", "local"])
def lake(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lake]:
    kind = request.param
    if kind == "local":
        root = tmp_path / "lake"
        root.mkdir()
        store = ObjectStore.open(load(None, {"lake_url": f"file://{root}"}))
        yield Lake(store, lambda k, d: write_tree(root, {k: d}), lambda k: (root / k).unlink())
        return
    if kind == "s3":
        server = request.getfixturevalue("s3_server")
        bucket, cfg, fs = f"copy-lake-{next(_BUCKETS)}", server.s3_config(tmp_path / "s3.toml"), server.fs()
        fs.mkdir(bucket)
        url = f"s3://{bucket}"
    elif kind == "gcs":
        emulator = request.getfixturevalue("gcs")
        bucket, cfg, fs = "copy-lake", emulator.config(tmp_path / "gcs.toml"), emulator.fs()
        fs.mkdir(bucket)  # unversioned: snapshots copy
        url = f"gs://{bucket}"
    else:
        emulator = request.getfixturevalue("azure")
        bucket, cfg, fs = "copy-lake", emulator.config(tmp_path / "az.toml"), emulator.fs()
        fs.mkdir(bucket)
        url = f"az://{bucket}"
    store = ObjectStore.open(load(cfg, {"lake_url": url}))
    try:
        yield Lake(store, lambda k, d: fs.pipe(f"{bucket}/{k}", d), lambda k: fs.rm(f"{bucket}/{k}"))
    finally:
        if kind == "s3":
            with contextlib.suppress(Exception):
                fs.rm(bucket, recursive=True)


def _files() -> dict[str, bytes]:
    return {f"ds/{d}/{i}.bin": random_bytes(20_000 + i, seed=10 * i + len(d)) for d in ("a", "b") for i in range(3)}


def _before_copy(store: ObjectStore, key: str, act: Callable[[ObjectRef], None], every: bool = False) -> list[str]:
    """Run ``act`` right before the store copies ``key`` (the first time, or ``every`` time); the copies seen."""
    real = store.backend.copy_ref
    seen: list[str] = []

    def copy_ref(ref: ObjectRef, dst: str) -> Any:
        seen.append(ref.key)
        if ref.key == key and (every or seen.count(key) == 1):
            act(ref)
        return real(ref, dst)

    store.backend.copy_ref = copy_ref  # type: ignore[method-assign]
    return seen


def _frozen(store: ObjectStore, name: str) -> dict[str, tuple[bytes, str]]:
    """Each file of snapshot ``ds@name``: its bytes as read from the lake, and the identity its manifest names."""
    out = {}
    for e in open_snapshot(store, "ds", name):
        ref = e.ref()
        if ref is not None:
            out[f"ds/{e.path}"] = (store.read_range(ref, 0, ref.size), e.cache_id)
    return out


def _identity(store: ObjectStore, key: str) -> str:
    ref = store.stat(key).ref
    assert ref is not None
    return ref.identity()


def test_a_source_rewritten_mid_snapshot_is_frozen_as_one_version(lake: Lake) -> None:
    files = _files()
    for key, data in files.items():
        lake.put(key, data)
    listed = {key: _identity(lake.store, key) for key in files}
    rewritten = "ds/a/1.bin"
    v2 = random_bytes(30_000, seed=99)
    seen = _before_copy(lake.store, rewritten, lambda ref: lake.put(rewritten, v2))
    meta = create_snapshot(lake.store, "ds", "v1", mode="copy")
    assert meta.file_count == len(files) and seen.count(rewritten) == 2  # the first copy was refused, or undone
    now = {**files, rewritten: v2}
    frozen = _frozen(lake.store, "v1")
    assert {k: data for k, (data, _) in frozen.items()} == now
    # the identity each entry names is that of the bytes it holds: v2's for the rewritten file
    assert {k: ident for k, (_, ident) in frozen.items()} == {**listed, rewritten: _identity(lake.store, rewritten)}
    assert "copy-etag-differs" not in lake.store.quirks  # (S3: small copies stay on obstore, checked by ETag)
    lake.put(rewritten, b"v3")  # the snapshot is frozen
    assert _frozen(lake.store, "v1")[rewritten][0] == v2


def test_unchanged_objects_are_reused_without_a_copy(lake: Lake) -> None:
    files = _files()
    for key, data in files.items():
        lake.put(key, data)
    create_snapshot(lake.store, "ds", "v1", mode="copy")
    lake.put("ds/b/2.bin", b"changed")
    seen = _before_copy(lake.store, "", lambda ref: None)
    create_snapshot(lake.store, "ds", "v2", mode="copy")
    assert seen == ["ds/b/2.bin"]
    assert {k: d for k, (d, _) in _frozen(lake.store, "v2").items()} == {**files, "ds/b/2.bin": b"changed"}


def test_a_source_deleted_mid_snapshot_is_left_out(lake: Lake) -> None:
    files = _files()
    for key, data in files.items():
        lake.put(key, data)
    _before_copy(lake.store, "ds/b/0.bin", lambda ref: lake.remove("ds/b/0.bin"))
    meta = create_snapshot(lake.store, "ds", "v1", mode="copy")
    assert meta.file_count == len(files) - 1
    assert {k: d for k, (d, _) in _frozen(lake.store, "v1").items()} == {k: v for k, v in files.items()
                                                                        if k != "ds/b/0.bin"}


def test_a_source_that_keeps_changing_fails_the_snapshot_in_one_line(lake: Lake) -> None:
    files = _files()
    for key, data in files.items():
        lake.put(key, data)
    n = iter(range(100))
    _before_copy(lake.store, "ds/a/0.bin", lambda ref: lake.put("ds/a/0.bin", b"x" * next(n)), every=True)
    with pytest.raises(StoreError, match=r"^ds/a/0.bin keeps changing while being snapshotted; try again"):
        create_snapshot(lake.store, "ds", "v1", mode="copy")
    assert not lake.store.exists(".tierfs/snapshots/ds/v1/meta.json")


def test_a_large_s3_object_is_copied_in_parts_all_of_one_version(s3_server: Any, tmp_path: Path) -> None:
    """UploadPartCopy, each part If-Match the source's ETag: a rewrite between two parts fails the copy whole."""
    fs = s3_server.fs()
    fs.mkdir("copy-parts")
    v1, v2 = random_bytes(12 * MiB + 7, seed=1), random_bytes(11 * MiB + 3, seed=2)
    fs.pipe("copy-parts/ds/big.bin", v1)
    store = ObjectStore.open(load(s3_server.s3_config(tmp_path / "s3.toml"), {"lake_url": "s3://copy-parts"}))
    backend: Any = store.backend
    backend.copy_in_one_max, backend.copy_part_size = 6 * MiB, 5 * MiB  # (S3's own: 5 GiB, parts of 5 MiB or more)
    real = backend.fs._call_s3
    parts: list[int] = []

    async def call_s3(method: str, *args: Any, **kwargs: Any) -> Any:
        if method == "upload_part_copy":
            parts.append(kwargs["PartNumber"])
            if len(parts) == 2:  # the source is rewritten between two parts of its copy
                await backend.fs._pipe_file("copy-parts/ds/big.bin", v2)
        return await real(method, *args, **kwargs)

    backend.fs._call_s3 = call_s3
    try:
        create_snapshot(store, "ds", "v1", mode="copy")
    finally:
        backend.fs._call_s3 = real
    assert sorted(parts[-3:]) == [1, 2, 3]  # v1's copy failed at its second part; v2's three went through
    assert _frozen(store, "v1") == {"ds/big.bin": (v2, _identity(store, "ds/big.bin"))}
    assert fs.call_s3("list_multipart_uploads", Bucket="copy-parts").get("Uploads", []) == []  # aborted, not left
