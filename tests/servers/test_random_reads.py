"""Random small reads into a large cold file fetch what they ask for, not whole blocks; sequential ones still
fetch whole blocks with read-ahead. On a real mount over SeaweedFS."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Mount, SeaweedS3, drop_page_cache, mounted, random_bytes, wait_for

pytestmark = [pytest.mark.servers, pytest.mark.mount]
KiB, MiB = 1 << 10, 1 << 20
BLOCK, UNIT = 4 * MiB, 64 * KiB
# Each far from where the one before ended (more than the read-ahead's 16 MiB forward, 8 MiB back): random.
OFFSETS = (40 * MiB + 123, 5 * MiB + 7, 60 * MiB + UNIT - 100, 20 * MiB + 1000, 50 * MiB)


@pytest.fixture
def bucket(s3_server: SeaweedS3) -> Iterator[str]:
    name = f"randread-{os.getpid()}-{time.monotonic_ns() % 100000}"
    s3_server.fs().mkdir(name)
    yield name


def _quiet(m: Mount) -> int:
    """Backend bytes once the open's fetch of the first block is done (it is no read of the test's)."""
    wait_for(lambda: m.stats()["in_flight_fetches"] == 0, 30, "the open's first-block fetch")
    return m.backend_bytes()


def _open_random(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # as fio's randread does: the kernel reads only what is asked
    return fd


def test_random_small_reads_fetch_small_ranges_and_sequential_reads_whole_blocks(
        s3_server: SeaweedS3, bucket: str, tmp_path: Path) -> None:
    data = random_bytes(64 * MiB, seed=11)
    s3_server.fs().pipe(f"{bucket}/big.bin", data)
    cfg = s3_server.s3_config(tmp_path / "s3.toml")
    with mounted(f"s3://{bucket}", tmp_path / "mnt", tmp_path / "cache", config=cfg) as m:
        fd = _open_random(m.mountpoint / "big.bin")
        try:
            before = _quiet(m)
            for off in OFFSETS:
                assert os.pread(fd, 4096, off) == data[off: off + 4096], off
            fetched = m.backend_bytes() - before
            # One or two units per read (60 MiB + UNIT - 100 straddles two), not a 4 MiB block each.
            assert fetched <= len(OFFSETS) * 2 * UNIT, fetched
            assert m.stats()["ranged_reads"]["fetches"] >= len(OFFSETS)
            # Read again: served from RAM, no fetch.
            for off in OFFSETS:
                assert os.pread(fd, 4096, off) == data[off: off + 4096], off
            assert m.backend_bytes() - before == fetched
        finally:
            os.close(fd)
        m.fills_settled()
        assert m.stats()["tiers"]["disk"]["entries"] <= 1  # (block 0, of the open) no partial block on disk

        # A sequential read of the same file: whole blocks and read-ahead, every byte right.
        drop_page_cache()
        s = m.stats()
        bytes0, requests0, prefetched0 = s["backend"]["bytes"], s["backend"]["requests"], s["prefetched_blocks"]
        assert (m.mountpoint / "big.bin").read_bytes() == data
        s = m.stats()
        assert s["backend"]["bytes"] - bytes0 == len(data) - BLOCK  # each block but the first, once, whole
        assert s["backend"]["requests"] - requests0 <= len(data) // BLOCK  # whole blocks, not units
        assert s["prefetched_blocks"] > prefetched0
        assert s["read_ahead_peak_bytes"] > BLOCK


def test_a_rewrite_upstream_between_two_small_reads_never_mixes_versions(
        s3_server: SeaweedS3, bucket: str, tmp_path: Path) -> None:
    old, new = random_bytes(32 * MiB, seed=21), random_bytes(32 * MiB, seed=22)
    fs = s3_server.fs()
    fs.pipe(f"{bucket}/obj.bin", old)
    cfg = s3_server.s3_config(tmp_path / "s3.toml")
    first = 25 * MiB
    with mounted(f"s3://{bucket}", tmp_path / "mnt", tmp_path / "cache", config=cfg) as m:
        fd = _open_random(m.mountpoint / "obj.bin")
        try:
            before = _quiet(m)
            assert os.pread(fd, 4096, first) == old[first: first + 4096]
            assert m.backend_bytes() - before <= UNIT  # a ranged read, the case under test
            fs.pipe(f"{bucket}/obj.bin", new)  # same size, another version
            for off in (3 * MiB + 5, 28 * MiB, 8 * MiB + UNIT):  # each random to the one before
                try:
                    got = os.pread(fd, 4096, off)
                except OSError as exc:
                    assert exc.errno == errno.EIO, exc
                    continue
                assert got == old[off: off + 4096], f"new bytes under the old identity at {off}"
            assert os.pread(fd, 4096, first) == old[first: first + 4096]  # (held, of the old identity)
        finally:
            os.close(fd)
        assert m.stats()["backend"]["errors"] >= 1


def test_the_unit_is_a_setting_and_zero_turns_ranged_reads_off(
        s3_server: SeaweedS3, bucket: str, tmp_path: Path) -> None:
    data = random_bytes(32 * MiB, seed=31)
    s3_server.fs().pipe(f"{bucket}/big.bin", data)
    cfg = s3_server.s3_config(tmp_path / "s3.toml")
    for unit, most in (("16KiB", 2 * 16 * KiB), ("0", BLOCK)):
        with mounted(f"s3://{bucket}", tmp_path / f"mnt{unit}", tmp_path / f"cache{unit}",
                     "--random-read-unit", unit, config=cfg) as m:
            fd = _open_random(m.mountpoint / "big.bin")
            try:
                before = _quiet(m)
                assert os.pread(fd, 4096, 20 * MiB + 5) == data[20 * MiB + 5: 20 * MiB + 4101]
                assert m.backend_bytes() - before == (most if unit == "0" else 16 * KiB)
            finally:
                os.close(fd)
