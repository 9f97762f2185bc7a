"""Never wrong bytes: a rewrite upstream in the middle of a read, and two nodes writing one key.

On a real mount, against each object-store server the tests run (SeaweedFS,
fake-gcs-server, Azurite).
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import Mount, RedisServer, drop_page_cache, mounted, random_bytes

pytestmark = [pytest.mark.servers, pytest.mark.mount]
MiB = 1 << 20


@dataclass
class Server:
    url: str  # the lake
    config: Path
    put: Callable[[str, bytes], None]  # another writer, straight to the lake
    get: Callable[[str], bytes]


@pytest.fixture(params=["s3", "gcs", "azure"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    if request.param == "s3":
        s3 = request.getfixturevalue("s3_server")
        fs = s3.fs()
        bucket = f"consist-{os.getpid()}-{time.monotonic_ns() % 100000}"
        fs.mkdir(bucket)
        yield Server(f"s3://{bucket}", s3.s3_config(tmp_path / "lake.toml"),
                     lambda k, d: fs.pipe(f"{bucket}/{k}", d), lambda k: fs.cat(f"{bucket}/{k}"))
    elif request.param == "gcs":
        gcs = request.getfixturevalue("gcs")
        fs = gcs.fs()
        fs.mkdir("consist-gcs")
        yield Server("gs://consist-gcs", gcs.config(tmp_path / "lake.toml"),
                     lambda k, d: fs.pipe(f"consist-gcs/{k}", d), lambda k: fs.cat(f"consist-gcs/{k}"))
    else:
        az = request.getfixturevalue("azure")
        fs = az.fs()
        fs.mkdir("consist-az")
        yield Server("az://consist-az", az.config(tmp_path / "lake.toml"),
                     lambda k, d: fs.pipe(f"consist-az/{k}", d), lambda k: fs.cat(f"consist-az/{k}"))


def _with_ttl(config: Path, ttl: float) -> Path:
    config.write_text(config.read_text() + f"\n[metadata]\nttl = {ttl}\n")
    return config


def test_a_rewrite_upstream_mid_read_never_mixes_versions(server: Server, tmp_path: Path) -> None:
    old, new = random_bytes(16 * MiB, seed=1), random_bytes(16 * MiB, seed=2)
    server.put("data/shard.bin", old)
    cfg = _with_ttl(server.config, 1)
    with mounted(server.url, tmp_path / "mnt", tmp_path / "cache", "--block-size", "1MiB", config=cfg) as m:
        path = m.mountpoint / "data/shard.bin"
        fd = os.open(path, os.O_RDONLY)
        try:
            assert os.pread(fd, 64 * 1024, 0) == old[: 64 * 1024]
            server.put("data/shard.bin", new)  # same size, another version
            got: list[bytes | None] = []
            for off in (12 * MiB, 15 * MiB, 6 * MiB):
                try:
                    got.append(os.pread(fd, 256 * 1024, off))
                except OSError as exc:
                    assert exc.errno == errno.EIO, exc
                    got.append(None)
            for off, data in zip((12 * MiB, 15 * MiB, 6 * MiB), got, strict=True):
                assert data is None or data == old[off: off + 256 * 1024], f"new bytes under the old identity at {off}"
        finally:
            os.close(fd)
        time.sleep(1.5)  # past the metadata TTL: the next open asks the lake again
        drop_page_cache()
        assert path.read_bytes() == new  # all of the new version, no block of the old one
        assert m.stats()["backend"]["errors"] >= got.count(None)


def test_two_nodes_writing_one_key_cache_what_the_lake_holds(server: Server, tmp_path: Path,
                                                            redis_server: RedisServer) -> None:
    """Two mounts (two nodes sharing Redis) close the same key at the same size at the same moment."""
    cfg = _with_ttl(server.config, 0.5)
    server.put("ckpt/.keep", b"")
    a = Mount(server.url, tmp_path / "a", tmp_path / "cache-a", "--redis", redis_server.url, config=cfg)
    b = Mount(server.url, tmp_path / "b", tmp_path / "cache-b", "--redis", redis_server.url, config=cfg)
    with a, b:
        for round_ in range(6):
            data = {m: random_bytes(300_000, seed=10 * round_ + i) for i, m in enumerate((a, b))}
            barrier = threading.Barrier(2)
            errors: list[BaseException] = []

            def write(m: Mount, barrier: threading.Barrier = barrier, data: dict[Mount, bytes] = data,
                      errors: list[BaseException] = errors) -> None:
                try:
                    barrier.wait(10)
                    (m.mountpoint / "ckpt/model.pt").write_bytes(data[m])
                except BaseException as exc:  # reported below
                    errors.append(exc)

            threads = [threading.Thread(target=write, args=(m,)) for m in (a, b)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert not errors, errors
            lake = server.get("ckpt/model.pt")
            assert lake in (data[a], data[b])
            time.sleep(0.7)  # past the TTL: both nodes ask the lake which object is there now
            drop_page_cache()
            for m in (a, b):
                assert (m.mountpoint / "ckpt/model.pt").read_bytes() == lake, f"round {round_}: {m.mountpoint}"
