"""The daemon's log on real mounts: rotated while it serves, logrotate-friendly, quiet per request, none under journald."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

import pytest
from helpers import force_cleanup, is_mounted, mounted, run_tierfs, wait_for, write_tree

pytestmark = pytest.mark.mount

FILES = {f"d/{i:02d}.bin": bytes([i]) * (1000 + i) for i in range(20)}


def _logs(cache: Path) -> dict[str, Path]:
    return {p.name: p for p in cache.iterdir() if p.name.startswith("tierfs.log")}


def _fds_to(pid: int, path: Path) -> list[str]:
    """The daemon's file descriptors open on ``path`` (whatever its name is now)."""
    st = path.stat()
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.stat(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if (target.st_dev, target.st_ino) == (st.st_dev, st.st_ino):
            out.append(fd)
    return out


def test_the_daemons_log_rotates_while_it_serves(tmp_path: Path) -> None:
    root, cache = tmp_path / "lake", tmp_path / "cache"
    write_tree(root, FILES)
    cfg = tmp_path / "tierfs.toml"
    cfg.write_text('[log]\nlevel = "debug"\nmax_size = "64KiB"\nbackups = 2\n')
    with mounted(f"file://{root}", tmp_path / "mnt", cache, config=cfg) as m:
        assert m.pid is not None
        for i in range(400):  # each a debug line with its traceback: well over three files' worth
            assert not (m.mountpoint / "d" / f"missing-{i}.bin").exists()
            key = f"d/{i % 20:02d}.bin"
            assert (m.mountpoint / key).read_bytes() == FILES[key]  # serving all along
        logs = _logs(cache)
        assert sorted(logs) == ["tierfs.log", "tierfs.log.1", "tierfs.log.2"]  # two backups kept, no more
        for p in logs.values():
            assert p.stat().st_mode & 0o777 == 0o600, p
            assert p.stat().st_size <= 64 * 1024, p
        assert "missing-399" in logs["tierfs.log"].read_text()
        assert "missing-0.bin" not in "".join(p.read_text() for p in logs.values())  # the oldest are gone
        log = logs["tierfs.log"]
        assert {"1", "2"} <= set(_fds_to(m.pid, log))  # stdout and stderr follow the current file

        # logrotate (move, then a new file on the next line; no signal): nothing stays on the moved file.
        moved = cache / "tierfs.log-20261201"
        log.rename(moved)
        run_tierfs("log-level", str(m.mountpoint), "info", check=True)
        wait_for(lambda: log.exists(), 10, "a new log file after the move")
        assert "log level set to info" in log.read_text()
        assert _fds_to(m.pid, moved) == [] and set(_fds_to(m.pid, log)) >= {"1", "2"}
        assert log.stat().st_mode & 0o777 == 0o600
        assert m.stats()["backend"]["errors"] == 0
    assert "unmounted" in log.read_text()


def test_serving_logs_no_line_per_request_at_info(lake: Path, tmp_path: Path) -> None:
    """One line per event that matters: reads, listings, lookups and refused writes are not events."""
    cache = tmp_path / "cache"
    with mounted(f"file://{lake}", tmp_path / "mnt", cache, "--read-only-prefix", "datasets/toy/train") as m:
        started = (cache / "tierfs.log").read_text()
        for _ in range(3):
            for dirpath, _dirs, files in os.walk(m.mountpoint / "datasets"):
                for name in files:
                    (Path(dirpath) / name).read_bytes()
                    os.stat(Path(dirpath) / name)
            assert not (m.mountpoint / "datasets/nope.txt").exists()
            with pytest.raises(OSError) as e:
                (m.mountpoint / "datasets/toy/train/cat/new.jpg").write_bytes(b"x")
            assert e.value.errno == errno.EROFS
            run_tierfs("stats", str(m.mountpoint), check=True)
        assert (cache / "tierfs.log").read_text() == started


def _journal(path: Path) -> tuple[IO[bytes], dict[str, str]]:
    """A file standing in for systemd's journal stream, and the environment that names it so."""
    fh = path.open("ab")
    st = os.fstat(fh.fileno())
    return fh, {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}", "INVOCATION_ID": "0" * 32}


def test_under_the_journal_the_daemon_writes_no_log_file(tmp_path: Path) -> None:
    root, cache, mnt = tmp_path / "lake", tmp_path / "cache", tmp_path / "mnt"
    write_tree(root, FILES)
    mnt.mkdir()
    journal = tmp_path / "journal"
    given = tmp_path / "given.log"
    fh, env = _journal(journal)
    # In the background (a Type=forking unit, or a script a unit runs): the daemon logs to the journal too.
    try:
        res = subprocess.run([sys.executable, "-m", "tierfs", "mount", f"file://{root}", str(mnt), "--cache-dir",
                              str(cache), "--log-file", str(given)], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=fh, env=env, text=True, timeout=120)
        assert res.returncode == 0, journal.read_text()
        assert "log to the journal" in res.stdout
        pid = int(os.getxattr(mnt, "user.tierfs.pid"))
        try:
            assert (mnt / "d/03.bin").read_bytes() == FILES["d/03.bin"]
            run_tierfs("umount", str(mnt), check=True)
        finally:
            force_cleanup(mnt, pid)
        # --foreground, as the unit runs it.
        proc = subprocess.Popen([sys.executable, "-m", "tierfs", "mount", f"file://{root}", str(mnt), "--cache-dir",
                                 str(cache), "--log-file", str(given), "--foreground"],
                                stdin=subprocess.DEVNULL, stdout=fh, stderr=fh, env=env)
        try:
            wait_for(lambda: is_mounted(mnt) or proc.poll() is not None, 60, "the foreground mount")
            assert (mnt / "d/04.bin").read_bytes() == FILES["d/04.bin"]
            proc.send_signal(signal.SIGHUP)  # unmounts, as it always has (it does not mean "reopen the log")
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            force_cleanup(mnt, None)
    finally:
        fh.close()
    assert not given.exists() and _logs(cache) == {}
    text = journal.read_text()
    assert text.count("INFO tierfs: mounted") == 2 and text.count("INFO tierfs: unmounted") == 2
    assert "received SIGHUP; unmounting" in text
