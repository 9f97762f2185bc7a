"""Real FUSE mounts of a file:// lake, started with the CLI, checked byte for byte."""

from __future__ import annotations

import errno
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import Mount, drop_page_cache, mounted, random_bytes, wait_for, write_tree

pytestmark = pytest.mark.mount
MiB = 1 << 20


@pytest.fixture
def ml_lake(tmp_path: Path) -> Path:
    root = tmp_path / "lake"
    files = {
        f"datasets/imgs/train/class{c}/{i:04d}.jpg": random_bytes(1000 + 997 * i, seed=c * 100 + i)
        for c in range(3) for i in range(20)
    }
    files["datasets/imgs/shard-000.tar"] = random_bytes(5 * MiB + 12345, seed=7)
    files["datasets/imgs/exactly-one-block.bin"] = random_bytes(MiB, seed=8)
    files["datasets/imgs/empty.txt"] = b""
    files["datasets/imgs/odd names/a b #1 %2 ?3 +4 é ünï.txt"] = b"odd names work\n"
    write_tree(root, files)
    return root


def source_files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in root.rglob("*") if p.is_file()}


def read_all(mnt: Path, rels: list[str]) -> dict[str, bytes]:
    return {rel: (mnt / rel).read_bytes() for rel in rels}


def test_every_byte_matches_the_source(ml_lake: Path, tmp_path: Path) -> None:
    src = source_files(ml_lake)
    with mounted(f"file://{ml_lake}", tmp_path / "mnt", tmp_path / "cache", "--block-size", "1MiB") as m:
        seen = {str(p.relative_to(m.mountpoint)) for p in m.mountpoint.rglob("*") if p.is_file()}
        assert seen == set(src)
        for rel, path in src.items():
            assert (m.mountpoint / rel).read_bytes() == path.read_bytes(), rel
            assert (m.mountpoint / rel).stat().st_size == path.stat().st_size
        # random offsets and lengths across block boundaries
        big = src["datasets/imgs/shard-000.tar"].read_bytes()
        rng = random.Random(3)
        fd = os.open(m.mountpoint / "datasets/imgs/shard-000.tar", os.O_RDONLY)
        try:
            for _ in range(200):
                off = rng.randrange(0, len(big) + 100)
                n = rng.choice([1, 100, 4096, MiB - 1, MiB + 1, 3 * MiB])
                assert os.pread(fd, n, off) == big[off : off + n]
        finally:
            os.close(fd)


def test_many_threads_at_once(ml_lake: Path, tmp_path: Path) -> None:
    src = source_files(ml_lake)
    rels = sorted(src) * 4
    random.Random(5).shuffle(rels)
    with mounted(f"file://{ml_lake}", tmp_path / "mnt", tmp_path / "cache", "--block-size", "1MiB") as m:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda r: (r, (m.mountpoint / r).read_bytes()), rels))
        for rel, data in results:
            assert data == src[rel].read_bytes(), rel


def test_one_backend_fetch_per_block_however_many_readers(ml_lake: Path, tmp_path: Path) -> None:
    path = "datasets/imgs/shard-000.tar"
    size = (ml_lake / path).stat().st_size
    with mounted(f"file://{ml_lake}", tmp_path / "mnt", tmp_path / "cache", "--block-size", "1MiB") as m:
        os.stat(m.mountpoint / path)
        drop_page_cache()
        with ThreadPoolExecutor(16) as pool:
            datas = list(pool.map(lambda _: (m.mountpoint / path).read_bytes(), range(16)))
        assert all(d == (ml_lake / path).read_bytes() for d in datas)
        assert m.backend_bytes() == size  # every block fetched exactly once


