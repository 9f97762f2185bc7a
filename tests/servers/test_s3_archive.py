"""Archive classes on S3, against moto's S3 server (SeaweedFS keeps the class but serves archived reads).

A GLACIER object the mount needs is a clear read error naming `tierfs restore`,
and after the restore the same mount reads it.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from helpers import MotoS3, SeaweedS3, assert_one_line_error, mounted, run_tierfs

from tierfs.store.classes import set_class
from tierfs.store.objects import ObjectStore

pytestmark = [pytest.mark.servers, pytest.mark.mount]



def test_glacier_read_is_a_clear_error_and_restore_brings_it_back(moto: MotoS3, tmp_path: Path) -> None:
    fs = moto.fs()
    fs.call_s3("create_bucket", Bucket="glacier-lake")
    fs.pipe("glacier-lake/old/ckpt.pt", b"frozen" * 500)
    fs.pipe("glacier-lake/old/notes.txt", b"readable")
    cfg = moto.config(tmp_path / "moto.toml")
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nid = "freeze"\nprefix = "old/ckpt"\ntransitions = [{ days = 0, class = "GLACIER" }]\n')
    out = run_tierfs("lifecycle", "apply", "s3://glacier-lake", "--rules", str(rules), "--config", str(cfg),
                     check=True).stdout
    assert "1 transitioned" in out
    assert fs.info("glacier-lake/old/ckpt.pt")["StorageClass"] == "GLACIER"
    assert_one_line_error(run_tierfs("restore", "s3://glacier-lake", "old/notes.txt", "--config", str(cfg)),
                          "old/notes.txt is not in an archive class")
    with mounted("s3://glacier-lake", tmp_path / "mnt", tmp_path / "cache", config=cfg) as m:
        with pytest.raises(OSError) as e:
            (m.mountpoint / "old/ckpt.pt").read_bytes()
        assert e.value.errno == errno.EIO
        assert (m.mountpoint / "old/notes.txt").read_bytes() == b"readable"
        assert ("old/ckpt.pt is archived (an S3 archive class): restore it first with "
                "`tierfs restore s3://glacier-lake old/ckpt.pt`") in m.log_tail()
        out = run_tierfs("restore", "s3://glacier-lake", "old/ckpt.pt", "--days", "2", "--config", str(cfg),
                         check=True).stdout
        assert "restore requested" in out and "readable for 2 days" in out
        # moto restores at once; S3 takes hours. The object keeps its class.
        assert (m.mountpoint / "old/ckpt.pt").read_bytes() == b"frozen" * 500
    assert fs.info("glacier-lake/old/ckpt.pt")["StorageClass"] == "GLACIER"


def test_native_rules_with_transitions_install_on_s3(moto: MotoS3, tmp_path: Path) -> None:
    fs = moto.fs()
    fs.call_s3("create_bucket", Bucket="native-lake")
    fs.pipe("native-lake/team/datasets/a.bin", b"a")
    cfg = moto.config(tmp_path / "moto.toml")
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nid = "cool-down"\nprefix = "datasets/"\n'
                     'transitions = [{ days = 30, class = "STANDARD_IA" }, { days = 365, class = "DEEP_ARCHIVE" }]\n'
                     'noncurrent_expiration_days = 60\n')
    out = run_tierfs("lifecycle", "apply", "s3://native-lake/team", "--rules", str(rules), "--native",
                     "--config", str(cfg), check=True).stdout
    assert "installed 1 rules as the lifecycle configuration of bucket native-lake" in out
    (rule,) = fs.call_s3("get_bucket_lifecycle_configuration", Bucket="native-lake")["Rules"]
    assert rule["ID"] == "cool-down" and rule["Filter"] == {"Prefix": "team/datasets/"}
    assert rule["Transitions"] == [{"Days": 30, "StorageClass": "STANDARD_IA"},
                                   {"Days": 365, "StorageClass": "DEEP_ARCHIVE"}]
    assert rule["NoncurrentVersionExpiration"] == {"NoncurrentDays": 60}


@pytest.mark.parametrize("server_kind", ["moto", "seaweedfs"])
def test_a_transition_skips_an_object_changed_since_it_was_listed(
        server_kind: str, moto: MotoS3, s3_server: SeaweedS3) -> None:
    """moto takes the one-request COPY; SeaweedFS refuses it, so tierfs learns to HEAD and REPLACE.

    moto does not implement x-amz-copy-source-if-match, so only the HEAD path's
    skip can be seen here; S3 itself answers 412 to the COPY path.
    """
    fs = moto.fs() if server_kind == "moto" else s3_server.fs()
    fs.call_s3("create_bucket", Bucket="changed-lake") if server_kind == "moto" else fs.mkdir("changed-lake")
    fs.pipe("changed-lake/a.bin", b"listed")
    store = ObjectStore(fs, "changed-lake", "s3://changed-lake")
    listed = store.stat("a.bin").ref
    assert listed is not None
    fs.pipe("changed-lake/a.bin", b"written after the listing")
    if server_kind == "seaweedfs":
        assert not set_class(store, "a.bin", "STANDARD_IA", etag=listed.etag)
        assert fs.info("changed-lake/a.bin", refresh=True)["StorageClass"] == "STANDARD"
    now = store.stat("a.bin").ref
    assert now is not None and set_class(store, "a.bin", "STANDARD_IA", etag=now.etag)
    assert fs.info("changed-lake/a.bin", refresh=True)["StorageClass"] == "STANDARD_IA"
    assert fs.cat("changed-lake/a.bin") == b"written after the listing"
    assert ("self-copy-needs-replace" in store.quirks) == (server_kind == "seaweedfs")
