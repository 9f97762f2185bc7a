"""Namespace on memory://: lookups, listings, TTL, reserved names, forget."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from tierfs.errors import NotFound
from tierfs.namespace.inodes import ROOT_INODE, StaleInode
from tierfs.namespace.live import Namespace


def ns_for(store: Any, ttl: float = 60.0, entries: int = 1_000_000) -> Namespace:
    return Namespace(store, ttl, entries, trio.CapacityLimiter(4))


async def test_lookup_and_list(flaky: Any) -> None:
    f, store, fs = flaky
    fs.pipe(f"{store.root}/ds/a.txt", b"aaa")
    fs.pipe(f"{store.root}/.tierfs/manifest", b"hidden")
    ns = ns_for(store)
    names = [e.name for e in await ns.list_dir(ROOT_INODE)]
    assert names == [".snapshots", "ds"]  # the reserved prefix is not in the live view
    with pytest.raises(NotFound):
        await ns.lookup(ROOT_INODE, ".tierfs")
    ds = await ns.lookup(ROOT_INODE, "ds")
    a = await ns.lookup(ds.inode, "a.txt")
    assert (a.size, a.is_dir, a.path) == (3, False, "ds/a.txt")
    with pytest.raises(NotFound):
        await ns.lookup(ds.inode, "nope")


async def test_listing_answers_lookups_without_requests(flaky: Any) -> None:
    f, store, fs = flaky
    for i in range(50):
        fs.pipe(f"{store.root}/d/{i}.bin", b"x" * i)
    ns = ns_for(store)
    d = await ns.lookup(ROOT_INODE, "d")
    await ns.list_dir(d.inode)
    before = dict(f.calls)
    for i in range(50):
        assert (await ns.lookup(d.inode, f"{i}.bin")).size == i
    assert f.calls == before  # stat came from the listing


async def test_ttl_expiry_sees_upstream_change(flaky: Any) -> None:
    f, store, fs = flaky
    fs.pipe(f"{store.root}/x", b"old")
    ns = ns_for(store, ttl=0.2)
    node = await ns.lookup(ROOT_INODE, "x")
    ref1 = node.ref
    fs.pipe(f"{store.root}/x", b"newer")
    assert (await ns.getattr(node.inode)).size == 3  # still trusted within the TTL
    await trio.sleep(0.3)
    node = await ns.getattr(node.inode)
    assert node.size == 5 and node.ref != ref1


async def test_an_immutable_prefix_is_trusted_past_the_ttl(flaky: Any) -> None:
    """Under [metadata] immutable_prefixes, what was seen holds until the mount ends: no request, however old."""
    f, store, fs = flaky
    for path in ("ds/a", "ds/b", "ds/sub/c", "ds2/a", "x"):
        fs.pipe(f"{store.root}/{path}", b"one")
    ns = Namespace(store, 0.0, 1_000_000, trio.CapacityLimiter(4), immutable_prefixes=("ds",))
    ds, ds2 = await ns.lookup(ROOT_INODE, "ds"), await ns.lookup(ROOT_INODE, "ds2")
    a = await ns.lookup(ds.inode, "a")  # a stat (the first name of a directory)...
    await ns.list_dir(ds.inode)  # ...then its listing
    sub = await ns.lookup(ds.inode, "sub")
    await ns.lookup(sub.inode, "c")
    with pytest.raises(NotFound):
        await ns.lookup(sub.inode, "missing")  # (a stat: sub has one name looked up before it)
    assert (a.immutable, sub.immutable, ds.immutable, ds2.immutable) == (True, True, True, False)
    _, _, keep = await ns.open(a.inode)
    assert keep  # the kernel's pages are kept from the first open
    for path in ("ds/a", "ds/new", "ds/sub/missing", "ds2/a"):
        fs.pipe(f"{store.root}/{path}", b"changed")
    fs.rm(f"{store.root}/ds/b")
    before = dict(f.calls)
    assert [e.name for e in await ns.list_dir(ds.inode)] == ["a", "b", "sub"]
    assert (await ns.getattr(a.inode)).size == 3 and (await ns.lookup(ds.inode, "b")).size == 3
    for parent, name in ((ds, "new"), (sub, "missing")):
        with pytest.raises(NotFound):
            await ns.lookup(parent.inode, name)
    assert f.calls == before
    assert (await ns.lookup(ds2.inode, "a")).size == 7  # outside the prefix: the TTL (0) holds
    assert ns.under_immutable_prefix("ds/a") and not ns.under_immutable_prefix("ds2/a")


async def test_keep_cache_only_while_ref_unchanged(flaky: Any) -> None:
    f, store, fs = flaky
    fs.pipe(f"{store.root}/x", b"one")
    ns = ns_for(store, ttl=0)
    node = await ns.lookup(ROOT_INODE, "x")
    _, _, keep = await ns.open(node.inode)
    assert keep is False  # first open: nothing cached yet
    _, _, keep = await ns.open(node.inode)
    assert keep is True
    fs.pipe(f"{store.root}/x", b"two!")
    _, ref, keep = await ns.open(node.inode)
    assert keep is False and ref.size == 4


async def test_forget_frees_inodes(flaky: Any) -> None:
    f, store, fs = flaky
    for i in range(100):
        fs.pipe(f"{store.root}/d/{i}", b"")
    ns = ns_for(store)
    d = await ns.lookup(ROOT_INODE, "d")
    ns.remember(d)
    nodes = []
    for e in await ns.list_dir(d.inode):
        n = ns.entry_node("d", e)
        ns.remember(n)
        nodes.append(n)
    assert len(ns.inodes) == 102
    for n in nodes:
        ns.forget(n.inode, 1)
    assert len(ns.inodes) == 2  # root and d


async def test_open_file_outlives_forget(flaky: Any) -> None:
    f, store, fs = flaky
    fs.pipe(f"{store.root}/x", b"abc")
    ns = ns_for(store)
    n = await ns.lookup(ROOT_INODE, "x")
    ns.remember(n)
    node, _, _ = await ns.open(n.inode)
    ns.forget(n.inode, 1)
    assert ns.node(n.inode) is node
    ns.release(node)
    with pytest.raises(StaleInode):
        ns.node(n.inode)


async def test_listing_cache_is_bounded(flaky: Any) -> None:
    f, store, fs = flaky
    for d in range(10):
        for i in range(20):
            fs.pipe(f"{store.root}/d{d}/{i}", b"")
    ns = ns_for(store, entries=100)
    for d in range(10):
        node = await ns.lookup(ROOT_INODE, f"d{d}")
        await ns.list_dir(node.inode)
        assert len(ns.listings) <= 100


async def test_a_flat_listing_that_fails_falls_back_to_the_folders_listing(flaky: Any) -> None:
    """Fast-list: a flat listing that fails (its pages past the metadata deadline) leaves the folder to its
    own listing, now and from then on, instead of failing the opendir."""
    from tierfs.errors import StoreError

    f, store, fs = flaky
    fs.pipe(f"{store.root}/d/a.bin", b"a")
    fs.pipe(f"{store.root}/d/sub/b.bin", b"b")
    tries: list[str] = []

    def failing_tree(rel: str, limit: int) -> Any:
        tries.append(rel)
        raise StoreError(f"list {rel} (flat): deadline passed")

    store.lists_trees = lambda: True  # type: ignore[method-assign]
    store.list_tree = failing_tree  # type: ignore[method-assign]
    ns = Namespace(store, 0.0, 1_000_000, trio.CapacityLimiter(4), fast_list=1000)  # (TTL 0: listed each time)
    d = await ns.lookup(ROOT_INODE, "d")
    for _ in range(2):
        assert [e.name for e in await ns.list_dir(d.inode)] == ["a.bin", "sub"]
    assert tries == ["d"]  # once: the second listing goes straight to the level listing
