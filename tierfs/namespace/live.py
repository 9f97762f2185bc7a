"""The live view: what a path under the mount means right now.

Prefixes of the lake are directories, objects are files. Metadata (listings,
sizes, ObjectRefs) is trusted for the metadata TTL and then fetched again, so
a change upstream becomes visible within one TTL; the ObjectRef a file had at
``open`` is the one its reads use until ``release``. While the store fails
(StoreError), lookups, attributes and listings are answered from the last
listing or stat seen, however old (``stale.py``), and refreshed in the
background once it answers again.

Under an immutable prefix (``[metadata] immutable_prefixes``: datasets that
never change) listings, stats and missing names are trusted until the mount
ends, and the nodes are ``immutable`` as a snapshot's are (the kernel keeps
their entries, attributes, pages and listings for good).
"""

from __future__ import annotations

import errno
import logging
import posixpath
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from tierfs.data.singleflight import SingleFlight
from tierfs.errors import NotFound, StoreError
from tierfs.limits import in_thread
from tierfs.namespace.inodes import ROOT_INODE, InodeTable, Node, PackedRef
from tierfs.namespace.listings import Listing, ListingCache
from tierfs.namespace.overlay import Overlay
from tierfs.namespace.prefixes import under
from tierfs.namespace.shards import ShardEntry, ShardView
from tierfs.namespace.snapshots import SNAPSHOTS_DIR, Fetch, SnapshotTree, in_tree, is_immutable
from tierfs.namespace.stale import LISTING, STAT, Outage
from tierfs.refs import ObjectRef
from tierfs.store.backend import Tree
from tierfs.store.objects import Entry, ObjectStore
from tierfs.versions.index_dir import ManifestIndexes

#: Names at the lake's root that belong to tierfs itself, never shown in the live view.
RESERVED = frozenset({".tierfs", SNAPSHOTS_DIR})

log = logging.getLogger(__name__)
T = TypeVar("T")
#: Takes a small file's bytes that came with its stat (``Namespace.first_bytes``).
FirstBytes = Callable[[ObjectRef, bytes], Awaitable[None]]


class NotADirectory(NotFound):
    errno = errno.ENOTDIR