def test_second_pass_is_served_by_the_tiers(ml_lake: Path, tmp_path: Path) -> None:
    src = source_files(ml_lake)
    with mounted(f"file://{ml_lake}", tmp_path / "mnt", tmp_path / "cache", "--block-size", "1MiB") as m:
        first = read_all(m.mountpoint, sorted(src))
        fetched = m.backend_bytes()
        assert fetched == sum(len(v) for v in first.values())
        requests = m.stats()["backend"]["requests"]
        drop_page_cache()
        second = read_all(m.mountpoint, sorted(src))
        assert second == first
        stats = m.stats()
        assert stats["backend"]["bytes"] == fetched  # zero backend bytes on the second pass
        # no request per file: at most a stat for each directory on the way down
        assert stats["backend"]["requests"] - requests <= 5
        assert stats["tiers"]["ram"]["hits"] > 0
        assert os.getxattr(m.mountpoint / "datasets/imgs/shard-000.tar", "user.tierfs.tier") == b"ram"


def test_disk_cache_survives_umount_and_remount(ml_lake: Path, tmp_path: Path) -> None:
    src = source_files(ml_lake)
    args = (f"file://{ml_lake}", tmp_path / "mnt", tmp_path / "cache", "--block-size", "1MiB")
    with mounted(*args) as m:
        first = read_all(m.mountpoint, sorted(src))
    drop_page_cache()
    with mounted(*args) as m:
        assert read_all(m.mountpoint, sorted(src)) == first
        stats = m.stats()
        assert stats["backend"]["bytes"] == 0
        assert stats["tiers"]["disk"]["hits"] >= len(src)


def test_disk_cache_survives_sigkill(ml_lake: Path, tmp_path: Path) -> None:
    src = source_files(ml_lake)
    args = (f"file://{ml_lake}", tmp_path / "mnt", tmp_path / "cache", "--block-size", "1MiB")
    m = Mount(*args).start()
    try:
        first = read_all(m.mountpoint, sorted(src))
        time.sleep(0.2)
    finally:
        m.kill9()
    drop_page_cache()
    with mounted(*args) as m2:
        assert read_all(m2.mountpoint, sorted(src)) == first
        assert m2.stats()["backend"]["bytes"] == 0


def test_dead_mount_is_reported_and_can_be_unmounted(ml_lake: Path, tmp_path: Path) -> None:
    """(A new `tierfs mount` clears it instead: tests/mount/test_crash_restart.py.)"""
    from helpers import force_cleanup, is_mounted, run_tierfs

    mnt = tmp_path / "mnt"
    m = Mount(f"file://{ml_lake}", mnt, tmp_path / "cache").start()
    pid = m.pid
    try:
        import signal

        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        for _ in range(100):
            try:
                os.statvfs(mnt)
            except OSError as exc:
                assert exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the mount did not die")
        res = run_tierfs("stats", str(mnt))
        assert res.returncode == 1 and "dead mount" in res.stderr
        res = run_tierfs("umount", str(mnt))
        assert res.returncode == 0, res.stderr
        assert not is_mounted(mnt)
    finally:
        force_cleanup(mnt, pid)


