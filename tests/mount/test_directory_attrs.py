"""Directory times and link counts, and a file's attributes after ftruncate + close, on a real mount of a file:// lake."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from helpers import mounted, write_tree

pytestmark = pytest.mark.mount

TREE = {"a/b/c/f1": b"1", "a/b/g": b"22", "a/d/e/h": b"333", "a/x": b"x" * 10, "top.txt": b"t"}


def test_directory_times_are_never_1970(tmp_path: Path) -> None:
    """The root, .snapshots and a directory made here have a time: the mount's start, never 0."""
    lake = tmp_path / "lake"
    write_tree(lake, TREE)
    started = time.time()
    with mounted(f"file://{lake}", tmp_path / "mnt", tmp_path / "cache") as m:
        mnt = m.mountpoint
        (mnt / "made-here").mkdir()
        for rel in ("", ".snapshots", "made-here"):
            st = os.stat(mnt / rel)
            assert started - 5 <= st.st_mtime <= time.time() + 1, (rel, time.ctime(st.st_mtime))
            assert st.st_ctime == st.st_atime == st.st_mtime, rel
        # a local lake's directories keep their own times (to the microsecond fsspec's float gives)
        assert abs(os.stat(mnt / "a/b").st_mtime_ns - os.stat(lake / "a/b").st_mtime_ns) < 1000


def test_directory_link_count_is_one_and_find_and_du_see_everything(tmp_path: Path) -> None:
    """nlink 1 on every directory: "not counted", so find and du never skip a subdirectory."""
    lake = tmp_path / "lake"
    write_tree(lake, TREE)
    with mounted(f"file://{lake}", tmp_path / "mnt", tmp_path / "cache") as m:
        mnt = m.mountpoint
        (mnt / "a/new-dir").mkdir()
        for rel in ("", "a", "a/b", "a/b/c", "a/new-dir", ".snapshots"):
            assert os.stat(mnt / rel).st_nlink == 1, rel
        assert os.stat(mnt / "a/x").st_nlink == 1
        expected = {str(p.relative_to(lake)) for p in (lake / "a").rglob("*")} | {"a"}
        for extra in ([], ["-noleaf"]):
            out = subprocess.run(["find", str(mnt / "a"), *extra], capture_output=True, text=True, check=True).stdout
            assert {os.path.relpath(line, mnt) for line in out.splitlines()} == expected
        dirs = subprocess.run(["find", str(mnt / "a"), "-type", "d"], capture_output=True, text=True, check=True).stdout
        assert len(dirs.splitlines()) == sum(1 for p in (lake / "a").rglob("*") if p.is_dir()) + 1
        du = subprocess.run(["du", "-a", str(mnt / "a")], capture_output=True, text=True, check=True).stdout
        assert {os.path.relpath(line.split("\t", 1)[1], mnt) for line in du.splitlines()} == expected


@pytest.mark.parametrize("how", ["shrink", "grow", "write-then-shrink"])
def test_ftruncate_then_close_shows_the_uploaded_object(tmp_path: Path, how: str) -> None:
    """After ftruncate and close, stat through the mount is the object the lake now holds: its mtime and size."""
    lake = tmp_path / "lake"
    write_tree(lake, TREE)
    with mounted(f"file://{lake}", tmp_path / "mnt", tmp_path / "cache") as m:
        path = m.mountpoint / "a/x"
        before = os.stat(path)
        time.sleep(0.05)  # the upload's mtime is then visibly another
        fd = os.open(path, os.O_RDWR)
        try:
            if how == "write-then-shrink":
                os.write(fd, b"hello")
            os.ftruncate(fd, {"shrink": 3, "grow": 20, "write-then-shrink": 4}[how])
        finally:
            os.close(fd)
        seen, stored = os.stat(path), os.stat(lake / "a/x")
        assert stored.st_mtime_ns != before.st_mtime_ns
        assert (seen.st_size, seen.st_mtime_ns) == (stored.st_size, stored.st_mtime_ns)
        assert path.read_bytes() == (lake / "a/x").read_bytes()
