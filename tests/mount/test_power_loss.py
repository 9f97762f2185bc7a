"""What a power cut leaves, and what the next mount makes of it, on real mounts.

A power cut cannot be had in a test; what it leaves can: the daemon is killed
(-9) at the moment that matters, then the files are changed the way lost
kernel buffers would have changed them, and the next mount starts on that.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
from helpers import Mount, SeaweedS3, mounted, random_bytes, wait_for, write_tree

pytestmark = pytest.mark.mount
MiB = 1 << 20


def _pending_record(staging: Path) -> Path | None:
    for p in staging.glob("*.json"):
        if p.name.endswith(".upload.json"):
            continue
        try:
            if json.loads(p.read_text())["state"] == "pending":
                return p
        except (OSError, ValueError, KeyError):
            pass
    return None


@pytest.mark.servers
def test_a_checkpoint_cut_short_by_a_power_cut_is_not_uploaded_over_the_old_one(tmp_path: Path) -> None:
    """kill -9 between the pending record and the upload (the store is frozen with SIGSTOP, so
    the upload cannot finish), then the staged file loses its tail: the next mount must not
    upload it, and the lake keeps the checkpoint it had."""
    server = SeaweedS3(tmp_path / "weed").start()
    frozen = False
    try:
        fs = server.fs()
        fs.mkdir("power")
        old, new = random_bytes(3 * MiB, seed=1), random_bytes(8 * MiB, seed=2)
        fs.pipe("power/ckpt.pt", old)
        cfg = server.s3_config(tmp_path / "s3.toml")
        cache = tmp_path / "cache"
        m = Mount("s3://power", tmp_path / "mnt", cache, config=cfg).start()
        try:
            assert (m.mountpoint / "ckpt.pt").stat().st_size == len(old)  # listed and stat'ed: no store call below
            assert server.proc is not None
            os.killpg(server.proc.pid, signal.SIGSTOP)
            frozen = True
            errors: list[OSError] = []

            def save() -> None:
                try:
                    (m.mountpoint / "ckpt.pt").write_bytes(new)
                except OSError as exc:
                    errors.append(exc)

            writer = threading.Thread(target=save)
            writer.start()
            staging = cache / "staging"
            wait_for(lambda: _pending_record(staging) is not None, 60, "the close to journal the checkpoint pending")
            m.kill9()
            writer.join(60)
            assert errors, "close returned although the store never had the checkpoint"
        except BaseException:
            if m.pid:
                m.kill9()
            raise
        record = _pending_record(staging)
        assert record is not None
        data = staging / f"{record.stem}.data"
        assert data.read_bytes() == new
        os.truncate(data, 2 * MiB)  # the power cut: the kernel had not written the tail
        os.killpg(server.proc.pid, signal.SIGCONT)
        frozen = False

        with mounted("s3://power", tmp_path / "mnt", cache, config=cfg) as m2:
            assert "not uploaded" in m2.output and "unclosed" in m2.output, m2.output
            time.sleep(3)  # the retry loop runs at once: it must have nothing to upload
            assert fs.cat("power/ckpt.pt") == old
            assert (m2.mountpoint / "ckpt.pt").read_bytes() == old
            assert m2.stats()["writes"]["pending_uploads"] == 0
            assert "do not match" in m2.log_tail()
        (kept,) = (staging / "unclosed").iterdir()
        assert kept.read_bytes() == new[:2 * MiB]
        assert fs.cat("power/ckpt.pt") == old
    finally:
        if frozen and server.proc is not None:
            os.killpg(server.proc.pid, signal.SIGCONT)
        server.stop()


def test_an_unclean_start_checks_the_disk_cache_and_reuses_it(tmp_path: Path) -> None:
    """After a kill -9 (or a power cut) the index is checked against the block files: what is
    missing or cut short is dropped, files it does not know are removed, the rest is reused."""
    lake = tmp_path / "lake"
    files = {f"ds/{i:02d}.bin": random_bytes(200 << 10, seed=i) for i in range(6)}  # 4 blocks of 64 KiB each
    write_tree(lake, files)
    total = sum(len(d) for d in files.values())
    cache = tmp_path / "cache"
    args = ("--ram-size", "0", "--block-size", "64KiB", "--no-passthrough")  # (blocks only: no whole-file copies)
    m = Mount(f"file://{lake}", tmp_path / "mnt", cache, *args).start()
    try:
        for rel, data in files.items():
            assert (m.mountpoint / rel).read_bytes() == data
        m.fills_settled()  # (the disk puts run behind the reads' replies)
        assert m.backend_bytes() == total and m.stats()["tiers"]["disk"]["entries"] == 24
    finally:
        m.kill9()
    blocks = sorted(p for p in (cache / "blocks").rglob("*") if p.is_file())
    assert len(blocks) == 24
    corrupt, missing, short = blocks[0], blocks[5], blocks[10]
    refetched = sum(p.stat().st_size for p in (corrupt, missing, short))
    raw = bytearray(corrupt.read_bytes())
    raw[100] ^= 0xFF
    corrupt.write_bytes(bytes(raw))  # same size, other bytes: found by the checksum at its read
    missing.unlink()  # a stale index entry
    os.truncate(short, 1000)
    orphan = cache / "blocks/ff/ff" / ("ff" * 20)  # a block the index never recorded
    orphan.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(blocks[1], orphan)

    with mounted(f"file://{lake}", tmp_path / "mnt", cache, *args) as m2:
        assert m2.stats()["tiers"]["disk"]["entries"] == 22  # checked before the first read
        assert not orphan.exists()
        log = m2.log_tail()
        assert "22 kept, 2 dropped" in log and "1 file(s) the index did not know removed" in log, log
        for rel, data in files.items():
            assert (m2.mountpoint / rel).read_bytes() == data, rel
        assert m2.backend_bytes() == refetched < total  # only the three bad blocks came from the lake
        m2.fills_settled()
        assert m2.stats()["tiers"]["disk"]["entries"] == 24
