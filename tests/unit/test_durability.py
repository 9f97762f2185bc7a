"""What survives a power cut: state files, staged files' journal, the disk tier's index.

A power cut loses whatever the kernel had not written yet, in any order. The
tests record the order of the fsyncs that make a write durable, and simulate
what a power cut leaves (a file cut short, a torn LMDB file, an index from
before the last transactions) to check what the next start does with it.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tierfs import statefile
from tierfs.refs import ObjectRef
from tierfs.tiers import lmdb_index
from tierfs.tiers.disk import DiskTier
from tierfs.write import staging as staging_mod
from tierfs.write.staging import PENDING, Staging


class _Syscalls:
    """Records, in order, the fsyncs, renames and file writes that tierfs makes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.calls: list[tuple[str, str]] = []
        real_fsync, real_replace, real_open = os.fsync, os.replace, os.open

        def fsync(fd: int) -> None:
            self.calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
            real_fsync(fd)

        def replace(src: Any, dst: Any, **kw: Any) -> None:
            self.calls.append(("rename", f"{src} -> {dst}"))
            real_replace(src, dst, **kw)

        def open_(path: Any, flags: int, *a: Any, **kw: Any) -> int:
            if flags & (os.O_WRONLY | os.O_RDWR):
                self.calls.append(("open-for-write", str(path)))
            return real_open(path, flags, *a, **kw)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(os, "open", open_)

    def index(self, kind: str, endswith: str) -> int:
        for i, (k, what) in enumerate(self.calls):
            if k == kind and what.endswith(endswith):
                return i
        raise AssertionError(f"no {kind} of *{endswith} in {self.calls}")


def test_statefile_save_is_temp_fsync_rename_fsync_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.json"
    statefile.save(path, {"old": True})
    sys_ = _Syscalls(monkeypatch)
    statefile.save(path, {"new": 1})
    temp = sys_.index("open-for-write", "state.json.tmp")
    temp_fsync = sys_.index("fsync", "state.json.tmp")
    rename = sys_.index("rename", f"-> {path}")
    dir_fsync = sys_.index("fsync", str(tmp_path))
    assert temp < temp_fsync < rename < dir_fsync, sys_.calls
    assert statefile.load(path) == {"new": 1}
    assert not (tmp_path / "state.json.tmp").exists()


def test_statefile_save_that_fails_leaves_the_old_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.json"
    statefile.save(path, {"v": 1})

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError):
        statefile.save(path, {"v": 2})
    monkeypatch.undo()
    assert statefile.load(path) == {"v": 1}  # never renamed over the good state


def test_a_staged_file_is_fsynced_before_its_pending_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    staging = Staging(tmp_path / "staging")
    try:
        sf = staging.create("ckpt/model.pt")
        os.pwrite(sf.fd, b"weights" * 1000, 0)
        sys_ = _Syscalls(monkeypatch)
        staging.seal(sf)
        data_fsync = sys_.index("fsync", f"{sf.id}.data")
        record_write = sys_.index("open-for-write", f"{sf.id}.json.tmp")
        record_fsync = sys_.index("fsync", f"{sf.id}.json.tmp")
        rename = sys_.index("rename", f"{sf.id}.json")
        dir_fsync = sys_.index("fsync", str(staging.root))
        assert data_fsync < record_write < record_fsync < rename < dir_fsync, sys_.calls
        monkeypatch.undo()
        rec = json.loads((staging.root / f"{sf.id}.json").read_text())
        assert rec["state"] == PENDING and rec["size"] == 7000 and len(rec["xxh3_128"]) == 32
    finally:
        staging.close()


def _sealed(staging: Staging, key: str, data: bytes) -> Any:
    sf = staging.create(key)
    os.pwrite(sf.fd, data, 0)
    staging.seal(sf)
    return sf


def test_leftovers_upload_only_what_matches_its_record(tmp_path: Path) -> None:
    staging = Staging(tmp_path / "staging")
    good = _sealed(staging, "good.pt", b"G" * 5000)
    cut = _sealed(staging, "cut.pt", b"C" * 5000)
    os.truncate(cut.data, 1234)  # the power cut lost its tail
    changed = _sealed(staging, "changed.pt", b"X" * 5000)
    os.pwrite(changed.fd, b"Y", 10)  # same size, other bytes
    legacy = staging.create("legacy.pt")
    os.pwrite(legacy.fd, b"L" * 10, 0)
    (staging.root / f"{legacy.id}.json").write_text(json.dumps({"key": "legacy.pt", "state": "pending"}))
    staging.close()

    again = Staging(tmp_path / "staging")
    try:
        left = again.leftovers()
        # (a record of an older tierfs has no checksum: uploaded as that version promised)
        assert sorted((sf.key, sf.size) for sf in left.pending) == [("good.pt", 5000), ("legacy.pt", 10)]
        assert sorted(left.damaged) == ["changed.pt", "cut.pt"]
        assert left.unclosed == []
        kept = {p.name.split("-", 2)[2]: p.read_bytes() for p in again.unclosed_dir.iterdir()}
        assert kept == {"cut.pt": b"C" * 1234, "changed.pt": b"X" * 10 + b"Y" + b"X" * 4989}
        assert sorted(p.name for p in again.root.glob("*.json")) == sorted([f"{good.id}.json", f"{legacy.id}.json"])
        for sf in left.pending:
            os.close(sf.fd)
    finally:
        again.close()


