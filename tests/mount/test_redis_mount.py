"""Redis as the tier two "nodes" share, and the metrics users watch — real mounts, real Redis."""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    RedisServer,
    assert_one_line_error,
    drop_page_cache,
    free_port,
    mounted,
    random_bytes,
    run_tierfs,
    write_tree,
)

pytestmark = pytest.mark.mount
KiB = 1024


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path / "lake"
    files = {f"ds/c{i % 3}/{i:03d}.jpg": random_bytes(30_000 + 7 * i, seed=i) for i in range(60)}
    files["ds/shard.bin"] = random_bytes(700 * KiB, seed=99)
    write_tree(root, files)
    return root, files


def read_all(mnt: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        assert (mnt / rel).read_bytes() == data, rel


def test_two_nodes_share_blocks_through_redis(dataset: tuple[Path, dict[str, bytes]], tmp_path: Path,
                                              redis_server: RedisServer) -> None:
    root, files = dataset
    lake = f"file://{root}"
    common = ("--block-size", "256KiB", "--redis", redis_server.url)
    with mounted(lake, tmp_path / "node-a", tmp_path / "cache-a", *common) as a:
        read_all(a.mountpoint, files)
        assert a.backend_bytes() == sum(len(d) for d in files.values())
    with mounted(lake, tmp_path / "node-b", tmp_path / "cache-b", *common) as b:
        read_all(b.mountpoint, files)
        stats = b.stats()
        assert stats["backend"]["bytes"] == 0  # node B's first read came from Redis
        blocks = sum(max(1, -(-len(d) // (256 * KiB))) for d in files.values())
        assert stats["tiers"]["redis"]["hits"] == blocks
        shown = run_tierfs("stats", str(b.mountpoint), check=True).stdout
        assert re.search(rf"redis\s+up\s+{blocks}\s", shown), shown
        assert max(len(line) for line in shown.splitlines()) <= 80, shown  # an 80-column terminal
        import subprocess
        import sys

        watch = subprocess.run(["timeout", "-s", "INT", "2.5", sys.executable, "-m", "tierfs", "stats",
                                str(b.mountpoint), "--watch", "1"], capture_output=True, text=True)
        lines = [ln for ln in watch.stdout.splitlines() if "hit/miss per s" in ln]
        assert lines and "backend" in lines[0] and max(map(len, lines)) <= 80, watch.stdout + watch.stderr
        assert "aborted" not in watch.stderr


def test_disk_is_asked_before_redis_and_a_redis_hit_lands_on_disk(dataset: tuple[Path, dict[str, bytes]],
                                                                  tmp_path: Path, redis_server: RedisServer) -> None:
    root, files = dataset
    blocks = sum(max(1, -(-len(d) // (256 * KiB))) for d in files.values())

    def read_on(node: str) -> dict[str, Any]:
        """Mount on ``node`` (its own disk cache, a fresh RAM tier), read everything once, unmount."""
        with mounted(f"file://{root}", tmp_path / "mnt", tmp_path / f"cache-{node}", "--block-size", "256KiB",
                     "--redis", redis_server.url) as m:
            read_all(m.mountpoint, files)
            return m.stats()

    read_on("a")  # from the store, into A's disk and into Redis (the queued fills go in by the unmount)
    stats = read_on("a")  # Redis and A's disk both hold every block: the disk serves them
    assert stats["tiers"]["disk"]["hits"] == blocks and stats["backend"]["bytes"] == 0
    assert (stats["tiers"]["redis"]["hits"], stats["tiers"]["redis"]["misses"]) == (0, 0)  # Redis not even asked
    stats = read_on("b")  # a node with an empty disk: Redis serves every block...
    assert stats["tiers"]["redis"]["hits"] == blocks and stats["backend"]["bytes"] == 0
    stats = read_on("b")  # ...and puts it on B's disk: B's next mount finds it there, not in Redis
    assert stats["tiers"]["disk"]["hits"] == blocks and stats["backend"]["bytes"] == 0
    assert (stats["tiers"]["redis"]["hits"], stats["tiers"]["redis"]["misses"]) == (0, 0)


def test_redis_absent_at_mount_time(dataset: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    root, files = dataset
    (tmp_path / "mnt").mkdir()
    url = f"redis://127.0.0.1:{free_port()}/0"
    res = run_tierfs("mount", f"file://{root}", str(tmp_path / "mnt"), "--cache-dir", str(tmp_path / "c"), "--redis", url)
    try:
        assert res.returncode == 0, res.stderr
        assert "redis tier off" in res.stdout
        read_all(tmp_path / "mnt", files)
    finally:
        run_tierfs("umount", str(tmp_path / "mnt"))


def test_wrong_redis_password(dataset: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    root, _ = dataset
    server = RedisServer(tmp_path / "r", password="right-password").start()
    try:
        (tmp_path / "mnt").mkdir()
        res = run_tierfs("mount", f"file://{root}", str(tmp_path / "mnt"), "--cache-dir", str(tmp_path / "c"),
                         "--redis", f"redis://:wrong-password@127.0.0.1:{server.port}/0")
        assert_one_line_error(res, "refused the password")
        assert "wrong-password" not in res.stderr
    finally:
        server.stop()


def test_redis_killed_and_restarted_mid_read(dataset: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    root, files = dataset
    server = RedisServer(tmp_path / "r").start()
    try:
        with mounted(f"file://{root}", tmp_path / "mnt", tmp_path / "c", "--block-size", "64KiB",
                     "--ram-size", "0", "--cache-size", "0", "--redis", server.url) as m:
            errors: list[str] = []
            stop = threading.Event()

            def reader() -> None:
                while not stop.is_set():
                    for rel, data in files.items():
                        try:
                            if (m.mountpoint / rel).read_bytes() != data:
                                errors.append(f"wrong bytes: {rel}")
                        except OSError as exc:
                            errors.append(f"{rel}: {exc}")
                    drop_page_cache()

            threads = [threading.Thread(target=reader) for _ in range(4)]
            for t in threads:
                t.start()
            try:
                time.sleep(1.0)
                server.kill()  # kill -9 mid-read
                deadline = time.monotonic() + 20
                while m.stats()["tiers"]["redis"]["up"] == 1 and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert m.stats()["tiers"]["redis"]["up"] == 0  # marked down by the reads that failed over
                server = RedisServer(tmp_path / "r", port=server.port).start()
                deadline = time.monotonic() + 20
                while m.stats()["tiers"]["redis"]["up"] == 0 and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert m.stats()["tiers"]["redis"]["up"] == 1  # used again once back
                hits = m.stats()["tiers"]["redis"]["hits"]
                deadline = time.monotonic() + 20
                while m.stats()["tiers"]["redis"]["hits"] == hits and time.monotonic() < deadline:
                    time.sleep(0.1)
            finally:
                stop.set()
                for t in threads:
                    t.join(timeout=60)
            assert errors == []  # no read failed, every byte right
            assert m.stats()["tiers"]["redis"]["hits"] > hits
            log = m.log_tail()
            assert "redis tier down" in log and "redis tier up again" in log
    finally:
        server.stop()


def test_metrics_endpoint_matches_what_was_done(dataset: tuple[Path, dict[str, bytes]], tmp_path: Path,
                                                redis_server: RedisServer) -> None:
    root, files = dataset
    port = free_port()
    with mounted(f"file://{root}", tmp_path / "mnt", tmp_path / "c", "--block-size", "256KiB",
                 "--redis", redis_server.url, "--metrics", f"127.0.0.1:{port}") as m:
        read_all(m.mountpoint, files)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        stats = m.stats()

    def value(name: str, labels: str = "") -> float:
        found = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
        assert found, f"{name}{labels} not in /metrics"
        return float(found.group(1))

    total = sum(len(d) for d in files.values())
    assert value("tierfs_backend_bytes_total") == total == stats["backend"]["bytes"]
    assert value("tierfs_tier_misses_total", '{tier="disk"}') == stats["tiers"]["disk"]["misses"]
    assert value("tierfs_tier_up", '{tier="redis"}') == 1
    assert value("tierfs_fuse_requests_total", '{op="read"}') > 0
    assert value("tierfs_fuse_requests_total", '{op="open"}') >= len(files)
    assert value("tierfs_tier_get_seconds_count", '{tier="redis"}') > 0
    assert value("tierfs_backend_request_seconds_count", '{op="read"}') == value("tierfs_tier_misses_total", '{tier="disk"}')
    assert "tierfs_in_flight_fetches" in text
