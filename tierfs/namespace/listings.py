"""Directory listings cached for the metadata TTL (or for good: ``lasting``), bounded by bytes and entries.

The bytes are an estimate of what an entry holds in memory (its objects and
strings, as CPython lays them out), so that a lake of long keys fills the
bound sooner than one of short names.
"""

from __future__ import annotations

import bisect
import time
from collections import OrderedDict

from tierfs.namespace.pathindex import PathIndex
from tierfs.store.objects import Entry


def _name(entry: Entry) -> str:
    return entry.name


# What every entry costs whatever its strings: the Entry, its slot in the list and in by_name, its ints;
# a file's ObjectRef; and each string's header (CPython: 49 bytes + one a character, for ASCII).
_ENTRY, _REF, _STR = 160, 80, 49


def entry_bytes(e: Entry) -> int:
    """About what ``e`` holds in memory in a cached listing."""
    n = _ENTRY + _STR + len(e.name)
    ref = e.ref
    if ref is not None:
        n += _REF + sum(_STR + len(s) for s in (ref.key, ref.etag, ref.version, ref.content_hash, ref.cache_id) if s)
    return n


class Listing:
    """One directory's entries, sorted by name, and the same entries by name."""

    def __init__(self, entries: list[Entry], fetched_at: float, lasting: bool = False):
        self._entries = entries  # sorted by name
        self.fetched_at = fetched_at
        self.lasting = lasting  # never expires (an immutable prefix): kept until pushed out by the bound
        self.by_name = {e.name: e for e in entries}
        self.bytes = sum(map(entry_bytes, entries))
        self._handed_out = False

    @property
    def entries(self) -> list[Entry]:
        """The entries, sorted by name: a list the caller may keep (an open directory reads from it)."""
        self._handed_out = True
        return self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def update(self, name: str, entry: Entry | None) -> None:
        """Put (or, with None, remove) one name: a binary search, never a sort of the whole directory."""
        if self._handed_out:
            # Whoever holds the list sees it as it was (readdir offsets stay valid): change a copy.
            self._entries = list(self._entries)
            self._handed_out = False
        # (A store may list a name twice, as an object and as a prefix: all of them go.)
        start = bisect.bisect_left(self._entries, name, key=_name)
        end = bisect.bisect_right(self._entries, name, lo=start, key=_name)
        self.bytes += sum(-entry_bytes(e) for e in self._entries[start:end]) + (entry_bytes(entry) if entry else 0)
        self._entries[start:end] = [] if entry is None else [entry]
        if entry is None:
            self.by_name.pop(name, None)
        else:
            self.by_name[name] = entry


class ListingCache:
    def __init__(self, ttl: float, max_entries: int, max_bytes: int | None = None):
        """At most ``max_entries`` entries and about ``max_bytes`` of them (None: 400 bytes an entry)."""
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_bytes = max_entries * 400 if max_bytes is None else max_bytes
        self._lists: OrderedDict[str, Listing] = OrderedDict()
        self._paths = PathIndex()  # the paths of _lists, by directory: drop_tree looks at its own only
        self._held = 0
        self.bytes_held = 0

    def get(self, path: str, stale_ok: bool = False) -> Listing | None:
        """A fresh listing of ``path`` (or an expired one, if ``stale_ok``), or None.

        Expired listings are kept until pushed out by the bound, so that a
        store outage can be ridden out on what was last seen.
        """
        listing = self._lists.get(path)
        if listing is None:
            return None
        if not stale_ok and not listing.lasting and time.monotonic() - listing.fetched_at > self.ttl:
            return None
        self._lists.move_to_end(path)
        return listing

    def put(self, path: str, entries: list[Entry], fetched_at: float, lasting: bool = False) -> Listing:
        listing = Listing(sorted(entries, key=_name), fetched_at, lasting)
        self.drop(path)
        # (A listing of more than half the bound would push out every other: not kept.)
        if len(entries) <= self.max_entries // 2 and listing.bytes <= self.max_bytes // 2:
            self._lists[path] = listing
            self._paths.add(path)
            self._held += len(entries)
            self.bytes_held += listing.bytes
            while self._held > self.max_entries or self.bytes_held > self.max_bytes:
                old_path, old = self._lists.popitem(last=False)
                self._paths.remove(old_path)
                self._held -= len(old)
                self.bytes_held -= old.bytes
        return listing

    def update(self, path: str, name: str, entry: Entry | None) -> None:
        """Put (or, with None, remove) one name in the cached listing of ``path``, if there is one.

        A change made through this mount is seen at once, without listing the directory again.
        """
        listing = self._lists.get(path)
        if listing is None:
            return
        before, before_bytes = len(listing), listing.bytes
        listing.update(name, entry)
        self._held += len(listing) - before
        self.bytes_held += listing.bytes - before_bytes

    def drop_tree(self, path: str) -> None:
        """Forget the listings of ``path`` and of every directory below it."""
        for p in list(self._paths.below(path)):
            self.drop(p)

    def drop(self, path: str) -> None:
        old = self._lists.pop(path, None)
        if old is not None:
            self._paths.remove(path)
            self._held -= len(old)
            self.bytes_held -= old.bytes

    def __len__(self) -> int:
        return self._held
