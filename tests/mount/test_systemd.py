"""The systemd unit's syntax, and the Type=notify handshake without a running systemd."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import force_cleanup, is_mounted, write_tree

pytestmark = pytest.mark.mount
UNITS = Path(__file__).resolve().parents[2] / "systemd"


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is needed (Debian package systemd)")
    tierfs_bin = Path(sys.executable).parent / "tierfs"
    for unit in UNITS.glob("*.service"):
        # verify checks that ExecStart exists: point it at this checkout's tierfs
        name = unit.name.replace("@.", "@test.")
        text = unit.read_text().replace("/usr/local/bin/tierfs", str(tierfs_bin))
        (tmp_path / name).write_text(text)
        res = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / name)],
                             capture_output=True, text=True)
        assert res.returncode == 0 and not res.stderr.strip(), (unit.name, res.stderr)


def test_notify_handshake_and_clean_stop(tmp_path: Path) -> None:
    lake, mnt = tmp_path / "lake", tmp_path / "mnt"
    write_tree(lake, {"d/x.txt": b"hello"})
    mnt.mkdir()
    cfg = tmp_path / "train.toml"
    cfg.write_text(f'[lake]\nurl = "file://{lake}"\n[mount]\nmountpoint = "{mnt}"\n'
                   f'[cache]\ndir = "{tmp_path / "cache"}"\n')
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(60)
    proc = subprocess.Popen([sys.executable, "-m", "tierfs", "mount", "--config", str(cfg), "--foreground"],
                            env={**os.environ, "NOTIFY_SOCKET": str(sock_path)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ready = sock.recv(4096).decode()
        assert "READY=1" in ready and f"MAINPID={proc.pid}" in ready
        assert is_mounted(mnt)  # READY only once the mount is up
        assert (mnt / "d/x.txt").read_bytes() == b"hello"
        proc.send_signal(signal.SIGTERM)  # what systemctl stop sends
        stopping = sock.recv(4096).decode()
        assert "STOPPING=1" in stopping
        assert proc.wait(timeout=60) == 0
        assert not is_mounted(mnt)
        assert (tmp_path / "cache" / "index").exists()
    finally:
        sock.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        force_cleanup(mnt, None)



def test_the_units_privileges_are_enough_to_mount_and_serve(tmp_path: Path) -> None:
    """The unit's NoNewPrivileges and CapabilityBoundingSet, applied with setpriv (no systemd needed)."""
    unit = (UNITS / "tierfs@.service").read_text()
    caps = next(ln.split("=", 1)[1].split() for ln in unit.splitlines() if ln.startswith("CapabilityBoundingSet="))
    assert "NoNewPrivileges=yes" in unit
    bounding = "-all," + ",".join("+" + c.removeprefix("CAP_").lower() for c in caps)
    lake, mnt = tmp_path / "lake", tmp_path / "mnt"
    write_tree(lake, {"d/x.txt": b"hello"})
    mnt.mkdir()
    proc = subprocess.Popen(["setpriv", "--no-new-privs", f"--bounding-set={bounding}", sys.executable, "-m", "tierfs",
                             "mount", f"file://{lake}", str(mnt), "--cache-dir", str(tmp_path / "cache"),
                             "--foreground"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        import time

        deadline = time.monotonic() + 60
        while not is_mounted(mnt) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[1]
        status = Path(f"/proc/{proc.pid}/status").read_text()
        assert "NoNewPrivs:\t1" in status
        assert (mnt / "d/x.txt").read_bytes() == b"hello"
        (mnt / "d/y.txt").write_bytes(b"written")
        assert (lake / "d/y.txt").read_bytes() == b"written"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert not is_mounted(mnt)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()
        force_cleanup(mnt, None)


def test_mount_unit_exposure_score(tmp_path: Path) -> None:
    """systemd-analyze security: the README quotes the score; a change that loosens the unit shows here."""
    import re

    tierfs_bin = Path(sys.executable).parent / "tierfs"
    unit = tmp_path / "tierfs@test.service"
    unit.write_text((UNITS / "tierfs@.service").read_text().replace("/usr/local/bin/tierfs", str(tierfs_bin)))
    res = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)], capture_output=True, text=True)
    score = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", res.stdout + res.stderr).group(1))  # type: ignore[union-attr]
    assert score <= 5.2, res.stdout[-2000:]
