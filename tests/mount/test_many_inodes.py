"""Renames on a mount whose inode table holds 10,000 known files: only the renamed names change."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from helpers import mounted, write_tree


def test_renames_among_ten_thousand_known_inodes(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    files = {f"shards/{d}/{i:04d}.bin": f"{d}/{i}".encode() for d in ("a", "b") for i in range(5000)}
    files.update({"run/cfg.json": b"{}", "run/ckpt/step1.pt": b"step1", "run/ckpt/step2.pt": b"step2"})
    write_tree(lake, files)
    mnt = tmp_path / "mnt"
    fds: dict[str, int] = {}
    with mounted(f"file://{lake}", mnt, tmp_path / "cache"):
        try:
            # Every file open: known to the mount until closed, whatever the kernel's dentry cache drops.
            for rel in files:
                fds[rel] = os.open(mnt / rel, os.O_RDONLY)
            inodes = {rel: os.fstat(fd).st_ino for rel, fd in fds.items()}
            assert _known_inodes(mnt) >= len(files)
            _renames(mnt, lake, files, inodes, fds)
        finally:
            for fd in fds.values():
                os.close(fd)


def _renames(mnt: Path, lake: Path, files: dict[str, bytes], inodes: dict[str, int], fds: dict[str, int]) -> None:
    # A file out of a directory of 5,000, into another one.
    os.rename(mnt / "shards/a/0042.bin", mnt / "shards/b/moved.bin")
    assert (mnt / "shards/b/moved.bin").read_bytes() == b"a/42"
    assert os.stat(mnt / "shards/b/moved.bin").st_ino == inodes["shards/a/0042.bin"]
    with pytest.raises(FileNotFoundError):
        os.stat(mnt / "shards/a/0042.bin")
    assert (lake / "shards/b/moved.bin").read_bytes() == b"a/42"
    assert os.pread(fds["shards/a/0042.bin"], 100, 0) == b"a/42"  # its open handle reads on

    # Over an existing, known file.
    os.rename(mnt / "shards/b/0001.bin", mnt / "shards/b/0002.bin")
    assert (mnt / "shards/b/0002.bin").read_bytes() == b"b/1"
    assert not (mnt / "shards/b/0001.bin").exists()

    # A directory with known inodes below it; a name that shares its prefix stays.
    os.mkdir(mnt / "run2")
    os.rename(mnt / "run", mnt / "done")
    assert sorted(os.listdir(mnt / "done/ckpt")) == ["step1.pt", "step2.pt"]
    assert (mnt / "done/ckpt/step2.pt").read_bytes() == b"step2"
    assert os.stat(mnt / "done/ckpt/step1.pt").st_ino == inodes["run/ckpt/step1.pt"]
    with pytest.raises(OSError) as e:
        os.stat(mnt / "run/ckpt/step1.pt")
    assert e.value.errno == errno.ENOENT
    assert (mnt / "run2").is_dir()

    # A file being written (staged), renamed while open, then closed.
    with open(mnt / "done/ckpt/step3.tmp", "wb") as fh:
        fh.write(b"step3")
        fh.flush()
        os.rename(mnt / "done/ckpt/step3.tmp", mnt / "done/ckpt/step3.pt")
        fh.write(b"!")
    assert (lake / "done/ckpt/step3.pt").read_bytes() == b"step3!"
    assert not (lake / "done/ckpt/step3.tmp").exists()

    # Everything else is as it was, under the same inodes.
    for rel in ("shards/a/0000.bin", "shards/a/4999.bin", "shards/b/4999.bin", "shards/a/0043.bin"):
        assert (mnt / rel).read_bytes() == files[rel]
        assert os.stat(mnt / rel).st_ino == inodes[rel]
    assert len(os.listdir(mnt / "shards/a")) == 4999
    assert len(os.listdir(mnt / "shards/b")) == 5000  # one in, one renamed over


def _known_inodes(mnt: Path) -> int:
    return int(json.loads(os.getxattr(mnt, "user.tierfs.stats"))["inodes"])
