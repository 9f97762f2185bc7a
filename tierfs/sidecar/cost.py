"""What the lake costs a month, per prefix and storage class, and what rules would change.

Prices are USD per GB-month (GB = 10^9 bytes), list prices of the cheapest
US regions; override them in the config's [prices] tables.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from tierfs.config import Settings
from tierfs.sidecar.rules import Action, RuleSet, evaluate
from tierfs.store.classes import objects_with_classes
from tierfs.store.objects import ObjectStore
from tierfs.versions import catalog
from tierfs.versions.manifest import RESERVED

PRICES: dict[str, dict[str, float]] = {
    "s3": {"STANDARD": 0.023, "INTELLIGENT_TIERING": 0.023, "STANDARD_IA": 0.0125, "ONEZONE_IA": 0.01,
           "GLACIER_IR": 0.004, "GLACIER": 0.0036, "DEEP_ARCHIVE": 0.00099},
    "gcs": {"STANDARD": 0.020, "NEARLINE": 0.010, "COLDLINE": 0.004, "ARCHIVE": 0.0012},
    "azure": {"Hot": 0.0184, "Cool": 0.01, "Cold": 0.0036, "Archive": 0.00099},
}
DEFAULT_CLASS = {"s3": "STANDARD", "gcs": "STANDARD", "azure": "Hot"}


def provider_of(url: str) -> str:
    scheme = url.split("://", 1)[0] if "://" in url else "file"
    return {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure", "abfss": "azure"}.get(scheme, "s3")


@dataclass(frozen=True)
class Item:
    key: str
    size: int
    written: float  # epoch seconds
    storage_class: str
    version: str = ""  # the current version id (versioned S3, GCS generation)
    etag: str = ""


def inventory(store: ObjectStore, provider: str) -> Iterator[Item]:
    """Every object of the lake with its size, age and storage class (tierfs' own area included)."""
    for e in objects_with_classes(store):
        yield Item(e.name, e.size, e.mtime_ns / 1e9, e.storage_class or DEFAULT_CLASS[provider],
                   e.ref.version if e.ref else "", e.ref.etag if e.ref else "")


@dataclass(frozen=True)
class Version:
    key: str
    version: str
    size: int
    storage_class: str
    noncurrent_since: float  # when a newer version (or a delete marker) replaced it


def noncurrent_versions(store: ObjectStore) -> Iterator[Version]:
    """Noncurrent versions in a versioned S3 bucket or GCS generations (under the lake's prefix)."""
    if not store.version_aware:
        return
    for v in store.backend.noncurrent_versions():
        yield Version(v["key"], v["version"], v["size"], v["storage_class"], v["since"])


def price(prices: dict[str, float], storage_class: str, size: int) -> float:
    return prices.get(storage_class, 0.0) * size / 1e9


@dataclass
class CostReport:
    provider: str
    # (top-level prefix, class) -> [objects, bytes, usd]
    cells: dict[tuple[str, str], list[float]] = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0.0]))
    total: float = 0.0
    after: float = 0.0  # with the rules applied
    actions: list[Action] = field(default_factory=list)
    kept: list[tuple[str, str]] = field(default_factory=list)  # (key, why) actions refused
    pinned_versions: frozenset[tuple[str, str]] = frozenset()  # what apply must never delete


    def add(self, top: str, storage_class: str, size: int, usd: float) -> float:
        """Count one object (or old version) in its cell and the total; returns ``usd``."""
        cell = self.cells[(top, storage_class)]
        cell[0] += 1
        cell[1] += size
        cell[2] += usd
        self.total += usd
        return usd


def _top(key: str) -> str:
    return key.split("/", 1)[0] if "/" in key else "/"


def plan_lake(store: ObjectStore, settings: Settings, provider: str, rules: RuleSet | None, now: float) -> CostReport:
    """The cost report at the configured prices, sparing everything a snapshot pins."""
    keys, versions = catalog.pinned(store)
    prices = {**PRICES[provider], **getattr(settings, f"prices_{provider}")}
    return report(store, provider, prices, rules, now, keys, versions)


