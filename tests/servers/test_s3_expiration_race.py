"""Lifecycle expiration against a real S3 server (SeaweedFS): an object rewritten after the plan is not deleted."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from helpers import SeaweedS3

from tierfs.config import load
from tierfs.sidecar.cost import plan_lake
from tierfs.sidecar.lifecycle import apply_actions
from tierfs.sidecar.rules import parse_rules
from tierfs.store.objects import ObjectStore

pytestmark = pytest.mark.servers


@pytest.mark.parametrize("versioned", [False, True], ids=["unversioned", "versioned"])
def test_expiration_deletes_only_what_the_plan_evaluated(s3_server: SeaweedS3, tmp_path: Path, versioned: bool) -> None:
    fs = s3_server.fs()
    bucket = f"expire-{uuid.uuid4().hex[:8]}"
    fs.mkdir(bucket)
    if versioned:
        fs.make_bucket_versioned(bucket, True)
    fs.pipe(f"{bucket}/experiments/run1.log", b"an old run")
    fs.pipe(f"{bucket}/experiments/run2.log", b"another old run")
    settings = load(s3_server.s3_config(tmp_path / "s3.toml"), {"lake_url": f"s3://{bucket}"})
    store = ObjectStore.open(settings)
    rules = parse_rules({"rule": [{"id": "exp", "prefix": "experiments/", "expiration_days": 0}]}, "s3")
    plan = plan_lake(store, settings, "s3", rules, time.time())
    assert sorted(a.key for a in plan.actions) == ["experiments/run1.log", "experiments/run2.log"]
    fs.pipe(f"{bucket}/experiments/run1.log", b"a run written after the plan")  # another writer, same key
    assert apply_actions(store, plan.actions) == (0, 1)
    fs.invalidate_cache()
    assert fs.cat(f"{bucket}/experiments/run1.log") == b"a run written after the plan"
    assert not fs.exists(f"{bucket}/experiments/run2.log")
    if versioned:  # expired as S3's own rules expire: a delete marker; the bytes stay as an old version
        versions = fs.call_s3("list_object_versions", Bucket=bucket, Prefix="experiments/run2.log")
        assert [v["Key"] for v in versions.get("Versions", [])] == ["experiments/run2.log"]
        assert len(versions.get("DeleteMarkers", [])) == 1
