"""Lifecycle rules as each provider's own lifecycle document.

- S3: a bucket lifecycle configuration (PutBucketLifecycleConfiguration;
  `tierfs lifecycle apply --native` installs it).
- GCS: the bucket's ``lifecycle`` field, for
  ``gcloud storage buckets update gs://BUCKET --lifecycle-file=FILE``
  (`apply --native` installs it).
- Azure: a storage-account management policy, for
  ``az storage account management-policy create --policy @FILE``.

The provider then runs the rules itself, in place (no copies, version ids
kept). The documents carry transitions and expirations, for current objects
and for noncurrent versions; snapshot retention stays tierfs' own.
Azure counts "more than N days" where S3 and GCS count "N days"; the
difference is under one day.
"""

from __future__ import annotations

import re
from typing import Any

from tierfs.errors import ConfigError
from tierfs.sidecar.rules import RuleSet

#: How each provider's CLI installs the document `export` prints.
INSTALL_HINT = {
    "s3": "aws s3api put-bucket-lifecycle-configuration --bucket {bucket} --lifecycle-configuration file://FILE "
          "(or tierfs lifecycle apply --native)",
    "gcs": "gcloud storage buckets update gs://{bucket} --lifecycle-file=FILE (or tierfs lifecycle apply --native)",
    "azure": "az storage account management-policy create --account-name ACCOUNT --resource-group GROUP --policy @FILE",
}

_AZURE_ACTION = {"Cool": "tierToCool", "Cold": "tierToCold", "Archive": "tierToArchive"}


def document(provider: str, rules: RuleSet, bucket: str, base_prefix: str = "") -> dict[str, Any]:
    """The rules as ``provider``'s lifecycle document for ``bucket`` (container), under ``base_prefix``."""
    if provider == "gcs":
        return gcs_lifecycle(rules, base_prefix)
    if provider == "azure":
        return azure_policy(rules, bucket, base_prefix)
    return s3_configuration(rules, base_prefix)


def s3_configuration(rules: RuleSet, base_prefix: str = "") -> dict[str, Any]:
    out = []
    for r in rules.rules:
        rule: dict[str, Any] = {"ID": r.id, "Status": "Enabled" if r.enabled else "Disabled",
                                "Filter": {"Prefix": base_prefix + r.prefix}}
        if r.transitions:
            rule["Transitions"] = [{"Days": t.days, "StorageClass": t.storage_class} for t in r.transitions]
        if r.expiration_days is not None:
            rule["Expiration"] = {"Days": r.expiration_days}
        if r.noncurrent_transitions:
            rule["NoncurrentVersionTransitions"] = [
                {"NoncurrentDays": t.days, "StorageClass": t.storage_class} for t in r.noncurrent_transitions]
        if r.noncurrent_expiration_days is not None:
            rule["NoncurrentVersionExpiration"] = {"NoncurrentDays": r.noncurrent_expiration_days}
        out.append(rule)
    return {"Rules": out}


def gcs_lifecycle(rules: RuleSet, base_prefix: str = "") -> dict[str, Any]:
    """GCS has no rule ids or on/off switch: one GCS rule per action, disabled rules left out."""
    out: list[dict[str, Any]] = []

    def add(action: dict[str, str], condition: dict[str, Any], prefix: str) -> None:
        if prefix:
            condition["matchesPrefix"] = [prefix]
        out.append({"action": action, "condition": condition})

    for r in rules.rules:
        if not r.enabled:
            continue
        prefix = base_prefix + r.prefix
        for t in r.transitions:
            add({"type": "SetStorageClass", "storageClass": t.storage_class}, {"age": t.days, "isLive": True}, prefix)
        if r.expiration_days is not None:
            add({"type": "Delete"}, {"age": r.expiration_days, "isLive": True}, prefix)
        for t in r.noncurrent_transitions:
            add({"type": "SetStorageClass", "storageClass": t.storage_class},
                {"daysSinceNoncurrentTime": t.days, "isLive": False}, prefix)
        if r.noncurrent_expiration_days is not None:
            add({"type": "Delete"}, {"daysSinceNoncurrentTime": r.noncurrent_expiration_days, "isLive": False}, prefix)
    return {"lifecycle": {"rule": out}}


def azure_policy(rules: RuleSet, container: str, base_prefix: str = "") -> dict[str, Any]:
    """A management policy: Azure rule names are letters and digits only, so ids are folded to fit."""
    out: list[dict[str, Any]] = []
    names: set[str] = set()
    for i, r in enumerate(rules.rules):
        name = re.sub(r"[^A-Za-z0-9]", "", r.id) or f"rule{i + 1}"
        while name in names:
            name += str(i + 1)
        names.add(name)
        for t in r.transitions + r.noncurrent_transitions:
            if t.storage_class not in _AZURE_ACTION:
                raise ConfigError(f"rule {r.id!r}: an Azure policy moves blobs to Cool, Cold or Archive, "
                                  f"not {t.storage_class}")
        base: dict[str, Any] = {}
        for t in r.transitions:
            base[_AZURE_ACTION[t.storage_class]] = {"daysAfterModificationGreaterThan": t.days}
        if r.expiration_days is not None:
            base["delete"] = {"daysAfterModificationGreaterThan": r.expiration_days}
        version: dict[str, Any] = {}
        for t in r.noncurrent_transitions:
            version[_AZURE_ACTION[t.storage_class]] = {"daysAfterCreationGreaterThan": t.days}
        if r.noncurrent_expiration_days is not None:
            version["delete"] = {"daysAfterCreationGreaterThan": r.noncurrent_expiration_days}
        actions = {k: v for k, v in (("baseBlob", base), ("version", version)) if v}
        prefix = f"{container}/{base_prefix}{r.prefix}"
        out.append({"enabled": r.enabled, "name": name, "type": "Lifecycle",
                    "definition": {"filters": {"blobTypes": ["blockBlob"], "prefixMatch": [prefix]},
                                   "actions": actions}})
    return {"rules": out}
