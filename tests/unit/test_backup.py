"""tierfs backup run / list / restore, through the CLI, on a file:// lake."""

from __future__ import annotations

import os
import time
from pathlib import Path

from helpers import assert_one_line_error, random_bytes, run_tierfs, write_tree


def snapshot_tree(root: Path) -> dict[str, tuple[bytes | None, int, int]]:
    out: dict[str, tuple[bytes | None, int, int]] = {}
    for p in sorted(root.rglob("*")):
        st = p.stat()
        out[str(p.relative_to(root))] = (p.read_bytes() if p.is_file() else None, st.st_mode, st.st_mtime_ns)
    return out


def backup_ids(target: str) -> list[str]:
    return [ln.split("\t")[0] for ln in run_tierfs("backup", "list", target, check=True).stdout.splitlines()]


def test_backup_change_backup_restore(tmp_path: Path) -> None:
    src = tmp_path / "scratch"
    write_tree(src, {"ckpt/step-100.pt": random_bytes(300_000, 1), "ckpt/step-200.pt": random_bytes(200_000, 2),
                     "logs/train.log": b"epoch 1\n", "notes.txt": b"keep me"})
    (src / "empty-dir").mkdir()
    os.chmod(src / "notes.txt", 0o600)
    target = f"file://{tmp_path / 'lake'}/backups/node1"
    first = snapshot_tree(src)
    out = run_tierfs("backup", "run", str(src), target, check=True).stdout
    assert "4 files" in out and "4 uploaded" in out

    # change: modify, add, delete; only what changed travels
    (src / "logs/train.log").write_bytes(b"epoch 1\nepoch 2\n")
    (src / "ckpt/step-300.pt").write_bytes(random_bytes(100_000, 3))
    (src / "ckpt/step-100.pt").unlink()
    second = snapshot_tree(src)
    out = run_tierfs("backup", "run", str(src), target, check=True).stdout
    assert "2 uploaded" in out and "2 unchanged" in out

    ids = backup_ids(target)
    assert len(ids) == 2
    for backup_id, expected in zip(ids, (first, second), strict=True):
        dest = tmp_path / f"restore-{backup_id}"
        run_tierfs("backup", "restore", target, backup_id, str(dest), check=True)
        got = snapshot_tree(dest)
        assert got == expected  # bytes, modes and mtimes

    # retention: keep 1, and the contents only the first backup had are gone (once older than the
    # expiry's grace period, an hour: until then they may be a concurrent run's)
    blobs = tmp_path / "lake/backups/node1/blobs/sha256"
    before = {p.name for p in blobs.rglob("*") if p.is_file()}
    an_hour_ago = time.time() - 3700
    for p in blobs.rglob("*"):
        os.utime(p, (an_hour_ago, an_hour_ago))
    out = run_tierfs("backup", "run", str(src), target, "--keep", "1", check=True).stdout
    assert "expired 2 older backups" in out
    after = {p.name for p in blobs.rglob("*") if p.is_file()}
    assert len(before - after) == 2  # step-100.pt and the old train.log
    [last] = backup_ids(target)
    run_tierfs("backup", "restore", target, last, str(tmp_path / "final"), check=True)
    assert snapshot_tree(tmp_path / "final") == second


def test_restore_refuses_bad_input_and_corrupt_contents(tmp_path: Path) -> None:
    src = tmp_path / "scratch"
    write_tree(src, {"a.bin": b"a" * 1000})
    target = f"file://{tmp_path / 'lake'}"
    run_tierfs("backup", "run", str(src), target, check=True)
    [bid] = backup_ids(target)
    assert_one_line_error(run_tierfs("backup", "restore", target, "nope", str(tmp_path / "x")), "does not exist")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "f").write_text("x")
    assert_one_line_error(run_tierfs("backup", "restore", target, bid, str(tmp_path / "busy")), "not empty")
    [blob] = [p for p in (tmp_path / "lake/blobs").rglob("*") if p.is_file()]
    blob.write_bytes(b"b" * 1000)
    res = run_tierfs("backup", "restore", target, bid, str(tmp_path / "r"))
    assert_one_line_error(res, "fail their checksum")
    assert not (tmp_path / "r" / "a.bin").exists()  # nothing half-written in place
    assert_one_line_error(run_tierfs("backup", "run", str(tmp_path / "missing"), target), "does not exist")
