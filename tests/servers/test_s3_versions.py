"""Pinned-version snapshots in a versioned bucket of a real S3 server (SeaweedFS)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import fsspec
import pytest
from helpers import SeaweedS3, mounted, random_bytes, run_tierfs

pytestmark = [pytest.mark.servers, pytest.mark.mount]


def test_pinned_snapshot_survives_overwrite_and_delete(s3_server: SeaweedS3, tmp_path: Path) -> None:
    fs = s3_server.fs()
    fs.mkdir("versioned-lake")
    fs.make_bucket_versioned("versioned-lake", True)
    files = {f"datasets/toy/c{i % 2}/{i}.jpg": random_bytes(10_000 + i, seed=i) for i in range(12)}
    files["datasets/toy/big.bin"] = random_bytes(2 * 1024 * 1024 + 3, seed=5)
    for key, data in files.items():
        fs.pipe(f"versioned-lake/{key}", data)
    cfg = s3_server.s3_config(tmp_path / "s3.toml")
    lake = "s3://versioned-lake"

    res = run_tierfs("snapshot", "create", lake, "datasets/toy", "v1", "--config", str(cfg), check=True)
    assert "(pinned)" in res.stdout
    show = json.loads(run_tierfs("snapshot", "show", lake, "toy", "v1", "--json", "--config", str(cfg), check=True).stdout)
    assert show["mode"] == "pinned" and show["file_count"] == len(files)
    assert not fs.exists("versioned-lake/.tierfs/cas")  # pinned: nothing copied

    # the source changes after the snapshot
    fs.pipe("versioned-lake/datasets/toy/c0/0.jpg", b"overwritten")
    fs.rm("versioned-lake/datasets/toy/big.bin")
    fs.pipe("versioned-lake/datasets/toy/c1/new.jpg", b"new")

    with mounted(lake, tmp_path / "mnt", tmp_path / "cache", "--block-size", "1MiB", config=cfg) as m:
        snap = m.mountpoint / ".snapshots/toy/v1"
        got = {str(p.relative_to(snap)): p.read_bytes() for p in snap.rglob("*") if p.is_file()}
        assert got == {k.removeprefix("datasets/toy/"): v for k, v in files.items()}
        assert os.getxattr(snap / "big.bin", "user.tierfs.version")  # read by version id
        live = m.mountpoint / "datasets/toy"
        assert (live / "c0/0.jpg").read_bytes() == b"overwritten"
        assert not (live / "big.bin").exists()

    # and without a mount
    fss = fsspec.filesystem("tierfs", lake=lake, config=str(cfg), cache_dir=str(tmp_path / "fc"))
    try:
        assert fss.cat("toy@v1/big.bin") == files["datasets/toy/big.bin"]
        assert fss.cat("toy@v1/c0/0.jpg") == files["datasets/toy/c0/0.jpg"]
    finally:
        fss.close()

    run_tierfs("snapshot", "create", lake, "datasets/toy", "v2", "--config", str(cfg), check=True)
    diff = json.loads(run_tierfs("snapshot", "diff", lake, "toy", "v1", "v2", "--json", "--config", str(cfg), check=True).stdout)
    assert [c["path"] for c in diff["added"]] == ["c1/new.jpg"]
    assert [c["path"] for c in diff["removed"]] == ["big.bin"]
    assert [(c["path"], c["new_size"]) for c in diff["changed"]] == [("c0/0.jpg", 11)]


def test_copy_mode_on_an_unversioned_bucket(s3_server: SeaweedS3, tmp_path: Path) -> None:
    fs = s3_server.fs()
    fs.mkdir("plain-lake")
    files = {f"ds/{i}.bin": random_bytes(5000, seed=100 + i) for i in range(5)}
    for key, data in files.items():
        fs.pipe(f"plain-lake/{key}", data)
    cfg = s3_server.s3_config(tmp_path / "s3.toml")
    res = run_tierfs("snapshot", "create", "s3://plain-lake", "ds", "v1", "--config", str(cfg), check=True)
    assert "(copy)" in res.stdout
    fs.pipe("plain-lake/ds/0.bin", b"changed")
    fs.rm("plain-lake/ds/1.bin")
    with mounted("s3://plain-lake", tmp_path / "mnt", tmp_path / "cache", config=cfg) as m:
        snap = m.mountpoint / ".snapshots/ds/v1"
        assert {p.name: p.read_bytes() for p in snap.iterdir()} == {k.removeprefix("ds/"): v for k, v in files.items()}
    report = run_tierfs("gc", "s3://plain-lake", "--grace", "0", "--config", str(cfg), check=True).stdout
    assert "0 unreferenced copies" in report


def test_noncurrent_expiration_spares_pinned_versions(s3_server: SeaweedS3, tmp_path: Path) -> None:
    fs = s3_server.fs()
    fs.mkdir("nc-lake")
    fs.make_bucket_versioned("nc-lake", True)
    fs.pipe("nc-lake/ds/pinned.bin", b"pinned v1")
    fs.pipe("nc-lake/ds/free.bin", b"free v1")
    cfg = s3_server.s3_config(tmp_path / "s3.toml")
    run_tierfs("snapshot", "create", "s3://nc-lake", "ds", "v1", "--config", str(cfg), check=True)
    fs.pipe("nc-lake/ds/pinned.bin", b"pinned v2")  # v1 is now noncurrent, but the snapshot reads it
    fs.pipe("nc-lake/ds/free.bin", b"free v2")
    fs.pipe("nc-lake/ds/free.bin", b"free v3")  # free v1 and v2 are noncurrent; v1 is pinned too
    rules = tmp_path / "r.toml"
    rules.write_text('[[rule]]\nid = "old-versions"\nprefix = "ds/"\nnoncurrent_expiration_days = 0\n')
    plan = run_tierfs("lifecycle", "plan", "s3://nc-lake", "--rules", str(rules), "--config", str(cfg), check=True).stdout
    assert plan.count("\texpire\t(rule old-versions)") == 1  # free v2 only
    assert plan.count("kept: pinned by a snapshot") == 2
    out = run_tierfs("lifecycle", "apply", "s3://nc-lake", "--rules", str(rules), "--config", str(cfg), check=True).stdout
    assert "1 expired" in out
    cost = run_tierfs("cost", "s3://nc-lake", "--config", str(cfg), check=True).stdout
    assert any(line.split()[:4] == ["ds", "STANDARD", "(old)", "2"] for line in cost.splitlines()), cost
    fv = s3_server.fs(version_aware=True)
    assert len(fv.object_version_info("nc-lake/ds/free.bin")) == 2
    assert len(fv.object_version_info("nc-lake/ds/pinned.bin")) == 2
    with mounted("s3://nc-lake", tmp_path / "mnt", tmp_path / "cache", config=cfg) as m:
        snap = m.mountpoint / ".snapshots/ds/v1"
        assert (snap / "pinned.bin").read_bytes() == b"pinned v1"
        assert (snap / "free.bin").read_bytes() == b"free v1"


def test_a_transition_leaves_no_second_copy_and_spares_pinned_versions(s3_server: SeaweedS3, tmp_path: Path) -> None:
    """A self-copy in a versioned bucket makes a new version: the old one goes, unless a snapshot reads it."""
    fs = s3_server.fs()
    fs.mkdir("tr-lake")
    fs.make_bucket_versioned("tr-lake", True)
    fs.pipe("tr-lake/ds/pinned.bin", b"pinned" * 100)
    run_tierfs("snapshot", "create", "s3://tr-lake", "ds", "v1", "--config", str(s3_server.s3_config(tmp_path / "s3.toml")),
               check=True)
    fs.pipe("tr-lake/ds/free.bin", b"free" * 100)
    fs.pipe("tr-lake/ds/twice.bin", b"old")  # a snapshot pins nothing of it; its old version stays noncurrent
    fs.pipe("tr-lake/ds/twice.bin", b"new" * 100)
    cfg = tmp_path / "s3.toml"
    # (a lookup asks with a HEAD: the read below is the one to find its version gone)
    cfg.write_text(cfg.read_text() + '[metadata]\nlookup_bytes = "0"\n')
    rules = tmp_path / "r.toml"
    rules.write_text('[[rule]]\nid = "cool"\nprefix = "ds/"\ntransitions = [{ days = 0, class = "STANDARD_IA" }]\n')
    plan = run_tierfs("lifecycle", "plan", "s3://tr-lake", "--rules", str(rules), "--config", str(cfg), check=True).stdout
    assert "ds/pinned.bin\tkept: this version is pinned by a snapshot" in plan
    with mounted("s3://tr-lake", tmp_path / "early", tmp_path / "early-cache", config=cfg) as early:
        assert (early.mountpoint / "ds/free.bin").stat().st_size == 400  # listed with the version about to go
        out = run_tierfs("lifecycle", "apply", "s3://tr-lake", "--rules", str(rules), "--config", str(cfg),
                         check=True).stdout
        assert "2 transitioned" in out
        # its version is gone; the current one holds the same bytes (same ETag), so the read goes on
        assert (early.mountpoint / "ds/free.bin").read_bytes() == b"free" * 100
        assert "ds/free.bin: version" in early.log_tail() and "the same bytes" in early.log_tail()
    fv = s3_server.fs(version_aware=True)
    assert fs.info("tr-lake/ds/free.bin")["StorageClass"] == "STANDARD_IA"
    assert len(fv.object_version_info("tr-lake/ds/free.bin")) == 1  # the copied-from version is gone
    assert len(fv.object_version_info("tr-lake/ds/twice.bin")) == 2  # "old" stays: only the copied version went
    assert fs.cat("tr-lake/ds/twice.bin") == b"new" * 100
    assert len(fv.object_version_info("tr-lake/ds/pinned.bin")) == 1
    assert fs.info("tr-lake/ds/pinned.bin")["StorageClass"] == "STANDARD"
    with mounted("s3://tr-lake", tmp_path / "mnt", tmp_path / "cache", config=cfg) as m:
        assert (m.mountpoint / ".snapshots/ds/v1/pinned.bin").read_bytes() == b"pinned" * 100
        assert (m.mountpoint / "ds/free.bin").read_bytes() == b"free" * 100
    again = run_tierfs("lifecycle", "apply", "s3://tr-lake", "--rules", str(rules), "--config", str(cfg), check=True)
    assert "0 transitioned" in again.stdout



def _loaded_s3fs(pid: int) -> bool:
    """Whether the daemon has loaded aiohttp's compiled parts (s3fs' HTTP client: s3fs was made)."""
    return "aiohttp/_http_parser" in Path(f"/proc/{pid}/maps").read_text()


def test_a_mount_learns_the_buckets_versioning_without_making_s3fs(s3_server: SeaweedS3, tmp_path: Path) -> None:
    """The versioning question is one signed GET: making s3fs for it (botocore's models, aiohttp) took a second of
    the daemon's CPU right after the mount came up, and the first listing of an unversioned lake waited for it."""
    fs = s3_server.fs()
    cfg = s3_server.s3_config(tmp_path / "s3.toml")
    tag = uuid.uuid4().hex[:8]  # (the server outlives the test)
    for bucket, versioned in ((f"plain-{tag}", False), (f"kept-{tag}", True)):
        fs.mkdir(bucket)
        if versioned:
            fs.make_bucket_versioned(bucket, True)
        fs.pipe(f"{bucket}/d/a.bin", b"first")
        fs.pipe(f"{bucket}/d/a.bin", b"second")
        with mounted(f"s3://{bucket}", tmp_path / f"mnt-{bucket}", tmp_path / f"cache-{bucket}", "--read-only",
                     config=cfg) as m:
            assert os.listdir(m.mountpoint / "d") == ["a.bin"]
            assert (m.mountpoint / "d/a.bin").read_bytes() == b"second"
            names = os.listxattr(m.mountpoint / "d/a.bin")
            # A versioned lake's refs pin the version read; an unversioned one's have none.
            assert ("user.tierfs.version" in names) == versioned, names
            if versioned:
                assert os.getxattr(m.mountpoint / "d/a.bin", "user.tierfs.version")
            # (a versioned lake lists through s3fs: obstore's listings carry no version ids)
            assert m.pid is not None and _loaded_s3fs(m.pid) == versioned


def test_the_signed_versioning_query_answers_as_the_server_does(s3_server: SeaweedS3,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from tierfs.store.s3_versioning import bucket_versioned

    fs = s3_server.fs()
    tag = uuid.uuid4().hex[:8]
    opts = {"key": s3_server.ACCESS_KEY, "secret": s3_server.SECRET_KEY,
            "client_kwargs": {"endpoint_url": s3_server.endpoint}}
    for state in ("never", "enabled", "suspended"):
        fs.mkdir(f"{state}-{tag}")
        if state != "never":
            fs.make_bucket_versioned(f"{state}-{tag}", True)
        if state == "suspended":
            fs.make_bucket_versioned(f"{state}-{tag}", False)
        assert bucket_versioned(opts, f"{state}-{tag}", 5) is (state == "enabled")
    assert bucket_versioned(opts, f"missing-{tag}", 5) is False  # as the s3fs query: no versions known
    # A refused signature is not an answer: the caller asks through s3fs, which says what is wrong.
    assert bucket_versioned({**opts, "secret": "wrong"}, f"enabled-{tag}", 5) is None
    # Credentials only botocore's chain would find (a profile, the instance's role): not this way's to ask.
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    assert bucket_versioned({"client_kwargs": opts["client_kwargs"]}, f"enabled-{tag}", 5) is None
