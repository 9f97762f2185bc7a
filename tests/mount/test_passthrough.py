"""FUSE passthrough on real mounts: cached small files are read by the kernel from the disk tier.

Each test checks bytes against the lake, and checks that the daemon saw (or
did not see) the reads, from its own request counters.
"""

from __future__ import annotations

import mmap
import os
import random
import subprocess
import time
from pathlib import Path

import pytest
from helpers import TIERFS, drop_page_cache, mounted, random_bytes, wait_for, write_tree

pytestmark = pytest.mark.mount
KiB = 1 << 10
SMALL = {f"d/f{i}.bin": random_bytes(100 * KiB + 7 * i, seed=i) for i in range(6)}
BIG = {"big.bin": random_bytes(9 * 1024 * KiB + 5, seed=99)}  # three 4 MiB blocks


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    write_tree(tmp_path / "lake", {**SMALL, **BIG})
    return tmp_path / "lake"


def every_way(path: Path, want: bytes, scratch: Path) -> None:
    """read, pread at random offsets, mmap and sendfile of one file all give ``want``."""
    assert path.read_bytes() == want
    fd = os.open(path, os.O_RDONLY)
    try:
        rng = random.Random(len(want))
        for _ in range(50):
            off, n = rng.randrange(0, len(want) + 10), rng.choice([1, 512, 4096, 65536, len(want)])
            assert os.pread(fd, n, off) == want[off:off + n]
        with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as m:
            assert m[:] == want
        out = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            sent = 0
            while sent < len(want):
                n = os.sendfile(out, fd, sent, len(want) - sent)
                assert n > 0
                sent += n
        finally:
            os.close(out)
        assert scratch.read_bytes() == want
    finally:
        os.close(fd)


def warm(m, files: dict[str, bytes]) -> None:  # type: ignore[no-untyped-def]
    for rel, data in files.items():
        assert (m.mountpoint / rel).read_bytes() == data
    m.fills_settled()


def test_a_cached_file_is_read_by_the_kernel_from_the_disk_tier(lake: Path, tmp_path: Path) -> None:
    with mounted(f"file://{lake}", tmp_path / "mnt", tmp_path / "cache", "--ram-size", "0") as m:
        assert m.stats()["fast_paths"]["passthrough"].startswith("on")
        warm(m, {**SMALL, **BIG})
        # The big file, read through once, gets a whole-file copy on the disk tier in the background.
        wait_for(lambda: m.stats()["fast_paths"]["whole_file_copies"] == 1, 30, "a whole-file copy of big.bin")
        drop_page_cache()
        before = m.stats()
        for rel, data in SMALL.items():
            every_way(m.mountpoint / rel, data, tmp_path / "out")
        after = m.stats()
        # Not one read of the small files reached the daemon: the kernel read the block files.
        assert after["fuse"]["read"] == before["fuse"]["read"]
        opens = after["fast_paths"]["passthrough_opens"] - before["fast_paths"]["passthrough_opens"]
        assert opens == 2 * len(SMALL)  # every_way opens each file twice
        assert after["fast_paths"]["passthrough_bytes"] >= sum(len(d) for d in SMALL.values())
        # ... and from its whole-file copy, a file of several blocks too.
        every_way(m.mountpoint / "big.bin", BIG["big.bin"], tmp_path / "out")
        assert m.stats()["fuse"]["read"] == after["fuse"]["read"]
        assert m.stats()["fast_paths"]["backing_files"] == 0  # all released with their last close


def test_a_large_file_is_passed_through_only_once_all_its_blocks_are_copied(lake: Path, tmp_path: Path) -> None:
    with mounted(f"file://{lake}", tmp_path / "mnt", tmp_path / "cache", "--ram-size", "0") as m:
        fd = os.open(m.mountpoint / "big.bin", os.O_RDONLY)
        try:
            assert os.pread(fd, 1000, 0) == BIG["big.bin"][:1000]  # one block of three
        finally:
            os.close(fd)
        m.fills_settled()
        time.sleep(0.3)
        assert m.stats()["fast_paths"]["whole_file_copies"] == 0
        drop_page_cache()
        before = m.stats()["fuse"]["read"]
        every_way(m.mountpoint / "big.bin", BIG["big.bin"], tmp_path / "out")  # the ordinary way, right
        assert m.stats()["fuse"]["read"] > before
        m.fills_settled()
        wait_for(lambda: m.stats()["fast_paths"]["whole_file_copies"] == 1, 30, "a whole-file copy of big.bin")
        drop_page_cache()
        before = m.stats()["fuse"]["read"]
        every_way(m.mountpoint / "big.bin", BIG["big.bin"], tmp_path / "out")
        assert m.stats()["fuse"]["read"] == before


