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


def _forge(lake: Path, backup_id: str, paths: list[tuple[str, bool]]) -> None:
    """Rewrite a backup's manifest in the lake with these (path, is_dir) entries, checksum and all."""
    import gzip
    import hashlib
    import json

    from tierfs.sidecar.backup import BACKUPS, FileEntry

    manifest = lake / "backups/node1" / BACKUPS / f"{backup_id}.jsonl.gz"
    header_line, _, body = gzip.decompress(manifest.read_bytes()).decode().partition("\n")
    real = [FileEntry.from_json(ln) for ln in body.strip().split("\n")]
    blob = next(e for e in real if not e.is_dir)
    forged = [FileEntry(p, d, 0 if d else blob.size, 0o755 if d else 0o644, blob.mtime_ns, "" if d else blob.sha256)
              for p, d in paths]
    new_body = "\n".join(e.to_json() for e in forged)
    header = {**json.loads(header_line), "sha256": hashlib.sha256(new_body.encode()).hexdigest()}
    manifest.write_bytes(gzip.compress((json.dumps(header) + "\n" + new_body + "\n").encode()))


def test_a_forged_manifest_writes_nothing_outside_the_target(tmp_path: Path) -> None:
    """`../x`, `/etc/x`, and a directory swapped for a symlink mid-restore: refused, nothing written outside."""
    src = tmp_path / "scratch"
    write_tree(src, {"a.bin": random_bytes(1000, 1)})
    target = f"file://{tmp_path / 'lake'}/backups/node1"
    run_tierfs("backup", "run", str(src), target, check=True)
    (bid,) = backup_ids(target)
    outside = tmp_path / "outside"
    outside.mkdir()
    for bad in ("../outside/x", f"{outside}/y", "ok/../../outside/z", "a//b"):
        _forge(tmp_path / "lake", bid, [("fine.bin", False), (bad, False)])
        res = run_tierfs("backup", "restore", target, bid, str(tmp_path / f"r{abs(hash(bad))}"))
        assert_one_line_error(res, "not a path inside the target")
        assert not any(outside.iterdir()) and not (tmp_path / f"r{abs(hash(bad))}" / "fine.bin").exists()

    # A race: once d/1.bin is restored, d is swapped for a symlink to outside; d/2.bin must not follow it.
    from tierfs.config import load
    from tierfs.errors import UserError
    from tierfs.sidecar.backup import restore
    from tierfs.store.objects import ObjectStore

    _forge(tmp_path / "lake", bid, [("d", True), ("d/1.bin", False), ("d/2.bin", False)])
    dest = tmp_path / "restored"

    def swap(done: int, _bytes: int) -> None:
        if done == 1:
            os.rename(dest / "d", tmp_path / "moved-away")
            os.symlink(outside, dest / "d")

    store = ObjectStore.open(load(None, {"lake_url": target}))
    try:
        restore(store, bid, dest, on_progress=swap)
    except UserError as exc:
        assert "nothing is written through a symlink" in str(exc)
    else:
        raise AssertionError("restore wrote through a symlink it did not make")
    assert not any(outside.iterdir())


def test_with_a_secret_a_forged_manifest_is_refused(tmp_path: Path) -> None:
    """`[backup] secret_file`: manifests carry a MAC; one rewritten without the secret is not restored."""
    secret = tmp_path / "backup.secret"
    secret.write_text("s3cr3t-for-backups-0123456789")
    secret.chmod(0o600)
    cfg = tmp_path / "tierfs.toml"
    cfg.write_text(f'[backup]\nsecret_file = "{secret}"\n')
    src = tmp_path / "scratch"
    write_tree(src, {"a.bin": random_bytes(1000, 1), "b.bin": random_bytes(500, 2)})
    target = f"file://{tmp_path / 'lake'}/backups/node1"
    run_tierfs("backup", "run", str(src), target, "--config", str(cfg), check=True)
    (bid,) = [ln.split("\t")[0] for ln in run_tierfs("backup", "list", target, "--config", str(cfg),
                                                      check=True).stdout.splitlines()]
    run_tierfs("backup", "restore", target, bid, str(tmp_path / "ok"), "--config", str(cfg), check=True)
    assert (tmp_path / "ok" / "a.bin").read_bytes() == (src / "a.bin").read_bytes()

    _forge(tmp_path / "lake", bid, [("a.bin", False)])  # valid sha256, no MAC under the secret
    res = run_tierfs("backup", "restore", target, bid, str(tmp_path / "forged"), "--config", str(cfg))
    assert_one_line_error(res, "not authenticated by [backup] secret_file")
    assert not (tmp_path / "forged" / "a.bin").exists()
    # An expiry still counts that manifest's contents as referenced: nothing of a backup is lost to a new secret.
    run_tierfs("backup", "run", str(src), target, "--config", str(cfg), "--keep", "1", check=True)
    blobs = [p for p in (tmp_path / "lake/backups/node1").rglob("*") if p.is_file() and "blobs" in p.parts]
    assert len(blobs) >= 2


def test_a_restore_without_a_secret_sets_no_setuid_bit(tmp_path: Path) -> None:
    import stat

    src = tmp_path / "scratch"
    write_tree(src, {"tool": b"#!/bin/sh\n"})
    os.chmod(src / "tool", 0o4755)  # as a forged manifest could claim it
    target = f"file://{tmp_path / 'lake'}/backups/node1"
    run_tierfs("backup", "run", str(src), target, check=True)
    (bid,) = backup_ids(target)
    run_tierfs("backup", "restore", target, bid, str(tmp_path / "r"), check=True)
    assert stat.S_IMODE((tmp_path / "r" / "tool").stat().st_mode) == 0o755


def test_a_readable_backup_secret_is_refused(tmp_path: Path) -> None:
    """`[backup] secret_file` was never checked for mode: one its group or every user can read is refused."""
    secret = tmp_path / "backup.secret"
    secret.write_text("s3cr3t-for-backups-0123456789")
    cfg = tmp_path / "tierfs.toml"
    cfg.write_text(f'[backup]\nsecret_file = "{secret}"\n')
    src = tmp_path / "scratch"
    write_tree(src, {"a.bin": random_bytes(1000, 1)})
    target = f"file://{tmp_path / 'lake'}/backups/node1"
    for mode, who in ((0o640, "its group"), (0o644, "every user")):
        secret.chmod(mode)
        res = run_tierfs("backup", "run", str(src), target, "--config", str(cfg))
        assert_one_line_error(res, "[backup] secret_file", str(secret), who, "chmod 600")
        assert "s3cr3t" not in res.stderr
    assert not (tmp_path / "lake" / "backups").exists()
    secret.chmod(0o600)
    run_tierfs("backup", "run", str(src), target, "--config", str(cfg), check=True)
