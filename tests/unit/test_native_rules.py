"""Rules as each provider's own lifecycle document (`tierfs lifecycle export`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import assert_one_line_error, run_tierfs

from tierfs.errors import ConfigError
from tierfs.sidecar.native import azure_policy, gcs_lifecycle, s3_configuration
from tierfs.sidecar.rules import RuleSet, parse_rules


def rules(provider: str, cool: str, cold: str) -> str:
    return (f'[[rule]]\nid = "datasets-cool-down"\nprefix = "datasets/"\n'
            f'transitions = [{{ days = 30, class = "{cool}" }}, {{ days = 90, class = "{cold}" }}]\n'
            f'noncurrent_expiration_days = 60\n\n'
            f'[[rule]]\nid = "experiments"\nprefix = "experiments/"\nexpiration_days = 90\n\n'
            f'[[rule]]\nid = "off"\nenabled = false\nexpiration_days = 1\n')


def parsed(provider: str, cool: str, cold: str) -> RuleSet:
    import tomllib

    return parse_rules(tomllib.loads(rules(provider, cool, cold)), provider)


def test_s3_configuration() -> None:
    doc = s3_configuration(parsed("s3", "STANDARD_IA", "GLACIER_IR"), "team/")
    first, second, off = doc["Rules"]
    assert first == {"ID": "datasets-cool-down", "Status": "Enabled", "Filter": {"Prefix": "team/datasets/"},
                     "Transitions": [{"Days": 30, "StorageClass": "STANDARD_IA"}, {"Days": 90, "StorageClass": "GLACIER_IR"}],
                     "NoncurrentVersionExpiration": {"NoncurrentDays": 60}}
    assert second["Expiration"] == {"Days": 90} and off["Status"] == "Disabled"


def test_gcs_lifecycle_has_one_rule_per_action_and_leaves_disabled_rules_out() -> None:
    doc = gcs_lifecycle(parsed("gcs", "NEARLINE", "COLDLINE"))
    assert doc == {"lifecycle": {"rule": [
        {"action": {"type": "SetStorageClass", "storageClass": "NEARLINE"},
         "condition": {"age": 30, "isLive": True, "matchesPrefix": ["datasets/"]}},
        {"action": {"type": "SetStorageClass", "storageClass": "COLDLINE"},
         "condition": {"age": 90, "isLive": True, "matchesPrefix": ["datasets/"]}},
        {"action": {"type": "Delete"}, "condition": {"daysSinceNoncurrentTime": 60, "isLive": False,
                                                     "matchesPrefix": ["datasets/"]}},
        {"action": {"type": "Delete"}, "condition": {"age": 90, "isLive": True, "matchesPrefix": ["experiments/"]}},
    ]}}


def test_azure_policy_folds_ids_into_names_and_prefixes_the_container() -> None:
    doc = azure_policy(parsed("azure", "Cool", "Archive"), "lake", "team/")
    first, second, off = doc["rules"]
    assert first == {"enabled": True, "name": "datasetscooldown", "type": "Lifecycle", "definition": {
        "filters": {"blobTypes": ["blockBlob"], "prefixMatch": ["lake/team/datasets/"]},
        "actions": {"baseBlob": {"tierToCool": {"daysAfterModificationGreaterThan": 30},
                                 "tierToArchive": {"daysAfterModificationGreaterThan": 90}},
                    "version": {"delete": {"daysAfterCreationGreaterThan": 60}}}}}
    assert second["definition"]["actions"] == {"baseBlob": {"delete": {"daysAfterModificationGreaterThan": 90}}}
    assert off["enabled"] is False
    hot = parse_rules({"rule": [{"id": "warm", "transitions": [{"days": 1, "class": "Hot"}]}]}, "azure")
    with pytest.raises(ConfigError, match="rule 'warm': an Azure policy moves blobs to Cool, Cold or Archive"):
        azure_policy(hot, "lake")


def test_export_cli(tmp_path: Path) -> None:
    f = tmp_path / "rules.toml"
    f.write_text(rules("gcs", "NEARLINE", "ARCHIVE"))
    res = run_tierfs("lifecycle", "export", "gs://bucket", "--rules", str(f), check=True)
    assert json.loads(res.stdout)["lifecycle"]["rule"][1]["action"]["storageClass"] == "ARCHIVE"
    assert "gcloud storage buckets update gs://bucket --lifecycle-file=FILE" in res.stderr
    assert_one_line_error(run_tierfs("lifecycle", "export", f"file://{tmp_path}", "--rules", str(f)),
                          "is not a bucket URL")
    assert_one_line_error(run_tierfs("lifecycle", "export", "s3://bucket", "--rules", str(f)),
                          "class 'NEARLINE' is not an S3 storage class")
