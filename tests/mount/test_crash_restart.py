"""A node gets its mount back: after a kill -9 of the daemon, and wherever `tierfs mount` is started from."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from helpers import Mount, force_cleanup, is_mounted, mounted, pid_alive, run_tierfs, write_tree


def _wait_dead(mnt: Path) -> None:
    for _ in range(200):
        try:
            os.statvfs(mnt)
        except OSError as exc:
            assert exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)
            return
        time.sleep(0.05)
    raise AssertionError("the mount did not die")


def test_restart_after_kill9_clears_our_dead_mount(lake: Path, tmp_path: Path) -> None:
    """What systemd's Restart=on-failure does after an OOM kill: the same command again, and it must work."""
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    m = Mount(f"file://{lake}", mnt, cache).start()
    pid = m.pid
    try:
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        _wait_dead(mnt)
        assert is_mounted(mnt)
        with mounted(f"file://{lake}", mnt, cache) as m2:
            assert "dead tierfs mount" in m2.output, m2.output
            assert (mnt / "datasets/toy/train/cat/0001.jpg").read_bytes() == b"c" * 1000
            assert "cleared a dead tierfs mount" in (cache / "tierfs.log").read_text()
        assert not is_mounted(mnt)
    finally:
        force_cleanup(mnt, pid)


def test_restart_in_the_foreground_as_systemd_runs_it(lake: Path, tmp_path: Path) -> None:
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    m = Mount(f"file://{lake}", mnt, cache).start()
    pid = m.pid
    proc = None
    try:
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        _wait_dead(mnt)
        proc = subprocess.Popen([sys.executable, "-m", "tierfs", "mount", f"file://{lake}", str(mnt),
                                 "--cache-dir", str(cache), "--foreground"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if int(os.getxattr(mnt, "user.tierfs.pid")) == proc.pid:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[0]
        assert (mnt / "datasets/toy/train/dog/0001.jpg").read_bytes() == b"d" * 2000
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert "cleared a dead tierfs mount" in out, out
        assert not is_mounted(mnt)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        force_cleanup(mnt, pid)


_OTHER_FS = textwrap.dedent("""
    import sys, pyfuse3, trio
    pyfuse3.init(pyfuse3.Operations(), sys.argv[1], {"fsname=otherfs", "subtype=otherfs"})
    print("ready", flush=True)
    trio.run(pyfuse3.main)
""")


def test_a_dead_mount_of_another_filesystem_is_left_alone(lake: Path, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", _OTHER_FS, str(mnt)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        proc.kill()
        proc.wait()
        _wait_dead(mnt)
        res = run_tierfs("mount", f"file://{lake}", str(mnt), "--cache-dir", str(tmp_path / "cache"))
        assert res.returncode == 1 and "dead fuse.otherfs mount" in res.stderr and "Traceback" not in res.stderr, res
        assert is_mounted(mnt)  # not ours to clear
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        force_cleanup(mnt, None)


def test_mount_from_a_directory_holding_a_tierfs_folder(lake: Path, tmp_path: Path) -> None:
    """A checkout of tierfs (or anything named tierfs/) in the cwd must not replace the installed package."""
    cwd = tmp_path / "work"
    write_tree(cwd, {"tierfs/__init__.py": b"# not tierfs\n"})
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cli = Path(sys.executable).parent / "tierfs"
    pid = None
    try:
        res = subprocess.run([str(cli), "mount", f"file://{lake}", str(mnt), "--cache-dir", str(tmp_path / "cache")],
                             cwd=cwd, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        pid = int(os.getxattr(mnt, "user.tierfs.pid"))
        assert (mnt / "datasets/toy/empty.bin").read_bytes() == b""
        res = subprocess.run([str(cli), "umount", str(mnt)], cwd=cwd, capture_output=True, text=True, timeout=90)
        assert res.returncode == 0, res.stderr
        assert not pid_alive(pid)
    finally:
        force_cleanup(mnt, pid)
