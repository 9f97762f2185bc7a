"""The namespace's tables stay cheap as they grow: work per change is bounded by what the change touches.

Counted, not timed: sorts per listing update, nodes of the inode table looked
at per rename, scans of the overlay's staged files per lookup.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import pytest

from tierfs.namespace import listings as listings_mod
from tierfs.namespace.inodes import InodeTable, Node
from tierfs.namespace.listings import ListingCache, entry_bytes
from tierfs.namespace.overlay import Overlay
from tierfs.refs import ObjectRef
from tierfs.store.objects import Entry


class CountingDict(dict[Any, Any]):
    """A dict that counts the items handed out by lookups and by every way of walking it."""

    touched = 0

    def __getitem__(self, key: Any) -> Any:
        CountingDict.touched += 1
        return super().__getitem__(key)

    def get(self, key: Any, default: Any = None) -> Any:
        CountingDict.touched += 1
        return super().get(key, default)

    def __iter__(self) -> Iterator[Any]:
        for k in super().__iter__():
            CountingDict.touched += 1
            yield k

    def keys(self) -> Any:
        return list(iter(self))

    def values(self) -> Any:
        return [super(CountingDict, self).__getitem__(k) for k in iter(self)]

    def items(self) -> Any:
        return [(k, super(CountingDict, self).__getitem__(k)) for k in iter(self)]


class CountingSet(set[Any]):
    walked = 0

    def __iter__(self) -> Iterator[Any]:
        for k in super().__iter__():
            CountingSet.walked += 1
            yield k


@pytest.fixture(autouse=True)
def _zero_counts() -> None:
    CountingDict.touched = 0
    CountingSet.walked = 0


# -- listings ------------------------------------------------------------------
def test_filling_a_directory_does_not_sort_per_create(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = ListingCache(60.0, 1_000_000)
    cache.put("d", [Entry("0-first", False)], time.monotonic())
    sorts = 0

    def counting_sorted(*args: Any, **kwargs: Any) -> Any:
        nonlocal sorts
        sorts += 1
        return sorted(*args, **kwargs)

    monkeypatch.setattr(listings_mod, "sorted", counting_sorted, raising=False)
    names = [f"f{i:05d}" for i in random.Random(7).sample(range(20_000), 20_000)]
    for n, name in enumerate(names):
        cache.update("d", name, Entry(name, False, size=n))
        assert sorts == 0, f"create {n} sorted the listing"
    listing = cache.get("d")
    assert listing is not None
    assert [e.name for e in listing.entries] == ["0-first", *sorted(names)]
    assert len(cache) == 20_001
    assert listing.by_name["f00042"].size == names.index("f00042")


def test_listing_updates_replace_remove_and_leave_handed_out_lists_alone() -> None:
    cache = ListingCache(60.0, 1000)
    cache.put("d", [Entry(n, False, size=1) for n in "dbca"], 5.0)
    listing = cache.get("d", stale_ok=True)
    assert listing is not None
    held = listing.entries  # (an open directory handle keeps this list)
    cache.update("d", "b", Entry("b", False, size=2))  # replaced
    cache.update("d", "c", None)  # removed
    cache.update("d", "zz", None)  # not there: nothing
    cache.update("d", "aa", Entry("aa", True))  # added
    cache.update("elsewhere", "x", Entry("x", False))  # no listing cached: nothing
    assert [(e.name, e.size) for e in held] == [("a", 1), ("b", 1), ("c", 1), ("d", 1)]
    now = cache.get("d", stale_ok=True)
    assert now is not None and now.fetched_at == 5.0
    assert [(e.name, e.size) for e in now.entries] == [("a", 1), ("aa", 0), ("b", 2), ("d", 1)]
    assert set(now.by_name) == {"a", "aa", "b", "d"} and now.by_name["b"].size == 2
    assert len(cache) == 4


def test_listings_are_bounded_by_what_their_entries_hold() -> None:
    """Long keys fill the bound sooner than short names: the cache counts bytes, not only entries."""
    def files(n: int, key_len: int) -> list[Entry]:
        return [Entry(f"f{i}", False, 1, 0, ObjectRef("k" * key_len + str(i), 1, "etag")) for i in range(n)]

    short, long = entry_bytes(files(1, 10)[0]), entry_bytes(files(1, 1000)[0])
    assert long - short >= 990 and 300 < short < 500
    cache = ListingCache(60.0, 1_000_000, max_bytes=100 * long)
    cache.put("short", files(100, 10), 1.0)
    cache.put("long/a", files(40, 1000), 1.0)
    assert len(cache) == 140 and cache.bytes_held == sum(map(entry_bytes, files(100, 10) + files(40, 1000)))
    cache.put("long/b", files(40, 1000), 1.0)  # past the bound: the oldest goes, whatever its count
    assert cache.get("short", stale_ok=True) is None and cache.get("long/a", stale_ok=True) is not None
    assert cache.bytes_held == 2 * sum(map(entry_bytes, files(40, 1000))) and len(cache) == 80
    before = cache.bytes_held
    cache.update("long/a", "f0", None)
    cache.update("long/a", "new", Entry("new", True))
    assert cache.bytes_held == before - entry_bytes(files(1, 1000)[0]) + entry_bytes(Entry("new", True))
    cache.put("huge", files(51, 1000), 1.0)  # more than half the bound: not kept (it would push out all)
    assert cache.get("huge", stale_ok=True) is None and cache.get("long/b", stale_ok=True) is not None
    cache.drop_tree("long")
    assert cache.bytes_held == 0 and len(cache) == 0


class CountingOrderedDict(OrderedDict[Any, Any]):
    walked = 0

    def __iter__(self) -> Iterator[Any]:
        for k in super().__iter__():
            CountingOrderedDict.walked += 1
            yield k


def test_dropping_a_tree_of_listings_walks_only_that_tree() -> None:
    cache = ListingCache(60.0, 1_000_000)
    for i in range(10_000):
        cache.put(f"data/{i:05d}", [Entry("x", False)], 1.0)
    for path in ("run", "run/a", "run/a/b", "runs", "runx/a"):
        cache.put(path, [Entry("y", False)], 1.0)
    cache._lists = CountingOrderedDict(cache._lists)
    CountingOrderedDict.walked = 0
    cache.drop_tree("run")
    assert CountingOrderedDict.walked == 0
    assert [p for p in ("run", "run/a", "run/a/b", "runs", "runx/a") if cache.get(p, stale_ok=True)] == ["runs", "runx/a"]
    assert len(cache) == 10_002
    cache.drop_tree("data/00007")
    assert cache.get("data/00007", stale_ok=True) is None and cache.get("data/00008", stale_ok=True) is not None
    cache.drop_tree("")  # the root: everything
    assert len(cache) == 0 and cache.get("runs", stale_ok=True) is None


# -- inodes ----------------------------------------------------------------------
def _known(table: InodeTable, path: str, is_dir: bool = False) -> Node:
    node = table.upsert(path, is_dir, 1, 0, None, 0.0)
    node.lookups += 1
    return node


def test_a_rename_looks_only_at_the_nodes_it_moves() -> None:
    table = InodeTable()
    _known(table, "big", is_dir=True)
    for i in range(10_000):
        _known(table, f"big/{i:05d}.jpg")
    src = _known(table, "src", is_dir=True)
    a = _known(table, "src/a")
    sub = _known(table, "src/sub", is_dir=True)
    deep = _known(table, "src/sub/deep")
    sibling = _known(table, "srcx")  # shares a prefix, not a directory
    lone = _known(table, "big/00007.jpg")
    table._by_inode = CountingDict(table._by_inode)

    table.rename("src", "dst")
    assert CountingDict.touched <= 10, "the rename looked at nodes outside the directory it moved"
    assert [n.path for n in (src, a, sub, deep, sibling)] == ["dst", "dst/a", "dst/sub", "dst/sub/deep", "srcx"]
    assert table.by_path("dst/sub/deep") is deep and table.by_path("src/sub/deep") is None
    assert table.by_path("srcx") is sibling

    CountingDict.touched = 0
    table.rename("big/00007.jpg", "dst/7.jpg")  # a file out of a directory of 10,000
    assert CountingDict.touched <= 4
    assert table.by_path("dst/7.jpg") is lone and table.by_path("big/00007.jpg") is None
    assert table.by_path("big/00008.jpg") is not None
    assert len(table) == 1 + 1 + 10_000 + 5


def test_a_rename_over_a_known_name_and_the_table_after_forget() -> None:
    table = InodeTable()
    old = _known(table, "d/x")
    over = _known(table, "d/y")
    table.rename("d/x", "d/y")
    assert table.by_path("d/y") is old and table.by_path("d/x") is None
    assert table.get(over.inode) is over  # the kernel still holds the replaced one
    table.forget(old.inode, 1)
    assert table.by_path("d/y") is None
    table.forget(over.inode, 1)
    assert len(table) == 1
    again = _known(table, "d/y")
    table.rename("d", "e")
    assert again.path == "e/y" and table.by_path("e/y") is again


def test_nodes_share_their_directorys_path_and_their_names() -> None:
    """A node holds no path of its own: its directory's string (one for all the nodes in it) and its name."""
    table = InodeTable()
    names = [f"img_{i:04d}.jpg" for i in range(100)]
    # (each call with a string of its own, as each listing and lookup makes one)
    nodes = [table.upsert_child("/".join(["a", "b", "c"]), n, False, 1, 0, None, 0.0) for n in names]
    assert all(n.parent is nodes[0].parent for n in nodes) and all(n.name is name for n, name in zip(nodes, names, strict=True))
    assert nodes[5].path == "a/b/c/img_0005.jpg" and table.by_path("a/b/c/img_0005.jpg") is nodes[5]
    assert not hasattr(nodes[5], "__dict__")
    table.rename("a/b", "x")
    assert nodes[5].path == "x/c/img_0005.jpg" and all(n.parent is nodes[0].parent for n in nodes)
    assert nodes[5].name is names[5]  # (only the directory's string changed)


