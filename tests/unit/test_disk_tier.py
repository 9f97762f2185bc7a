"""Disk tier specifics: checksums, crash repair, layout, lock, mode, the free-space reserve."""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tierfs import statefile
from tierfs.config import load
from tierfs.errors import ConfigError, UserError
from tierfs.refs import ObjectRef
from tierfs.tiers import disk as disk_module
from tierfs.tiers.disk import DiskTier, reserve_bytes
from tierfs.tiers.lmdb_index import LANDING
from tierfs.write.staging import Staging


def key(n: int):
    return ObjectRef(f"obj{n}", 100, etag="e").block_key(0, 4096)


def test_cache_dir_mode_0700(tmp_path: Path) -> None:
    t = DiskTier(tmp_path / "c", 1 << 20)
    try:
        assert stat.S_IMODE((tmp_path / "c").stat().st_mode) == 0o700
    finally:
        t.close()


def test_corrupt_block_is_dropped(tmp_path: Path) -> None:
    t = DiskTier(tmp_path / "c", 1 << 20)
    try:
        t.put(key(1), b"A" * 1000)
        path = t._path(key(1).hex)
        data = bytearray(path.read_bytes())
        data[10] ^= 0xFF
        path.write_bytes(bytes(data))
        assert t.get(key(1)) is None
        assert not path.exists()
        assert t.stats.get("entries") == 0
        assert t.stats.get("errors") == 1
    finally:
        t.close()


def test_truncated_block_is_dropped(tmp_path: Path) -> None:
    t = DiskTier(tmp_path / "c", 1 << 20)
    try:
        t.put(key(1), b"A" * 1000)
        os.truncate(t._path(key(1).hex), 10)
        assert t.get(key(1)) is None
    finally:
        t.close()


def test_missing_file_is_forgotten(tmp_path: Path) -> None:
    t = DiskTier(tmp_path / "c", 1 << 20)
    try:
        t.put(key(1), b"A" * 1000)
        t._path(key(1).hex).unlink()
        assert t.get(key(1)) is None
        assert t.stats.get("entries") == 0
    finally:
        t.close()


def test_survives_reopen(tmp_path: Path) -> None:
    t = DiskTier(tmp_path / "c", 1 << 20)
    t.put(key(1), b"persist")
    t.close()
    t = DiskTier(tmp_path / "c", 1 << 20)
    try:
        assert t.get(key(1)) == b"persist"
        assert t.recovered == 0
    finally:
        t.close()


def test_crash_states_are_repaired_from_pending_marks(tmp_path: Path) -> None:
    t = DiskTier(tmp_path / "c", 1 << 20)
    t.put(key(1), b"good block")
    # A crash after the file landed but before the index recorded it:
    orphan = t._path(key(2).hex)
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"orphan")
    t.index.mark([key(2).digest], LANDING)
    # A crash halfway through a temp write:
    (t.tmp_dir / "leftover.tmp").write_bytes(b"half")
    # ...and no clean close: simulate kill -9 by dropping the objects.
    t.index.env.close()
    os.close(t._lock_fd)

    t2 = DiskTier(tmp_path / "c", 1 << 20)
    try:
        assert t2.recovered == 1
        assert not orphan.exists()
        assert list(t2.tmp_dir.iterdir()) == []
        assert t2.get(key(1)) == b"good block"
        assert t2.stats.get("entries") == 1
        assert t2.index.pending() == []
    finally:
        t2.close()


def test_other_layout_is_started_afresh(tmp_path: Path) -> None:
    t = DiskTier(tmp_path / "c", 1 << 20)
    t.put(key(1), b"old")
    t.close()
    (tmp_path / "c" / "LAYOUT").write_text("tierfs-disk-cache 0\n")
    t = DiskTier(tmp_path / "c", 1 << 20)
    try:
        assert t.get(key(1)) is None
    finally:
        t.close()


def test_second_user_of_a_cache_dir_is_refused(tmp_path: Path) -> None:
    import subprocess
    import sys

    t = DiskTier(tmp_path / "c", 1 << 20)
    t.close()
    hold = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX); "
            "os.ftruncate(fd, 0); os.pwrite(fd, f'{os.getpid()}\\n'.encode(), 0); print('held', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path / "c" / "lock")], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"in use by another tierfs process \\(pid {child.pid}\\)"):
            DiskTier(tmp_path / "c", 1 << 20)
    finally:
        child.kill()
        child.communicate()


