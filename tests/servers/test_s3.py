"""A lake in a real S3-compatible server (SeaweedFS) on loopback, mounted for real."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest
from helpers import (
    SeaweedS3,
    assert_one_line_error,
    check_reads_through_tiers,
    drop_page_cache,
    free_port,
    mounted,
    random_bytes,
    run_tierfs,
)

pytestmark = [pytest.mark.servers, pytest.mark.mount]
MiB = 1 << 20


def upload(server: SeaweedS3, bucket: str, files: dict[str, bytes]) -> None:
    fs = server.fs()
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    for key, data in files.items():
        fs.pipe(f"{bucket}/{key}", data)


def test_mount_an_s3_lake(s3_server: SeaweedS3, tmp_path: Path) -> None:
    files = {f"datasets/toy/c{i % 3}/{i}.jpg": random_bytes(50_000 + i, seed=i) for i in range(30)}
    files["datasets/toy/shard.tar"] = random_bytes(3 * MiB + 7, seed=99)
    files["datasets/toy/odd #name %20 +x é.txt"] = b"odd"
    upload(s3_server, "lake1", files)
    cfg = s3_server.s3_config(tmp_path / "s3.toml")
    with mounted("s3://lake1/datasets", tmp_path / "mnt", tmp_path / "cache", "--block-size", "1MiB", config=cfg) as m:
        check_reads_through_tiers(m, files, strip="datasets/")
        etag = os.getxattr(m.mountpoint / "toy/shard.tar", "user.tierfs.etag")
        assert len(etag) >= 32  # the S3 ETag, not a stand-in


def test_the_endpoint_and_region_as_flags(s3_server: SeaweedS3, tmp_path: Path) -> None:
    """--endpoint/--region (and -o endpoint=) stand in for [s3] endpoint_url/region: the config holds only keys."""
    upload(s3_server, "flags-lake", {"a/x.bin": b"flags"})
    cfg = tmp_path / "keys.toml"
    cfg.write_text(f'[s3]\nkey = "{s3_server.ACCESS_KEY}"\nsecret = "{s3_server.SECRET_KEY}"\n')
    cfg.chmod(0o600)
    with mounted("s3://flags-lake", tmp_path / "mnt", tmp_path / "cache", "--endpoint", s3_server.endpoint,
                 "--region", "us-east-1", config=cfg) as m:
        assert (m.mountpoint / "a/x.bin").read_bytes() == b"flags"
    with mounted("s3://flags-lake", tmp_path / "mnt", tmp_path / "cache", "-o", f"endpoint={s3_server.endpoint}",
                 config=cfg) as m:
        assert (m.mountpoint / "a/x.bin").read_bytes() == b"flags"


def test_bad_credentials(s3_server: SeaweedS3, tmp_path: Path) -> None:
    upload(s3_server, "lake2", {"x": b"x"})
    (tmp_path / "mnt").mkdir()
    cfg = s3_server.s3_config(tmp_path / "s3.toml", secret="wrong-secret")
    res = run_tierfs("mount", "s3://lake2", str(tmp_path / "mnt"), "--cache-dir", str(tmp_path / "c"), "--config", str(cfg))
    assert_one_line_error(res, "refused", "check the credentials")


def test_missing_credentials(s3_server: SeaweedS3, tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    cfg = tmp_path / "s3.toml"
    cfg.write_text(f'[s3]\nendpoint_url = "{s3_server.endpoint}"\n[store]\nretries = 1\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["HOME"] = str(tmp_path)  # no ~/.aws either
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "tierfs", "mount", "s3://lake2", str(tmp_path / "mnt"),
                          "--cache-dir", str(tmp_path / "c"), "--config", str(cfg)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert_one_line_error(res, "no usable credentials", "AWS_ACCESS_KEY_ID")


def test_nonexistent_bucket(s3_server: SeaweedS3, tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    cfg = s3_server.s3_config(tmp_path / "s3.toml")
    res = run_tierfs("mount", "s3://no-such-bucket/x", str(tmp_path / "mnt"), "--cache-dir", str(tmp_path / "c"), "--config", str(cfg))
    assert_one_line_error(res, "does not exist", "bucket")


def test_unreachable_endpoint(tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    port = free_port()  # nothing listens there
    cfg = SeaweedS3(tmp_path).s3_config(tmp_path / "s3.toml", endpoint=f"http://127.0.0.1:{port}")
    t0 = time.monotonic()
    res = run_tierfs("mount", "s3://lake", str(tmp_path / "mnt"), "--cache-dir", str(tmp_path / "c"), "--config", str(cfg))
    assert_one_line_error(res, "cannot reach", "check the endpoint")
    assert time.monotonic() - t0 < 60  # never a hang


def test_backend_outage_during_reads(tmp_path: Path) -> None:
    """The store goes away mid-run: cached reads go on, uncached reads get EIO
    (after retries, not a hang), the mount stays up, and works again once the
    store is back."""
    server = SeaweedS3(tmp_path / "weed").start()
    try:
        files = {"d/cached.bin": random_bytes(200_000, 1), "d/later.bin": random_bytes(300_000, 2)}
        upload(server, "lake", files)
        cfg = server.s3_config(tmp_path / "s3.toml")
        with mounted("s3://lake", tmp_path / "mnt", tmp_path / "cache", config=cfg) as m:
            mnt = m.mountpoint
            assert (mnt / "d/cached.bin").read_bytes() == files["d/cached.bin"]
            os.stat(mnt / "d/later.bin")  # metadata known, bytes not yet fetched
            port = server.s3_port
            server.stop()
            drop_page_cache()
            t0 = time.monotonic()
            with pytest.raises(OSError) as e:
                (mnt / "d/later.bin").read_bytes()
            assert e.value.errno == errno.EIO
            assert time.monotonic() - t0 < 60
            assert (mnt / "d/cached.bin").read_bytes() == files["d/cached.bin"]  # served by the tiers
            stats = m.stats()
            assert stats["backend"]["errors"] >= 1 and stats["backend"]["retries"] >= 1
            server.start(s3_port=port)
            assert (mnt / "d/later.bin").read_bytes() == files["d/later.bin"]
            assert "giving up after" in m.log_tail()
    finally:
        server.stop()


def test_bench_against_s3(s3_server: SeaweedS3, tmp_path: Path) -> None:
    upload(s3_server, "bench-lake", {"keep": b"k"})
    cfg = s3_server.s3_config(tmp_path / "s3.toml")
    res = run_tierfs("bench", "s3://bench-lake", "--small-count", "10", "--large-count", "1", "--large-size", "8MiB",
                     "--config", str(cfg), check=True)
    assert "download large" in res.stdout
    assert s3_server.fs().find("bench-lake") == ["bench-lake/keep"]  # scratch objects removed


def test_backup_and_restore_through_s3(s3_server: SeaweedS3, tmp_path: Path) -> None:
    s3_server.fs().mkdir("backup-lake")
    src = tmp_path / "scratch"
    (src / "ckpt").mkdir(parents=True)
    (src / "ckpt/model.pt").write_bytes(random_bytes(3 * MiB, seed=8))
    (src / "log.txt").write_bytes(b"step 1\n")
    cfg = s3_server.s3_config(tmp_path / "s3.toml")
    target = "s3://backup-lake/nodes/n1"
    run_tierfs("backup", "run", str(src), target, "--config", str(cfg), check=True)
    (src / "log.txt").write_bytes(b"step 1\nstep 2\n")
    out = run_tierfs("backup", "run", str(src), target, "--config", str(cfg), check=True).stdout
    assert "1 uploaded" in out and "1 unchanged" in out
    ids = [ln.split("\t")[0] for ln in run_tierfs("backup", "list", target, "--config", str(cfg), check=True).stdout.splitlines()]
    assert len(ids) == 2
    run_tierfs("backup", "restore", target, ids[0], str(tmp_path / "r0"), "--config", str(cfg), check=True)
    assert (tmp_path / "r0/log.txt").read_bytes() == b"step 1\n"
    assert (tmp_path / "r0/ckpt/model.pt").read_bytes() == (src / "ckpt/model.pt").read_bytes()


def test_lifecycle_apply_on_s3(s3_server: SeaweedS3, tmp_path: Path) -> None:
    fs = s3_server.fs()
    upload(s3_server, "lifecycle-lake", {"raw/a.bin": b"a" * 1000, "models/production/m.pt": b"m"})
    cfg = s3_server.s3_config(tmp_path / "s3.toml")
    rules = tmp_path / "r.toml"
    rules.write_text('[[rule]]\nid = "cool"\nprefix = "raw/"\ntransitions = [{ days = 0, class = "STANDARD_IA" }]\n')
    out = run_tierfs("lifecycle", "apply", "s3://lifecycle-lake", "--rules", str(rules),
                     "--config", str(cfg), check=True).stdout
    assert "1 transitioned" in out
    assert fs.info("lifecycle-lake/raw/a.bin")["StorageClass"] == "STANDARD_IA"
    assert fs.info("lifecycle-lake/models/production/m.pt")["StorageClass"] == "STANDARD"
    # SeaweedFS takes expirations, not transitions, as native lifecycle configuration
    res = run_tierfs("lifecycle", "apply", "s3://lifecycle-lake", "--rules", str(rules), "--native", "--config", str(cfg))
    assert res.returncode == 1 and "refused the rules as native lifecycle configuration" in res.stderr
    expiring = tmp_path / "e.toml"
    expiring.write_text('[[rule]]\nid = "tmp-expire"\nprefix = "tmp/"\nexpiration_days = 7\n')
    out = run_tierfs("lifecycle", "apply", "s3://lifecycle-lake", "--rules", str(expiring), "--native",
                     "--config", str(cfg), check=True).stdout
    assert "installed 1 rules" in out
    conf = fs.call_s3("get_bucket_lifecycle_configuration", Bucket="lifecycle-lake")
    assert conf["Rules"][0]["ID"] == "tmp-expire" and conf["Rules"][0]["Expiration"] == {"Days": 7}
    out = run_tierfs("lifecycle", "apply", "s3://lifecycle-lake", "--rules", str(rules), "--config", str(cfg),
                     check=True).stdout
    assert "0 transitioned" in out