def test_renaming_a_directory_does_not_bring_back_an_unlinked_file() -> None:
    table = InodeTable()
    _known(table, "d", is_dir=True)
    gone = _known(table, "d/f")
    table.opened(gone)  # open, then unlinked: lives on by inode, under no name
    table.unlinked("d/f")
    table.rename("d", "e")
    assert gone.path == "e/f"  # it moved with its directory
    assert table.by_path("e/f") is None  # but it is still unlinked
    fresh = _known(table, "e/f")
    assert fresh.inode != gone.inode


# -- overlay -------------------------------------------------------------------
class _Staged:
    def __init__(self, size: int):
        self.size, self.mtime_ns = size, 0

    def ref(self) -> ObjectRef:
        return ObjectRef("k", self.size, "staged:x:0")


def _overlay_with_many_staged() -> Overlay:
    overlay = Overlay()
    for i in range(20_000):
        overlay.add_file(f"ckpt/shard-{i:05d}", _Staged(i))
    overlay.add_file("runs/r1/model.pt", _Staged(1))
    overlay.add_file("runs/r1/sub/opt.pt", _Staged(2))
    overlay.add_dir("runs/empty")
    overlay.add_dir("runs/r1/logs")
    overlay._files = CountingDict(overlay._files)
    overlay._dirs = CountingSet(overlay._dirs)
    return overlay


