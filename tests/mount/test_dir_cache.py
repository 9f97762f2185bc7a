"""The kernel's directory cache (cache_readdir) on real mounts: a listing read again costs no readdir."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from helpers import mounted, random_bytes, run_tierfs, write_tree

pytestmark = pytest.mark.mount


def readdirs(m) -> int:  # type: ignore[no-untyped-def]
    return int(m.stats()["fuse"]["readdir"])


def test_a_snapshot_directory_is_listed_by_the_kernel_after_the_first_time(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    write_tree(root / "datasets/toy", {f"c{i % 3}/{i:03d}.jpg": random_bytes(100 + i, seed=i) for i in range(30)})
    run_tierfs("snapshot", "create", f"file://{root}", "datasets/toy", "v1", check=True)
    with mounted(f"file://{root}", tmp_path / "mnt", tmp_path / "cache") as m:
        snap = m.mountpoint / ".snapshots/toy/v1/c1"
        names = sorted(os.listdir(snap))
        assert names == sorted(p.name for p in (root / "datasets/toy/c1").iterdir())
        before = readdirs(m)
        for _ in range(5):
            assert sorted(os.listdir(snap)) == names
        assert readdirs(m) == before


def test_a_live_directory_is_cached_within_the_ttl_and_never_past_a_change(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    write_tree(root, {f"d/{i:03d}.bin": b"x" * i for i in range(20)})
    with mounted(f"file://{root}", tmp_path / "mnt", tmp_path / "cache", "--metadata-ttl", "1") as m:
        d = m.mountpoint / "d"
        names = sorted(os.listdir(d))
        before = readdirs(m)
        for _ in range(5):
            assert sorted(os.listdir(d)) == names
        assert readdirs(m) == before  # within the TTL the kernel lists it from its own cache
        # A change made through the mount is listed at once.
        (d / "new.bin").write_bytes(b"new")
        assert "new.bin" in os.listdir(d)
        os.unlink(d / "000.bin")
        assert "000.bin" not in os.listdir(d)
        # A change upstream is listed once the TTL has passed.
        (root / "d/upstream.bin").write_bytes(b"up")
        time.sleep(1.3)
        assert "upstream.bin" in os.listdir(d)
        assert sorted(os.listdir(d)) == sorted(p.name for p in (root / "d").iterdir())
