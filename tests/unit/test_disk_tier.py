"""Disk tier specifics: checksums, crash repair, layout, lock, mode."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tierfs.errors import UserError
from tierfs.refs import ObjectRef
from tierfs.tiers.disk import DiskTier
from tierfs.tiers.lmdb_index import LANDING


def key(n: int):
    return ObjectRef(f"obj{n}", 100, etag="e").block_key(0, 4096)


def test_cache_dir_mode_0700(tmp_path: Path) -> None:
    t = DiskTier(tmp_path / "c", 1 << 20)
    try:
        assert stat.S_IMODE((tmp_path / "c").stat().st_mode) == 0o700
    finally:
        t.close()


def test_corrupt_block_is_dropped(tmp_path: Path) -> None:
    t = DiskTier(tmp_path / "c", 1 << 20)
    try:
        t.put(key(1), b"A" * 1000)
        path = t._path(key(1).hex)
        data = bytearray(path.read_bytes())
        data[10] ^= 0xFF
        path.write_bytes(bytes(data))
        assert t.get(key(1)) is None
        assert not path.exists()
        assert t.stats.get("entries") == 0
        assert t.stats.get("errors") == 1
    finally:
        t.close()


def test_truncated_block_is_dropped(tmp_path: Path) -> None:
    t = DiskTier(tmp_path / "c", 1 << 20)
    try:
        t.put(key(1), b"A" * 1000)
        os.truncate(t._path(key(1).hex), 10)
        assert t.get(key(1)) is None
    finally:
        t.close()


def test_missing_file_is_forgotten(tmp_path: Path) -> None:
    t = DiskTier(tmp_path / "c", 1 << 20)
    try:
        t.put(key(1), b"A" * 1000)
        t._path(key(1).hex).unlink()
        assert t.get(key(1)) is None
        assert t.stats.get("entries") == 0
    finally:
        t.close()


def test_survives_reopen(tmp_path: Path) -> None:
    t = DiskTier(tmp_path / "c", 1 << 20)
    t.put(key(1), b"persist")
    t.close()
    t = DiskTier(tmp_path / "c", 1 << 20)
    try:
        assert t.get(key(1)) == b"persist"
        assert t.recovered == 0
    finally:
        t.close()


def test_crash_states_are_repaired_from_pending_marks(tmp_path: Path) -> None:
    t = DiskTier(tmp_path / "c", 1 << 20)
    t.put(key(1), b"good block")
    # A crash after the file landed but before the index recorded it:
    orphan = t._path(key(2).hex)
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"orphan")
    t.index.mark([key(2).digest], LANDING)
    # A crash halfway through a temp write:
    (t.tmp_dir / "leftover.tmp").write_bytes(b"half")
    # ...and no clean close: simulate kill -9 by dropping the objects.
    t.index.env.close()
    os.close(t._lock_fd)

    t2 = DiskTier(tmp_path / "c", 1 << 20)
    try:
        assert t2.recovered == 1
        assert not orphan.exists()
        assert list(t2.tmp_dir.iterdir()) == []
        assert t2.get(key(1)) == b"good block"
        assert t2.stats.get("entries") == 1
        assert t2.index.pending() == []
    finally:
        t2.close()


def test_other_layout_is_started_afresh(tmp_path: Path) -> None:
    t = DiskTier(tmp_path / "c", 1 << 20)
    t.put(key(1), b"old")
    t.close()
    (tmp_path / "c" / "LAYOUT").write_text("tierfs-disk-cache 0\n")
    t = DiskTier(tmp_path / "c", 1 << 20)
    try:
        assert t.get(key(1)) is None
    finally:
        t.close()


def test_second_user_of_a_cache_dir_is_refused(tmp_path: Path) -> None:
    t = DiskTier(tmp_path / "c", 1 << 20)
    try:
        with pytest.raises(UserError, match="in use by another tierfs process"):
            DiskTier(tmp_path / "c", 1 << 20)
    finally:
        t.close()


def test_unwritable_cache_dir(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not usable"):
        DiskTier(tmp_path / "file" / "c", 1 << 20)


def test_watermarks(tmp_path: Path) -> None:
    cap = 100 * 4096
    t = DiskTier(tmp_path / "c", cap, high=0.9, low=0.5)
    try:
        for n in range(95):
            t.put(key(n), b"z" * 4096)
            assert t.bytes_held() <= 0.9 * cap
        # crossing the high watermark evicted down to the low one
        assert t.stats.get("evictions") > 0
        assert t.bytes_held() <= 0.9 * cap
    finally:
        t.close()


def epochs(t: DiskTier, blocks: int, n: int = 3) -> list[float]:
    """Hit ratio of each of n cyclic epochs over `blocks` blocks, filling misses."""
    ratios = []
    for _ in range(n):
        hits = 0
        for b in range(blocks):
            if t.get(key(b)) is not None:
                hits += 1
            else:
                t.put(key(b), b"e" * 4096)
        ratios.append(hits / blocks)
    return ratios


@pytest.mark.parametrize("policy", ["lru", "stable"])
def test_cyclic_epochs_over_a_dataset_twice_the_cache(tmp_path: Path, policy: str) -> None:
    t = DiskTier(tmp_path / "c", 100 * 4096, policy=policy)
    try:
        ratios = epochs(t, 200)
    finally:
        t.close()
    assert ratios[0] == 0
    if policy == "lru":
        assert ratios[1:] == [0, 0]  # LRU evicts exactly what the next epoch reads first
    else:
        assert min(ratios[1:]) >= 0.35  # a stable part (~cache size / dataset size) stays
        assert abs(ratios[2] - ratios[1]) <= 0.05


def test_stable_policy_keeps_hit_blocks_over_new_ones(tmp_path: Path) -> None:
    t = DiskTier(tmp_path / "c", 20 * 4096, policy="stable")
    try:
        for b in range(10):
            t.put(key(b), b"h" * 4096)
            assert t.get(key(b)) is not None  # hit: protected
        for b in range(100, 200):
            t.put(key(b), b"n" * 4096)  # a scan of never-reread blocks
        assert all(t.get(key(b)) is not None for b in range(10))
        assert t.bytes_held() <= 20 * 4096
    finally:
        t.close()
