"""A real mount of an S3 lake whose store misbehaves: SeaweedFS behind tests/faultproxy.py.

The mount is configured with short store deadlines ([store] read_deadline and
metadata_deadline = 3 s, timeout = 1 s): a store that stalls must cost a reader
an EIO within about that, not a hang, while whatever the mount already holds
(listings, cached blocks) keeps being served. A store that fails mid-response
(503 SlowDown, reset, truncated body) must never cost wrong bytes.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from faultproxy import FaultProxy
from helpers import Mount, SeaweedS3, drop_page_cache, is_mounted, mounted, pid_alive, random_bytes

pytestmark = [pytest.mark.servers, pytest.mark.mount]
KiB, MiB = 1 << 10, 1 << 20
DEADLINE = 3.0  # read_deadline and metadata_deadline in the config below


def upload(server: SeaweedS3, bucket: str, files: dict[str, bytes]) -> None:
    fs = server.fs()  # straight to SeaweedFS, not through the proxy
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    for key, data in files.items():
        fs.pipe(f"{bucket}/{key}", data)


def fault_config(server: SeaweedS3, path: Path, endpoint: str) -> Path:
    path.write_text(
        "[s3]\n"
        f'endpoint_url = "{endpoint}"\n'
        f'key = "{server.ACCESS_KEY}"\n'
        f'secret = "{server.SECRET_KEY}"\n'
        "[store]\n"
        "retries = 2\n"
        "timeout = 1\n"
        f"read_deadline = {DEADLINE:g}\n"
        f"metadata_deadline = {DEADLINE:g}\n"
        "[metadata]\n"
        "ttl = 600\n"  # listings stay fresh for the whole test: what is served is the cache, not a refresh
    )
    path.chmod(0o600)  # it holds credentials: tierfs mount refuses a config others can read
    return path


@pytest.fixture
def proxy(s3_server: SeaweedS3) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", s3_server.s3_port, seed=11) as p:
        yield p


def assert_alive(m: Mount) -> None:
    assert m.pid is not None and pid_alive(m.pid), m.log_tail()
    assert is_mounted(m.mountpoint)
    m.stats()  # the daemon still answers


def timed_read(path: Path) -> tuple[float, bytes | OSError]:
    t0 = time.monotonic()
    try:
        data: bytes | OSError = path.read_bytes()
    except OSError as exc:
        data = exc
    return time.monotonic() - t0, data


def test_stalled_store_costs_eio_not_a_hang(s3_server: SeaweedS3, proxy: FaultProxy, tmp_path: Path) -> None:
    files = {f"d/cached-{i}.bin": random_bytes(200 * KiB + i, seed=i) for i in range(3)}
    files |= {f"d/later-{i}.bin": random_bytes(300 * KiB + i, seed=10 + i) for i in range(3)}
    files["e/never-listed.bin"] = b"e"
    upload(s3_server, "faults-stall", files)
    cfg = fault_config(s3_server, tmp_path / "s3.toml", proxy.endpoint)
    with mounted("s3://faults-stall", tmp_path / "mnt", tmp_path / "cache", config=cfg) as m:
        mnt = m.mountpoint
        # Listed: the root (so that a lookup of d/ after the kernel dropped its dentries
        # is answered from tierfs' listing) and d/; every file's metadata known.
        assert {"d", "e"} <= set(os.listdir(mnt))
        names = sorted(os.listdir(mnt / "d"))
        assert names == sorted(k.removeprefix("d/") for k in files if k.startswith("d/"))
        for i in range(3):
            os.stat(mnt / f"d/later-{i}.bin")
            assert (mnt / f"d/cached-{i}.bin").read_bytes() == files[f"d/cached-{i}.bin"]

        proxy.set_mode("stall")
        drop_page_cache()  # cached bytes must now come from tierfs' tiers, not the kernel's page cache
        result: dict[str, tuple[float, bytes | OSError]] = {}
        reader = threading.Thread(target=lambda: result.update(later=timed_read(mnt / "d/later-0.bin")))
        reader.start()
        try:
            time.sleep(0.3)  # the uncached read is now waiting on the stalled store
            # Meanwhile, what the mount holds is served at once: the listing and the cached blocks.
            t0 = time.monotonic()
            listed = sorted(os.listdir(mnt / "d"))
            t_list = time.monotonic() - t0
            cached = [timed_read(mnt / f"d/cached-{i}.bin") for i in range(3)]
            t0 = time.monotonic()
            size = os.stat(mnt / "d/later-1.bin").st_size
            t_stat = time.monotonic() - t0
        finally:
            reader.join(timeout=60)
            hung = reader.is_alive()
            if hung:  # free the mount for the report (and the umount): kill the daemon
                m.kill9()
                reader.join(timeout=30)
        print(f"\nstall: while an uncached read waits: listdir of a listed folder {t_list:.3f} s, "
              f"stat of a listed file {t_stat:.3f} s, cached reads " + ", ".join(f"{t:.3f} s" for t, _ in cached))
        assert not hung, "a read of an uncached file still hangs on a stalled store after 60 s"
        elapsed, outcome = result["later"]
        print(f"stall: read of an uncached file: {outcome!r:.80} after {elapsed:.2f} s (deadline {DEADLINE:g} s)")
        assert isinstance(outcome, OSError) and outcome.errno == errno.EIO, outcome
        assert elapsed < 15, f"EIO only after {elapsed:.1f} s"
        assert listed == names and size == len(files["d/later-1.bin"])
        for i, (_t, data) in enumerate(cached):
            assert data == files[f"d/cached-{i}.bin"], f"cached-{i}: {data!r:.200}"
        # Not a test of the deadline's precision: a daemon that made these wait on the
        # stalled store would take the whole deadline (or forever), not milliseconds.
        assert t_list < 2.0 and t_stat < 2.0 and all(t < 2.0 for t, _ in cached)

        elapsed, outcome = timed_read(mnt / "d/later-1.bin")  # a second one, alone
        print(f"stall: a second uncached read: {outcome!r:.80} after {elapsed:.2f} s")
        assert isinstance(outcome, OSError) and outcome.errno == errno.EIO, outcome
        assert elapsed < 15
        t0 = time.monotonic()  # metadata the mount never saw: bounded by metadata_deadline
        with pytest.raises(OSError) as e:
            os.stat(mnt / "e/never-listed.bin")
        elapsed = time.monotonic() - t0
        print(f"stall: stat of a file in a folder never listed: {e.value!r:.80} after {elapsed:.2f} s")
        assert e.value.errno == errno.EIO and elapsed < 15
        assert_alive(m)
        assert proxy.stats().faults.get("stall", 0) >= 2

        proxy.set_mode("pass")
        for key, data in files.items():
            assert (mnt / key).read_bytes() == data, key
        assert_alive(m)
    print(f"proxy: {proxy.stats()}")


@pytest.mark.parametrize("mode", ["http_503", "reset", "truncate"])
def test_failing_store_never_costs_wrong_bytes(s3_server: SeaweedS3, proxy: FaultProxy, tmp_path: Path,
                                               mode: str) -> None:
    bucket = f"faults-{mode.replace('_', '-')}"
    files = {f"c{i % 4}/{i:03d}.jpg": random_bytes(20 * KiB + 997 * i, seed=100 + i) for i in range(40)}
    files |= {f"shards/s{i}.tar": random_bytes(3 * MiB + 12345 * i, seed=200 + i) for i in range(3)}
    upload(s3_server, bucket, files)
    dirs = {k.rsplit("/", 1)[0] for k in files}
    cfg = fault_config(s3_server, tmp_path / "s3.toml", proxy.endpoint)
    with mounted(f"s3://{bucket}", tmp_path / "mnt", tmp_path / "cache", "--block-size", "1MiB", config=cfg) as m:
        mnt = m.mountpoint
        proxy.set_mode(mode, probability=0.3)
        outcomes = {"right": 0, "EIO": 0}
        for d in sorted(dirs):  # nothing listed yet: listings go through the faults too
            try:
                names = sorted(os.listdir(mnt / d))
            except OSError as exc:
                assert exc.errno == errno.EIO, (d, exc)
                outcomes["EIO"] += 1
                continue
            assert names == sorted(k.split("/", 1)[1] for k in files if k.startswith(d + "/")), d
            outcomes["right"] += 1
        for key, data in files.items():
            try:
                got = (mnt / key).read_bytes()
            except OSError as exc:
                assert exc.errno == errno.EIO, (key, exc)
                outcomes["EIO"] += 1
                continue
            assert len(got) == len(data), f"{key}: {len(got)} bytes, not {len(data)}"
            assert got == data, f"{key}: wrong bytes"
            outcomes["right"] += 1
        faults = proxy.stats().faults
        print(f"\n{mode} at 0.3: {outcomes}; faults injected {faults}")
        assert faults.get(mode, 0) >= 1
        assert_alive(m)

        proxy.set_mode("pass")
        drop_page_cache()
        for d in sorted(dirs):
            assert sorted(os.listdir(mnt / d)) == sorted(k.split("/", 1)[1] for k in files if k.startswith(d + "/"))
        for key, data in files.items():
            assert (mnt / key).read_bytes() == data, key
        assert_alive(m)


def test_mount_through_the_proxy(s3_server: SeaweedS3, proxy: FaultProxy, tmp_path: Path) -> None:
    """The proxy itself, in pass mode, is transparent to a mount (with only today's [store] keys)."""
    files = {"a/x.bin": random_bytes(2 * MiB + 1, seed=1), "a/y.txt": b"y"}
    upload(s3_server, "faults-pass", files)
    cfg = s3_server.s3_config(tmp_path / "s3.toml", endpoint=proxy.endpoint)
    with mounted("s3://faults-pass", tmp_path / "mnt", tmp_path / "cache", config=cfg) as m:
        for key, data in files.items():
            assert (m.mountpoint / key).read_bytes() == data
    s = proxy.stats()
    assert s.requests >= 2 and s.bytes_to_client > len(files["a/x.bin"]) and not s.faults
