"""Ranged reads (tierfs/data/ranged.py) through the block reader on memory://: units, not blocks, and never in
the tiers."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trio

from tierfs.data.reader import BACKEND, RANGED, BlockReader
from tierfs.refs import ObjectRef
from tierfs.tiers.chain import TierChain
from tierfs.tiers.disk import DiskTier
from tierfs.tiers.ram import RamTier

BS, UNIT = 16384, 4096


@contextmanager
def reading(flaky: Any, tmp_path: Path, size: int, seed: int,
            unit: int = UNIT) -> Iterator[tuple[bytes, ObjectRef, BlockReader, RamTier, DiskTier]]:
    """An object of ``size`` random bytes in the store, and a reader over RAM and disk tiers of its own."""
    _, store, fs = flaky
    data = random.Random(seed).randbytes(size)
    fs.pipe(f"{store.root}/obj{seed}", data)
    r, d = RamTier(1 << 20), DiskTier(tmp_path / f"c{seed}", 1 << 22)
    reader = BlockReader(store, TierChain([r, d], trio.CapacityLimiter(4)), BS, trio.CapacityLimiter(8),
                         random_read_unit=unit)
    try:
        yield data, store.stat(f"obj{seed}").ref, reader, r, d
    finally:
        d.close()


async def test_random_reads_fetch_units_and_never_fill_the_tiers(flaky: Any, tmp_path: Path) -> None:
    rng = random.Random(4)
    with reading(flaky, tmp_path, 5 * BS + 777, 3) as (data, ref, reader, r, d):
        for _ in range(200):
            off = rng.randrange(0, len(data) + 10)
            n = rng.randrange(0, 2 * BS)
            got, _ = await reader.read(ref, off, n, random=True)
            assert got == data[off: off + n], (off, n)
        assert r.entries() == 0 and d.entries() == 0  # units are no blocks
        assert reader.ranged.stats.get("fetches") > 0


async def test_a_small_random_read_fetches_its_unit_once(flaky: Any, tmp_path: Path) -> None:
    f, store, _ = flaky
    with reading(flaky, tmp_path, 4 * BS, 5) as (data, ref, reader, r, d):
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


async def test_a_whole_block_at_hand_answers_and_sequential_reads_use_blocks(flaky: Any, tmp_path: Path) -> None:
    store = flaky[1]
    with reading(flaky, tmp_path, 3 * BS, 6) as (data, ref, reader, r, d):
        assert (await reader.read(ref, BS, 10))[0] == data[BS: BS + 10]  # sequential: the whole block
        assert store.stats.get("bytes") == BS and r.entries() == 1
        assert await reader.read(ref, BS + 5000, 10, random=True) == (data[BS + 5000: BS + 5010], "ram")
        assert store.stats.get("bytes") == BS


async def test_small_files_and_a_unit_of_zero_read_whole_blocks(flaky: Any, tmp_path: Path) -> None:
    store = flaky[1]
    with reading(flaky, tmp_path, 3 * BS, 8, unit=0) as (data, ref, reader, r, d):
        await reader.read(ref, BS + 7, 10, random=True)
        assert store.stats.get("bytes") == BS
    with reading(flaky, tmp_path, BS, 9) as (data, ref, reader, r, d):
        await reader.read(ref, 7000, 10, random=True)  # one block: the whole object, into the tiers
        assert store.stats.get("bytes") == 2 * BS and r.entries() == 1


async def test_a_block_random_reads_keep_coming_to_is_fetched_whole(flaky: Any, tmp_path: Path) -> None:
    store = flaky[1]
    with reading(flaky, tmp_path, 3 * BS, 7, unit=1024) as (data, ref, reader, r, d):
        for i in range(4):  # four ranged fetches into block 1...
            off = BS + i * 3000
            assert (await reader.read(ref, off, 10, random=True))[0] == data[off: off + 10]
        assert store.stats.get("bytes") == 4 * 1024 and r.entries() == 0
        off = BS + 13000  # ...and the next miss there fetches all of it, into the tiers
        assert await reader.read(ref, off, 10, random=True) == (data[off: off + 10], BACKEND)
        assert store.stats.get("bytes") == 4 * 1024 + BS and r.entries() == 1
        assert reader.ranged.stats.get("whole_blocks") == 1
