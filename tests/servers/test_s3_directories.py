"""Directories of an S3 lake on a server that keeps directory markers (SeaweedFS), through a real mount."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import MotoS3, SeaweedS3, mounted

pytestmark = [pytest.mark.servers, pytest.mark.mount]
TTL = 1.0


def _lake(server: SeaweedS3, tmp_path: Path, bucket: str) -> tuple[Any, Path]:
    fs = server.fs()
    fs.mkdir(bucket)
    cfg = server.s3_config(tmp_path / "s3.toml")
    cfg.write_text(cfg.read_text() + f"[metadata]\nttl = {TTL}\n")
    return fs, cfg


def _marker(fs: Any, bucket: str, rel: str) -> bool:
    """Whether the server still holds ``rel/`` (SeaweedFS keeps an emptied directory as one)."""
    fs.invalidate_cache()
    try:
        fs.call_s3("head_object", Bucket=bucket, Key=f"{rel}/")
    except FileNotFoundError:
        return False
    return True


def test_rmdir_of_an_emptied_directory_stays_gone(s3_server: SeaweedS3, tmp_path: Path) -> None:
    fs, cfg = _lake(s3_server, tmp_path, "rmdir-gone")
    fs.pipe("rmdir-gone/keep/k.txt", b"k")
    with mounted("s3://rmdir-gone", tmp_path / "mnt", tmp_path / "cache", config=cfg) as m:
        mnt = m.mountpoint
        (mnt / "runs").mkdir()
        (mnt / "runs/a.txt").write_bytes(b"a")
        os.unlink(mnt / "runs/a.txt")
        assert _marker(fs, "rmdir-gone", "runs")  # what the server keeps of an emptied directory
        os.rmdir(mnt / "runs")
        assert "runs" not in os.listdir(mnt)
        assert not _marker(fs, "rmdir-gone", "runs")
        time.sleep(TTL + 0.5)  # listed again from the server: still gone
        assert "runs" not in os.listdir(mnt)
    with mounted("s3://rmdir-gone", tmp_path / "mnt2", tmp_path / "cache2", config=cfg) as m2:
        assert sorted(os.listdir(m2.mountpoint)) == [".snapshots", "keep"]


def test_a_directory_emptied_upstream_is_empty_and_rmdir_removes_it(s3_server: SeaweedS3, tmp_path: Path) -> None:
    fs, cfg = _lake(s3_server, tmp_path, "rmdir-upstream")
    fs.pipe("rmdir-upstream/other/f.txt", b"x")
    fs.pipe("rmdir-upstream/other/sub/g.txt", b"y")
    started = time.time()
    with mounted("s3://rmdir-upstream", tmp_path / "mnt", tmp_path / "cache", config=cfg) as m:
        mnt = m.mountpoint
        assert sorted(os.listdir(mnt / "other")) == ["f.txt", "sub"]
        # a prefix has no time of its own: the mount's start, never 1970
        assert os.stat(mnt / "other").st_mtime >= started - 5
        fs.rm("rmdir-upstream/other/f.txt")
        fs.rm("rmdir-upstream/other/sub/g.txt")
        time.sleep(TTL + 0.5)
        assert os.listdir(mnt / "other") == ["sub"]  # the server kept both directories
        assert os.listdir(mnt / "other/sub") == []
        os.rmdir(mnt / "other/sub")
        os.rmdir(mnt / "other")
        assert not _marker(fs, "rmdir-upstream", "other")
        time.sleep(TTL + 0.5)
        assert os.listdir(mnt) == [".snapshots"]


def test_keys_with_dot_dot_or_empty_names_are_never_listed(moto: MotoS3, tmp_path: Path) -> None:
    """A bucket where another tool wrote 'a/../b.txt' and 'a//c.txt' (moto keeps keys verbatim): the mount
    lists neither '..' nor an empty name, reads the rest, and tierfs:// refuses such a key in one line."""
    fs = moto.fs()
    fs.call_s3("create_bucket", Bucket="odd-keys")
    fs.pipe("odd-keys/a/ok.txt", b"ok")
    fs.pipe("odd-keys/a/../b.txt", b"dot dot")
    fs.pipe("odd-keys/a//c.txt", b"empty name")
    cfg = moto.config(tmp_path / "moto.toml")
    with mounted("s3://odd-keys", tmp_path / "mnt", tmp_path / "cache", config=cfg) as m:
        names = os.listdir(m.mountpoint / "a")
        assert "ok.txt" in names and ".." not in names and "" not in names
        assert (m.mountpoint / "a/ok.txt").read_bytes() == b"ok"
        assert "left out of the listing" in (tmp_path / "cache" / "tierfs.log").read_text()
    from tierfs.config import load
    from tierfs.errors import BadKey
    from tierfs.store.objects import ObjectStore

    store = ObjectStore.open(load(cfg, {"lake_url": "s3://odd-keys"}))
    with pytest.raises(BadKey):
        store.read_all("a/../b.txt")


def test_a_lookup_of_a_large_folder_asks_for_one_page_of_its_listing(s3_server: SeaweedS3, tmp_path: Path) -> None:
    """Whether a name with no object is a folder is one page of a listing: the stat of a 2,500-entry folder
    listed all of it (three pages), and a folder of a million entries would have been listed whole."""
    from concurrent.futures import ThreadPoolExecutor

    from faultproxy import FaultProxy

    fs, _ = _lake(s3_server, tmp_path, "big-folder")
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: fs.pipe(f"big-folder/big/{i:05d}.bin", b"x"), range(2500)))
    fs.pipe("big-folder/top.txt", b"t")
    fs.mkdir("big-folder/empty/")  # a folder that is only its marker
    fs.pipe("big-folder/empty/", b"")
    with FaultProxy("127.0.0.1", s3_server.s3_port, seed=1) as proxy:
        cfg = s3_server.s3_config(tmp_path / "proxied.toml", endpoint=proxy.endpoint)
        with mounted("s3://big-folder", tmp_path / "mnt", tmp_path / "cache", "--read-only", config=cfg) as m:
            for name, exists in (("big", True), ("empty", True), ("missing", False)):
                before = len(proxy.request_lines())
                assert os.path.isdir(m.mountpoint / name) is exists
                assert os.path.lexists(m.mountpoint / name) is exists
                # (the listing of the root a second lookup there starts behind it is not this name's)
                lists = [ln for ln in proxy.request_lines()[before:] if "list-type=2" in ln and f"prefix={name}" in ln]
                assert len(lists) <= 1, f"{name}: {lists}"
            assert len(os.listdir(m.mountpoint / "big")) == 2500  # and the listing itself is whole
