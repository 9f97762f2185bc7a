"""One contract, every tier: RAM and disk pass the same tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import RedisServer

from tierfs.refs import ObjectRef
from tierfs.tiers.base import Tier
from tierfs.tiers.disk import DiskTier
from tierfs.tiers.ram import RamTier
from tierfs.tiers.redis import RedisSettings, RedisTier


def key(n: int):
    return ObjectRef(f"obj{n}", 100, etag="e").block_key(0, 4096)


@pytest.fixture(params=["ram", "redis", "disk"])
def tier(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Tier]:
    t: Tier
    server = None
    if request.param == "ram":
        t = RamTier(64 * 1024)
    elif request.param == "redis":
        # A real redis-server whose maxmemory (allkeys-lru) bounds the tier, as in production.
        server = RedisServer(tmp_path / "redis").start()
        server.client().config_set("maxmemory", str(1200 * 1024))
        t = RedisTier(RedisSettings(server.url, key_prefix=f"t{tmp_path.name}:", secret=b"contract"))
        assert t.connect()
    else:
        t = DiskTier(tmp_path / "cache", 64 * 1024)
    try:
        yield t
    finally:
        t.close()
        if server is not None:
            server.stop()


def test_miss_then_hit(tier: Tier) -> None:
    assert tier.get(key(1)) is None
    tier.put(key(1), b"abc")
    assert tier.get(key(1)) == b"abc"
    s = tier.stats.snapshot()
    assert (s["hits"], s["misses"]) == (1, 1)
    if not isinstance(tier, RedisTier):  # Redis reports its whole db's size
        assert (s["entries"], s["bytes_held"]) == (1, 3)


def test_put_replaces(tier: Tier) -> None:
    tier.put(key(1), b"abc")
    tier.put(key(1), b"xyzw")
    assert tier.get(key(1)) == b"xyzw"
    if not isinstance(tier, RedisTier):
        assert tier.stats.get("bytes_held") == 4
        assert tier.stats.get("entries") == 1


def test_evict(tier: Tier) -> None:
    tier.put(key(1), b"abc")
    tier.evict(key(1))
    tier.evict(key(2))  # evicting what is not there is fine
    assert tier.get(key(1)) is None
    if not isinstance(tier, RedisTier):
        assert tier.stats.get("entries") == 0


def test_empty_block(tier: Tier) -> None:
    tier.put(key(3), b"")
    assert tier.get(key(3)) == b""


@pytest.fixture(params=["ram", "disk"])
def bounded_tier(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Tier]:
    """Tiers that bound themselves (Redis is bounded by its own maxmemory: test_redis_tier.py)."""
    t: Tier = RamTier(64 * 1024) if request.param == "ram" else DiskTier(tmp_path / "cache", 64 * 1024)
    try:
        yield t
    finally:
        t.close()


def test_stays_under_capacity_and_evicts_oldest(bounded_tier: Tier) -> None:
    tier = bounded_tier
    block = b"x" * 4096
    for n in range(64):
        tier.put(key(n), block)
        assert tier.stats.get("bytes_held") <= 64 * 1024
    assert tier.stats.get("evictions") > 0
    assert tier.get(key(0)) is None  # the oldest went first
    assert tier.get(key(63)) == block


def test_recently_read_survives(bounded_tier: Tier) -> None:
    tier = bounded_tier
    block = b"y" * 4096
    for n in range(8):
        tier.put(key(n), block)
    for _ in range(40):
        assert tier.get(key(0)) == block  # keep block 0 young
        for n in range(8, 12):
            tier.put(key(n + _ * 4), block)
    assert tier.get(key(0)) == block


def test_distinct_keys_distinct_data(tier: Tier) -> None:
    for n in range(5):
        tier.put(key(n), bytes([n]) * 10)
    for n in range(5):
        assert tier.get(key(n)) == bytes([n]) * 10
