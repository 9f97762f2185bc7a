"""Lifecycle rules: evaluation, bad rule files, and cost figures against hand-computed ones."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from helpers import assert_one_line_error, run_tierfs

from tierfs.config import load
from tierfs.errors import ConfigError
from tierfs.sidecar.cost import PRICES, report
from tierfs.sidecar.lifecycle import apply_actions
from tierfs.sidecar.rules import DAY, Action, Rule, Transition, evaluate, parse_rules
from tierfs.store.objects import LOCAL_CLASS_XATTR, ObjectStore

NOW = 1_800_000_000.0
RULE = Rule("r", "datasets/", transitions=(Transition(30, "STANDARD_IA"), Transition(90, "GLACIER_IR")),
            noncurrent_transitions=(Transition(10, "GLACIER_IR"),), noncurrent_expiration_days=60)


def test_day_boundaries() -> None:
    just_under = NOW - 30 * DAY + 1
    assert evaluate(RULE, "datasets/x", "STANDARD", just_under, NOW) is None
    act = evaluate(RULE, "datasets/x", "STANDARD", NOW - 30 * DAY, NOW)
    assert act is not None and (act.kind, act.to_class) == ("transition", "STANDARD_IA")
    act = evaluate(RULE, "datasets/x", "STANDARD", NOW - 90 * DAY, NOW)
    assert act is not None and act.to_class == "GLACIER_IR"  # the furthest due transition


def test_prefixes_and_enabled() -> None:
    assert evaluate(RULE, "models/x", "STANDARD", 0, NOW) is None
    assert evaluate(RULE, "datasetsX/x", "STANDARD", 0, NOW) is None
    off = Rule("off", "datasets/", enabled=False, expiration_days=1)
    assert evaluate(off, "datasets/x", "STANDARD", 0, NOW) is None


def test_only_colder_and_expiration_wins() -> None:
    assert evaluate(RULE, "datasets/x", "DEEP_ARCHIVE", NOW - 100 * DAY, NOW) is None  # never warmer
    both = Rule("b", "", transitions=(Transition(10, "STANDARD_IA"),), expiration_days=20)
    act = evaluate(both, "k", "STANDARD", NOW - 25 * DAY, NOW)
    assert act is not None and act.kind == "expire"


def test_noncurrent_versions_count_from_when_they_stopped_being_current() -> None:
    written = NOW - 400 * DAY
    assert evaluate(RULE, "datasets/x", "STANDARD", written, NOW, noncurrent_since=NOW - 9 * DAY) is None
    act = evaluate(RULE, "datasets/x", "STANDARD", written, NOW, noncurrent_since=NOW - 10 * DAY, version="v1")
    assert act is not None and (act.to_class, act.version) == ("GLACIER_IR", "v1")
    act = evaluate(RULE, "datasets/x", "STANDARD", written, NOW, noncurrent_since=NOW - 60 * DAY, version="v1")
    assert act is not None and act.kind == "expire"


@pytest.mark.parametrize(("doc", "message"), [
    ({"rule": [{"prefix": "a/", "expiration_days": 1}]}, "rule #1: field 'id' is required"),
    ({"rule": [{"id": "x", "prefix": "a/", "expiration_days": -1}]}, "rule 'x': field 'expiration_days' must be a whole number"),
    ({"rule": [{"id": "x", "transitions": [{"days": 30, "class": "GLACIER_FAST"}]}]},
     "rule 'x': field 'transitions': class 'GLACIER_FAST' is not an S3 storage class"),
    ({"rule": [{"id": "x", "transitions": [{"days": 30}]}]}, "rule 'x': field 'transitions': each entry needs exactly"),
    ({"rule": [{"id": "x", "prefx": "a/", "expiration_days": 1}]}, "rule 'x': unknown field 'prefx'"),
    ({"rule": [{"id": "x", "prefix": "a/"}]}, "rule 'x': does nothing"),
    ({"rule": [{"id": "x", "expiration_days": 1}, {"id": "x", "expiration_days": 2}]}, "rule 'x': field 'id' is used by another rule"),
    ({"rules": []}, "unknown table 'rules'"),
])
def test_bad_rule_files_name_the_rule_and_field(doc: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_rules(doc, "s3")  # type: ignore[arg-type]


def test_gcs_and_azure_classes() -> None:
    parse_rules({"rule": [{"id": "g", "transitions": [{"days": 30, "class": "NEARLINE"}]}]}, "gcs")
    parse_rules({"rule": [{"id": "a", "transitions": [{"days": 30, "class": "Cool"}]}]}, "azure")
    with pytest.raises(ConfigError, match="one of: Hot, Cool, Cold, Archive"):
        parse_rules({"rule": [{"id": "a", "transitions": [{"days": 30, "class": "NEARLINE"}]}]}, "azure")


def test_cost_against_hand_computed_figures(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    (root / "datasets").mkdir(parents=True)
    (root / "experiments").mkdir()
    old = time.time() - 100 * DAY
    files = {"datasets/a.bin": (10_000_000, "STANDARD"), "datasets/b.bin": (20_000_000, "STANDARD_IA"),
             "experiments/c.bin": (5_000_000, "STANDARD")}
    for rel, (size, cls) in files.items():
        p = root / rel
        with open(p, "wb") as fh:
            fh.truncate(size)
        os.setxattr(p, LOCAL_CLASS_XATTR, cls.encode())
        os.utime(p, (old, old))
    store = ObjectStore.open(load(None, {"lake_url": f"file://{root}"}))
    rules = parse_rules({"rule": [
        {"id": "cool", "prefix": "datasets/", "transitions": [{"days": 30, "class": "STANDARD_IA"},
                                                               {"days": 90, "class": "DEEP_ARCHIVE"}]},
        {"id": "exp", "prefix": "experiments/", "expiration_days": 90},
    ]}, "s3")
    rep = report(store, "s3", PRICES["s3"], rules, time.time(), pinned={"datasets/b.bin"})
    # before: 0.010 GB * 0.023 + 0.020 GB * 0.0125 + 0.005 GB * 0.023
    assert rep.total == pytest.approx(0.01 * 0.023 + 0.02 * 0.0125 + 0.005 * 0.023)
    # after: a -> DEEP_ARCHIVE; b is pinned by a snapshot, so not archived (it stays readable); c expires
    assert rep.after == pytest.approx(0.01 * 0.00099 + 0.02 * 0.0125)
    assert {(a.key, a.kind, a.to_class) for a in rep.actions} == {
        ("datasets/a.bin", "transition", "DEEP_ARCHIVE"), ("experiments/c.bin", "expire", "")}
    assert [k for k, _ in rep.kept] == ["datasets/b.bin"]
    assert rep.cells[("datasets", "STANDARD_IA")][:2] == [1, 20_000_000]


def test_lake_init_and_plan_cli(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    root.mkdir()
    rules = tmp_path / "rules.toml"
    run_tierfs("lake", "init", f"file://{root}", "--rules-file", str(rules), check=True)
    # (.tierfs/ is tierfs' own area, where uploads land before their rename into place)
    assert sorted(p.name for p in root.iterdir() if p.name != ".tierfs") == ["curated", "experiments", "models", "processed", "raw"]
    (root / "experiments/run1.log").write_bytes(b"x" * 1000)
    old = time.time() - 91 * DAY
    os.utime(root / "experiments/run1.log", (old, old))
    out = run_tierfs("lifecycle", "plan", f"file://{root}", "--rules", str(rules), check=True).stdout
    assert "experiments/run1.log\texpire\t(rule experiments-expire)" in out
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rule]]\nid = "x"\nexpiration_days = "soon"\n')
    res = run_tierfs("lifecycle", "plan", f"file://{root}", "--rules", str(bad))
    assert res.returncode == 1 and "rule 'x': field 'expiration_days'" in res.stderr and "Traceback" not in res.stderr
    assert "total:" in run_tierfs("cost", f"file://{root}", check=True).stdout


def test_apply_is_idempotent_on_a_local_lake(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    (root / "raw").mkdir(parents=True)
    (root / "experiments").mkdir()
    old = time.time() - 100 * DAY
    for rel in ("raw/a.bin", "experiments/b.bin"):
        (root / rel).write_bytes(b"x" * 1000)
        os.utime(root / rel, (old, old))
    rules = tmp_path / "r.toml"
    rules.write_text('[[rule]]\nid = "cool"\nprefix = "raw/"\ntransitions = [{ days = 30, class = "STANDARD_IA" }]\n'
                     '[[rule]]\nid = "exp"\nprefix = "experiments/"\nexpiration_days = 90\n')
    out = run_tierfs("lifecycle", "apply", f"file://{root}", "--rules", str(rules), check=True).stdout
    assert "1 transitioned, 1 expired" in out
    assert os.getxattr(root / "raw/a.bin", LOCAL_CLASS_XATTR) == b"STANDARD_IA"
    assert not (root / "experiments/b.bin").exists()
    assert (root / "raw/a.bin").stat().st_mtime == pytest.approx(old)  # its age is kept
    out = run_tierfs("lifecycle", "apply", f"file://{root}", "--rules", str(rules), check=True).stdout
    assert "0 transitioned, 0 expired" in out


def test_parallel_apply_stops_at_a_failure_and_a_rerun_finishes(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    (root / "raw").mkdir(parents=True)
    for i in range(200):
        (root / f"raw/{i:03d}.bin").write_bytes(b"x")
    store = ObjectStore.open(load(None, {"lake_url": f"file://{root}"}))
    actions = [Action(f"raw/{i:03d}.bin", "transition", "cool", "STANDARD_IA") for i in range(200)]
    actions.insert(50, Action("raw/gone.bin", "transition", "cool", "STANDARD_IA"))
    seen: list[Action] = []
    with pytest.raises(FileNotFoundError):
        apply_actions(store, actions, on_done=seen.append, jobs=8)
    done = sum(os.getxattr(root / f"raw/{i:03d}.bin", LOCAL_CLASS_XATTR) == b"STANDARD_IA"
               for i in range(200) if os.listxattr(root / f"raw/{i:03d}.bin"))
    assert 50 <= done < 200 and len(seen) == done  # no new action started after the failure
    rest = [a for a in actions if a.key != "raw/gone.bin"]
    assert apply_actions(store, rest, jobs=8) == (200, 0)
    assert all(os.getxattr(root / f"raw/{i:03d}.bin", LOCAL_CLASS_XATTR) == b"STANDARD_IA" for i in range(200))


def test_snapshot_retention_keeps_the_last_and_the_tagged(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    (root / "datasets/toy").mkdir(parents=True)
    for i, extra in enumerate([["--meta", "keep=true"], [], [], []]):
        (root / "datasets/toy/f.txt").write_text(f"v{i}")
        run_tierfs("snapshot", "create", f"file://{root}", "datasets/toy", f"v{i}", *extra, check=True)
    rules = tmp_path / "r.toml"
    rules.write_text('[[retention]]\ndataset = "toy"\nkeep_last = 2\nkeep_tagged = true\n')
    plan = run_tierfs("lifecycle", "plan", f"file://{root}", "--rules", str(rules), check=True).stdout
    assert "snapshot toy@v1\texpire\t(retention: not among the newest 2)" in plan
    assert "toy@v0" not in plan  # tagged keep = true
    out = run_tierfs("lifecycle", "apply", f"file://{root}", "--rules", str(rules), check=True).stdout
    assert "expired 1 snapshots by retention" in out
    names = [ln.split("\t")[0] for ln in run_tierfs("snapshot", "list", f"file://{root}", check=True).stdout.splitlines()]
    assert names == ["toy@v0", "toy@v2", "toy@v3"]
    assert "toy@v1" not in run_tierfs("lifecycle", "plan", f"file://{root}", "--rules", str(rules), check=True).stdout


def test_restore_on_a_local_lake(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    (root / "old").mkdir(parents=True)
    (root / "old/ckpt.pt").write_bytes(b"frozen")
    os.setxattr(root / "old/ckpt.pt", LOCAL_CLASS_XATTR, b"DEEP_ARCHIVE")
    out = run_tierfs("restore", f"file://{root}", "old/ckpt.pt", check=True).stdout
    assert "old/ckpt.pt is readable again" in out
    assert os.getxattr(root / "old/ckpt.pt", LOCAL_CLASS_XATTR) == b"STANDARD"
    assert_one_line_error(run_tierfs("restore", f"file://{root}", "old/ckpt.pt"), "is not archived (class STANDARD)")
    assert_one_line_error(run_tierfs("restore", f"file://{root}", "old/missing.pt"), "old/missing.pt is not in")
