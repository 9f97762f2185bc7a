"""The sidecar daemon: jobs on schedules, one log line per run, clean stop on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from helpers import assert_one_line_error, free_port, run_tierfs, write_tree


def test_sidecar_runs_jobs_and_stops_on_sigterm(tmp_path: Path) -> None:
    src = tmp_path / "scratch"
    write_tree(src, {"ckpt.pt": b"weights"})
    lake = tmp_path / "lake"
    (lake / "experiments").mkdir(parents=True)
    (lake / "experiments/old.log").write_bytes(b"x")
    old = time.time() - 200 * 86400
    os.utime(lake / "experiments/old.log", (old, old))
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nid = "exp"\nprefix = "experiments/"\nexpiration_days = 90\n')
    cfg = tmp_path / "sidecar.toml"
    port = free_port()
    cfg.write_text(f'''
[sidecar]
metrics = "127.0.0.1:{port}"

[[job]]
name = "ckpt"
kind = "backup"
source = "{src}"
target = "file://{lake}/backups/n1"
keep = 2
every = "1s"

[[job]]
name = "rules"
kind = "lifecycle"
lake = "file://{lake}"
rules = "{rules}"
apply = true
jobs = 4
every = "1h"
''')
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(30)
    log = open(tmp_path / "sidecar.log", "w+")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "tierfs", "sidecar", "--config", str(cfg)],
                            env={**os.environ, "NOTIFY_SOCKET": str(sock_path)}, stdout=log, stderr=log)
    try:
        assert "READY=1" in sock.recv(4096).decode()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = (tmp_path / "sidecar.log").read_text()
            if text.count("job ckpt: backup") >= 3 and "job rules: applied" in text:
                break
            time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            metrics = resp.read().decode()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        sock.close()
        log.close()
    text = (tmp_path / "sidecar.log").read_text()
    assert text.count("job ckpt: backup") >= 3  # on schedule
    assert "job rules: applied: 0 transitioned, 1 expired" in text
    assert 'tierfs_lifecycle_objects_total{action="expired",job="rules"} 1.0' in metrics
    assert 'tierfs_lake_monthly_cost_usd{job="rules",when="now"}' in metrics
    assert 'tierfs_sidecar_job_runs_total{job="ckpt",outcome="ok"}' in metrics
    assert not (lake / "experiments/old.log").exists()
    assert "sidecar stopped" in text and "Traceback" not in text
    backups = run_tierfs("backup", "list", f"file://{lake}/backups/n1", check=True).stdout.splitlines()
    assert len(backups) == 2  # keep = 2


def test_bad_sidecar_config(tmp_path: Path) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text('[[job]]\nname = "x"\nkind = "backup"\nsource = "/tmp"\ntarget = "file:///tmp/t"\nevery = "often"\n')
    assert_one_line_error(run_tierfs("sidecar", "--config", str(cfg)), "job 'x': field 'every' = 'often'")
    cfg.write_text('[[job]]\nname = "x"\nkind = "rsync"\n')
    assert_one_line_error(run_tierfs("sidecar", "--config", str(cfg)), "field 'kind' must be lifecycle or backup")
    cfg.write_text('[[job]]\nname = "r"\nkind = "lifecycle"\nlake = "file:///tmp"\nrules = "r.toml"\njobs = 0\n')
    assert_one_line_error(run_tierfs("sidecar", "--config", str(cfg)), "job 'r': field 'jobs' must be a whole number")
    cfg.write_text('[[job]]\nname = "r"\nkind = "lifecycle"\nlake = "file:///tmp"\nrules = "r.toml"\napply = "yes"\n')
    assert_one_line_error(run_tierfs("sidecar", "--config", str(cfg)), "job 'r': field 'apply' must be true or false")
    # The README's example names /etc/tierfs/lifecycle.toml: a job whose file is missing is refused at start.
    cfg.write_text('[[job]]\nname = "r"\nkind = "lifecycle"\nlake = "file:///tmp"\nrules = "/nonexistent/l.toml"\n')
    assert_one_line_error(run_tierfs("sidecar", "--config", str(cfg)), "job 'r': rules file /nonexistent/l.toml does not exist")
    cfg.write_text('[[job]]\nname = "b"\nkind = "backup"\nsource = "/nonexistent/ckpt"\ntarget = "file:///tmp/t"\n')
    assert_one_line_error(run_tierfs("sidecar", "--config", str(cfg)), "job 'b': source /nonexistent/ckpt is not a directory")
