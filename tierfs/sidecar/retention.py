"""Snapshot retention: which snapshots the [[retention]] rules let go.

A snapshot is kept if it is among its dataset's newest ``keep_last``, or
tagged (its metadata has ``keep = true``) when ``keep_tagged`` is on, or
younger than ``expire_untagged_after_days``. Everything else is expired:
its manifest is deleted; copies only it referenced go at the next `tierfs gc`.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import logging

from tierfs.errors import UserError
from tierfs.sidecar.rules import DAY, Retention, age_days
from tierfs.store.objects import ObjectStore
from tierfs.versions.catalog import delete_snapshot, list_datasets, list_snapshots
from tierfs.versions.manifest import SnapshotMeta

log = logging.getLogger(__name__)


def _tagged(meta: SnapshotMeta) -> bool:
    return meta.metadata.get("keep") in (True, "true", "yes", 1, "1")


def expired_snapshots(store: ObjectStore, policies: list[Retention], now: float) -> list[tuple[SnapshotMeta, str]]:
    out: list[tuple[SnapshotMeta, str]] = []
    if not policies:
        return out
    for ds in list_datasets(store):
        policy = next((p for p in policies if fnmatch.fnmatchcase(ds, p.dataset)), None)
        if policy is None:
            continue
        metas = list_snapshots(store, ds)  # oldest first
        newest = {m.name for m in metas[-policy.keep_last:]} if policy.keep_last else set()
        for m in metas:
            if m.name in newest or (policy.keep_tagged and _tagged(m)):
                continue
            created = dt.datetime.fromisoformat(m.created_at).timestamp()
            limit = policy.expire_untagged_after_days
            if limit is not None and age_days(now, created) < limit:
                continue
            if limit is None and policy.keep_last is None:
                continue  # a policy that names no bound expires nothing
            why = []
            if policy.keep_last:
                why.append(f"not among the newest {policy.keep_last}")
            if limit is not None:
                why.append(f"untagged and {age_days(now, created)} days old (limit {limit})")
            out.append((m, ", ".join(why)))
    return out


def expire_snapshots(store: ObjectStore, doomed: list[tuple[SnapshotMeta, str]]) -> int:
    """Delete the snapshots evaluated; returns how many went.

    Only the snapshot evaluated: one deleted meanwhile, or made again under
    the same name since it was listed, is left alone. A snapshot being
    created that reads a deleted one as its previous copies instead of
    reusing, and gc keeps every copy while it runs (tierfs.versions.leases).
    """
    gone = 0
    for meta, _why in doomed:
        try:
            delete_snapshot(store, meta.dataset, meta.name, created_at=meta.created_at)
        except UserError as exc:
            log.info("retention: %s", exc)
            continue
        gone += 1
    return gone


__all__ = ["DAY", "expire_snapshots", "expired_snapshots"]