def test_cache_stays_under_its_size(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    files = {f"d/{i}.bin": random_bytes(300_000, seed=i) for i in range(40)}  # 12 MB
    write_tree(root, files)
    limit = 3 * MiB
    with mounted(f"file://{root}", tmp_path / "mnt", tmp_path / "cache", "--block-size", "256KiB",
                 "--cache-size", str(limit), "--ram-size", "1MiB") as m:
        for rel, data in files.items():
            assert (m.mountpoint / rel).read_bytes() == data
            m.fills_settled()  # the disk puts run behind the reads' replies
            disk = m.stats()["tiers"]["disk"]
            assert disk["bytes_held"] <= limit
        assert m.stats()["tiers"]["disk"]["evictions"] > 0
        on_disk = sum(p.stat().st_size for p in (tmp_path / "cache" / "blocks").rglob("*") if p.is_file())
        assert on_disk <= limit


def test_corrupted_block_is_detected_and_refetched(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    data = random_bytes(3 * MiB, seed=11)
    write_tree(root, {"f.bin": data})
    # (No passthrough: its whole-file copy would be a fourth file; test_passthrough.py spoils those.)
    args = (f"file://{root}", tmp_path / "mnt", tmp_path / "cache", "--block-size", "1MiB", "--ram-size", "0",
            "--no-passthrough")
    with mounted(*args) as m:
        assert (m.mountpoint / "f.bin").read_bytes() == data
    blocks = sorted(p for p in (tmp_path / "cache" / "blocks").rglob("*") if p.is_file())
    assert len(blocks) == 3
    victim = bytearray(blocks[0].read_bytes())
    victim[1234] ^= 0x5A
    blocks[0].write_bytes(bytes(victim))
    drop_page_cache()
    with mounted(*args) as m:
        assert (m.mountpoint / "f.bin").read_bytes() == data
        s = m.stats()
        assert s["tiers"]["disk"]["errors"] == 1  # the bad block was caught...
        assert s["backend"]["bytes"] == MiB  # ...and only it was fetched again
    assert "failed its checksum" in (tmp_path / "cache" / "tierfs.log").read_text()


def test_upstream_change_is_seen_after_the_ttl(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    write_tree(root, {"f.txt": b"version one\n"})
    with mounted(f"file://{root}", tmp_path / "mnt", tmp_path / "cache", "--metadata-ttl", "1") as m:
        f = m.mountpoint / "f.txt"
        assert f.read_bytes() == b"version one\n"
        etag1 = os.getxattr(f, "user.tierfs.etag")
        (root / "f.txt").write_bytes(b"version TWO\n")  # same size: only the ref tells them apart
        time.sleep(1.5)
        assert f.read_bytes() == b"version TWO\n"  # not the kernel's cached pages of v1
        assert os.getxattr(f, "user.tierfs.etag") != etag1
        (root / "new.txt").write_bytes(b"new")
        time.sleep(1.5)
        assert (m.mountpoint / "new.txt").read_bytes() == b"new"


def test_large_directory(tmp_path: Path) -> None:
    root = tmp_path / "lake" / "big"
    root.mkdir(parents=True)
    n = 100_000
    for i in range(n):
        os.close(os.open(root / f"{i:06d}.jpg", os.O_CREAT | os.O_WRONLY, 0o644))
    with mounted(f"file://{tmp_path / 'lake'}", tmp_path / "mnt", tmp_path / "cache") as m:
        names = os.listdir(m.mountpoint / "big")
        assert len(names) == n and names[0].endswith(".jpg")
        assert os.stat(m.mountpoint / "big" / "099999.jpg").st_size == 0
        assert m.stats()["backend"]["requests"] < 10  # stat came from the listing


def test_a_directory_too_large_to_cache_is_listed_once_not_per_lookup(tmp_path: Path) -> None:
    """Above the listing cache's bound, lookups are answered by a stat each, not by listing the directory again."""
    root = tmp_path / "lake" / "flat"
    root.mkdir(parents=True)
    n = 300
    for i in range(n):
        (root / f"{i:04d}.jpg").write_bytes(b"x" * (i % 7))
    (root / "sub").mkdir()
    (root / "sub" / "inner.txt").write_bytes(b"inner")
    cfg = tmp_path / "tierfs.toml"
    cfg.write_text("[metadata]\nlisting_entries = 100\n")  # a directory of over 50 entries is not kept

    def lists(m: Mount) -> float:
        return float(m.stats()["latency_ms"]["backend"].get("list", {}).get("count", 0))

    with mounted(f"file://{tmp_path / 'lake'}", tmp_path / "mnt", tmp_path / "cache", config=cfg) as m:
        flat = m.mountpoint / "flat"
        before = lists(m)
        for i in range(n):
            assert os.stat(flat / f"{i:04d}.jpg").st_size == i % 7
        assert (flat / "sub" / "inner.txt").read_bytes() == b"inner"
        with pytest.raises(FileNotFoundError):
            os.stat(flat / "missing.jpg")
        assert lists(m) - before <= 2, "each lookup listed the whole directory again"
        assert len(os.listdir(flat)) == n + 1  # readdir still lists it all


def test_a_missing_name_is_not_asked_for_again_within_the_negative_ttl(tmp_path: Path) -> None:
    """Probes of a name that is not there (imports, config searches) cost one request per negative_ttl.

    (In a directory this mount has listed, the listing answers them; here the directory is too large to keep
    listed, so each name is a stat.)"""
    root = tmp_path / "lake"
    write_tree(root, {f"pkg/{i}.py": b"x" for i in range(10)})
    cfg = tmp_path / "tierfs.toml"
    cfg.write_text("[metadata]\nnegative_ttl = 1\nlisting_entries = 4\n")

    def stats_asked(m: Mount) -> float:
        lat = m.stats()["latency_ms"]["backend"]
        return float(lat.get("stat", {}).get("count", 0) + lat.get("list", {}).get("count", 0))

    with mounted(f"file://{root}", tmp_path / "mnt", tmp_path / "cache", config=cfg) as m:
        before = stats_asked(m)
        for _ in range(50):
            with pytest.raises(FileNotFoundError):
                os.stat(m.mountpoint / "pkg" / "missing.py")
        assert stats_asked(m) - before <= 3, "every probe of a missing name asked the store"
        (root / "pkg" / "missing.py").write_bytes(b"here now")  # upstream: seen once the negative TTL passed
        time.sleep(1.5)
        assert (m.mountpoint / "pkg" / "missing.py").read_bytes() == b"here now"
        with pytest.raises(FileNotFoundError):
            os.stat(m.mountpoint / "pkg" / "made.py")
        (m.mountpoint / "pkg" / "made.py").write_bytes(b"made here")  # through the mount: seen at once
        assert (m.mountpoint / "pkg" / "made.py").read_bytes() == b"made here"


def test_statfs_and_xattrs(ml_lake: Path, tmp_path: Path) -> None:
    with mounted(f"file://{ml_lake}", tmp_path / "mnt", tmp_path / "cache") as m:
        st = os.statvfs(m.mountpoint)
        assert st.f_bsize > 0
        names = os.listxattr(m.mountpoint / "datasets/imgs/empty.txt")
        assert "user.tierfs.etag" in names


def test_stats_command(ml_lake: Path, tmp_path: Path) -> None:
    import json

    from helpers import run_tierfs

    with mounted(f"file://{ml_lake}", tmp_path / "mnt", tmp_path / "cache") as m:
        (m.mountpoint / "datasets/imgs/shard-000.tar").read_bytes()
        res = run_tierfs("stats", str(m.mountpoint), check=True)
        for word in ("ram", "disk", "backend", "hits", "misses", "evicted", "requests", "retries", "writes: 0 uploads"):
            assert word in res.stdout
        data = json.loads(run_tierfs("stats", str(m.mountpoint), "--json", check=True).stdout)
        assert data["backend"]["bytes"] == (ml_lake / "datasets/imgs/shard-000.tar").stat().st_size


def test_sequential_reads_are_prefetched_and_requests_are_large(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    data = random_bytes(24 * MiB + 3, seed=21)
    write_tree(root, {"shard.bin": data})
    with mounted(f"file://{root}", tmp_path / "mnt", tmp_path / "cache", "--block-size", "1MiB") as m:
        import subprocess

        dev = subprocess.run(["mountpoint", "-d", str(m.mountpoint)], capture_output=True, text=True).stdout.strip()
        assert Path(f"/sys/class/bdi/{dev}/read_ahead_kb").read_text().strip() == "4096"
        drop_page_cache()
        assert (m.mountpoint / "shard.bin").read_bytes() == data
        s = m.stats()
        assert s["prefetched_blocks"] > 0
        assert s["backend"]["bytes"] == len(data)  # read-ahead fetched nothing twice, nothing beyond EOF
        assert s["fuse"]["read"] < len(data) // (256 * 1024)  # large requests, not 128 KiB ones


@pytest.mark.parametrize("read_only", [True, False], ids=["read-only", "writable"])
def test_a_warm_small_file_costs_two_fuse_requests(tmp_path: Path, read_only: bool) -> None:
    """docs/semantics.md: warm open/read/close = open + release (+ a getattr on a writable mount); no lookup, read or
    flush."""
    root = tmp_path / "lake"
    write_tree(root, {"d/small.jpg": random_bytes(50_000, seed=3)})
    with mounted(f"file://{root}", tmp_path / "mnt", tmp_path / "cache", *(["--read-only"] if read_only else [])) as m:
        f = m.mountpoint / "d/small.jpg"
        for _ in range(2):  # the first pass fills the caches (and teaches the kernel flush is ENOSYS)
            f.read_bytes()

        def released() -> bool:
            fuse = m.stats()["fuse"]
            return bool(fuse["release"] == fuse["open"])

        wait_for(released, 30, "the kernel's asynchronous releases")
        before = m.stats()["fuse"]
        for _ in range(10):
            assert f.read_bytes() == (root / "d/small.jpg").read_bytes()
        wait_for(released, 30, "the kernel's asynchronous releases")
        after = m.stats()["fuse"]
        delta = {op: after[op] - before[op] for op in after}
        assert delta["open"] == 10 and delta["release"] == 10
        assert delta["flush"] == 0  # read-only opens ask for none (noflush)
        assert delta["lookup"] == 0 and delta["read"] == 0  # the bytes are the kernel's (page cache or passthrough)
        # Passthrough: on a writable mount each read through the backing file drops the cached atime, so the next
        # stat asks (read_bytes stats twice); a read-only mount is read-only to the kernel too, which keeps it.
        assert delta["getattr"] <= (1 if read_only else 21)


def test_archived_object_is_a_clear_error_not_a_hang(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    write_tree(root, {"old/ckpt.pt": b"frozen", "old/fresh.pt": b"readable"})
    os.setxattr(root / "old/ckpt.pt", "user.tierfs.class", b"DEEP_ARCHIVE")  # a local lake's emulated class
    with mounted(f"file://{root}", tmp_path / "mnt", tmp_path / "cache") as m:
        t0 = time.monotonic()
        with pytest.raises(OSError) as e:
            (m.mountpoint / "old/ckpt.pt").read_bytes()
        assert e.value.errno == errno.EIO and time.monotonic() - t0 < 5
        assert (m.mountpoint / "old/fresh.pt").read_bytes() == b"readable"
        assert "old/ckpt.pt is archived (DEEP_ARCHIVE): restore it first with `tierfs restore" in m.log_tail()


@pytest.mark.parametrize("threads", [6, 48])
def test_a_flood_of_requests_does_not_starve_a_read_that_waits_on_a_thread(tmp_path: Path, threads: int) -> None:
    """Threads open and close one warm file without pause (each a FUSE open, answered without waiting, and
    a release, which the kernel sends in the background) while the test reads files nobody has read yet,
    each waiting on a worker thread of the daemon's: every one arrives, byte for byte, while the flood goes
    on.

    Two ways this stalled. (6 threads) The request loop reads queued requests back to back (pyfuse3
    patch): it must still let the loop's other tasks run; without the checkpoint after each request these
    reads arrived 4x slower (only in part starved, as the flood's queue runs dry now and then). (48
    threads) A cold read's read-ahead is a background request too, and waits in the kernel for one of the
    connection's background slots (12 unless the daemon asks for more at INIT); releases take slots
    without waiting, so with more closing threads than slots the releases piled up by the hundred
    thousand and the read waited for all of them: never, while the flood went on."""
    lake = tmp_path / "lake"
    files = {f"d/{i:03d}.bin": random_bytes(50_000 + i, seed=i) for i in range(30)}
    write_tree(lake, files)
    with mounted(f"file://{lake}", tmp_path / "mnt", tmp_path / "cache") as m:
        warm = m.mountpoint / "d/000.bin"
        assert warm.read_bytes() == files["d/000.bin"]
        stop, opened = False, [0] * threads

        def flood(slot: int) -> None:
            while not stop:
                os.close(os.open(warm, os.O_RDONLY))
                opened[slot] += 1

        with ThreadPoolExecutor(threads) as pool:
            floods = [pool.submit(flood, i) for i in range(threads)]
            try:
                wait_for(lambda: sum(opened) > 200, 30, "the flood to start")
                before = sum(opened)
                with ThreadPoolExecutor(1) as reader:
                    for rel in list(files)[1:]:
                        got = reader.submit((m.mountpoint / rel).read_bytes)
                        assert got.result(timeout=20) == files[rel], rel
                assert sum(opened) > before  # (the flood ran all along)
            finally:
                stop = True
                for f in floods:
                    f.result(timeout=120)
