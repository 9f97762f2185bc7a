"""A staged file whose bytes a power cut cut short is never uploaded over the lake's object."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import fsspec
import pyfuse3
import pytest

from tierfs.config import load
from tierfs.mount import build
from tierfs.namespace.inodes import ROOT_INODE
from tierfs.store.objects import ObjectStore


def _build(fs: Any, root: str, cache: Path) -> Any:
    settings = load(None, {"lake_url": f"memory://{root}", "cache_dir": str(cache), "block_size": "4KiB",
                           "store_retries": "1"})
    return build(settings, ObjectStore(fs, root, settings.lake_url, retries=1))


async def test_a_pending_file_cut_short_is_set_aside_not_uploaded(tmp_path: Path) -> None:
    fs = fsspec.filesystem("memory", skip_instance_cache=True)
    root = f"/p{tmp_path.name}"
    fs.pipe(f"{root}/ds/ckpt.pt", b"OLD" * 3000)
    cache = tmp_path / "cache"
    comps = _build(fs, root, cache)
    try:
        ops = comps.operations
        ds = await ops.lookup(ROOT_INODE, b"ds", None)
        ckpt = await ops.lookup(ds.st_ino, b"ckpt.pt", None)
        fi = await ops.open(ckpt.st_ino, os.O_WRONLY | os.O_TRUNC, None)
        await ops.write(fi.fh, 0, b"NEW" * 5000)
        real = fs.put_file
        fs.put_file = lambda *a, **kw: (_ for _ in ()).throw(ConnectionError("injected: the store is away"))
        try:
            with pytest.raises(pyfuse3.FUSEError):
                await ops.flush(fi.fh)  # journalled pending; the upload never got through
        finally:
            fs.put_file = real
        staging = comps.writer.staging.root
        (record,) = [p for p in staging.glob("*.json") if not p.name.endswith(".upload.json")]
        assert json.loads(record.read_text())["state"] == "pending"
    finally:
        comps.close()  # the daemon dies here (nothing is uploaded, nothing set clean)
    os.truncate(staging / f"{record.stem}.data", 4096)  # ...and the power cut lost the tail

    comps = _build(fs, root, cache)
    try:
        note = comps.writer.recover()
        assert "not uploaded" in note and "unclosed" in note, note
        assert comps.stats()["writes"]["pending_uploads"] == 0
        assert fs.cat(f"{root}/ds/ckpt.pt") == b"OLD" * 3000  # the lake keeps the good object
        (kept,) = (staging / "unclosed").iterdir()
        assert kept.read_bytes() == (b"NEW" * 5000)[:4096] and kept.name.endswith("ds__ckpt.pt")
        assert not list(staging.glob("*.json")) and not list(staging.glob("*.data"))
    finally:
        comps.close()
        fs.rm(root, recursive=True)
