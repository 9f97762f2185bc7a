"""Read-set lineage on real mounts: tierfs lineage start/stop/show/diff/pin (issue 18)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    SeaweedS3,
    assert_one_line_error,
    mounted,
    random_bytes,
    run_tierfs,
    stop_process,
    wait_for,
    write_tree,
)

pytestmark = pytest.mark.mount

# A trainer: reads the files named on its first stdin line (one twice), then has a child read those on the second.
TRAINER = r"""
import subprocess, sys
mine = sys.stdin.readline().split()
theirs = sys.stdin.readline().split()
for p in mine + mine[:1]:
    open(p, "rb").read()
code = "import sys\nfor p in sys.argv[1:]: open(p, 'rb').read()"
subprocess.run([sys.executable, "-c", code, *theirs], check=True)
print("done", flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def files(tmp_path: Path) -> dict[str, bytes]:
    return {f"ds/c{i % 3}/{i:03d}.bin": random_bytes(3000 + i, seed=i) for i in range(30)}


def show(lake: str, name: str, *extra: str) -> list[dict[str, Any]]:
    res = run_tierfs("lineage", "show", lake, name, "--json", *extra, check=True)
    return [json.loads(line) for line in res.stdout.splitlines()]


def test_a_process_tree_s_read_set_is_recorded_once_per_file(files: dict[str, bytes], tmp_path: Path) -> None:
    root = tmp_path / "lake"
    write_tree(root, files)
    lake = f"file://{root}"
    names = sorted(files)
    mine, theirs, outside = names[:8], names[8:12], names[12:16] + names[:2]
    trainer = subprocess.Popen([sys.executable, "-c", TRAINER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    try:
        with mounted(lake, tmp_path / "mnt", tmp_path / "c") as m:
            run_tierfs("lineage", "start", "run1", str(m.mountpoint), "--pid", str(trainer.pid), check=True)
            assert trainer.stdin is not None and trainer.stdout is not None
            trainer.stdin.write(" ".join(str(m.mountpoint / p) for p in mine) + "\n")
            trainer.stdin.write(" ".join(str(m.mountpoint / p) for p in theirs) + "\n")
            trainer.stdin.flush()
            for p in outside:  # this process is outside the trainer's tree
                assert (m.mountpoint / p).read_bytes() == files[p]
            assert trainer.stdout.readline().strip() == "done"
            res = run_tierfs("lineage", "stop", "run1", str(m.mountpoint), check=True)
            assert "12 files read" in res.stdout
            etags = {p: os.getxattr(m.mountpoint / p, "user.tierfs.etag").decode() for p in mine + theirs}
    finally:
        stop_process(trainer)
        for pipe in (trainer.stdin, trainer.stdout):
            if pipe is not None:
                pipe.close()
    rows = show(lake, "run1")
    assert sorted(r["path"] for r in rows) == sorted(mine + theirs)  # once each; the outsider's opens not at all
    for r in rows:
        assert r["view"] == "live" and r["key"] == r["path"]
        assert r["size"] == len(files[r["path"]]) and r["etag"] == etags[r["path"]]
    assert run_tierfs("lineage", "list", lake, check=True).stdout.split() == ["run1"]
    stop = json.loads((root / ".tierfs/lineage/run1/stop.json").read_bytes())
    assert stop["count"] == 12 and stop["reason"] == "stopped"


def test_diff_of_two_jobs_and_snapshot_reads(files: dict[str, bytes], tmp_path: Path) -> None:
    root = tmp_path / "lake"
    write_tree(root, files)
    lake = f"file://{root}"
    names = sorted(files)
    run_tierfs("snapshot", "create", lake, "ds", "v1", check=True)
    with mounted(lake, tmp_path / "mnt", tmp_path / "c") as m:
        mnt = m.mountpoint
        run_tierfs("lineage", "start", "a", str(mnt), check=True)
        for p in names[:5]:
            (mnt / p).read_bytes()
        run_tierfs("lineage", "stop", "a", str(mnt), check=True)
        (mnt / names[0]).write_bytes(b"rewritten")  # the same path, other bytes
        run_tierfs("lineage", "start", "b", str(mnt), check=True)
        for p in names[:4]:
            (mnt / p).read_bytes()
        snap_file = mnt / ".snapshots/ds/v1" / names[5].removeprefix("ds/")
        assert snap_file.read_bytes() == files[names[5]]
        run_tierfs("lineage", "stop", "b", str(mnt), check=True)
    res = run_tierfs("lineage", "diff", lake, "a", "b", "--json", check=True)
    d = json.loads(res.stdout)
    assert [(r["view"], r["path"]) for r in d["added"]] == [("snapshot:ds/v1", names[5].removeprefix("ds/"))]
    assert [r["path"] for r in d["removed"]] == [names[4]]
    assert [(c["old"]["size"], c["new"]["size"]) for c in d["changed"]] == [(len(files[names[0]]), 9)]
    text = run_tierfs("lineage", "diff", lake, "a", "b", check=True).stdout
    assert "1 added, 1 removed, 1 changed" in text


def test_pin_on_an_unversioned_lake(files: dict[str, bytes], tmp_path: Path) -> None:
    root = tmp_path / "lake"
    write_tree(root, files)
    lake = f"file://{root}"
    names = sorted(files)[:6]
    with mounted(lake, tmp_path / "mnt", tmp_path / "c") as m:
        mnt = m.mountpoint
        run_tierfs("lineage", "start", "job", str(mnt), check=True)
        for p in names:
            (mnt / p).read_bytes()
        run_tierfs("lineage", "stop", "job", str(mnt), check=True)
    res = run_tierfs("lineage", "pin", lake, "job", "ds", "job-v1", "--prefix", "ds", check=True)
    assert "6 files" in res.stdout
    (root / names[0]).write_bytes(b"changed after pinning")  # the copy keeps the bytes read
    (root / names[1]).write_bytes(b"changed before the second pin")
    assert_one_line_error(run_tierfs("lineage", "pin", lake, "job", "ds", "job-v2"), "changed", names[1])
    assert not (root / ".tierfs/snapshots/ds/job-v2/meta.json").exists()
    with mounted(lake, tmp_path / "mnt", tmp_path / "c2") as m:
        snap = m.mountpoint / ".snapshots/ds/job-v1"
        got = {str(p.relative_to(snap)): p.read_bytes() for p in snap.rglob("*") if p.is_file()}
    assert got == {p.removeprefix("ds/"): files[p] for p in names}


def test_pin_on_a_versioned_s3_lake_keeps_the_bytes_read(s3_server: SeaweedS3, tmp_path: Path) -> None:
    fs = s3_server.fs()
    fs.mkdir("lineage-lake")
    fs.make_bucket_versioned("lineage-lake", True)
    files = {f"data/part{i}.bin": random_bytes(5000 + i, seed=100 + i) for i in range(6)}
    for key, data in files.items():
        fs.pipe(f"lineage-lake/{key}", data)
    cfg = s3_server.s3_config(tmp_path / "s3.toml")
    lake = "s3://lineage-lake"
    with mounted(lake, tmp_path / "mnt", tmp_path / "c", config=cfg) as m:
        mnt = m.mountpoint
        run_tierfs("lineage", "start", "s3job", str(mnt), check=True)
        for p in sorted(files)[:4]:
            (mnt / p).read_bytes()
        run_tierfs("lineage", "stop", "s3job", str(mnt), check=True)
        (mnt / "data/part0.bin").write_bytes(b"overwritten in the live view")
    rows = show(lake, "s3job", "--config", str(cfg))
    assert len(rows) == 4 and all(r["version"] for r in rows)
    res = run_tierfs("lineage", "pin", lake, "s3job", "data", "s3job", "--config", str(cfg), check=True)
    assert "(pinned)" in res.stdout
    with mounted(lake, tmp_path / "mnt", tmp_path / "c2", config=cfg) as m:
        snap = m.mountpoint / ".snapshots/data/s3job"
        got = {str(p.relative_to(snap)): p.read_bytes() for p in snap.rglob("*") if p.is_file()}
        assert (m.mountpoint / "data/part0.bin").read_bytes() == b"overwritten in the live view"
    assert got == {p.removeprefix("data/"): files[p] for p in sorted(files)[:4]}


def test_kill_9_loses_at_most_the_unflushed_batch(files: dict[str, bytes], tmp_path: Path) -> None:
    root = tmp_path / "lake"
    write_tree(root, files)
    lake = f"file://{root}"
    names = sorted(files)
    job = root / ".tierfs/lineage/crash"
    with mounted(lake, tmp_path / "mnt", tmp_path / "c") as m:
        mnt = m.mountpoint
        run_tierfs("lineage", "start", "crash", str(mnt), "--flush-seconds", "0.2", check=True)
        for p in names[:10]:
            (mnt / p).read_bytes()
        wait_for(lambda: (job / "part-000001.jsonl.gz").exists(), 30, "the first batch in the lake")
        for p in names[10:20]:
            (mnt / p).read_bytes()
        m.kill9()
    rows = show(lake, "crash")  # every part written is whole
    got = {r["path"] for r in rows}
    assert set(names[:10]) <= got <= set(names[:20])
    for part in job.glob("part-*"):
        gzip.decompress(part.read_bytes())
    assert not (job / "stop.json").exists()
    assert_one_line_error(run_tierfs("lineage", "pin", lake, "crash", "ds", "x"), "no stop record")


def test_unmount_stops_running_jobs(files: dict[str, bytes], tmp_path: Path) -> None:
    root = tmp_path / "lake"
    write_tree(root, files)
    lake = f"file://{root}"
    with mounted(lake, tmp_path / "mnt", tmp_path / "c") as m:
        run_tierfs("lineage", "start", "left", str(m.mountpoint), check=True)
        (m.mountpoint / sorted(files)[0]).read_bytes()
    stop = json.loads((root / ".tierfs/lineage/left/stop.json").read_bytes())
    assert stop["reason"] == "unmounted" and stop["count"] == 1
    assert [r["path"] for r in show(lake, "left")] == [sorted(files)[0]]


def test_bad_lineage_requests(files: dict[str, bytes], tmp_path: Path) -> None:
    root = tmp_path / "lake"
    write_tree(root, files)
    lake = f"file://{root}"
    assert_one_line_error(run_tierfs("lineage", "start", "j", str(tmp_path)), "not a tierfs mount")
    assert_one_line_error(run_tierfs("lineage", "show", lake, "nope"), "no lineage job 'nope'")
    assert_one_line_error(run_tierfs("lineage", "start", "../x", str(tmp_path)), "job name")
    with mounted(lake, tmp_path / "mnt", tmp_path / "c") as m:
        mnt = str(m.mountpoint)
        assert_one_line_error(run_tierfs("lineage", "stop", "nope", mnt), "no lineage job 'nope' is running")
        run_tierfs("lineage", "start", "j", mnt, check=True)
        assert_one_line_error(run_tierfs("lineage", "start", "j", mnt), "already running")
        assert_one_line_error(run_tierfs("lineage", "start", "k", mnt, "--pid", "999999999"), "no process")
        run_tierfs("lineage", "stop", "j", mnt, check=True)
        assert_one_line_error(run_tierfs("lineage", "start", "j", mnt), "already exists")
    assert_one_line_error(run_tierfs("lineage", "pin", lake, "j", "ds", "v"), "read no files")
