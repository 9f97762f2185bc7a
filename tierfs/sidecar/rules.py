"""Lifecycle rules: TOML in the spirit of S3 lifecycle configuration, and their evaluation.

    [[rule]]
    id = "datasets-cool-down"
    prefix = "datasets/"
    transitions = [{ days = 30, class = "STANDARD_IA" }, { days = 90, class = "GLACIER_IR" }]
    noncurrent_transitions = [{ days = 30, class = "GLACIER_IR" }]
    noncurrent_expiration_days = 730

    [[rule]]
    id = "experiments-expire"
    prefix = "experiments/"
    expiration_days = 90

Ages are whole days since the object was written (S3's rule: an object
written at 10:00 is 30 days old from 10:00 thirty days later; tierfs counts
elapsed 24-hour periods). Noncurrent rules count from when the version stopped
being current. A bad file is refused with one line naming the rule and field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tierfs.config import as_written, read_toml_file, shown
from tierfs.errors import ConfigError
from tierfs.store.objects import ARCHIVE_CLASSES

DAY = 86400.0

# Storage classes per provider, warmest first.
CLASSES: dict[str, tuple[str, ...]] = {
    "s3": ("STANDARD", "INTELLIGENT_TIERING", "STANDARD_IA", "ONEZONE_IA", "GLACIER_IR", "GLACIER", "DEEP_ARCHIVE"),
    "gcs": ("STANDARD", "NEARLINE", "COLDLINE", "ARCHIVE"),
    "azure": ("Hot", "Cool", "Cold", "Archive"),
}
#: Classes whose objects cannot be read without a restore first.
ARCHIVED = ARCHIVE_CLASSES


@dataclass(frozen=True)
class Transition:
    days: int
    storage_class: str


@dataclass(frozen=True)
class Rule:
    id: str
    prefix: str = ""
    enabled: bool = True
    transitions: tuple[Transition, ...] = ()
    expiration_days: int | None = None
    noncurrent_transitions: tuple[Transition, ...] = ()
    noncurrent_expiration_days: int | None = None

    def matches(self, key: str) -> bool:
        return self.enabled and key.startswith(self.prefix)


@dataclass
class Retention:
    """Snapshot retention for the datasets matching ``dataset`` ('*' for all)."""

    dataset: str = "*"
    keep_last: int | None = None
    keep_tagged: bool = True  # a snapshot whose metadata has keep = true is never expired
    expire_untagged_after_days: int | None = None


@dataclass
class RuleSet:
    provider: str
    rules: list[Rule] = field(default_factory=list)
    retention: list[Retention] = field(default_factory=list)


@dataclass(frozen=True)
class Action:
    key: str
    kind: str  # "transition" or "expire"
    rule: str
    to_class: str = ""
    version: str = ""  # a noncurrent version's id; '' for the current object
    etag: str = ""  # the current object's ETag as listed, where the store has one
    listed_version: str = ""  # the current object's version id as listed (versioned buckets)


def age_days(now: float, since: float) -> int:
    """Whole days elapsed from ``since`` to ``now`` (both epoch seconds)."""
    return max(0, int((now - since) // DAY))


def evaluate(rule: Rule, key: str, storage_class: str, written: float, now: float,
             noncurrent_since: float | None = None, version: str = "") -> Action | None:
    """What ``rule`` does to one object (or noncurrent version) now, if anything.

    Expiration wins over transitions; among transitions the one with the most
    days that is due applies, and only if it moves the object colder.
    """
    if not rule.matches(key):
        return None
    if noncurrent_since is None:
        days, expire_after, transitions = age_days(now, written), rule.expiration_days, rule.transitions
    else:
        days = age_days(now, noncurrent_since)
        expire_after, transitions = rule.noncurrent_expiration_days, rule.noncurrent_transitions
    if expire_after is not None and days >= expire_after:
        return Action(key, "expire", rule.id, version=version)
    due = [t for t in transitions if days >= t.days]
    if not due:
        return None
    target = max(due, key=lambda t: t.days).storage_class
    if colder(target, storage_class):
        return Action(key, "transition", rule.id, target, version)
    return None


def colder(a: str, b: str) -> bool:
    """Whether class ``a`` is colder than class ``b`` (unknown classes count as warmest)."""
    for order in CLASSES.values():
        if a in order:
            return order.index(a) > (order.index(b) if b in order else 0)
    return False


# -- parsing -----------------------------------------------------------------------
_RULE_FIELDS = {"id", "enabled", "prefix", "transitions", "expiration_days",
                "noncurrent_transitions", "noncurrent_expiration_days"}
_RETENTION_FIELDS = {"dataset", "keep_last", "keep_tagged", "expire_untagged_after_days"}


def load_rules(path: Path, provider: str) -> RuleSet:
    return parse_rules(read_toml_file(path, "rule file"), provider, as_written(str(path)))


def _tables(doc: dict[str, Any], name: str, where: str) -> list[dict[str, Any]]:
    """The [[name]] array of tables: anything else under that name is refused (a [name] table, a number)."""
    value = doc.get(name, [])
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise ConfigError(f"{where}: {name!r} must be tables, each written [[{name}]]")
    return value


def parse_rules(doc: dict[str, Any], provider: str, where: str = "rules") -> RuleSet:
    unknown = set(doc) - {"rule", "retention"}
    if unknown:
        raise ConfigError(f"{where}: unknown table {sorted(unknown)[0]!r}; expected [[rule]] and [[retention]]")
    out = RuleSet(provider)
    seen: set[str] = set()
    for i, raw in enumerate(_tables(doc, "rule", where)):
        rid = raw.get("id")
        label = f"rule {shown(rid)}" if isinstance(rid, str) and rid else f"rule #{i + 1}"
        if not isinstance(rid, str) or not rid:
            raise ConfigError(f"{where}: {label}: field 'id' is required (a non-empty string)")
        if rid in seen:
            raise ConfigError(f"{where}: {label}: field 'id' is used by another rule")
        seen.add(rid)
        bad = set(raw) - _RULE_FIELDS
        if bad:
            raise ConfigError(f"{where}: {label}: unknown field {sorted(bad)[0]!r}; fields: {', '.join(sorted(_RULE_FIELDS))}")
        prefix = raw.get("prefix", "")
        if not isinstance(prefix, str) or prefix.startswith("/"):
            raise ConfigError(f"{where}: {label}: field 'prefix' must be a string without a leading '/'")
        enabled = raw.get("enabled", True)
        if not isinstance(enabled, bool):
            raise ConfigError(f"{where}: {label}: field 'enabled' must be true or false")
        rule = Rule(
            rid, prefix, enabled,
            _transitions(raw.get("transitions", []), provider, f"{where}: {label}: field 'transitions'"),
            _days(raw.get("expiration_days"), f"{where}: {label}: field 'expiration_days'"),
            _transitions(raw.get("noncurrent_transitions", []), provider,
                         f"{where}: {label}: field 'noncurrent_transitions'"),
            _days(raw.get("noncurrent_expiration_days"), f"{where}: {label}: field 'noncurrent_expiration_days'"),
        )
        if not (rule.transitions or rule.expiration_days is not None or rule.noncurrent_transitions
                or rule.noncurrent_expiration_days is not None):
            raise ConfigError(f"{where}: {label}: does nothing; give transitions or an expiration")
        out.rules.append(rule)
    for i, raw in enumerate(_tables(doc, "retention", where)):
        label = f"retention #{i + 1}"
        bad = set(raw) - _RETENTION_FIELDS
        if bad:
            raise ConfigError(f"{where}: {label}: unknown field {sorted(bad)[0]!r}")
        dataset, keep_tagged = raw.get("dataset", "*"), raw.get("keep_tagged", True)
        if not isinstance(dataset, str) or not dataset:
            raise ConfigError(f"{where}: {label}: field 'dataset' must be a dataset name or pattern, such as \"img*\"")
        if not isinstance(keep_tagged, bool):  # (bool("false") is True: a string would keep every snapshot)
            raise ConfigError(f"{where}: {label}: field 'keep_tagged' must be true or false")
        out.retention.append(Retention(
            dataset,
            _days(raw.get("keep_last"), f"{where}: {label}: field 'keep_last'"),
            keep_tagged,
            _days(raw.get("expire_untagged_after_days"), f"{where}: {label}: field 'expire_untagged_after_days'"),
        ))
    return out


def _days(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where} must be a whole number of days, 0 or more (got {shown(value)})")
    return value


_PROVIDER_NAMES = {"s3": "an S3", "gcs": "a GCS", "azure": "an Azure"}


def _transitions(value: Any, provider: str, where: str) -> tuple[Transition, ...]:
    classes = CLASSES[provider]
    if not isinstance(value, list):
        raise ConfigError(f"{where} must be a list of {{ days = N, class = \"...\" }}")
    out = []
    for t in value:
        if not isinstance(t, dict) or set(t) != {"days", "class"}:
            raise ConfigError(f"{where}: each entry needs exactly 'days' and 'class' (got {shown(t)})")
        days = _days(t["days"], f"{where}: days")
        if not isinstance(t["class"], str) or t["class"] not in classes:
            raise ConfigError(f"{where}: class {shown(t['class'])} is not {_PROVIDER_NAMES[provider]} storage class; "
                              f"one of: {', '.join(classes)}")
        assert days is not None
        out.append(Transition(days, t["class"]))
    return tuple(sorted(out, key=lambda t: t.days))