def report(store: ObjectStore, provider: str, prices: dict[str, float], rules: RuleSet | None,
           now: float, pinned: set[str] | None = None, pinned_versions: set[tuple[str, str]] | None = None) -> CostReport:
    """Cost now, and after ``rules`` — never touching what a retained snapshot pins."""
    from tierfs.sidecar.rules import ARCHIVED

    versions = frozenset(pinned_versions or ())
    rep = CostReport(provider, pinned_versions=versions)
    pinned = pinned or set()
    for item in inventory(store, provider):
        top = _top(item.key)
        cost = rep.add(top, item.storage_class, item.size, price(prices, item.storage_class, item.size))
        after = cost
        if rules is not None and top != RESERVED:
            for rule in rules.rules:
                act = evaluate(rule, item.key, item.storage_class, item.written, now)
                if act is None:
                    continue
                if item.key in pinned and (act.kind == "expire" or act.to_class in ARCHIVED):
                    rep.kept.append((item.key, f"pinned by a snapshot; rule {act.rule} would {act.kind}"))
                    break
                if act.kind == "transition" and provider == "gcs":
                    rep.kept.append((item.key, f"rule {act.rule} would move it to {act.to_class}: on GCS, storage "
                                               "classes are left to the bucket's own rules (tierfs lifecycle export)"))
                    break
                if item.version and (item.key, item.version) in versions:
                    # A self-copy would leave the pinned version behind: two billed copies.
                    rep.kept.append((item.key, f"this version is pinned by a snapshot; rule {act.rule} would copy it "
                                               "to a new version: let the provider's own lifecycle rules move it"))
                    break
                rep.actions.append(replace(act, etag=item.etag, listed_version=item.version))
                after = 0.0 if act.kind == "expire" else price(prices, act.to_class, item.size)
                break  # the first matching rule that acts decides
        rep.after += after
    noncurrent_rules = rules is not None and any(
        r.noncurrent_expiration_days is not None or r.noncurrent_transitions for r in rules.rules)
    if noncurrent_rules and provider == "gcs":
        rep.kept.append(("(noncurrent generations)", "on GCS, noncurrent rules are left to the bucket's own "
                                                     "rules: install them with apply --native"))
    elif noncurrent_rules and provider == "azure":
        rep.kept.append(("(noncurrent versions)", "tierfs does not read Azure blob versions: install the "
                                                  "policy from tierfs lifecycle export"))
    # Old versions are billed like any object: always priced, acted on only by S3 rules here.
    _noncurrent(store, prices, rules if noncurrent_rules and provider == "s3" else None, now, versions, rep)
    return rep


def _noncurrent(store: ObjectStore, prices: dict[str, float], rules: RuleSet | None, now: float,
                pinned: frozenset[tuple[str, str]], rep: CostReport) -> None:
    """Noncurrent versions, priced in cells of their own; expiring them (S3) is done here, moving them is left
    to native rules."""
    for v in noncurrent_versions(store):
        cost = rep.add(_top(v.key), f"{v.storage_class} (old)", v.size, price(prices, v.storage_class, v.size))
        after = cost
        for rule in rules.rules if rules is not None else ():
            act = evaluate(rule, v.key, v.storage_class, v.noncurrent_since, now, v.noncurrent_since, v.version)
            if act is None:
                continue
            if (v.key, v.version) in pinned:
                rep.kept.append((f"{v.key}?versionId={v.version}", f"pinned by a snapshot; rule {act.rule} would {act.kind}"))
            elif act.kind == "expire":
                rep.actions.append(act)
                after = 0.0
            else:
                rep.kept.append((f"{v.key}?versionId={v.version}",
                                 f"noncurrent transitions are done by native rules (apply --native); rule {act.rule}"))
            break
        rep.after += after
