"""Ranged reads (tierfs/data/ranged.py) through the block reader on memory://: units, not blocks, and never in
the tiers."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import trio

from tierfs.data.reader import BACKEND, RANGED, BlockReader
from tierfs.tiers.chain import TierChain
from tierfs.tiers.disk import DiskTier
from tierfs.tiers.ram import RamTier

BS, UNIT = 16384, 4096


def make(flaky: Any, tmp_path: Path, unit: int = UNIT) -> tuple[BlockReader, RamTier, DiskTier]:
    _, store, _ = flaky
    r, d = RamTier(1 << 20), DiskTier(tmp_path / "c", 1 << 22)
    return BlockReader(store, TierChain([r, d], trio.CapacityLimiter(4)), BS, trio.CapacityLimiter(8),
                       random_read_unit=unit), r, d


async def test_random_reads_fetch_units_and_never_fill_the_tiers(flaky: Any, tmp_path: Path) -> None:
    f, store, fs = flaky
    data = random.Random(3).randbytes(5 * BS + 777)
    fs.pipe(f"{store.root}/obj", data)
    ref = store.stat("obj").ref
    reader, r, d = make(flaky, tmp_path)
    rng = random.Random(4)
    try:
        for _ in range(200):
            off = rng.randrange(0, len(data) + 10)
            n = rng.randrange(0, 2 * BS)
            got, _ = await reader.read(ref, off, n, random=True)
            assert got == data[off: off + n], (off, n)
        assert r.entries() == 0 and d.entries() == 0  # units are no blocks
        assert reader.ranged.stats.get("fetches") > 0
    finally:
        d.close()


async def test_a_small_random_read_fetches_its_unit_once(flaky: Any, tmp_path: Path) -> None:
    f, store, fs = flaky
    data = random.Random(5).randbytes(4 * BS)
    fs.pipe(f"{store.root}/obj", data)
    ref = store.stat("obj").ref
    reader, r, d = make(flaky, tmp_path)
    try:
        off = 2 * BS + UNIT + 10
        assert await reader.read(ref, off, 100, random=True) == (data[off: off + 100], BACKEND)
        assert store.stats.get("bytes") == UNIT
        assert await reader.read(ref, off + 200, 100, random=True) == (data[off + 200: off + 300], RANGED)
        assert store.stats.get("bytes") == UNIT  # the same unit: no fetch
        # Across two units and a block boundary: each block's units, fetched as one run each.
        calls = f.calls["cat_file"]
        off = 3 * BS - 50
        assert (await reader.read(ref, off, 100, random=True))[0] == data[off: off + 100]
        assert f.calls["cat_file"] - calls == 2 and store.stats.get("bytes") == 3 * UNIT
    finally:
        d.close()


async def test_a_whole_block_at_hand_answers_and_sequential_reads_use_blocks(flaky: Any, tmp_path: Path) -> None:
    f, store, fs = flaky
    data = random.Random(6).randbytes(3 * BS)
    fs.pipe(f"{store.root}/obj", data)
    ref = store.stat("obj").ref
    reader, r, d = make(flaky, tmp_path)
    try:
        assert (await reader.read(ref, BS, 10))[0] == data[BS: BS + 10]  # sequential: the whole block
        assert store.stats.get("bytes") == BS and r.entries() == 1
        assert await reader.read(ref, BS + 5000, 10, random=True) == (data[BS + 5000: BS + 5010], "ram")
        assert store.stats.get("bytes") == BS
    finally:
        d.close()


async def test_small_files_and_a_unit_of_zero_read_whole_blocks(flaky: Any, tmp_path: Path) -> None:
    f, store, fs = flaky
    fs.pipe(f"{store.root}/small", b"s" * BS)
    fs.pipe(f"{store.root}/big", b"b" * (3 * BS))
    small, big = store.stat("small").ref, store.stat("big").ref
    reader, r, d = make(flaky, tmp_path, unit=0)
    try:
        await reader.read(big, BS + 7, 10, random=True)
        assert store.stats.get("bytes") == BS
    finally:
        d.close()
    reader, r, d = make(flaky, tmp_path / "2")
    try:
        await reader.read(small, 7000, 10, random=True)  # one block: the whole object, into the tiers
        assert store.stats.get("bytes") == 2 * BS and r.entries() == 1
    finally:
        d.close()


async def test_a_block_random_reads_keep_coming_to_is_fetched_whole(flaky: Any, tmp_path: Path) -> None:
    f, store, fs = flaky
    data = random.Random(7).randbytes(3 * BS)
    fs.pipe(f"{store.root}/obj", data)
    ref = store.stat("obj").ref
    reader, r, d = make(flaky, tmp_path, unit=1024)
    try:
        for i in range(4):  # four ranged fetches into block 1...
            off = BS + i * 3000
            assert (await reader.read(ref, off, 10, random=True))[0] == data[off: off + 10]
        assert store.stats.get("bytes") == 4 * 1024 and r.entries() == 0
        off = BS + 13000  # ...and the next miss there fetches all of it, into the tiers
        assert await reader.read(ref, off, 10, random=True) == (data[off: off + 10], BACKEND)
        assert store.stats.get("bytes") == 4 * 1024 + BS and r.entries() == 1
        assert reader.ranged.stats.get("whole_blocks") == 1
    finally:
        d.close()
