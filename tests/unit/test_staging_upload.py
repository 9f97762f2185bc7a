"""Staged files' journal, and uploads that never show a half-written object."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import fsspec
import pytest

from tierfs.errors import StoreError
from tierfs.store.objects import ObjectStore
from tierfs.store.upload import Uploader
from tierfs.write.staging import DIRTY, Staging


def test_leftovers_upload_pending_and_set_aside_unclosed(tmp_path: Path) -> None:
    staging = Staging(tmp_path / "staging")
    closed = staging.create("models/a.pt")
    os.pwrite(closed.fd, b"closed bytes", 0)
    staging.seal(closed)  # what a close does: the bytes on disk, then the pending record
    open_one = staging.create("logs/b.txt")
    os.pwrite(open_one.fd, b"half", 0)
    staging.mark(open_one, DIRTY)
    clean = staging.create("c.bin", base=None)
    staging.mark(clean, "clean")
    staging.close()  # the daemon dies here

    again = Staging(tmp_path / "staging")
    left = again.leftovers()
    pending, unclosed = left.pending, left.unclosed
    assert [(sf.key, sf.size, sf.dirty) for sf in pending] == [("models/a.pt", 12, True)]
    assert os.pread(pending[0].fd, 100, 0) == b"closed bytes"
    assert unclosed == ["logs/b.txt"]
    kept = list(again.unclosed_dir.iterdir())
    assert len(kept) == 1 and kept[0].read_bytes() == b"half" and kept[0].name.endswith("logs__b.txt")
    assert sorted(p.name for p in again.root.glob("*.data")) == [f"{pending[0].id}.data"]
    again.close()


def test_a_second_mount_cannot_share_a_staging_dir(tmp_path: Path) -> None:
    from tierfs.errors import UserError

    first = Staging(tmp_path / "s")
    with pytest.raises(UserError, match="in use by another tierfs instance in this process"):
        Staging(tmp_path / "s")
    first.close()


def test_local_upload_is_never_seen_half_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lake = tmp_path / "lake"
    lake.mkdir()
    fs = fsspec.filesystem("file")
    store = ObjectStore(fs, str(lake), f"file://{lake}", retries=1)
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 100_000)
    real = fs.put_file

    def dies_halfway(lpath: str, rpath: str, **kw: Any) -> None:
        Path(rpath).write_bytes(b"x" * 50_000)  # half of it landed somewhere...
        raise ConnectionError("injected: disk went away")

    monkeypatch.setattr(fs, "put_file", dies_halfway)
    with pytest.raises((StoreError, ConnectionError)):
        Uploader(store).upload(src, "models/m.bin")
    assert not (lake / "models/m.bin").exists()  # ...but never under the object's name
    assert not any((lake / ".tierfs/upload").iterdir())
    monkeypatch.setattr(fs, "put_file", real)
    entry = Uploader(store).upload(src, "models/m.bin")
    assert entry.size == 100_000 and (lake / "models/m.bin").read_bytes() == b"x" * 100_000


def test_cp_into_and_out_of_a_local_lake(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from tierfs.cli import cli

    lake = tmp_path / "lake"
    lake.mkdir()
    src = tmp_path / "ckpt.pt"
    src.write_bytes(os.urandom(300_000))
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    res = CliRunner(env=env).invoke(cli, ["cp", str(src), f"file://{lake}/models/"])
    assert res.exit_code == 0, res.output
    assert (lake / "models/ckpt.pt").read_bytes() == src.read_bytes()
    out = tmp_path / "out.pt"
    res = CliRunner(env=env).invoke(cli, ["cp", f"file://{lake}/models/ckpt.pt", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_bytes() == src.read_bytes()
    assert not list(tmp_path.glob("*.tierfs-partial*"))
    res = CliRunner(env=env).invoke(cli, ["cp", str(src), str(out)])
    assert res.exit_code != 0 and "must be a lake URL" in str(res.exception)


def test_download_resumes_and_never_leaves_a_partial_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tierfs.store.download import download

    fs = fsspec.filesystem("memory", skip_instance_cache=True)
    root = f"/dl{tmp_path.name}"
    data = os.urandom(10 * 4096 + 5)
    fs.pipe(f"{root}/big", data)
    store = ObjectStore(fs, root, f"memory://{root}", retries=1)
    ref = store.stat("big").ref
    assert ref is not None
    real = store.read_range
    calls = {"n": 0}

    def flaky(r: Any, start: int, end: int) -> bytes:
        calls["n"] += 1
        if calls["n"] == 4:
            raise StoreError("injected: read timed out")
        return real(r, start, end)

    monkeypatch.setattr(store, "read_range", flaky)
    target = tmp_path / "big.bin"
    with pytest.raises(StoreError):
        download(store, ref, target, 4096, 1)
    assert not target.exists()
    already = download(store, ref, target, 4096, 2)
    assert 3 * 4096 <= already < len(data)  # chunks fetched before the failure were kept
    assert target.read_bytes() == data
    fs.rm(root, recursive=True)