def test_with_passthrough_off_the_same_reads_come_to_the_daemon(lake: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "t.toml"
    cfg.write_text("[fuse]\npassthrough = false\n")
    with mounted(f"file://{lake}", tmp_path / "mnt", tmp_path / "cache", "--ram-size", "0", config=cfg) as m:
        assert m.stats()["fast_paths"]["passthrough"] == "off ([fuse] passthrough = false)"
        warm(m, SMALL)
        drop_page_cache()
        before = m.stats()["fuse"]["read"]
        for rel, data in SMALL.items():
            every_way(m.mountpoint / rel, data, tmp_path / "out")
        assert m.stats()["fuse"]["read"] > before
        assert m.stats()["fast_paths"]["passthrough_opens"] == 0


def test_an_evicted_block_stays_whole_for_its_open_file_and_the_next_open_refetches(tmp_path: Path) -> None:
    files = {f"f{i}": random_bytes(100 * KiB, seed=50 + i) for i in range(40)}
    write_tree(tmp_path / "lake", files)
    cfg = tmp_path / "t.toml"
    cfg.write_text('[cache]\npolicy = "lru"\n')  # (the default keeps blocks read twice, as f0 is, over new ones)
    with mounted(f"file://{tmp_path / 'lake'}", tmp_path / "mnt", tmp_path / "cache", "--ram-size", "0",
                 "--block-size", "1MiB", "--cache-size", "2MiB", config=cfg) as m:
        warm(m, {"f0": files["f0"]})
        blocks = [p for p in (tmp_path / "cache" / "blocks").rglob("*") if p.is_file()]
        assert len(blocks) == 1
        fd = os.open(m.mountpoint / "f0", os.O_RDONLY)
        try:
            assert m.stats()["fast_paths"]["backing_files"] == 1
            warm(m, {k: v for k, v in files.items() if k != "f0"})  # 4 MiB through a 2 MiB cache
            assert not blocks[0].exists(), "f0's block was not evicted"
            drop_page_cache()
            assert os.pread(fd, len(files["f0"]) + 1, 0) == files["f0"]
        finally:
            os.close(fd)
        assert (m.mountpoint / "f0").read_bytes() == files["f0"]


def test_a_file_rewritten_upstream_is_never_served_from_its_old_block(lake: Path, tmp_path: Path) -> None:
    rel, old = "d/f0.bin", SMALL["d/f0.bin"]
    new = random_bytes(len(old), seed=1234)
    with mounted(f"file://{lake}", tmp_path / "mnt", tmp_path / "cache", "--ram-size", "0",
                 "--metadata-ttl", "0.2") as m:
        warm(m, {rel: old})
        held = os.open(m.mountpoint / rel, os.O_RDONLY)  # passed through on the old block
        try:
            assert m.stats()["fast_paths"]["backing_files"] == 1
            (lake / rel).write_bytes(new)  # same size; a new mtime, so a new identity
            os.utime(lake / rel, ns=(time.time_ns(), time.time_ns() + 10**9))
            time.sleep(0.5)
            # A new open while the old one lasts: the name gets a new inode (the kernel retries the open on it).
            assert (m.mountpoint / rel).read_bytes() == new
            assert m.stats()["fast_paths"]["renumbered"] >= 1
            assert os.pread(held, len(old), 0) == old  # the open handle keeps the bytes it opened
        finally:
            os.close(held)
        m.fills_settled()
        drop_page_cache()
        every_way(m.mountpoint / rel, new, tmp_path / "out")


def test_a_file_written_through_the_mount_is_passed_through_only_once_uploaded(lake: Path, tmp_path: Path) -> None:
    rel, old = "d/f1.bin", SMALL["d/f1.bin"]
    new = random_bytes(len(old) + 1000, seed=77)
    with mounted(f"file://{lake}", tmp_path / "mnt", tmp_path / "cache", "--ram-size", "0") as m:
        warm(m, {rel: old})
        reader = os.open(m.mountpoint / rel, os.O_RDONLY)  # passed through
        try:
            with open(m.mountpoint / rel, "r+b") as w:  # beside a passthrough open: on a new inode
                w.write(new[:50000])
                w.flush()
                # The staged bytes are what a new reader sees, not the block on disk.
                assert (m.mountpoint / rel).read_bytes()[:50000] == new[:50000]
                w.write(new[50000:])
            assert os.pread(reader, len(old), 0) == old
        finally:
            os.close(reader)
        assert (lake / rel).read_bytes() == new
        every_way(m.mountpoint / rel, new, tmp_path / "out")
        m.fills_settled()
        drop_page_cache()
        every_way(m.mountpoint / rel, new, tmp_path / "out")
        assert (lake / rel).read_bytes() == new


def test_read_only_opens_cost_no_flush_round_trip(lake: Path, tmp_path: Path) -> None:
    with mounted(f"file://{lake}", tmp_path / "mnt", tmp_path / "cache") as m:  # a writable mount
        for _ in range(3):
            for rel, data in SMALL.items():
                assert (m.mountpoint / rel).read_bytes() == data
        assert m.stats()["fuse"]["flush"] == 0
        (m.mountpoint / "new.bin").write_bytes(b"x" * 10)  # a written file is still flushed (uploaded) at close
        assert m.stats()["fuse"]["flush"] >= 1
        assert (lake / "new.bin").read_bytes() == b"x" * 10


def test_without_cap_sys_admin_the_mount_says_so_once_and_serves(lake: Path, tmp_path: Path) -> None:
    # In a user namespace the daemon is root there, not in the initial namespace: the kernel would refuse backing
    # files, so passthrough is not even asked for at INIT.
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    mnt.mkdir()
    tierfs = " ".join(TIERFS)
    script = (f"{tierfs} mount file://{lake} {mnt} --cache-dir {cache} --ram-size 0 >/dev/null && "
              f"cat {mnt}/d/f0.bin >/dev/null && sleep 0.3 && cmp {mnt}/d/f0.bin {lake}/d/f0.bin && "
              f"{tierfs} stats {mnt} --json > {tmp_path}/stats.json; rc=$?; {tierfs} umount {mnt}; exit $rc")
    res = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    import json
    fast = json.loads((tmp_path / "stats.json").read_text())["fast_paths"]
    assert fast["passthrough"].startswith("off (the daemon lacks CAP_SYS_ADMIN in the initial user namespace")
    assert fast["passthrough_opens"] == 0
    lines = [ln for ln in (cache / "tierfs.log").read_text().splitlines() if "passthrough" in ln]
    assert len(lines) == 1, lines


def test_an_encrypted_cache_is_not_passed_through(lake: Path, tmp_path: Path) -> None:
    key = tmp_path / "cache.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    cfg = tmp_path / "t.toml"
    cfg.write_text(f'[cache]\nencryption_key_file = "{key}"\n')
    with mounted(f"file://{lake}", tmp_path / "mnt", tmp_path / "cache", "--ram-size", "0", config=cfg) as m:
        assert "encrypted" in m.stats()["fast_paths"]["passthrough"]
        warm(m, SMALL)
        drop_page_cache()
        for rel, data in SMALL.items():
            every_way(m.mountpoint / rel, data, tmp_path / "out")
        assert m.stats()["fast_paths"]["passthrough_opens"] == 0


def test_a_spoiled_block_or_whole_file_copy_is_never_passed_through(lake: Path, tmp_path: Path) -> None:
    """What the kernel would read unchecked is checked at its first passthrough open of a mount's life."""
    args = (f"file://{lake}", tmp_path / "mnt", tmp_path / "cache", "--ram-size", "0")
    with mounted(*args) as m:
        warm(m, {**SMALL, **BIG})
        wait_for(lambda: m.stats()["fast_paths"]["whole_file_copies"] == 1, 30, "a whole-file copy of big.bin")
    files = sorted(p for p in (tmp_path / "cache" / "blocks").rglob("*") if p.is_file())
    for p in files:  # every block and the whole-file copy: one bit flipped, or cut short
        raw = bytearray(p.read_bytes())
        if len(raw) % 2:
            raw[len(raw) // 3] ^= 0x10
            p.write_bytes(bytes(raw))
        else:
            p.write_bytes(bytes(raw[: len(raw) // 2]))
    drop_page_cache()
    with mounted(*args) as m:
        for rel, data in {**SMALL, **BIG}.items():
            every_way(m.mountpoint / rel, data, tmp_path / "out")
        assert m.stats()["tiers"]["disk"]["errors"] >= len(SMALL) + 1


def test_a_small_file_the_ram_tier_holds_is_served_from_ram_not_passed_through(lake: Path, tmp_path: Path) -> None:
    with mounted(f"file://{lake}", tmp_path / "mnt", tmp_path / "cache", "--ram-size", "64MiB") as m:
        warm(m, SMALL)  # on the disk tier and in RAM
        drop_page_cache()
        for rel, data in SMALL.items():
            every_way(m.mountpoint / rel, data, tmp_path / "out")
        assert m.stats()["fast_paths"]["passthrough_opens"] == 0
        assert m.stats()["tiers"]["ram"]["hits"] >= len(SMALL)
