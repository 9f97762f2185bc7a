"""The shared tier as a Redis Cluster: real mounts over SeaweedFS, a real 3-shard cluster on loopback."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_helpers import RedisCluster
from helpers import SeaweedS3, assert_one_line_error, is_mounted, mounted, random_bytes, run_tierfs, wait_for

pytestmark = pytest.mark.mount
KiB = 1024
BLOCK = 64 * KiB


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    c = RedisCluster(tmp_path / "cluster").start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def bucket(s3_server: SeaweedS3, request: pytest.FixtureRequest) -> Iterator[tuple[str, dict[str, bytes]]]:
    name = f"cluster-{request.node.name[-20:].strip('_').replace('_', '-').lower()}"
    files = {f"ds/{i:03d}.bin": random_bytes(40 * KiB + 997 * i, seed=i) for i in range(48)}
    s3_server.upload(name, files)
    try:
        yield name, files
    finally:
        s3_server.fs().rm(name, recursive=True)


def blocks_of(files: dict[str, bytes]) -> int:
    return sum(max(1, -(-len(d) // BLOCK)) for d in files.values())


def test_a_second_node_reads_from_the_cluster_and_blocks_spread_over_the_shards(
        s3_server: SeaweedS3, bucket: tuple[str, dict[str, bytes]], cluster: RedisCluster, tmp_path: Path) -> None:
    name, files = bucket
    cfg = s3_server.s3_config(tmp_path / "s3.toml")
    common = ("--block-size", "64KiB", "--redis", cluster.url, "--redis-cluster")
    with mounted(f"s3://{name}", tmp_path / "a", tmp_path / "cache-a", *common, config=cfg) as a:
        for rel, data in files.items():
            assert (a.mountpoint / rel).read_bytes() == data, rel
        a.fills_settled()
        assert a.backend_bytes() >= sum(map(len, files.values()))
    per_shard = cluster.keys_per_shard()
    assert sum(per_shard.values()) == blocks_of(files)
    assert all(n > 0 for n in per_shard.values()), per_shard  # the blocks spread over all three shards
    with mounted(f"s3://{name}", tmp_path / "b", tmp_path / "cache-b", *common, config=cfg) as b:
        for rel, data in files.items():
            assert (b.mountpoint / rel).read_bytes() == data, rel
        stats = b.stats()
        assert stats["backend"]["bytes"] == 0, stats["backend"]  # node B's cold epoch came from the cluster
        assert stats["tiers"]["redis"]["hits"] == blocks_of(files)
        shown = run_tierfs("stats", str(b.mountpoint), check=True).stdout
        assert "redis" in shown and " up " in shown, shown


def test_a_shard_killed_mid_read_costs_misses_never_errors(
        s3_server: SeaweedS3, bucket: tuple[str, dict[str, bytes]], cluster: RedisCluster, tmp_path: Path) -> None:
    name, files = bucket
    cfg = s3_server.s3_config(tmp_path / "s3.toml")
    common = ("--block-size", "64KiB", "--redis", cluster.url, "--redis-cluster")
    with mounted(f"s3://{name}", tmp_path / "a", tmp_path / "cache-a", *common, config=cfg) as a:
        for rel in files:
            (a.mountpoint / rel).read_bytes()
        a.fills_settled()
    victim = cluster.ports[1]
    held_by_victim = cluster.keys_per_shard()[victim]
    assert held_by_victim > 0
    failures: list[str] = []
    with mounted(f"s3://{name}", tmp_path / "b", tmp_path / "cache-b", *common, config=cfg) as b:
        rels = sorted(files)
        half = len(rels) // 2
        for i, rel in enumerate(rels):
            if i == half:
                cluster.kill(victim)
            try:
                if (b.mountpoint / rel).read_bytes() != files[rel]:
                    failures.append(f"{rel}: wrong bytes")
            except OSError as exc:
                failures.append(f"{rel}: {exc}")
        assert failures == []
        stats = b.stats()
        redis_stats = stats["tiers"]["redis"]
        # The live shards went on serving; the dead one's blocks came from the store.
        assert redis_stats["hits"] > 0 and stats["backend"]["bytes"] > 0
        assert redis_stats["hits"] + redis_stats["misses"] >= blocks_of(files)
        assert "shard" in b.log_tail() and "down" in b.log_tail()
        shown = run_tierfs("stats", str(b.mountpoint), check=True).stdout
        assert re.search(r"redis\s+2/3 up\s", shown), shown  # the live shards serve; the dead one is named
        # Every file again, from B's own tiers now: the mount is healthy.
        for rel, data in files.items():
            assert (b.mountpoint / rel).read_bytes() == data


def test_a_cluster_url_with_a_db_is_refused_in_one_line(tmp_path: Path, cluster: RedisCluster) -> None:
    (tmp_path / "mnt").mkdir()
    (tmp_path / "lake").mkdir()
    res = run_tierfs("mount", f"file://{tmp_path / 'lake'}", str(tmp_path / "mnt"), "--cache-dir",
                     str(tmp_path / "c"), "--redis", cluster.url + "/3", "--redis-cluster")
    try:
        assert_one_line_error(res, "only db 0")
    finally:
        if is_mounted(tmp_path / "mnt"):
            run_tierfs("umount", str(tmp_path / "mnt"))


def test_cluster_flag_on_a_plain_redis_is_refused_in_one_line(tmp_path: Path) -> None:
    from helpers import RedisServer

    server = RedisServer(tmp_path / "r").start()
    try:
        (tmp_path / "mnt").mkdir()
        (tmp_path / "lake").mkdir()
        res = run_tierfs("mount", f"file://{tmp_path / 'lake'}", str(tmp_path / "mnt"), "--cache-dir",
                         str(tmp_path / "c"), "--redis", f"redis://127.0.0.1:{server.port}", "--redis-cluster")
        assert_one_line_error(res, "not a Redis Cluster")
    finally:
        server.stop()
        if is_mounted(tmp_path / "mnt"):
            run_tierfs("umount", str(tmp_path / "mnt"))


def test_a_stalled_shard_costs_misses_never_errors(
        s3_server: SeaweedS3, bucket: tuple[str, dict[str, bytes]], cluster: RedisCluster, tmp_path: Path) -> None:
    name, files = bucket
    cfg = s3_server.s3_config(tmp_path / "s3.toml")
    common = ("--block-size", "64KiB", "--redis", cluster.url, "--redis-cluster")
    with mounted(f"s3://{name}", tmp_path / "a", tmp_path / "cache-a", *common, config=cfg) as a:
        for rel in files:
            (a.mountpoint / rel).read_bytes()
        a.fills_settled()
    stalled = cluster.procs[cluster.ports[2]]
    with mounted(f"s3://{name}", tmp_path / "b", tmp_path / "cache-b", *common, config=cfg) as b:
        os.kill(stalled.pid, signal.SIGSTOP)  # it holds its connections and answers nothing
        try:
            for rel, data in files.items():
                assert (b.mountpoint / rel).read_bytes() == data, rel
        finally:
            os.kill(stalled.pid, signal.SIGCONT)
        stats = b.stats()
        assert stats["tiers"]["redis"]["hits"] > 0 and stats["backend"]["bytes"] > 0
        assert stats["tiers"]["redis"]["errors"] >= 1


@pytest.mark.parametrize(("auth", "said"), [("wrong-password", "refused the password"), ("", "wants a password")])
def test_a_cluster_with_auth_and_a_wrong_or_no_password_stops_the_mount_in_one_line(
        tmp_path: Path, auth: str, said: str) -> None:
    cluster = RedisCluster(tmp_path / "cluster", password="right-password").start()
    (tmp_path / "mnt").mkdir()
    (tmp_path / "lake").mkdir()
    try:
        url = cluster.url.replace(":right-password@", f":{auth}@" if auth else "")
        res = run_tierfs("mount", f"file://{tmp_path / 'lake'}", str(tmp_path / "mnt"), "--cache-dir",
                         str(tmp_path / "c"), "--redis", url, "--redis-cluster")
        assert_one_line_error(res, said)
        assert "right-password" not in res.stderr and (not auth or auth not in res.stderr)
    finally:
        if is_mounted(tmp_path / "mnt"):
            run_tierfs("umount", str(tmp_path / "mnt"))
        cluster.stop()


def test_a_cluster_absent_at_mount_time_is_used_once_it_answers(
        s3_server: SeaweedS3, bucket: tuple[str, dict[str, bytes]], tmp_path: Path) -> None:
    name, files = bucket
    cfg = s3_server.s3_config(tmp_path / "s3.toml")
    cluster = RedisCluster(tmp_path / "cluster")  # its ports are chosen; nothing listens there yet
    try:
        with mounted(f"s3://{name}", tmp_path / "a", tmp_path / "cache-a", "--block-size", "64KiB",
                     "--redis", cluster.url, "--redis-cluster", config=cfg) as a:
            assert "redis tier off" in a.output
            unread = sorted(files)
            for rel in unread[:8]:
                assert (a.mountpoint / rel).read_bytes() == files[rel], rel
            del unread[:8]
            cluster.start()

            def filled() -> bool:
                """Read one more file (blocks no tier of A's holds): once the tier is back, they fill it."""
                if unread:
                    rel = unread.pop(0)
                    assert (a.mountpoint / rel).read_bytes() == files[rel], rel
                    a.fills_settled()
                return sum(cluster.keys_per_shard().values()) > 0

            wait_for(filled, 60, "the cluster to be used once it answers")
            assert unread, "every file was read before the tier came back"
            for rel in unread:
                assert (a.mountpoint / rel).read_bytes() == files[rel], rel
        assert "up again" in (tmp_path / "cache-a" / "tierfs.log").read_text()
    finally:
        cluster.stop()
