"""Snapshots pinned to GCS generations, against fake-gcs-server on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fsspec.asyn import sync
from helpers import FakeGcs, GcsRulesEmulator, mounted, random_bytes, run_tierfs

pytestmark = [pytest.mark.servers, pytest.mark.mount]



def test_pinned_generations_survive_overwrite_and_delete(gcs: FakeGcs, tmp_path: Path) -> None:
    fs = gcs.fs()
    fs.mkdir("gcs-lake", enable_versioning=True)
    files = {f"datasets/toy/{i}.bin": random_bytes(5000 + i, seed=i) for i in range(6)}
    for key, data in files.items():
        fs.pipe(f"gcs-lake/{key}", data)
    cfg = gcs.config(tmp_path / "gcs.toml")
    res = run_tierfs("snapshot", "create", "gs://gcs-lake", "datasets/toy", "v1", "--config", str(cfg), check=True)
    assert "(pinned)" in res.stdout
    assert not fs.exists("gcs-lake/.tierfs/cas")
    fs.pipe("gcs-lake/datasets/toy/0.bin", b"overwritten")
    fs.rm("gcs-lake/datasets/toy/1.bin")
    with mounted("gs://gcs-lake", tmp_path / "mnt", tmp_path / "cache", config=cfg) as m:
        snap = m.mountpoint / ".snapshots/toy/v1"
        assert {p.name: p.read_bytes() for p in snap.iterdir()} == {k.rsplit("/", 1)[1]: v for k, v in files.items()}
        assert (m.mountpoint / "datasets/toy/0.bin").read_bytes() == b"overwritten"
        assert not (m.mountpoint / "datasets/toy/1.bin").exists()
    show = json.loads(run_tierfs("snapshot", "show", "gs://gcs-lake", "toy", "v1", "--json", "--config", str(cfg),
                                 check=True).stdout)
    assert show["mode"] == "pinned"


def test_unversioned_gcs_bucket_uses_copy_mode(gcs: FakeGcs, tmp_path: Path) -> None:
    fs = gcs.fs()
    fs.mkdir("gcs-plain")
    fs.pipe("gcs-plain/ds/a.bin", b"aaa")
    cfg = gcs.config(tmp_path / "gcs.toml")
    res = run_tierfs("snapshot", "create", "gs://gcs-plain", "ds", "v1", "--config", str(cfg), check=True)
    assert "(copy)" in res.stdout
    fs.pipe("gcs-plain/ds/a.bin", b"changed")
    with mounted("gs://gcs-plain", tmp_path / "mnt", tmp_path / "cache", config=cfg) as m:
        assert (m.mountpoint / ".snapshots/ds/v1/a.bin").read_bytes() == b"aaa"


def test_lifecycle_on_gcs_expires_and_leaves_classes_to_the_bucket(gcs: FakeGcs, tmp_path: Path) -> None:
    fs = gcs.fs()
    fs.mkdir("gcs-rules")
    fs.pipe("gcs-rules/raw/a.bin", b"a" * 1000)
    fs.pipe("gcs-rules/experiments/x.log", b"x")
    cfg = gcs.config(tmp_path / "gcs.toml")
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nid = "cold"\nprefix = "raw/"\ntransitions = [{ days = 0, class = "COLDLINE" }]\n\n'
                     '[[rule]]\nid = "tmp"\nprefix = "experiments/"\nexpiration_days = 0\n'
                     'noncurrent_expiration_days = 30\n')
    plan = run_tierfs("lifecycle", "plan", "gs://gcs-rules", "--rules", str(rules), "--config", str(cfg), check=True).stdout
    assert "raw/a.bin\tkept: rule cold would move it to COLDLINE: on GCS" in plan
    assert "(noncurrent generations)\tkept: on GCS, noncurrent rules are left to the bucket's own rules" in plan
    out = run_tierfs("lifecycle", "apply", "gs://gcs-rules", "--rules", str(rules), "--config", str(cfg), check=True).stdout
    assert "0 transitioned, 1 expired" in out
    assert fs.exists("gcs-rules/raw/a.bin") and not fs.exists("gcs-rules/experiments/x.log")
    cost = run_tierfs("cost", "gs://gcs-rules", "--config", str(cfg), check=True).stdout
    assert any(line.split()[:3] == ["raw", "STANDARD", "1"] for line in cost.splitlines()), cost


def test_native_rules_install_on_a_gcs_bucket(gcs_rules: GcsRulesEmulator, tmp_path: Path) -> None:
    fs = gcs_rules.fs()
    fs.mkdir("gcs-native")
    fs.pipe("gcs-native/team/datasets/a.bin", b"a")
    cfg = gcs_rules.config(tmp_path / "gcs.toml")
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nid = "cool-down"\nprefix = "datasets/"\n'
                     'transitions = [{ days = 30, class = "NEARLINE" }, { days = 365, class = "ARCHIVE" }]\n\n'
                     '[[rule]]\nid = "tmp"\nprefix = "experiments/"\nexpiration_days = 90\n')
    out = run_tierfs("lifecycle", "apply", "gs://gcs-native/team", "--rules", str(rules), "--native",
                     "--config", str(cfg), check=True).stdout
    assert "installed 2 rules as the lifecycle configuration of bucket gcs-native" in out
    bucket = sync(fs.loop, fs._call, "GET", "b/{}", "gcs-native", json_out=True)
    assert bucket["lifecycle"] == {"rule": [
        {"action": {"type": "SetStorageClass", "storageClass": "NEARLINE"},
         "condition": {"age": 30, "isLive": True, "matchesPrefix": ["team/datasets/"]}},
        {"action": {"type": "SetStorageClass", "storageClass": "ARCHIVE"},
         "condition": {"age": 365, "isLive": True, "matchesPrefix": ["team/datasets/"]}},
        {"action": {"type": "Delete"}, "condition": {"age": 90, "isLive": True, "matchesPrefix": ["team/experiments/"]}},
    ]}


def test_cost_counts_noncurrent_generations(gcs: FakeGcs, tmp_path: Path) -> None:
    """Old generations are billed like any object: the cost report prices them in rows of their own."""
    fs = gcs.fs()
    fs.mkdir("gcs-gens", enable_versioning=True)
    fs.pipe("gcs-gens/ds/a.bin", b"1" * 3000)
    fs.pipe("gcs-gens/ds/a.bin", b"2" * 1000)  # the 3000-byte generation is now noncurrent
    cfg = gcs.config(tmp_path / "gcs.toml")
    out = run_tierfs("cost", "gs://gcs-gens", "--config", str(cfg), check=True).stdout
    rows = {tuple(line.split()[:4]) for line in out.splitlines()}
    assert any(r[:3] == ("ds", "STANDARD", "1") for r in rows), out
    assert any(r[:4] == ("ds", "STANDARD", "(old)", "1") for r in rows), out
    assert f"total: {4000 * 0.020 / 1e9:.4f} USD/month" in out
