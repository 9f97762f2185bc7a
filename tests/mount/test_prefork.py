"""A background mount's daemon is forked when the command starts (tierfs/prefork.py).

It serves the mount once the command hands it over; when the command has no
mount to hand it (bad input, a secret that sends the daemon to a fresh
interpreter, the command killed), it is gone, with nothing mounted.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from helpers import (
    TIERFS,
    force_cleanup,
    free_port,
    is_mounted,
    mounted,
    random_bytes,
    run_tierfs,
    wait_for,
    write_tree,
)

from tierfs.prefork import wanted

pytestmark = pytest.mark.mount
FILES = {"d/a.bin": random_bytes(300_000, seed=1), "b.txt": b"hello\n"}
EARLY = "forked when the command started"


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    write_tree(tmp_path / "lake", FILES)
    return tmp_path / "lake"


def naming(marker: str) -> list[int]:
    """The pids of the processes whose command line holds ``marker`` (a test's own path)."""
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if marker.encode() in (proc / "cmdline").read_bytes():
                    out.append(int(proc.name))
            except OSError:
                continue
    return sorted(out)


def test_the_daemon_forked_at_the_start_serves_the_mount_alone(lake: Path, tmp_path: Path) -> None:
    with mounted(f"file://{lake}", tmp_path / "mnt", tmp_path / "cache") as m:
        for rel, data in FILES.items():
            assert (m.mountpoint / rel).read_bytes() == data
        assert naming(str(m.mountpoint)) == [m.pid]  # one process serves: the one the command named
        assert EARLY in (m.cache_dir / "tierfs.log").read_text()


def test_with_prefork_off_the_daemon_is_forked_after_the_checks_and_serves_the_same(
        lake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERFS_PREFORK", "0")  # (run_tierfs passes this process's environment on)
    with mounted(f"file://{lake}", tmp_path / "mnt", tmp_path / "cache") as m:
        for rel, data in FILES.items():
            assert (m.mountpoint / rel).read_bytes() == data
        assert naming(str(m.mountpoint)) == [m.pid]
        assert EARLY not in (m.cache_dir / "tierfs.log").read_text()


def test_a_mount_refused_leaves_no_process_behind(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = run_tierfs("mount", f"file://{tmp_path}/no-such-lake", str(mnt), "--cache-dir", str(tmp_path / "c"))
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert naming(str(mnt)) == []  # the child forked at the start was killed and reaped before the exit
    res = run_tierfs("mount", f"file://{tmp_path}", str(mnt), "--cache-size", "lots")
    assert res.returncode in (1, 2) and "Traceback" not in res.stderr
    assert naming(str(mnt)) == []
    assert not is_mounted(mnt)


def test_a_secret_in_argv_sends_the_daemon_to_a_fresh_interpreter_and_the_early_child_away(
        lake: Path, tmp_path: Path) -> None:
    # (the Redis tier is off when nothing answers, on a free port of our own: the mount still serves)
    with mounted(f"file://{lake}", tmp_path / "mnt", tmp_path / "cache",
                 "--redis", f"redis://:a-password@127.0.0.1:{free_port()}/0") as m:
        assert (m.mountpoint / "b.txt").read_bytes() == FILES["b.txt"]
        assert naming(str(m.mountpoint)) == [m.pid]
        assert EARLY not in (m.cache_dir / "tierfs.log").read_text()


def test_the_command_killed_before_it_hands_the_mount_over_takes_its_child_with_it(lake: Path,
                                                                                   tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    config = tmp_path / "config.toml"
    os.mkfifo(config, 0o600)  # the command blocks reading it, after the fork, before any hand-over
    proc = subprocess.Popen([*TIERFS, "mount", f"file://{lake}", str(mnt), "--cache-dir", str(tmp_path / "c"),
                             "--config", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: len(naming(str(mnt))) == 2, 30, "the command and the child it forked")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        wait_for(lambda: naming(str(mnt)) == [], 30, "the child to see its command gone and exit")
        assert not is_mounted(mnt)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in naming(str(mnt)):
            force_cleanup(mnt, pid)


@pytest.mark.parametrize(("argv", "want"), [
    (["mount", "s3://b", "/mnt"], True),
    (["s3://b", "/mnt", "-o", "ro"], True),  # mount.fuse3's form (fstab)
    (["mount", "s3://b", "/mnt", "--foreground"], False),
    (["mount", "s3://b", "/mnt", "-o", "ro,foreground"], False),
    (["mount", "--help"], False),
    (["umount", "/mnt"], False),
    (["stats", "/mnt"], False),
    ([], False),
])
def test_only_a_background_mount_forks_early(argv: list[str], want: bool) -> None:
    assert wanted(["tierfs", *argv]) is want
