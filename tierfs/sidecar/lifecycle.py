"""Applying lifecycle actions: storage-class transitions and expirations, idempotently.

`plan` lists the actions from the objects as they are now, so running `apply`
twice changes nothing the second time. How a class changes on each provider
is `tierfs.store.classes`'s business. Rules can also be installed as an S3 or
GCS bucket's native lifecycle configuration.
"""

from __future__ import annotations

from collections.abc import Callable

from fsspec.asyn import sync

from tierfs.errors import UserError
from tierfs.sidecar.native import gcs_lifecycle, s3_configuration
from tierfs.sidecar.rules import Action, RuleSet
from tierfs.store.classes import delete_version, provider, set_class
from tierfs.store.objects import ObjectStore


def apply_actions(store: ObjectStore, actions: list[Action], pinned: frozenset[tuple[str, str]] = frozenset(),
                  on_done: Callable[[Action], None] | None = None) -> tuple[int, int]:
    """Perform the actions; returns (transitioned, expired).

    ``pinned`` are the (key, version) pairs snapshots read: a transition in a
    versioned bucket deletes the version it copied from unless it is one of them.
    """
    moved = expired = 0
    for a in actions:
        if a.kind == "expire" and a.version:
            delete_version(store, a.key, a.version)
            expired += 1
        elif a.kind == "expire":
            store.delete(a.key)
            expired += 1
        else:
            set_class(store, a.key, a.to_class, pinned)
            moved += 1
        if on_done:
            on_done(a)
    return moved, expired


def install_native(store: ObjectStore, rules: RuleSet) -> str:
    """Install the rules as the bucket's own lifecycle configuration (S3, GCS); returns the bucket.

    This replaces whatever lifecycle configuration the bucket had. Azure's
    equivalent is a storage-account management policy, set through Azure's
    management API rather than the storage account: `tierfs lifecycle export`
    prints it for `az storage account management-policy create`.
    """
    kind = provider(store)
    bucket, _, prefix = store.root.partition("/")
    base = f"{prefix}/" if prefix else ""
    if kind == "s3":
        def put() -> None:
            store.fs.call_s3("put_bucket_lifecycle_configuration", Bucket=bucket,
                             LifecycleConfiguration=s3_configuration(rules, base))
    elif kind == "gcs":
        fs = store.fs

        def put() -> None:
            sync(fs.loop, fs._call, "PATCH", "b/{}", bucket, json=gcs_lifecycle(rules, base), json_out=True)
    else:
        raise UserError(f"tierfs installs native lifecycle rules on S3 and GCS buckets; for {store.url}, "
                        "print them with `tierfs lifecycle export` and install them with the provider's CLI")
    try:
        put()  # once: a refusal is an answer, not a failure to retry
    except Exception as exc:
        reason = (str(getattr(exc, "strerror", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
        hint = ("; some servers accept expirations only — apply without --native"
                if "not implemented" in reason.lower() else "")
        raise UserError(f"bucket {bucket} refused the rules as native lifecycle configuration ({reason}){hint}") from None
    return bucket
