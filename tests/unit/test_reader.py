"""Block reader + tier chain on memory://: bytes, single-flight, promotion, background fills."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tierfs.data.readahead import ReadAhead
from tierfs.data.reader import BACKEND, BlockReader
from tierfs.errors import StoreError
from tierfs.refs import BlockKey
from tierfs.tiers.base import Tier
from tierfs.tiers.chain import TierChain
from tierfs.tiers.disk import DiskTier
from tierfs.tiers.ram import RamTier

BS = 4096


def make(flaky: Any, tmp_path: Path, ram: int = 1 << 20) -> tuple[BlockReader, RamTier, DiskTier]:
    f, store, fs = flaky
    r, d = RamTier(ram), DiskTier(tmp_path / "c", 1 << 22)
    chain = TierChain([r, d], trio.CapacityLimiter(4))
    return BlockReader(store, chain, BS, trio.CapacityLimiter(8)), r, d


async def test_random_ranges_match_source(flaky: Any, tmp_path: Path) -> None:
    f, store, fs = flaky
    data = random.Random(1).randbytes(5 * BS + 123)
    fs.pipe(f"{store.root}/obj", data)
    ref = store.stat("obj").ref
    reader, r, d = make(flaky, tmp_path)
    rng = random.Random(2)
    try:
        for _ in range(300):
            off = rng.randrange(0, len(data) + 10)
            n = rng.randrange(0, 3 * BS)
            got, _ = await reader.read(ref, off, n)
            assert got == data[off : off + n]
    finally:
        d.close()


async def test_concurrent_misses_cause_one_fetch(flaky: Any, tmp_path: Path) -> None:
    f, store, fs = flaky
    fs.pipe(f"{store.root}/obj", b"q" * (3 * BS))
    ref = store.stat("obj").ref
    f.delay = 0.05  # keep the first fetch in flight while the others arrive
    reader, r, d = make(flaky, tmp_path)
    try:
        results = []

        async def one() -> None:
            results.append(await reader.read(ref, 0, 3 * BS))

        async with trio.open_nursery() as n:
            for _ in range(20):
                n.start_soon(one)
        assert all(x[0] == b"q" * (3 * BS) for x in results)
        assert f.calls["cat_file"] == 3  # one per block, not per reader
    finally:
        d.close()


async def test_hits_come_from_tiers_and_promote(flaky: Any, tmp_path: Path) -> None:
    f, store, fs = flaky
    fs.pipe(f"{store.root}/obj", b"z" * BS)
    ref = store.stat("obj").ref
    reader, r, d = make(flaky, tmp_path)
    try:
        assert (await reader.read(ref, 0, 10))[1] == BACKEND
        assert (await reader.read(ref, 0, 10))[1] == "ram"
        r.evict(ref.block_key(0, BS))
        assert (await reader.read(ref, 0, 10))[1] == "disk"
        assert (await reader.read(ref, 0, 10))[1] == "ram"  # promoted
        assert f.calls["cat_file"] == 1
    finally:
        d.close()


async def test_failing_tier_is_a_miss_not_an_error(flaky: Any, tmp_path: Path) -> None:
    f, store, fs = flaky
    fs.pipe(f"{store.root}/obj", b"z" * 100)
    ref = store.stat("obj").ref
    reader, r, d = make(flaky, tmp_path)
    d.close()  # the disk tier is now broken: every call raises
    got, source = await reader.read(ref, 0, 100)
    assert got == b"z" * 100
    assert d.stats.get("errors") >= 1


async def test_small_object_is_one_get(flaky: Any, tmp_path: Path) -> None:
    f, store, fs = flaky
    fs.pipe(f"{store.root}/small", b"s" * 3000)
    ref = store.stat("small").ref
    reader, r, d = make(flaky, tmp_path)
    try:
        for off in range(0, 3000, 500):
            await reader.read(ref, off, 500)
        assert f.calls["cat_file"] == 1
    finally:
        d.close()


class GatedTier(Tier):
    """A tier in worker threads whose puts wait until the test opens the gate (a slow disk, a slow Redis)."""

    name = "gated"

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.blocks: dict[bytes, bytes] = {}

    def get(self, key: BlockKey) -> bytes | None:
        data = self.blocks.get(key.digest)
        if data is None:
            self._miss()
            return None
        return self._hit(data)

    def put(self, key: BlockKey, data: bytes) -> None:
        self.gate.wait(timeout=5)  # bounded, so that a read waiting on it (the old way) fails rather than hangs
        self.blocks[key.digest] = data

    def evict(self, key: BlockKey) -> None:
        self.blocks.pop(key.digest, None)

    def bytes_held(self) -> int:
        return sum(map(len, self.blocks.values()))

    def entries(self) -> int:
        return len(self.blocks)


async def test_a_cold_read_returns_before_the_slower_tiers_are_filled(flaky: Any) -> None:
    f, store, fs = flaky
    fs.pipe(f"{store.root}/obj", b"c" * BS)
    ref = store.stat("obj").ref
    ram, slow = RamTier(1 << 20), GatedTier()
    chain = TierChain([ram, slow], trio.CapacityLimiter(4))
    reader = BlockReader(store, chain, BS, trio.CapacityLimiter(8))
    async with trio.open_nursery() as nursery:
        reader.start(nursery)
        assert await reader.read(ref, 0, BS) == (b"c" * BS, BACKEND)
        assert slow.entries() == 0  # the reply did not wait for the slow tier's put...
        assert chain.fills.stats.get("queued") == 1
        assert (await reader.read(ref, 0, 10))[1] == "ram"  # ...and RAM has it at once
        slow.gate.set()
        nursery.cancel_scope.cancel()  # the fill taken off the queue is finished all the same (an unmount)
    assert slow.entries() == 1 and chain.fills.stats.get("pending_bytes") == 0


async def test_a_block_waiting_for_its_fill_is_served_from_the_queue_not_fetched_again(flaky: Any) -> None:
    """No RAM tier: a block read ahead sits in the fill queue until the disk has it; a read meanwhile must not
    go to the store again (it did: the kernel's next READ often comes before the disk put)."""
    f, store, fs = flaky
    fs.pipe(f"{store.root}/obj", b"f" * (2 * BS))
    ref = store.stat("obj").ref
    slow = GatedTier()
    chain = TierChain([slow], trio.CapacityLimiter(4))
    reader = BlockReader(store, chain, BS, trio.CapacityLimiter(8))
    async with trio.open_nursery() as nursery:
        reader.start(nursery)
        assert await reader.read(ref, 0, 2 * BS) == (b"f" * (2 * BS), BACKEND)
        fetched = store.stats.get("bytes")
        assert slow.entries() == 0 and chain.in_loop_holds(ref.block_key(0, BS))
        assert (await reader.read(ref, 0, 2 * BS))[0] == b"f" * (2 * BS)
        assert store.stats.get("bytes") == fetched  # from the queue
        slow.gate.set()
        for _ in range(500):  # (the workers put into the slow tier in threads)
            if not chain.fills.stats.get("pending_bytes"):
                break
            await trio.sleep(0.01)
        assert slow.entries() == 2 and not chain.in_loop_holds(ref.block_key(0, BS))  # the queue let go
        assert (await reader.read(ref, 0, 10))[1] == "gated"
        nursery.cancel_scope.cancel()


async def test_a_read_takes_over_a_prefetch_of_its_block_that_waits_for_a_token(flaky: Any, tmp_path: Path) -> None:
    f, store, fs = flaky
    fs.pipe(f"{store.root}/obj", b"p" * (2 * BS))
    ref = store.stat("obj").ref
    prefetch = trio.CapacityLimiter(1)
    chain = TierChain([RamTier(1 << 20)], trio.CapacityLimiter(4))
    reader = BlockReader(store, chain, BS, trio.CapacityLimiter(8), prefetch)
    async with trio.open_nursery() as nursery:
        reader.start(nursery)
        await prefetch.acquire()  # every prefetch token is taken: read-ahead waits
        reader.read_ahead(ReadAhead(BS, 1), ref, 0, BS)  # prefetch block 1
        await trio.testing.wait_all_tasks_blocked()
        assert reader.in_flight() == 1
        with trio.fail_after(10):  # a guard against a hang, not a timing check
            data, source = await reader.read(ref, BS, BS)  # a reader needs block 1 now
        assert (data, source) == (b"p" * BS, BACKEND)
        assert f.calls["cat_file"] == 1  # one fetch for both
        prefetch.release()
        nursery.cancel_scope.cancel()


async def test_a_block_that_just_failed_fails_at_once_for_a_moment(flaky: Any, tmp_path: Path) -> None:
    """The kernel retries a failed read: against a stalled store, asking again would cost a second deadline.

    Only failures that took long are remembered (tests/servers/test_store_faults.py: a store that fails fast
    or comes back is read again at once)."""
    import pytest

    from tierfs.errors import StoreError

    f, store, fs = flaky
    fs.pipe(f"{store.root}/obj", b"x" * BS)
    ref = store.stat("obj").ref
    reader, r, d = make(flaky, tmp_path)
    reader.failed_for, reader.failed_after = 0.3, 0.0  # (the store here fails fast; a stalled one fails slowly)
    try:
        f.failures["cat_file"] = 100
        with pytest.raises(StoreError):
            await reader.read(ref, 0, 10)
        asked = f.calls.get("cat_file", 0)
        with pytest.raises(StoreError, match="failed"):
            await reader.read(ref, 0, 10)
        assert f.calls.get("cat_file", 0) == asked  # not asked again within the moment
        f.failures["cat_file"] = 0
        await trio.sleep(0.35)
        assert (await reader.read(ref, 0, 10))[0] == b"x" * 10  # and asked again after it
    finally:
        d.close()


async def test_with_no_tier_a_block_read_page_by_page_is_fetched_once(flaky: Any) -> None:
    """After a failed read-ahead the kernel reads the rest of its range one page at a time (the pages it had
    asked for stay in its page cache, not up to date). With no tier to keep the block, every page was a fetch
    of the whole block, each with a deadline of its own: under store faults one read of a 60 KB file took 7 s
    with a 3 s deadline (tests/campaign, store faults, mixed). A block just fetched is kept for a moment."""
    f, store, fs = flaky
    size = 64 * 1024
    data = random.Random(5).randbytes(size)
    fs.pipe(f"{store.root}/obj", data)
    ref = store.stat("obj").ref
    reader = BlockReader(store, TierChain([], trio.CapacityLimiter(4)), size, trio.CapacityLimiter(8))
    for off in range(0, size, 4096):
        assert (await reader.read(ref, off, 4096))[0] == data[off: off + 4096]
    assert f.calls["cat_file"] == 1


async def test_blocks_kept_for_a_moment_are_few_and_only_for_a_moment(flaky: Any) -> None:
    f, store, fs = flaky
    size = 64 * 1024
    refs = []
    for i in range(8):
        fs.pipe(f"{store.root}/obj{i}", bytes([i]) * size)
        refs.append(store.stat(f"obj{i}").ref)
    reader = BlockReader(store, TierChain([], trio.CapacityLimiter(4)), size, trio.CapacityLimiter(8))
    reader.held_bytes = 3 * size
    for ref in refs:
        await reader.read(ref, 0, 10)
    assert reader.bytes_held() <= 3 * size  # bounded: the oldest go first
    asked = f.calls["cat_file"]
    await reader.read(refs[-1], 10, 10)
    assert f.calls["cat_file"] == asked  # the newest is kept
    await reader.read(refs[0], 10, 10)
    assert f.calls["cat_file"] == asked + 1  # the oldest is not
    reader.held_for = 0.0
    await reader.read(refs[-1], 20, 10)
    assert f.calls["cat_file"] == asked + 2  # and none past the moment


def one_block(flaky: Any, tmp_path: Path) -> tuple[Any, Any, Any, BlockReader, DiskTier]:
    """An object of one block (b"x" * BS) and a reader of RAM and disk tiers."""
    f, store, fs = flaky
    fs.pipe(f"{store.root}/obj", b"x" * BS)
    reader, _, d = make(flaky, tmp_path)
    return f, store, store.stat("obj").ref, reader, d


async def test_the_retry_of_a_read_that_failed_fast_gets_what_is_left_of_its_deadline(flaky: Any,
                                                                                       tmp_path: Path) -> None:
    """The kernel retries a failed read at once. A fast failure (503s, resets) is asked again, but that retry
    is the same read(2): with a deadline of its own it could answer a deadline after the first failure, and
    one read took the first failure's time plus the whole deadline."""
    f, store, ref, reader, d = one_block(flaky, tmp_path)
    ends: list[float | None] = []
    read_range = store.read_range

    def spy(ref: Any, start: int, end: int, until: float | None = None) -> bytes:
        ends.append(until)
        return read_range(ref, start, end, until)

    store.read_range = spy  # type: ignore[method-assign]
    try:
        store.read_deadline = 60.0
        f.failures["cat_file"] = store.retries + 1  # every attempt of the first read, fast
        with pytest.raises(StoreError):
            await reader.read(ref, 0, 10)
        failed_at = time.monotonic()
        assert (await reader.read(ref, 0, 10))[0] == b"x" * 10  # asked again (the store is back)
        assert len(ends) == 2 and ends[0] is None
        # Not a whole deadline from when it started, but what the first read left of its own.
        assert ends[1] is not None and ends[1] < failed_at + 60.0
        await reader.read(ref, 0, 10)  # (from the tiers now)
        reader.chain.tiers[0].evict(ref.block_key(0, BS))
        d.evict(ref.block_key(0, BS))
        reader.held_for = 0.0
        await reader.read(ref, 0, 10)
        assert ends[2] is None  # a read after one that worked has a deadline of its own
    finally:
        d.close()


async def test_a_retry_with_nothing_left_of_its_deadline_fails_at_once(flaky: Any, tmp_path: Path) -> None:
    f, store, ref, reader, d = one_block(flaky, tmp_path)
    try:
        store.read_deadline = 0.05
        f.delay = 0.06  # each attempt outlasts the deadline, but none takes failed_after: a "fast" failure
        f.failures["cat_file"] = 100
        with pytest.raises(StoreError):
            await reader.read(ref, 0, 10)
        asked = f.calls["cat_file"]
        with pytest.raises(StoreError, match="failed moments ago"):
            await reader.read(ref, 0, 10)
        assert f.calls["cat_file"] == asked
    finally:
        d.close()


def test_a_read_across_blocks_is_cut_from_each_block() -> None:
    """A read spanning block boundaries gets exactly its bytes, whatever the offsets (each block is sliced,
    not all of them joined first)."""
    import random

    from tierfs.data.reader import _spanning

    rng = random.Random(7)
    blocks = [rng.randbytes(1000), rng.randbytes(1000), rng.randbytes(537)]
    whole = b"".join(blocks)
    for _ in range(500):
        skip, length = rng.randrange(0, 1000), rng.randrange(0, 3000)
        assert _spanning(blocks, skip, length) == whole[skip : skip + length]


async def test_a_reply_within_one_block_is_a_view_of_it_and_the_same_bytes(flaky: Any, tmp_path: Path) -> None:
    """read_view (what the kernel is answered with): a view of the block for a read inside one block, the
    block itself for all of it, bytes for a read across blocks; always the bytes read() gives."""
    f, store, fs = flaky
    data = random.Random(3).randbytes(3 * BS + 99)
    fs.pipe(f"{store.root}/obj", data)
    ref = store.stat("obj").ref
    reader, r, d = make(flaky, tmp_path)
    rng = random.Random(4)
    try:
        inside, _ = await reader.read_view(ref, BS + 10, 100)
        assert isinstance(inside, memoryview) and inside.readonly and inside == data[BS + 10 : BS + 110]
        whole, _ = await reader.read_view(ref, BS, BS)
        assert isinstance(whole, bytes) and whole == data[BS : 2 * BS]
        across, _ = await reader.read_view(ref, BS - 5, 10)
        assert isinstance(across, bytes) and across == data[BS - 5 : BS + 5]
        for _ in range(300):
            off, n = rng.randrange(0, len(data) + 10), rng.randrange(0, 2 * BS)
            got, _ = await reader.read_view(ref, off, n, random=rng.random() < 0.5)
            assert bytes(got) == data[off : off + n] == (await reader.read(ref, off, n))[0]
    finally:
        d.close()
