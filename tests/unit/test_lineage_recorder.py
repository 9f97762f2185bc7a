"""The lineage recorder and read-sets against a file:// lake, without a mount (fast)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
from helpers import write_tree

from tierfs.config import load
from tierfs.control import Refused
from tierfs.lineage.readset import diff
from tierfs.lineage.readset import load as load_set
from tierfs.lineage.record import decode_part, encode_part, view_of
from tierfs.lineage.recorder import LineageRecorder, descends
from tierfs.refs import ObjectRef
from tierfs.store.objects import ObjectStore


def test_views_and_parts_round_trip() -> None:
    assert view_of(".snapshots/toy/v1/train/a.jpg") == ("snapshot:toy/v1", "train/a.jpg")
    assert view_of("datasets/toy/a.jpg") == ("live", "datasets/toy/a.jpg")
    assert descends(os.getpid(), os.getpid()) and descends(os.getpid(), os.getppid())
    assert not descends(os.getppid(), os.getpid())


def test_recorder_writes_each_first_open_once(tmp_path: Path) -> None:
    write_tree(tmp_path / "lake", {"a": b"1"})
    store = ObjectStore.open(load(None, {"lake_url": f"file://{tmp_path / 'lake'}"}))
    a1, a2, b = ObjectRef("a", 1, "e1"), ObjectRef("a", 2, "e2"), ObjectRef("b", 3, "e3")

    async def main() -> None:
        rec = LineageRecorder(store, trio.CapacityLimiter(2))
        await rec.start("one", None)
        rec.opened("a", a1, 0, 1)
        rec.opened("a", a1, 0, 2)  # seen: not again
        await rec._flush_locked(rec.jobs["one"])
        rec.opened(".snapshots/ds/v1/b", b, 0, 1)
        with pytest.raises(Refused, match="already running"):
            await rec.start("one", None)
        assert (await rec.stop("one", "stopped"))["count"] == 2
        await rec.start("two", None)
        rec.opened("a", a2, 0, 1)
        await rec.close()

    trio.run(main)
    one, two = load_set(store, "one"), load_set(store, "two")
    assert [(r.view, r.path, r.ref) for r in one.reads] == [("live", "a", a1), ("snapshot:ds/v1", "b", b)]
    assert one.stop is not None and one.stop["parts"] == 2 and two.state == "unmounted"
    d = diff(one, two)
    assert [r.path for r in d.removed] == ["b"] and not d.added
    assert [(x.ref, y.ref) for x, y in d.changed] == [(a1, a2)]
    assert decode_part(encode_part(two.reads), "x") == two.reads
