"""Applying lifecycle actions: storage-class transitions and expirations, idempotently.

Each action is re-checked against the object as it is now before it is done,
so running `apply` twice changes nothing the second time. A local lake keeps
an object's class in an extended attribute; S3 objects are copied onto
themselves with the new class; rules can also be installed as the bucket's
native lifecycle configuration.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tierfs.errors import UserError
from tierfs.sidecar.rules import Action, RuleSet
from tierfs.store.objects import ObjectStore


def apply_actions(store: ObjectStore, actions: list[Action],
                  on_done: Callable[[Action], None] | None = None) -> tuple[int, int]:
    """Perform the actions; returns (transitioned, expired)."""
    kind = type(store.fs).__name__
    moved = expired = 0
    for a in actions:
        if a.kind == "expire" and a.version:
            bucket, _, key = f"{store.root}/{a.key}".partition("/")
            store.fs.call_s3("delete_object", Bucket=bucket, Key=key, VersionId=a.version)
            expired += 1
        elif a.kind == "expire":
            store.delete(a.key)
            expired += 1
        elif store.is_local:
            store.set_local_class(a.key, a.to_class)
            moved += 1
        elif kind == "S3FileSystem":
            bucket, _, key = f"{store.root}/{a.key}".partition("/")
            # REPLACE with the object's own metadata: some S3 servers (SeaweedFS) refuse
            # a self-copy under COPY even when the storage class changes.
            head = store.fs.call_s3("head_object", Bucket=bucket, Key=key)
            extra = {"ContentType": head["ContentType"]} if head.get("ContentType") else {}
            store.fs.call_s3("copy_object", Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": key},
                             StorageClass=a.to_class, MetadataDirective="REPLACE",
                             Metadata=head.get("Metadata", {}), **extra)
            moved += 1
        else:
            raise UserError(f"storage-class transitions on {store.url} are not supported yet; "
                            "install the rules natively (--native) or use the provider's console")
        if on_done:
            on_done(a)
    return moved, expired


def native_configuration(rules: RuleSet, base_prefix: str = "") -> dict[str, Any]:
    """The rules as an S3 lifecycle configuration (PutBucketLifecycleConfiguration)."""
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


def install_native(store: ObjectStore, rules: RuleSet) -> str:
    if type(store.fs).__name__ != "S3FileSystem":
        raise UserError(f"native lifecycle rules can be installed on S3 buckets only, not {store.url}")
    bucket, _, prefix = store.root.partition("/")
    try:
        store.fs.call_s3("put_bucket_lifecycle_configuration", Bucket=bucket,
                         LifecycleConfiguration=native_configuration(rules, f"{prefix}/" if prefix else ""))
    except OSError as exc:
        raise UserError(f"bucket {bucket} refused the rules as native lifecycle configuration ({exc.strerror or exc}); "
                        "some servers accept expirations only — apply without --native") from None
    return bucket
