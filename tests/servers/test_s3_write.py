"""Writes through the mount into a real S3-compatible server, crashes and failures included."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import Mount, SeaweedS3, mounted, random_bytes, run_tierfs, wait_for

pytestmark = [pytest.mark.servers, pytest.mark.mount]
MiB = 1 << 20


def _config(server: SeaweedS3, path: Path, extra: str = "") -> Path:
    cfg = server.s3_config(path)
    cfg.write_text(cfg.read_text() + "[write]\npart_size = \"5MiB\"\nupload_concurrency = 3\n" + extra)
    return cfg


def _bucket(server: SeaweedS3, name: str) -> Any:
    fs = server.fs()
    if not fs.exists(name):
        fs.mkdir(name)
    return fs


def test_every_write_operation_against_s3(s3_server: SeaweedS3, tmp_path: Path) -> None:
    fs = _bucket(s3_server, "write-ops")
    fs.pipe("write-ops/data/keep.txt", b"keep")
    big = random_bytes(17 * MiB + 3, seed=5)  # four parts of 5 MiB: a multipart upload
    cfg = _config(s3_server, tmp_path / "s3.toml")
    with mounted("s3://write-ops", tmp_path / "mnt", tmp_path / "cache", config=cfg) as m:
        mnt = m.mountpoint
        # an empty directory has no object: it lives in this mount until a file lands in it
        (mnt / "runs").mkdir()
        assert (mnt / "runs").is_dir() and not fs.exists("write-ops/runs/")
        (mnt / "runs/ckpt.bin").write_bytes(big)
        assert fs.cat("write-ops/runs/ckpt.bin") == big  # close returned: the store has it
        before = m.backend_bytes()
        assert (mnt / "runs/ckpt.bin").read_bytes() == big
        assert m.backend_bytes() == before  # read back from the tiers
        # append = read-modify-write of the object
        with open(mnt / "data/keep.txt", "ab") as fh:
            fh.write(b"+more")
        assert fs.cat("write-ops/data/keep.txt") == b"keep+more"
        os.truncate(mnt / "data/keep.txt", 2)
        assert fs.cat("write-ops/data/keep.txt") == b"ke"
        # a directory rename copies every object, then deletes the old ones
        for i in range(25):
            (mnt / f"runs/log{i:02d}.txt").write_bytes(b"%d" % i)
        os.rename(mnt / "runs", mnt / "runs-done")
        assert not fs.exists("write-ops/runs/ckpt.bin")
        assert fs.cat("write-ops/runs-done/ckpt.bin") == big
        assert sorted(os.listdir(mnt / "runs-done")) == ["ckpt.bin", *(f"log{i:02d}.txt" for i in range(25))]
        assert m.stats()["writes"]["renamed_objects"] >= 26
        os.rename(mnt / "runs-done/log00.txt", mnt / "data/log00.txt")
        assert fs.cat("write-ops/data/log00.txt") == b"0" and not fs.exists("write-ops/runs-done/log00.txt")
        os.unlink(mnt / "data/log00.txt")
        assert not fs.exists("write-ops/data/log00.txt")
        (mnt / "empty").mkdir()
        os.rmdir(mnt / "empty")
        assert "empty" not in os.listdir(mnt)


def test_other_nodes_see_a_file_when_close_returns_and_last_close_wins(s3_server: SeaweedS3, tmp_path: Path) -> None:
    fs = _bucket(s3_server, "two-nodes")
    fs.pipe("two-nodes/shared/x.txt", b"old")
    cfg = _config(s3_server, tmp_path / "s3.toml", "[metadata]\nttl = 1\n")
    with mounted("s3://two-nodes", tmp_path / "a", tmp_path / "ca", config=cfg) as a, \
            mounted("s3://two-nodes", tmp_path / "b", tmp_path / "cb", config=cfg) as b:
        assert (b.mountpoint / "shared/x.txt").read_bytes() == b"old"
        fa = open(a.mountpoint / "shared/x.txt", "wb")  # noqa: SIM115
        fb = open(b.mountpoint / "shared/x.txt", "wb")  # noqa: SIM115
        fa.write(b"from A")
        fb.write(b"from B")
        fa.flush()
        fb.flush()
        assert fs.cat("two-nodes/shared/x.txt") == b"old"  # nothing is visible before a close
        fb.close()
        assert fs.cat("two-nodes/shared/x.txt") == b"from B"
        fa.close()
        assert fs.cat("two-nodes/shared/x.txt") == b"from A"  # the last close wins
        time.sleep(1.5)  # one metadata TTL
        assert (b.mountpoint / "shared/x.txt").read_bytes() == b"from A"


def test_sigkill_during_upload_then_restart_uploads_it(s3_server: SeaweedS3, tmp_path: Path) -> None:
    fs = _bucket(s3_server, "crash-lake")
    data = random_bytes(150 * MiB, seed=11)
    cfg = _config(s3_server, tmp_path / "s3.toml")
    cfg.write_text(cfg.read_text().replace("upload_concurrency = 3", "upload_concurrency = 1"))
    cache = tmp_path / "cache"
    m = Mount("s3://crash-lake", tmp_path / "mnt", cache, config=cfg).start()
    try:
        unclosed = open(m.mountpoint / "unclosed.log", "wb")  # noqa: SIM115 - open across the crash
        unclosed.write(b"half a line")
        unclosed.flush()
        errors: list[BaseException] = []

        def write() -> None:
            try:
                (m.mountpoint / "ckpt.bin").write_bytes(data)
            except OSError as exc:
                errors.append(exc)  # the daemon died under us: close never confirmed

        writer = threading.Thread(target=write)
        writer.start()
        staging = cache / "staging"
        wait_for(lambda: any(staging.glob("*.upload.json")), 120, "the multipart upload to start")
        m.kill9()
        writer.join(60)
        assert errors, "close returned success although the daemon was killed during the upload"
        assert not fs.exists("crash-lake/ckpt.bin")  # never half-visible
        with pytest.raises(OSError):
            unclosed.close()
    except BaseException:
        m.umount()
        raise
    m = Mount("s3://crash-lake", tmp_path / "mnt", cache, config=cfg)
    with m:
        assert "uploading 1 file(s) left staged by the previous run" in m.output
        assert "1 unclosed file(s)" in m.output
        wait_for(lambda: fs.exists("crash-lake/ckpt.bin") and fs.size("crash-lake/ckpt.bin") == len(data), 300,
              "the staged checkpoint to be uploaded")
        assert fs.cat("crash-lake/ckpt.bin") == data
        assert not fs.exists("crash-lake/unclosed.log")  # never confirmed: not uploaded
        kept = list((staging / "unclosed").iterdir())
        assert len(kept) == 1 and kept[0].read_bytes() == b"half a line"
        wait_for(lambda: m.stats()["writes"]["pending_uploads"] == 0, 30, "the pending count to drop")
        assert m.stats()["writes"]["recovered"] == 1


def test_upload_failure_is_eio_keeps_the_bytes_and_is_retried(tmp_path: Path) -> None:
    server = SeaweedS3(tmp_path / "weed").start()
    try:
        _bucket(server, "flaky-lake").pipe("flaky-lake/keep.txt", b"k")
        cfg = _config(server, tmp_path / "s3.toml")
        with mounted("s3://flaky-lake", tmp_path / "mnt", tmp_path / "cache", config=cfg) as m:
            mnt = m.mountpoint
            assert "keep.txt" in os.listdir(mnt)  # the listing is what tells model.pt is new
            port = server.s3_port
            server.stop()
            fh = open(mnt / "model.pt", "wb")  # noqa: SIM115
            fh.write(b"weights" * 1000)
            with pytest.raises(OSError) as e:
                fh.close()
            assert e.value.errno == errno.EIO
            assert (mnt / "model.pt").read_bytes() == b"weights" * 1000  # kept, and readable here
            stats = m.stats()["writes"]
            assert stats["upload_errors"] >= 1 and stats["pending_uploads"] == 1
            assert "upload of model.pt failed" in m.log_tail()
            server.start(s3_port=port)
            fs = server.fs()
            wait_for(lambda: fs.exists("flaky-lake/model.pt"), 120, "the retried upload")
            assert fs.cat("flaky-lake/model.pt") == b"weights" * 1000
    finally:
        server.stop()


def test_cp_uploads_and_downloads_resumably(s3_server: SeaweedS3, tmp_path: Path) -> None:
    fs = _bucket(s3_server, "cp-lake")
    src = tmp_path / "big.bin"
    data = random_bytes(40 * MiB + 11, seed=3)
    src.write_bytes(data)
    cfg = _config(s3_server, tmp_path / "s3.toml")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    # a first upload, interrupted by SIGKILL once some parts are in
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "tierfs", "cp", str(src), "s3://cp-lake/models/big.bin",
                             "--config", str(cfg), "--part-size", "5MiB", "-j", "1"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        state_dir = tmp_path / "xdg/tierfs/cp"

        def some_parts() -> bool:
            import json

            for p in state_dir.glob("*.json"):
                try:
                    return len(json.loads(p.read_text())["parts"]) >= 2
                except (OSError, ValueError):
                    return False
            return False

        wait_for(lambda: some_parts() or proc.poll() is not None, 120, "parts to be uploaded")
        proc.kill()
    finally:
        proc.kill()
        proc.wait()
    assert not fs.exists("cp-lake/models/big.bin")
    res = run_tierfs("cp", str(src), "s3://cp-lake/models/big.bin", "--config", str(cfg), "--part-size", "5MiB",
                     env=env, check=True)
    assert "resuming:" in res.stdout
    assert fs.cat("cp-lake/models/big.bin") == data
    out = tmp_path / "out"
    out.mkdir()
    res = run_tierfs("cp", "s3://cp-lake/models/big.bin", str(out), "--config", str(cfg), "--part-size", "5MiB",
                     env=env, check=True)
    assert (out / "big.bin").read_bytes() == data
    res = run_tierfs("cp", "s3://cp-lake/models/missing.bin", str(out), "--config", str(cfg), env=env)
    assert res.returncode == 1 and "does not exist" in res.stderr and "Traceback" not in res.stderr
    bad = s3_server.s3_config(tmp_path / "bad.toml", secret="wrong-secret")
    res = run_tierfs("cp", str(src), "s3://cp-lake/x.bin", "--config", str(bad), env=env)
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1
    assert "check the credentials" in res.stderr, res.stderr