def test_unwritable_cache_dir(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not usable"):
        DiskTier(tmp_path / "file" / "c", 1 << 20)


def test_watermarks(tmp_path: Path) -> None:
    cap = 100 * 4096
    t = DiskTier(tmp_path / "c", cap, high=0.9, low=0.5)
    try:
        for n in range(95):
            t.put(key(n), b"z" * 4096)
            assert t.bytes_held() <= 0.9 * cap
        # crossing the high watermark evicted down to the low one
        assert t.stats.get("evictions") > 0
        assert t.bytes_held() <= 0.9 * cap
    finally:
        t.close()


def epochs(t: DiskTier, blocks: int, n: int = 3) -> list[float]:
    """Hit ratio of each of n cyclic epochs over `blocks` blocks, filling misses."""
    ratios = []
    for _ in range(n):
        hits = 0
        for b in range(blocks):
            if t.get(key(b)) is not None:
                hits += 1
            else:
                t.put(key(b), b"e" * 4096)
        ratios.append(hits / blocks)
    return ratios


@pytest.mark.parametrize("policy", ["lru", "stable"])
def test_cyclic_epochs_over_a_dataset_twice_the_cache(tmp_path: Path, policy: str) -> None:
    t = DiskTier(tmp_path / "c", 100 * 4096, policy=policy)
    try:
        ratios = epochs(t, 200)
    finally:
        t.close()
    assert ratios[0] == 0
    if policy == "lru":
        assert ratios[1:] == [0, 0]  # LRU evicts exactly what the next epoch reads first
    else:
        assert min(ratios[1:]) >= 0.35  # a stable part (~cache size / dataset size) stays
        assert abs(ratios[2] - ratios[1]) <= 0.05


def test_stable_policy_keeps_hit_blocks_over_new_ones(tmp_path: Path) -> None:
    t = DiskTier(tmp_path / "c", 20 * 4096, policy="stable")
    try:
        for b in range(10):
            t.put(key(b), b"h" * 4096)
            assert t.get(key(b)) is not None  # hit: protected
        for b in range(100, 200):
            t.put(key(b), b"n" * 4096)  # a scan of never-reread blocks
        assert all(t.get(key(b)) is not None for b in range(10))
        assert t.bytes_held() <= 20 * 4096
    finally:
        t.close()


# -- the free-space reserve of the cache dir's filesystem ------------------------------------------

class FakeDisk:
    """The filesystem under a cache dir as statvfs and block writes see it: ``size`` bytes, used by the
    tier's block files and by ``others`` bytes of everyone else (staged files, say)."""

    def __init__(self, root: Path, size: int, monkeypatch: pytest.MonkeyPatch):
        self.root, self.size, self.others, self.statvfs_calls = root, size, 0, 0
        real_statvfs, real_open = os.statvfs, open

        def statvfs(path: Any) -> Any:
            if not str(path).startswith(str(root)):
                return real_statvfs(path)
            self.statvfs_calls += 1
            return SimpleNamespace(f_frsize=4096, f_blocks=size // 4096, f_bavail=max(0, self.free()) // 4096)

        def open_(path: Any, mode: str = "r", *args: Any, **kw: Any) -> Any:
            fh = real_open(path, mode, *args, **kw)
            return _Full(fh, self) if "w" in mode else fh

        monkeypatch.setattr(os, "statvfs", statvfs)
        monkeypatch.setattr(disk_module, "open", open_, raising=False)

    def used(self) -> int:
        return sum(p.stat().st_size for sub in ("blocks", "tmp") for p in (self.root / sub).rglob("*") if p.is_file())

    def free(self) -> int:
        return self.size - self.others - self.used()


class _Full:
    """A file on a FakeDisk: a write that does not fit fails with ENOSPC."""

    def __init__(self, fh: Any, disk: FakeDisk):
        self.fh, self.disk = fh, disk

    def write(self, data: bytes) -> int:
        if len(data) > self.disk.free():
            raise OSError(errno.ENOSPC, "No space left on device")
        return int(self.fh.write(data))

    def __enter__(self) -> _Full:
        return self

    def __exit__(self, *exc: object) -> None:
        self.fh.close()


MiB = 1 << 20


def block(n: int, size: int = MiB) -> bytes:
    return bytes([n % 251]) * size


def test_default_reserve_is_5_percent_with_a_floor() -> None:
    assert reserve_bytes(None, 4 << 40) == int((4 << 40) * 0.05)  # a large NVMe: 5 %
    assert reserve_bytes(None, 10 << 30) == 1 << 30  # room for a staged checkpoint, not 512 MiB
    assert reserve_bytes(None, 64 * MiB) == 32 * MiB  # a small filesystem: half of it, not all
    assert reserve_bytes(0.1, 1000) == 100 and reserve_bytes(123, 1 << 40) == 123


def test_min_free_setting(tmp_path: Path) -> None:
    cfg = tmp_path / "t.toml"
    for text, value in (('"10%"', 0.1), ('"2GiB"', 2 << 30), ("0", 0)):
        cfg.write_text(f"[cache]\nmin_free = {text}\n")
        assert load(cfg).cache_min_free == value
    assert load(None).cache_min_free is None
    for bad in ('"lots"', '"150%"', "0.5", '"-1%"'):
        cfg.write_text(f"[cache]\nmin_free = {bad}\n")
        with pytest.raises(ConfigError, match=r"\[cache\] min_free = .* is not allowed; expected a size such as "
                                               r"20GiB or a percentage of the cache dir's filesystem such as 5%"):
            load(cfg)


def test_blocks_evict_lru_until_the_reserve_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = FakeDisk(tmp_path / "c", 16 * MiB, monkeypatch)
    t = DiskTier(tmp_path / "c", 500 << 30, policy="lru", min_free=4 * MiB)  # a size far beyond the disk
    try:
        for n in range(40):
            t.put(key(n), block(n))
            assert disk.free() >= 4 * MiB, n
        assert t.stats.get("evictions") > 0 and t.skipped == 0
        assert 8 * MiB <= t.bytes_held() <= 12 * MiB  # it fills what fits, less the watermarks' slack
        assert t.get(key(39)) == block(39) and t.get(key(0)) is None  # the least recently used went
        # staged files grow: the next block makes the cache give the room back
        disk.others = 6 * MiB
        monkeypatch.setattr(disk_module, "_STATVFS_SECONDS", 0.0)  # the growth is seen at once
        t.put(key(40), block(40))
        assert disk.free() >= 4 * MiB and t.get(key(40)) == block(40)
    finally:
        t.close()


def test_enospc_evicts_until_the_disk_has_room_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = FakeDisk(tmp_path / "c", 64 * MiB, monkeypatch)
    t = DiskTier(tmp_path / "c", 500 << 30)  # the default reserve: half of a small filesystem
    try:
        for n in range(40):
            t.put(key(n), block(n))
        held = t.bytes_held()
        assert held > 8 * MiB
        # A staged checkpoint takes every free byte between the space check of a block and its write.
        monkeypatch.setattr(t, "_room_for", lambda n: True, raising=False)
        disk.others = disk.free()
        t.put(key(99), block(99))  # ENOSPC: not an error
        assert t.get(key(99)) is None
        # evicted for real: the reserve (32 MiB) is back, or as much of it as the cache held
        assert disk.free() >= min(32 * MiB, held) - MiB, (disk.free(), held)
    finally:
        t.close()


def test_enospc_evicts_only_down_to_the_reserve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = FakeDisk(tmp_path / "c", 32 * MiB, monkeypatch)
    t = DiskTier(tmp_path / "c", 500 << 30, policy="lru", min_free=2 * MiB)
    try:
        for n in range(40):
            t.put(key(n), block(n))
        monkeypatch.setattr(t, "_room_for", lambda n: True, raising=False)
        disk.others = disk.free()
        t.put(key(99), block(99))
        assert 2 * MiB <= disk.free() <= 8 * MiB, disk.free()  # the reserve and the watermarks' slack
        assert t.bytes_held() >= 20 * MiB
        assert t.get(key(39)) == block(39)  # the youngest blocks stay
    finally:
        t.close()


def test_a_block_that_cannot_fit_is_skipped_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = FakeDisk(tmp_path / "c", 16 * MiB, monkeypatch)
    disk.others = 13 * MiB  # the disk is someone else's: 3 MiB free, 4 MiB reserve
    t = DiskTier(tmp_path / "c", 500 << 30, min_free=4 * MiB)
    try:
        t.put(key(1), block(1))
        assert t.get(key(1)) is None and t.skipped == 1 and t.stats.get("errors") == 0
        assert disk.used() == 0
        disk.others = 0
        monkeypatch.setattr(disk_module, "_STATVFS_SECONDS", 0.0)
        t.put(key(1), block(1))  # room again: cached again
        assert t.get(key(1)) == block(1)
    finally:
        t.close()


def test_free_space_is_read_once_per_many_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = FakeDisk(tmp_path / "c", 1 << 40, monkeypatch)
    t = DiskTier(tmp_path / "c", 1 << 30)
    try:
        for n in range(64):
            t.put(key(n), block(n, 64 * 1024))
        assert disk.statvfs_calls <= 4
    finally:
        t.close()


def test_mount_note_when_the_size_cannot_fit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    FakeDisk(tmp_path / "c", 64 * MiB, monkeypatch)
    t = DiskTier(tmp_path / "c", 500 << 30)
    try:
        note = t.fit_note()
        assert note.startswith("disk cache limited to 32.0 MiB, not the 500.0 GiB of [cache] size: ")
        assert "keeping 32.0 MiB free; lower [cache] size to fit, or give a --cache-dir on a larger disk" in note
        assert "\n" not in note
    finally:
        t.close()
    t = DiskTier(tmp_path / "c", 16 * MiB)
    try:
        assert t.fit_note() == ""
    finally:
        t.close()


def _ready(t: DiskTier) -> None:
    deadline = time.monotonic() + 30
    while not t.index.presence.ready:
        assert time.monotonic() < deadline, "the presence filter was never built"
        time.sleep(0.01)


def test_presence_filter_answers_misses_without_the_index(tmp_path: Path) -> None:
    """A block the disk lacks is known absent in memory (the chain skips the thread hop); one it holds never is."""
    t = DiskTier(tmp_path / "c", 64 << 20)
    try:
        for n in range(200):
            t.put(key(n), b"x" * 100)
        _ready(t)
        assert all(t.may_hold(key(n)) for n in range(200))
        absent = sum(not t.may_hold(key(n)) for n in range(1000, 3000))
        assert absent > 1900  # a few slots are shared: those answer "maybe"
        t.evict(key(7))
        assert not t.may_hold(key(7)) or t.index.lookup(key(7).digest) is None
    finally:
        t.close()
    t = DiskTier(tmp_path / "c", 64 << 20)  # built again from the index at the next start
    try:
        _ready(t)
        assert all(t.may_hold(key(n)) for n in range(200) if n != 7)
        assert t.get(key(3)) == b"x" * 100
    finally:
        t.close()


def test_presence_filter_built_while_blocks_land_misses_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks that land and leave while the filter is being built are counted exactly once."""
    t = DiskTier(tmp_path / "c", 256 << 20)
    for n in range(3000):
        t.put(key(n), b"y" * 10)
    t.close()
    from tierfs.tiers import presence as presence_module

    real_apply = presence_module.Presence._apply
    slow = threading.Event()

    def apply(self: Any, counts: bytearray, digest: bytes, delta: int) -> None:
        if slow.is_set():
            time.sleep(0.0002)  # keep the build going while the writers below run
        real_apply(self, counts, digest, delta)

    monkeypatch.setattr(presence_module.Presence, "_apply", apply)
    slow.set()
    t = DiskTier(tmp_path / "c", 256 << 20)
    try:
        for n in range(3000, 3300):
            t.put(key(n), b"z" * 10)
        for n in range(0, 300):
            t.evict(key(n))
        assert not t.index.presence.ready  # (the writes above ran during the build)
        slow.clear()
        _ready(t)
        assert all(t.may_hold(key(n)) for n in range(300, 3300))
        assert sum(not t.may_hold(key(n)) for n in range(300)) > 250
    finally:
        t.close()


def test_encrypted_blocks_hold_no_plaintext_and_another_key_is_a_miss(tmp_path: Path) -> None:
    secret_bytes = b"the plaintext of a training sample " * 30
    t = DiskTier(tmp_path / "c", 1 << 20, data_key=b"k" * 32)
    try:
        t.put(key(1), secret_bytes)
        assert t.get(key(1)) == secret_bytes
        stored = t._path(key(1).hex).read_bytes()
        assert b"plaintext of a training" not in stored and len(stored) > len(secret_bytes)
    finally:
        t.close()
    for other in (b"x" * 32, b""):  # another key, or none: misses (dropped), never an error nor other bytes
        t = DiskTier(tmp_path / "c", 1 << 20, data_key=other)
        try:
            t.put(key(2), b"two")
            assert t.get(key(1)) is None and t.stats.snapshot()["misses"] == 1
            assert t.get(key(2)) == b"two"
        finally:
            t.close()


def test_a_directory_that_is_not_a_cache_is_refused_and_left_alone(tmp_path: Path) -> None:
    data = tmp_path / "srv-data"
    (data / "tmp").mkdir(parents=True)
    (data / "tmp" / "precious.bin").write_bytes(b"keep me")
    (data / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"not a tierfs cache.*nothing in it was touched"):
        DiskTier(data, 1 << 20)
    assert (data / "tmp" / "precious.bin").read_bytes() == b"keep me" and (data / "notes.txt").exists()
    assert not (data / "blocks").exists() and not (data / "LAYOUT").exists()


def test_a_symlinked_or_foreign_cache_dir_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(UserError, match="is a symlink"):
        DiskTier(tmp_path / "link", 1 << 20)
    assert os.listdir(real) == []
    monkeypatch.setattr(os, "geteuid", lambda: 4242)  # as if the daemon ran as another user
    with pytest.raises(UserError, match="belongs to uid"):
        DiskTier(real, 1 << 20)


def test_blocks_and_index_files_are_private(tmp_path: Path) -> None:
    """Every dir 0700 and every file 0600, whatever the umask: LAYOUT was 0644 and blocks/xx/ 0755."""
    old = os.umask(0o022)
    try:
        t = DiskTier(tmp_path / "c", 1 << 20)
        try:
            t.put(key(1), b"abc")
            for p in [tmp_path / "c", *(tmp_path / "c").rglob("*")]:
                assert stat.S_IMODE(p.lstat().st_mode) == (0o700 if p.is_dir() else 0o600), p
        finally:
            t.close()
    finally:
        os.umask(old)


def test_a_link_planted_at_a_block_name_is_not_followed(tmp_path: Path) -> None:
    """Block files are written at their own name (O_CREAT|O_EXCL|O_NOFOLLOW): a symlink planted there is
    removed, never written through."""
    t = DiskTier(tmp_path / "c", 1 << 20)
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    try:
        final = t._path(key(1).hex)
        final.parent.mkdir(parents=True, exist_ok=True)
        final.symlink_to(victim)
        t.put(key(1), b"abc")
        assert t.get(key(1)) == b"abc"
        assert not final.is_symlink()
    finally:
        t.close()
    assert victim.read_bytes() == b"keep"


def test_a_half_written_block_file_without_an_entry_is_replaced(tmp_path: Path) -> None:
    """What a landing cut short left at a block's name (no index entry) is never read, and the next put of
    the block writes it anew."""
    t = DiskTier(tmp_path / "c", 1 << 20)
    try:
        final = t._path(key(1).hex)
        final.parent.mkdir(parents=True, exist_ok=True)
        final.write_bytes(b"ha")
        assert t.get(key(1)) is None
        t.put(key(1), b"abc")
        assert t.get(key(1)) == b"abc" and final.read_bytes() == b"abc"
    finally:
        t.close()


def test_a_put_over_a_held_block_leaves_an_open_file_its_bytes(tmp_path: Path) -> None:
    """Passthrough serves a small file from an fd of its block file: a later put of the key (a rewrite of a
    local lake's file at the same size and mtime) makes a new file and never changes the open one."""
    t = DiskTier(tmp_path / "c", 1 << 20)
    try:
        t.put(key(1), b"abc")
        fd = t.backing_fd(key(1), 3)
        assert fd is not None
        try:
            t.put(key(1), b"xyz")
            assert os.pread(fd, 10, 0) == b"abc"
            assert t.get(key(1)) == b"xyz"
        finally:
            os.close(fd)
    finally:
        t.close()


def test_a_cache_written_under_another_key_starts_afresh(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    t = DiskTier(tmp_path / "c", 1 << 20, data_key=b"one" * 8)
    t.put(key(1), b"abc")
    t.close()
    for other in (b"two" * 8, b""):
        t = DiskTier(tmp_path / "c", 1 << 20, data_key=other)
        try:
            assert t.get(key(1)) is None and t.entries() == 0
            t.put(key(1), b"abc")
        finally:
            t.close()
    assert "another [cache] encryption key" in caplog.text


def test_a_second_instance_in_one_process_is_told_so(tmp_path: Path) -> None:
    t = DiskTier(tmp_path / "c", 1 << 20)
    try:
        with pytest.raises(UserError, match="another tierfs instance in this process") as e:
            DiskTier(tmp_path / "c", 1 << 20)
        assert "pid" not in str(e.value) and "--cache-dir" not in str(e.value)
    finally:
        t.close()


def test_what_a_cache_dir_may_hold_before_its_marker(tmp_path: Path) -> None:
    """A writable mount without a disk tier left staging/; a cache disk of its own has lost+found; an index of
    ours from before the marker: each is taken as a cache, not refused."""
    (tmp_path / "a" / "staging").mkdir(parents=True)
    (tmp_path / "a" / "lost+found").mkdir()
    DiskTier(tmp_path / "a", 1 << 20).close()
    assert (tmp_path / "a" / "staging").is_dir() and (tmp_path / "a" / "lost+found").is_dir()
    used = tmp_path / "used"  # a staging dir a mount used: its lock holds that mount's pid
    Staging(used / "staging").close()
    statefile.save(used / "staging" / "x.json", {"key": "k", "state": "dirty"})
    (used / "staging" / "x.data").write_bytes(b"bytes")
    DiskTier(used, 1 << 20).close()
    assert (used / "staging" / "x.data").read_bytes() == b"bytes"
    legacy = tmp_path / "b"
    t = DiskTier(legacy, 1 << 20)
    t.put(key(1), b"x")
    t.close()
    (legacy / "LAYOUT").unlink()
    DiskTier(legacy, 1 << 20).close()  # (started afresh: its blocks are not trusted without the marker)


def test_a_staging_dir_is_ours_by_its_lock_not_its_name(tmp_path: Path) -> None:
    """staging/ counted as ours by its name: a foreign dir with staging/*.data and *.json was taken, and those
    files deleted (as a mount's leftovers) or set aside. Refused now, with or without a disk tier."""
    foreign = tmp_path / "srv"
    (foreign / "staging").mkdir(parents=True)
    (foreign / "staging" / "run.data").write_bytes(b"mine")
    (foreign / "staging" / "run.json").write_text('{"key": "x", "state": "clean"}')
    foreign.chmod(0o755)
    for make in (lambda: DiskTier(foreign, 1 << 20), lambda: Staging(foreign / "staging")):
        with pytest.raises(UserError, match="is not a tierfs cache"):
            make()
        assert sorted(p.name for p in foreign.rglob("*")) == ["run.data", "run.json", "staging"]
        assert stat.S_IMODE(foreign.stat().st_mode) == 0o755


def test_a_marker_that_is_not_text_is_another_layout_not_a_crash(tmp_path: Path) -> None:
    """A LAYOUT marker garbled into bytes that are not UTF-8 (a failing disk, a stray write) starts the
    cache afresh, as any other layout does; it once stopped the mount with an internal UnicodeDecodeError."""
    t = DiskTier(tmp_path / "c", 1 << 20)
    t.put(key(1), b"old")
    t.close()
    (tmp_path / "c" / "LAYOUT").write_bytes(b"tierfs-disk-cache 1\nsealing: \xff\xfe\n")
    t = DiskTier(tmp_path / "c", 1 << 20)
    try:
        assert t.get(key(1)) is None and t.entries() == 0
    finally:
        t.close()
    assert (tmp_path / "c" / "LAYOUT").read_text() == "tierfs-disk-cache 1\nsealing: none\n"


def test_a_dropped_block_is_checked_again_at_its_next_backing_open(tmp_path: Path) -> None:
    """backing_fd skips the checksum of a file whose inode it checked before; a block dropped and landed
    again may get the freed inode number back, so dropping it forgets that it was checked."""
    t = DiskTier(tmp_path / "c", 1 << 20)
    try:
        t.put(key(1), b"abc")
        fd = t.backing_fd(key(1), 3)
        assert fd is not None
        os.close(fd)
        assert key(1).digest in t._checked
        t.evict(key(1))
        assert key(1).digest not in t._checked
    finally:
        t.close()


def test_two_puts_of_one_block_at_once_land_it_once(tmp_path: Path) -> None:
    """Two fills of the same block from two threads (a read-ahead and a read, two handles): one lands it,
    the other is dropped; the block is whole, counted once, and its file is the only one at its name."""
    t = DiskTier(tmp_path / "c", 64 << 20)
    data = os.urandom(4 << 20)
    barrier = threading.Barrier(8)

    def put() -> None:
        barrier.wait()
        t.put(key(1), data)

    try:
        threads = [threading.Thread(target=put) for _ in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert t.get(key(1)) == data
        assert t.entries() == 1 and t.bytes_held() == len(data)
        assert [p.name for p in t._path(key(1).hex).parent.iterdir()] == [key(1).hex]
    finally:
        t.close()
