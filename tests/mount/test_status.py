"""`tierfs status`: every tierfs mount on the host, alive or dead, as a user (or a monitoring check) sees it."""

from __future__ import annotations

import errno
import json
import os
import signal
import time
from pathlib import Path

import pytest
from helpers import Mount, force_cleanup, mounted, run_tierfs

pytestmark = pytest.mark.mount


def _ours(res_stdout: str, *mountpoints: Path) -> list[dict[str, object]]:
    data = json.loads(res_stdout)
    return [m for m in data if m["mountpoint"] in {str(p) for p in mountpoints}]


def test_status_with_a_live_mount_a_dead_one_and_none(lake: Path, tmp_path: Path) -> None:
    live_mnt, dead_mnt = tmp_path / "live", tmp_path / "dead"
    res = run_tierfs("status", "--json")
    assert _ours(res.stdout, live_mnt, dead_mnt) == []
    dead = Mount(f"file://{lake}", dead_mnt, tmp_path / "cache-dead").start()
    pid = dead.pid
    try:
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        for _ in range(100):
            try:
                os.statvfs(dead_mnt)
            except OSError as exc:
                assert exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)
                break
            time.sleep(0.05)
        with mounted(f"file://{lake}", live_mnt, tmp_path / "cache-live") as m:
            (m.mountpoint / "datasets/toy/train/cat/0001.jpg").read_bytes()
            res = run_tierfs("status", "--json")
            assert res.returncode == 1  # a dead mount is something to act on
            by_path = {m["mountpoint"]: m for m in _ours(res.stdout, live_mnt, dead_mnt)}
            live = by_path[str(live_mnt)]
            assert live["state"] == "alive" and live["pid"] == m.pid and live["lake"] == f"file://{lake}"
            assert live["tiers"] == {"ram": "up", "disk": "up"} and live["pending_uploads"] == 0
            assert by_path[str(dead_mnt)]["state"] == "dead"
            text = run_tierfs("status").stdout
            assert f"{live_mnt}: alive" in text and f"{dead_mnt}: DEAD" in text and "tiers: ram up, disk up" in text
            assert "passthrough: on" in text
    finally:
        force_cleanup(dead_mnt, pid)
    assert _ours(run_tierfs("status", "--json").stdout, live_mnt, dead_mnt) == []


def test_log_level_at_runtime(lake: Path, tmp_path: Path) -> None:
    with mounted(f"file://{lake}", tmp_path / "mnt", tmp_path / "cache", "--log-level", "warning") as m:
        (m.mountpoint / "datasets/toy/empty.bin").read_bytes()
        res = run_tierfs("log-level", str(m.mountpoint), "debug")
        assert res.returncode == 0, res.stderr
        (m.mountpoint / "datasets/toy/train/dog/0001.jpg").read_bytes()
        (m.mountpoint / "no-such-file").exists()
        log = m.log_tail()
        assert "log level set to debug" in log and "DEBUG" in log
        assert run_tierfs("log-level", str(m.mountpoint), "loud").returncode == 2  # not a level: usage error