class Namespace:
    def __init__(self, store: ObjectStore, ttl: float, listing_entries: int, limiter: trio.CapacityLimiter,
                 fetch: Fetch | None = None, manifest_limiter: trio.CapacityLimiter | None = None,
                 negative_ttl: float = 0.0, immutable_prefixes: tuple[str, ...] = (),
                 manifest_indexes: ManifestIndexes | None = None, listing_memory: int | None = None,
                 shards: ShardView | None = None, first_bytes: FirstBytes | None = None, first_bytes_max: int = 0,
                 fast_list: int = 0):
        """``limiter``: the metadata limiter (listings, stats). ``fetch``: whole lake objects (manifests).
        ``manifest_indexes``: where snapshots' manifests are indexed locally (None: their parts are kept in memory).
        ``listing_memory``: the listing cache's bound in bytes (None: 400 bytes an entry).
        ``shards``: which tar shards are shown as directories of their members (None: none).
        ``first_bytes``: given a small file's bytes that a lookup's stat brought (files of at most
        ``first_bytes_max`` bytes; the reader keeps them, so the open that follows costs no request).
        ``fast_list``: a folder listed is listed whole, with every folder below it, in one flat listing of up
        to this many objects where the store can (rclone's --fast-list); 0: one level at a time."""
        self.store = store
        self.first_bytes = first_bytes
        self.first_bytes_max = first_bytes_max if first_bytes is not None and store.stats_bring_bytes() else 0
        self.ttl = ttl
        self.immutable_prefixes = immutable_prefixes
        self.shards = shards
        self.inodes = InodeTable()
        self.listings = ListingCache(ttl, listing_entries, listing_memory)
        self.overlay = Overlay()  # what this mount wrote that the lake does not have yet
        self.limiter = limiter
        self.outage = Outage()
        self._listing_flights: SingleFlight[Listing] = SingleFlight()
        self.fast_list = fast_list if store.lists_trees() else 0
        self._nursery: trio.Nursery | None = None  # (start): listings fetched behind a lookup
        # Folders a flat listing did not list whole (more than ``fast_list`` objects, an empty object
        # in the folder itself, a key obstore cannot name): listed a level at a time.
        self._trees_too_large: OrderedDict[str, None] = OrderedDict()
        # Lookups answered by a stat because the parent had no listing yet.
        self._unlisted: dict[str, int] = {}
        # Directories whose last listing was too large for the listing cache:
        # their lookups are a stat each, never a new listing of the whole directory.
        self._too_large: OrderedDict[str, None] = OrderedDict()
        # Results of those stats: fresh for the TTL, and a fallback when the store is down.
        self._stats: OrderedDict[str, tuple[Entry, float]] = OrderedDict()
        self._stats_max = max(1000, listing_entries // 10)
        # Names a stat found missing, and when: missing for ``negative_ttl`` more seconds without a request.
        self.negative_ttl = negative_ttl
        self._missing: OrderedDict[str, float] = OrderedDict()
        # The mount passes a fetch that reads through the tiers.
        manifest_limiter = manifest_limiter or limiter

        async def read_whole(key: str) -> bytes:
            return await trio.to_thread.run_sync(store.read_all, key, limiter=manifest_limiter)

        self.snapshots = SnapshotTree(self._lake_entries, fetch or read_whole, manifest_limiter,
                                      indexes=manifest_indexes, read_part=store.read_all)

    def start(self, nursery: trio.Nursery) -> None:
        """Refresh what an outage made us serve stale, and build manifest indexes, in the background (the mount's
        nursery)."""
        nursery.start_soon(self.outage.run, self._refresh)
        self.snapshots.start(nursery)
        self._nursery = nursery

    async def refresh_stale(self) -> None:
        """One round of that background refresh."""
        await self.outage.refresh_once(self._refresh)

    # -- lookups ----------------------------------------------------------
    def node(self, inode: int) -> Node:
        return self.inodes.get(inode)

    async def lookup(self, parent_inode: int, name: str) -> Node:
        parent = self.inodes.get(parent_inode)
        if not parent.is_dir:
            raise NotADirectory(parent.path)
        path = _join(parent.path, name)
        if parent.path == "" and name in RESERVED and not in_tree(path):
            raise NotFound(name)
        return self._node_for(parent.path, await self._any_entry(path, parent.path, name, looked_up=True))

    async def getattr(self, inode: int) -> Node:
        node = self.inodes.get(inode)
        # An open file its path no longer names (unlinked, renamed over) keeps what it has: the lake's
        # object by that name is another file.
        kept = node.opens and not node.named
        if inode != ROOT_INODE and not node.immutable and self._stale(node) and not kept:
            parent, name = posixpath.split(node.path)
            try:
                node = self._node_for(parent, await self._any_entry(node.path, parent, name))
            except StoreError:
                # No listing or stat of it is left to fall back on: the node's own
                # attributes are the last ones seen.
                self.outage.served_stale(STAT, node.path, node.checked_at)
        return node

    async def list_dir(self, inode: int) -> list[Entry]:
        """The entries of a directory, sorted by name (fetched if not fresh)."""
        node = self.inodes.get(inode)
        if not node.is_dir:
            raise NotADirectory(node.path)
        if self.shards is not None and self.shards.may_hold(node.path):
            inside = await self._shard_of(node.path)
            if inside is not None:
                return await self.shards.list_dir(*inside)
        if in_tree(node.path):
            return self._shaped(node.path, await self.snapshots.list_dir(node.path))
        added = self.overlay.entries(node.path)
        try:
            entries = (await self._listing(node.path)).entries
        except NotFound:
            if not self.overlay.has_dir(node.path):
                raise
            entries = []  # a directory made here that the lake has no object under yet
        if added:
            names = {e.name for e in added}
            entries = sorted([*added, *(e for e in entries if e.name not in names)], key=lambda e: e.name)
        if node.path == "":
            entries = [e for e in entries if e.name not in RESERVED]
            return sorted([*entries, Entry(SNAPSHOTS_DIR, True)], key=lambda e: e.name)
        return self._shaped(node.path, entries)

    async def resolve(self, path: str) -> Entry:
        """What ``path`` (relative to the mount) names, without creating an inode for it."""
        path = path.strip("/")
        parent, name = posixpath.split(path)
        if parent == "" and name in RESERVED and not in_tree(path):
            raise NotFound(path)
        return await self._any_entry(path, parent, name)

    async def resolve_ref(self, path: str) -> ObjectRef | None:
        entry = await self.resolve(path)
        return entry.ref

    def entry_node(self, parent_path: str, entry: Entry) -> Node:
        """The node for an entry of a listing (readdirplus hands out inodes)."""
        return self._node_for(parent_path, entry)

    # -- open files -------------------------------------------------------
    async def open(self, inode: int) -> tuple[Node, ObjectRef, bool]:
        """The file's current ref, and whether the kernel may keep its cached pages."""
        node = await self.getattr(inode)
        if node.is_dir or node.ref is None:
            raise IsADirectoryError(node.path)
        ref = node.ref
        if node.immutable:
            keep_cache = True  # (and no cached_ref kept: a snapshot's node keeps its ref packed)
        else:
            keep_cache = node.cached_ref == ref
            node.cached_ref = ref
        self.inodes.opened(node)
        return node, ref, keep_cache

    def opened(self, node: Node) -> None:
        """A handle is open on ``node`` (one that ``open`` did not hand out: a staged file's)."""
        self.inodes.opened(node)

    def staged_node(self, path: str) -> Node:
        """The node of a file this mount is writing (in the overlay, not yet in the lake)."""
        entry = self.overlay.entry(path)
        if entry is None:
            raise NotFound(path)
        return self._node_for(posixpath.dirname(path), entry)

    def stale(self, node: Node) -> None:
        """Ask the lake about ``node`` on its next use: what this mount knew of it was thrown away."""
        node.checked_at = 0.0
        node.cached_ref = None
        self._stats.pop(node.path, None)
        if self.overlay.entry(node.path) is None and node.ref is not None and node.ref.etag.startswith("staged:"):
            self.inodes.unlinked(node.path)  # never reached the lake

    def release(self, node: Node) -> None:
        self.inodes.closed(node)

    def renumber(self, node: Node) -> None:
        """``node``'s name gets a new inode at its next lookup; ``node`` lives on for its open files."""
        self.inodes.unlink_node(node)

    def inode_of(self, parent_path: str, name: str) -> int:
        """The inode number a name in a directory has now, 0 if none."""
        node = self.inodes.by_path(f"{parent_path}/{name}" if parent_path else name)
        return node.inode if node is not None else 0

    def remember(self, node: Node) -> None:
        node.lookups += 1

    def forget(self, inode: int, count: int) -> None:
        self.inodes.forget(inode, count)

    # -- changes made through this mount -----------------------------------
    def changed(self, path: str, entry: Entry | None) -> Node | None:
        """``path`` now holds ``entry`` in the lake (None: nothing); seen at once, no TTL wait."""
        parent, name = posixpath.split(path)
        self.listings.update(parent, name, entry)
        self._stats.pop(path, None)
        self._missing.pop(path, None)
        if entry is None:
            self.inodes.unlinked(path)
            return None
        self._stats[path] = (entry, time.monotonic())
        return self._node_for(parent, entry)

    def moved(self, old: str, new: str, entry: Entry) -> None:
        """``old`` (a file, or a directory and all below it) is now ``new``."""
        self.inodes.rename(old, new)
        self.overlay.move(old, new)
        self.listings.drop_tree(old)
        self.listings.drop_tree(new)
        for p in [p for p in self._stats if p == old or p.startswith(old + "/")]:
            del self._stats[p]
        for p in [p for p in self._missing if p in (old, new) or p.startswith((old + "/", new + "/"))]:
            del self._missing[p]
        old_parent, old_name = posixpath.split(old)
        self.listings.update(old_parent, old_name, None)
        self.changed(new, entry)

    def under_immutable_prefix(self, path: str) -> bool:
        """Whether ``path`` lies in a part of the live view that never changes: what was seen of it holds."""
        return bool(self.immutable_prefixes) and under(path, self.immutable_prefixes)  # (asked per entry listed)

    # -- tar shards ---------------------------------------------------------
    def _lake_path(self, path: str) -> str | None:
        return self.snapshots.lake_path(path) if in_tree(path) else path

    def _shaped(self, parent: str, entries: list[Entry]) -> list[Entry]:
        """A listing as the mount shows it: the shards in it are directories."""
        shards = self.shards
        if shards is None or not any(e.name.endswith(".tar") for e in entries):
            return entries
        return [shards.as_dir(e) if shards.is_shard(self._lake_path(_join(parent, e.name)), e) else e
                for e in entries]

    async def _shard_of(self, path: str) -> tuple[Entry, str] | None:
        """The shard ``path`` is or lies in (its lake entry, and the path inside it: '' for itself), if any."""
        assert self.shards is not None
        parts = path.split("/")
        for i, part in enumerate(parts):
            if not part.endswith(".tar"):
                continue
            at = "/".join(parts[: i + 1])
            parent, name = posixpath.split(at)
            try:
                entry = await self._plain_entry(at, parent, name)
            except NotFound:
                raise NotFound(path) from None
            if self.shards.is_shard(self._lake_path(at), entry):
                return entry, "/".join(parts[i + 1:])
        return None

    # -- internals --------------------------------------------------------
    async def _any_entry(self, path: str, parent: str, name: str, looked_up: bool = False) -> Entry:
        """What ``path`` names; ``looked_up``: for a lookup (an open may follow: a stat may bring the bytes)."""
        if self.shards is not None and self.shards.may_hold(path):
            inside = await self._shard_of(path)
            if inside is not None:
                shard, inner = inside
                if not inner:
                    return self.shards.as_dir(shard)
                try:
                    return await self.shards.entry(shard, inner)
                except FileNotFoundError:
                    raise NotFound(path) from None
        return await self._plain_entry(path, parent, name, looked_up)

    async def _plain_entry(self, path: str, parent: str, name: str, looked_up: bool = False) -> Entry:
        if in_tree(path):
            return await self.snapshots.entry(path)
        added = self.overlay.entry(path)
        if added is not None:
            return added
        return await self._entry(path, parent, name, looked_up)

    async def _lake_entries(self, path: str) -> list[Entry]:
        return (await self._listing(path)).entries

    def _stale(self, node: Node) -> bool:
        return time.monotonic() - node.checked_at > self.ttl

    async def _listing(self, path: str) -> Listing:
        listing = self.listings.get(path)
        if listing is not None:
            return listing
        stale = self.listings.get(path, stale_ok=True)
        if stale is not None and self.outage.down():
            self.outage.served_stale(LISTING, path, stale.fetched_at)
            return stale
        try:
            return await self._listing_flights.run(path, lambda: self._fetch_listing(path))
        except StoreError:
            stale = self.listings.get(path, stale_ok=True)
            if stale is None:
                raise
            self.outage.served_stale(LISTING, path, stale.fetched_at)
            return stale

    async def _fetch_listing(self, path: str) -> Listing:
        fetched_at = time.monotonic()
        if self.fast_list and path not in self._trees_too_large:
            try:
                tree = await self._ask_store(self._list_tree, path)
            except StoreError:
                # (pages past the metadata deadline: a tree too large for this store's pace, or a store
                # that is down, whose level listing then says so, or falls back to what was seen)
                tree = None
            if tree is not None and tree.whole:
                for folder, entries in tree.folders.items():
                    if folder != path and self.listings.get(folder) is None:
                        self._keep_listing(folder, entries, fetched_at)
                return self._keep_listing(path, tree.folders[path], fetched_at)
            self._trees_too_large[path] = None
            if len(self._trees_too_large) > 10_000:
                self._trees_too_large.popitem(last=False)
        entries = await self._ask_store(self.store.list_dir, path)
        return self._keep_listing(path, entries, fetched_at)

    def _list_tree(self, path: str) -> Tree | None:
        return self.store.list_tree(path, self.fast_list)

    def _keep_listing(self, path: str, entries: list[Entry], fetched_at: float) -> Listing:
        """A folder's listing fetched at ``fetched_at``, into the listing cache (if it fits there)."""
        self._unlisted.pop(path, None)
        listing = self.listings.put(path, entries, fetched_at, lasting=self.under_immutable_prefix(path))
        if self.listings.get(path, stale_ok=True) is None:
            self._too_large[path] = None
            self._too_large.move_to_end(path)
            if len(self._too_large) > 10_000:
                self._too_large.popitem(last=False)
        else:
            self._too_large.pop(path, None)
        return listing

    async def _stat(self, path: str, looked_up: bool = False) -> Entry:
        lasting = self.under_immutable_prefix(path)
        cached = self._stats.get(path)
        if cached is not None and (lasting or time.monotonic() - cached[1] <= self.ttl):
            return cached[0]
        missing_since = self._missing.get(path)
        if missing_since is not None:
            if lasting or time.monotonic() - missing_since <= self.negative_ttl:
                raise NotFound(path)
            del self._missing[path]
        if self.outage.down():
            seen = self._last_seen(path)
            if seen is not None:
                return seen
        try:
            return await self._fetch_stat(path, looked_up)
        except StoreError:
            seen = self._last_seen(path)
            if seen is None:
                raise
            return seen

    async def _fetch_stat(self, path: str, looked_up: bool = False) -> Entry:
        now = time.monotonic()
        try:
            if looked_up and self.first_bytes_max and self.first_bytes is not None:
                entry, data = await self._ask_store(self._stat_and_bytes, path)
                if data is not None and entry.ref is not None:
                    await self.first_bytes(entry.ref, data)
            else:
                entry = await self._ask_store(self.store.stat, path)
        except NotFound:
            self._stats.pop(path, None)
            if self.negative_ttl > 0 or self.under_immutable_prefix(path):
                self._missing[path] = now
                self._missing.move_to_end(path)
                while len(self._missing) > self._stats_max:
                    self._missing.popitem(last=False)
            raise
        self._stats[path] = (entry, now)
        self._stats.move_to_end(path)
        while len(self._stats) > self._stats_max:
            self._stats.popitem(last=False)
        return entry

    def _stat_and_bytes(self, path: str) -> tuple[Entry, bytes | None]:
        return self.store.stat_and_bytes(path, self.first_bytes_max)

    def _last_seen(self, path: str) -> Entry | None:
        """What was last seen of ``path``, however old: its stat or its parent's listing, whichever is newer.

        Raises NotFound when that listing is the newer and lacks the name; None when nothing was seen.
        """
        cached = self._stats.get(path)
        parent, name = posixpath.split(path)
        listing = self.listings.get(parent, stale_ok=True)
        if listing is not None and (cached is None or listing.fetched_at >= cached[1]):
            self.outage.served_stale(LISTING, parent, listing.fetched_at)
            entry = listing.by_name.get(name)
            if entry is None:
                raise NotFound(path)
            return entry
        if cached is not None:
            self.outage.served_stale(STAT, path, cached[1])
            return cached[0]
        return None

    async def _ask_store(self, fn: Callable[[str], T], path: str) -> T:
        """One metadata call to the store, in a worker thread; tells the outage bookkeeping how it went."""
        try:
            result = await in_thread(fn, path, limiter=self.limiter)
        except StoreError:
            self.outage.failed()
            raise
        except NotFound:
            self.outage.answered()
            raise
        self.outage.answered()
        return result

    async def _refresh(self, kind: str, path: str) -> None:
        """Fetch again what was served stale (the outage's background refresh)."""
        if kind == LISTING:
            await self._listing_flights.run(path, lambda: self._fetch_listing(path))
        else:
            await self._fetch_stat(path)

    async def _entry(self, path: str, parent: str, name: str, looked_up: bool = False) -> Entry:
        listing = self.listings.get(parent)
        if listing is None and parent not in self._too_large:
            # The first name looked up in a directory costs one stat; from the
            # second on, the directory is listed once (a few requests for
            # thousands of names) so that the rest cost none: datasets are
            # read a folder at a time.
            seen = self._unlisted.get(parent, 0) + 1
            if len(self._unlisted) > 10_000:
                self._unlisted.clear()
            self._unlisted[parent] = seen
            if seen == 2 and looked_up and self.first_bytes_max and self._nursery is not None \
                    and not self._listing_flights.running(parent):
                # The lookup that starts the listing does not wait for it: its own stat (one GET that
                # brings a small file's bytes too) answers as soon as the listing would, and the open that
                # follows costs nothing; the names after it join the listing.
                self._nursery.start_soon(self._list_behind, parent)
                return await self._stat(path, looked_up)
            if seen >= 2:
                try:
                    listing = await self._listing(parent)  # stale if the store fails and one was seen
                except StoreError:
                    # No listing was ever seen, and the store just failed: a
                    # stat of the one name seen before is the answer, if any.
                    last = self._last_seen(path)
                    if last is None:
                        raise
                    return last
        if listing is not None:
            entry = listing.by_name.get(name)
            if entry is None:
                raise NotFound(path)
            return entry
        return await self._stat(path, looked_up)

    async def _list_behind(self, path: str) -> None:
        """A folder's listing, fetched behind the lookup that asked for it (a task of the mount's nursery)."""
        try:
            await self._listing(path)
        except (StoreError, NotFound):
            pass  # (the next lookup there asks again)
        except Exception:  # a bug: the mount goes on, its lookups stat
            log.exception("listing %s/ behind a lookup failed", path)

    def _node_for(self, parent_path: str, entry: Entry) -> Node:
        path = _join(parent_path, entry.name)
        member = isinstance(entry, ShardEntry)
        immutable = is_immutable(path) or self.under_immutable_prefix(path)
        if immutable:
            checked = 0.0  # (never checked again: one float for all of them)
        else:
            listing = self.listings.get(parent_path)
            checked = listing.fetched_at if listing is not None else time.monotonic()
        ref: ObjectRef | PackedRef | None = entry.ref
        if entry.ref is not None and immutable and in_tree(path) and not member:
            ref = self.snapshots.pack(parent_path, entry.name, entry.ref)  # (a third of the memory, for millions)
        return self.inodes.upsert_child(parent_path, entry.name, entry.is_dir, entry.size, entry.mtime_ns,
                                        ref, checked, read_only=in_tree(path) or member, immutable=immutable,
                                        base=entry.base if isinstance(entry, ShardEntry) else -1)


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name