def test_a_renamed_pending_file_keeps_its_checksum(tmp_path: Path) -> None:
    staging = Staging(tmp_path / "staging")
    sf = _sealed(staging, "a.pt", b"A" * 100)
    staging.rekey(sf, "b.pt")
    staging.close()
    again = Staging(tmp_path / "staging")
    try:
        assert [f.key for f in again.leftovers().pending] == ["b.pt"]
    finally:
        again.close()


def test_a_seal_that_fails_does_not_journal_the_file_pending(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    staging = Staging(tmp_path / "staging")
    try:
        sf = staging.create("x.pt")
        os.pwrite(sf.fd, b"x" * 10, 0)

        def eio(fd: int) -> None:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(staging_mod.os, "fsync", eio)
        with pytest.raises(OSError):
            staging.seal(sf)
        monkeypatch.undo()
        assert sf.state != PENDING
        assert json.loads((staging.root / f"{sf.id}.json").read_text())["state"] == "dirty"
    finally:
        staging.close()


# -- the disk tier's index ---------------------------------------------------------


def _key(n: int) -> Any:
    return ObjectRef(f"obj{n}", 100, etag="e").block_key(0, 4096)


def _crash(t: DiskTier) -> None:
    """What a kill -9 leaves: nothing closed, nothing flushed by tierfs."""
    t.index.env.close()
    os.close(t._lock_fd)


def test_an_unclean_start_checks_the_index_against_the_block_files(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    t = DiskTier(tmp_path / "c", 1 << 20)
    for n in range(6):
        t.put(_key(n), bytes([n]) * 1000)
    t._path(_key(1).hex).unlink()  # a stale entry: its file is gone
    os.truncate(t._path(_key(2).hex), 10)  # cut short
    orphan = t._path(_key(9).hex)  # a file the index lost (its transaction was not written)
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"o" * 1000)
    _crash(t)

    with caplog.at_level("INFO", logger="tierfs.tiers.disk"):
        t2 = DiskTier(tmp_path / "c", 1 << 20)
    try:
        lines = [r.getMessage() for r in caplog.records if "checked" in r.getMessage()]
        assert len(lines) == 1, caplog.text
        assert "4 kept, 2 dropped" in lines[0] and "1 file(s) the index did not know removed" in lines[0], lines[0]
        assert t2.entries() == 4 and t2.bytes_held() == 4000
        assert not orphan.exists()
        for n in (0, 3, 4, 5):
            assert t2.get(_key(n)) == bytes([n]) * 1000
        assert t2.get(_key(1)) is None and t2.get(_key(2)) is None
    finally:
        t2.close()
    caplog.clear()
    with caplog.at_level("INFO", logger="tierfs.tiers.disk"):
        t3 = DiskTier(tmp_path / "c", 1 << 20)  # a clean close: nothing to check
    try:
        assert not [r for r in caplog.records if "checked" in r.getMessage()]
        assert t3.entries() == 4
    finally:
        t3.close()


def test_an_index_that_went_back_in_time_is_made_whole(tmp_path: Path) -> None:
    """A power cut loses the last transactions of an index opened without sync: the index
    forgets blocks that landed and remembers blocks evicted since. Neither may leak or lie."""
    t = DiskTier(tmp_path / "c", 1 << 20)
    for n in range(3):
        t.put(_key(n), bytes([n]) * 1000)
    t.index.env.sync(True)
    old = tmp_path / "index-then"
    shutil.copytree(t.root / "index", old)  # what had reached the disk
    t.evict(_key(0))
    for n in range(3, 6):
        t.put(_key(n), bytes([n]) * 1000)
    _crash(t)
    shutil.rmtree(t.root / "index")
    shutil.copytree(old, t.root / "index")  # the transactions since were lost
    statefile.save(t.root / "index" / lmdb_index.STATE, {"open": True, "boot": "another boot"})

    t2 = DiskTier(tmp_path / "c", 1 << 20)
    try:
        assert t2.entries() == 2 and t2.bytes_held() == 2000  # 1 and 2; 0 was evicted
        assert sorted(p.name for p in t2.blocks_dir.rglob("*") if p.is_file()) == sorted(
            _key(n).hex for n in (1, 2))  # 3..5 were never indexed: removed, not leaked
        assert t2.get(_key(0)) is None
        assert t2.get(_key(1)) == b"\x01" * 1000
        assert t2.index.pending() == []
    finally:
        t2.close()


_TORN = textwrap.dedent("""
    import logging, sys
    from pathlib import Path
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    from tierfs.refs import ObjectRef
    from tierfs.tiers.disk import DiskTier
    t = DiskTier(Path(sys.argv[1]), 1 << 30)
    n = sum(t.get(ObjectRef(f"obj{i}", 100, etag="e").block_key(0, 4096)) == b"%d" % i for i in range(3000))
    print("served", n, "entries", t.entries())
    t.close()
""")


def test_an_index_torn_by_a_power_cut_never_stops_the_mount(tmp_path: Path) -> None:
    """LMDB without sync can be torn by a power cut; reading a torn file aborts the process
    (an assertion in LMDB's C code), so it is checked in a child process first."""
    root = tmp_path / "c"
    t = DiskTier(root, 1 << 30)
    for i in range(3000):
        t.put(ObjectRef(f"obj{i}", 100, etag="e").block_key(0, 4096), b"%d" % i)
    _crash(t)
    statefile.save(root / "index" / lmdb_index.STATE, {"open": True, "boot": "before the power cut"})
    data = root / "index" / "data.mdb"
    pages = data.stat().st_size // 4096
    with open(data, "r+b") as fh:  # pages the kernel never wrote: zeros
        fh.seek(pages // 2 * 4096)
        fh.write(b"\0" * 4096 * 8)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    res = subprocess.run([sys.executable, "-c", _TORN, str(root)], capture_output=True, text=True, timeout=120,
                         env=env)
    assert res.returncode == 0, (res.returncode, res.stdout, res.stderr)
    served = [ln for ln in res.stdout.splitlines() if ln.startswith("served")]
    assert served and "torn" in res.stdout, res.stdout
    n, entries = int(served[0].split()[1]), int(served[0].split()[3])
    assert n == entries <= 3000  # what is left is served right


def test_a_block_cut_short_after_a_clean_close_is_refetched_not_served(tmp_path: Path) -> None:
    """Block files are not fsynced: after a clean close and a power cut one may be short or
    zeros. Every read checks the block's checksum, so it is dropped, never served."""
    t = DiskTier(tmp_path / "c", 1 << 20)
    t.put(_key(1), b"B" * 1000)
    t.close()
    path = DiskTier._path(t, _key(1).hex)
    path.write_bytes(b"\0" * 1000)
    t2 = DiskTier(tmp_path / "c", 1 << 20)
    try:
        assert t2.get(_key(1)) is None and not path.exists() and t2.entries() == 0
    finally:
        t2.close()


def test_a_staged_file_without_a_record_is_set_aside(tmp_path: Path) -> None:
    """Records of files not yet closed are not fsynced: a power cut may leave the bytes alone."""
    staging = Staging(tmp_path / "staging")
    lost = staging.create("logs/run.txt")
    os.pwrite(lost.fd, b"half a line", 0)
    empty = staging.create("logs/empty.txt")
    staging.close()
    for sf in (lost, empty):
        os.close(sf.fd)
        (staging.root / f"{sf.id}.json").unlink()
    again = Staging(tmp_path / "staging")
    try:
        left = again.leftovers()
        assert left.pending == [] and left.damaged == [] and len(left.unclosed) == 1
        (kept,) = again.unclosed_dir.iterdir()
        assert kept.read_bytes() == b"half a line" and lost.id[:8] in kept.name
        assert list(again.root.glob("*.data")) == []
    finally:
        again.close()


def test_an_index_damaged_under_a_running_system_costs_one_start_at_most(tmp_path: Path) -> None:
    """Torn pages without a crash of the system (a damaged disk): the start that reads them in
    process may die of LMDB's abort, but it leaves the index marked "checking", and the next
    start rebuilds it in a child process: a restart loop ends there."""
    root = tmp_path / "c"
    t = DiskTier(root, 1 << 30)
    for i in range(3000):
        t.put(ObjectRef(f"obj{i}", 100, etag="e").block_key(0, 4096), b"%d" % i)
    _crash(t)  # (same boot: the index is trusted to be whole, and checked in process)
    data = root / "index" / "data.mdb"
    pages = data.stat().st_size // 4096
    with open(data, "r+b") as fh:
        fh.seek(pages // 2 * 4096)
        fh.write(b"\0" * 4096 * 8)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    runs = [subprocess.run([sys.executable, "-c", _TORN, str(root)], capture_output=True, text=True, timeout=120,
                           env=env) for _ in range(2)]
    assert runs[0].returncode in (0, -6), runs[0]  # -6: SIGABRT, LMDB's assertion
    assert runs[1].returncode == 0, runs[1]
    served = [ln for ln in runs[1].stdout.splitlines() if ln.startswith("served")]
    assert served and served[0].split()[1] == served[0].split()[3], runs[1].stdout


def test_a_link_planted_at_a_state_files_temp_name_is_not_followed(tmp_path: Path) -> None:
    """The temp file of a state file had a fixed name (``state.json.tmp``) opened with O_CREAT|O_TRUNC: a symlink
    planted there was written through. It is made with O_EXCL under a name of its own now."""
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "state.json.tmp").symlink_to(victim)
    statefile.save(tmp_path / "state.json", {"v": 1})
    assert victim.read_text() == "keep" and statefile.load(tmp_path / "state.json") == {"v": 1}
    assert stat.S_IMODE((tmp_path / "state.json").stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "state.json.tmp", "victim"]
