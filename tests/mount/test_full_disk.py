"""A disk cache configured larger than its disk, through a real FUSE mount.

The cache dir is on a small tmpfs mounted here; `[cache] size` is far above
it. The disk tier must keep the tmpfs' reserve free, so reads go on and a
checkpoint written through the mount (staged on the same tmpfs) still lands.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import drop_page_cache, mounted, random_bytes, write_tree

pytestmark = pytest.mark.mount

TMPFS_MIB = 64  # the default reserve on it: half of it (a small filesystem)
CKPT = 12 << 20


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs, unmounted afterwards whatever happened."""
    d = tmp_path / "small"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MIB}m", "tmpfs", str(d)], check=True)
    try:
        yield d
    finally:
        if subprocess.run(["umount", str(d)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(d)], check=False)


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_a_cache_larger_than_its_disk_keeps_room_for_checkpoints(tmp_path: Path, small_disk: Path) -> None:
    lake = tmp_path / "lake"
    # 84 MiB of samples (6 MiB each: one whole 4 MiB block and a part), more than the tmpfs holds
    dataset = {f"datasets/big/shard-{i:02d}.bin": random_bytes(6 << 20, seed=i) for i in range(14)}
    write_tree(lake, dataset)
    config = tmp_path / "tierfs.toml"
    # ram_size 0: every block read goes through the disk tier, on every pass
    config.write_text('[cache]\nsize = "500GiB"\nram_size = 0\n')
    log_file = tmp_path / "tierfs.log"
    mnt = tmp_path / "mnt"
    with mounted(f"file://{lake}", mnt, small_disk / "cache", "--log-file", str(log_file), config=config) as m:
        least_free = TMPFS_MIB << 20
        for epoch in range(2):
            for key, data in dataset.items():
                assert (mnt / key).read_bytes() == data, (epoch, key)
                least_free = min(least_free, _free(small_disk))
            # a checkpoint after each epoch, staged on the same tmpfs
            ckpt = random_bytes(CKPT, seed=100 + epoch)
            with open(mnt / f"ckpt-{epoch}.pt", "wb") as fh:
                fh.write(ckpt)
            assert (lake / f"ckpt-{epoch}.pt").read_bytes() == ckpt
            drop_page_cache()
        assert least_free >= 2 * CKPT, least_free  # the reserve held all along
        disk = m.stats()["tiers"]["disk"]
        assert disk["hits"] > 0 and disk["evictions"] > 0, disk  # it caches what fits, and evicts
        assert disk["bytes_held"] <= TMPFS_MIB << 20
    assert "disk cache limited to" in m.output and "500.0 GiB of [cache] size" in m.output, m.output
    assert "lower [cache] size" in m.output
    assert "does not fit on the filesystem" in log_file.read_text()


def test_statfs_reports_the_staging_disks_room(tmp_path: Path, small_disk: Path) -> None:
    """df on the mount tells what a checkpoint may use: the staging filesystem's free space, not 4 PiB."""
    lake = tmp_path / "lake"
    lake.mkdir()
    small = small_disk
    with mounted(f"file://{lake}", tmp_path / "mnt", small / "cache") as m:
        seen, staging = os.statvfs(m.mountpoint), os.statvfs(small)
        assert seen.f_blocks * seen.f_frsize == staging.f_blocks * staging.f_frsize
        assert abs(seen.f_bavail * seen.f_frsize - staging.f_bavail * staging.f_frsize) < 4 << 20
    with mounted(f"file://{lake}", tmp_path / "ro", tmp_path / "cache-ro", "--read-only") as m:
        assert os.statvfs(m.mountpoint).f_blocks == 1 << 40  # nothing to write: the lake's size is not a limit
