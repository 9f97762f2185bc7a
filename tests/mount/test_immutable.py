"""Immutable prefixes ([metadata] immutable_prefixes) on real mounts: cached until remount, and read-only."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import Mount, mounted, write_tree

pytestmark = pytest.mark.mount

TTL = 0.2
FILES = {"a.txt": b"one", "b.txt": b"two", "sub/c.txt": b"three"}


def _requests(m: Mount) -> int:
    return int(m.stats()["backend"]["requests"])


def _fuse(m: Mount, *ops: str) -> int:
    counts = m.stats()["fuse"]
    return sum(int(counts[op]) for op in ops)


def _change_upstream(d: Path) -> None:
    (d / "a.txt").write_bytes(b"rewritten")
    (d / "new.txt").write_bytes(b"new")
    (d / "b.txt").unlink()
    (d / "missing.txt").write_bytes(b"here now")


def _first_look(d: Path) -> None:
    assert sorted(os.listdir(d)) == ["a.txt", "b.txt", "sub"]
    assert sorted(os.listdir(d / "sub")) == ["c.txt"]
    for name, data in FILES.items():
        assert (d / name).read_bytes() == data
    assert not (d / "missing.txt").exists()


def _stat_each(fd: int) -> None:
    assert os.stat("a.txt", dir_fd=fd).st_size == os.stat("b.txt", dir_fd=fd).st_size == 3
    assert os.stat("sub", dir_fd=fd)
    for name in ("new.txt", "missing.txt"):
        with pytest.raises(FileNotFoundError):
            os.stat(name, dir_fd=fd)


def test_an_immutable_prefix_is_cached_until_remount_and_refuses_writes(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    frozen, live = root / "datasets/imagenet", root / "runs"
    write_tree(frozen, FILES)
    write_tree(live, FILES)
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    with mounted(f"file://{root}", mnt, cache, "--metadata-ttl", str(TTL),
                 "--immutable-prefix", "datasets/imagenet/") as m:
        _first_look(mnt / "datasets/imagenet")
        _first_look(mnt / "runs")
        m.fills_settled()
        _change_upstream(frozen)
        _change_upstream(live)
        time.sleep(3 * TTL)

        d = mnt / "datasets/imagenet"
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            requests, readdirs = _requests(m), _fuse(m, "readdir")
            assert sorted(os.listdir(d)) == ["a.txt", "b.txt", "sub"]  # the new file never appears
            assert (d / "a.txt").read_bytes() == b"one"  # the old bytes (kept pages, or the tiers)
            assert (d / "b.txt").read_bytes() == b"two"  # deleted upstream: still here
            _stat_each(fd)
            assert _requests(m) == requests  # not one request to the store
            # Past the TTL, the kernel still answers from its own caches: entries, attributes, missing names.
            time.sleep(3 * TTL)
            looked = _fuse(m, "lookup", "getattr")
            _stat_each(fd)
            assert _fuse(m, "lookup", "getattr") == looked
            assert sorted(os.listdir(d)) == ["a.txt", "b.txt", "sub"]
            assert _fuse(m, "readdir") == readdirs  # the kernel's directory cache is kept
        finally:
            os.close(fd)

        # Outside the prefix the same change is seen after the TTL.
        assert sorted(os.listdir(mnt / "runs")) == ["a.txt", "missing.txt", "new.txt", "sub"]
        assert (mnt / "runs/a.txt").read_bytes() == b"rewritten"
        assert (mnt / "runs/missing.txt").read_bytes() == b"here now"
        assert _requests(m) > requests

        # What never changes is not changed through the mount either.
        refused: list[Callable[[], object]] = [
            lambda: (d / "a.txt").write_bytes(b"x"),
            lambda: open(d / "a.txt", "ab").close(),
            lambda: (d / "fresh.txt").write_bytes(b"x"),
            lambda: (d / "newdir").mkdir(),
            lambda: (d / "a.txt").unlink(),
            lambda: os.truncate(d / "a.txt", 0),
            lambda: os.rename(d / "a.txt", mnt / "runs/moved.txt"),
            lambda: os.rename(mnt / "runs/a.txt", d / "in.txt"),
            lambda: os.rename(mnt / "datasets", mnt / "elsewhere"),  # would take the prefix along
            lambda: (d / "sub/c.txt").unlink(),
        ]
        for call in refused:
            with pytest.raises(OSError) as e:
                call()
            assert e.value.errno == errno.EROFS
        assert (frozen / "a.txt").read_bytes() == b"rewritten" and not (frozen / "fresh.txt").exists()
        (mnt / "runs/free.txt").write_bytes(b"free")  # outside: writable
        assert (live / "free.txt").read_bytes() == b"free"
        assert "EROFS" not in m.log_tail() and "Read-only" not in m.log_tail()  # refusals are not logged at info

    # A remount sees what changed, with the prefix from the config file this time.
    cfg = tmp_path / "tierfs.toml"
    cfg.write_text('[metadata]\nimmutable_prefixes = ["datasets/imagenet/"]\n')
    with mounted(f"file://{root}", mnt, cache, "--metadata-ttl", str(TTL), config=cfg):
        d = mnt / "datasets/imagenet"
        assert sorted(os.listdir(d)) == ["a.txt", "missing.txt", "new.txt", "sub"]
        assert (d / "a.txt").read_bytes() == b"rewritten"
        assert (d / "missing.txt").read_bytes() == b"here now"
        with pytest.raises(OSError) as e:
            (d / "new.txt").write_bytes(b"x")
        assert e.value.errno == errno.EROFS