def test_overlay_lookups_do_not_scan_the_staged_files() -> None:
    overlay = _overlay_with_many_staged()
    assert overlay.has_dir("runs") and overlay.has_dir("runs/r1") and overlay.has_dir("runs/empty")
    assert not overlay.has_dir("runs/r") and not overlay.has_dir("datasets")
    assert overlay.entry("datasets/toy/a.jpg") is None  # a lookup of the lake passes here
    entry = overlay.entry("runs/r1")
    assert entry is not None and entry.is_dir
    assert [(e.name, e.is_dir) for e in overlay.entries("runs/r1")] == [
        ("logs", True), ("model.pt", False), ("sub", True)]
    assert [e.name for e in overlay.entries("runs")] == ["empty", "r1"]
    assert [e.name for e in overlay.entries("")] == ["ckpt", "runs"]
    assert sorted(p for p, _ in overlay.files_under("runs")) == ["runs/r1/model.pt", "runs/r1/sub/opt.pt"]
    assert CountingSet.walked == 0
    assert CountingDict.touched <= 20, "a lookup scanned the staged files"


def test_overlay_move_touches_only_what_moves() -> None:
    overlay = _overlay_with_many_staged()
    overlay.move("runs/r1", "runs/r2")
    assert CountingSet.walked == 0
    assert CountingDict.touched <= 20, "the move walked every staged file"
    assert overlay.file("runs/r2/sub/opt.pt") is not None and overlay.file("runs/r1/sub/opt.pt") is None
    assert not overlay.has_dir("runs/r1") and overlay.has_dir("runs/r2/logs")
    assert [e.name for e in overlay.entries("runs")] == ["empty", "r2"]
    overlay.move("ckpt/shard-00009", "runs/r2/best")  # one file
    assert overlay.file("runs/r2/best") is not None and overlay.file("ckpt/shard-00009") is None
    assert len(overlay) == 20_002


def test_overlay_bookkeeping_survives_adds_and_removes() -> None:
    overlay = Overlay()
    a, b = _Staged(1), _Staged(2)
    overlay.add_file("x/y/a", a)
    overlay.add_file("x/y/a", b)  # replaced, not counted twice
    overlay.add_dir("x/y")
    overlay.remove_file("x/y/a", a)  # not the file held there: kept
    assert overlay.file("x/y/a") is b
    overlay.remove_file("x/y/a")
    assert overlay.has_dir("x/y") and overlay.has_dir("x")  # the empty directory made here
    overlay.remove_dir("x/y")
    assert not overlay.has_dir("x") and overlay.entries("") == [] and overlay.entries("x") == []
    overlay.add_file("top", a)
    assert not overlay.has_dir("")  # the root is never one of the overlay's directories
    assert [e.name for e in overlay.entries("")] == ["top"]
