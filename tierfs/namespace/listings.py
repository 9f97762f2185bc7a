"""Directory listings cached for the metadata TTL, bounded by entry count."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field

from tierfs.store.objects import Entry


@dataclass
class Listing:
    entries: list[Entry]  # sorted by name
    fetched_at: float
    by_name: dict[str, Entry] = field(init=False)

    def __post_init__(self) -> None:
        self.by_name = {e.name: e for e in self.entries}


class ListingCache:
    def __init__(self, ttl: float, max_entries: int):
        self.ttl = ttl
        self.max_entries = max_entries
        self._lists: OrderedDict[str, Listing] = OrderedDict()
        self._held = 0

    def get(self, path: str, stale_ok: bool = False) -> Listing | None:
        """A fresh listing of ``path`` (or an expired one, if ``stale_ok``), or None.

        Expired listings are kept until pushed out by the bound, so that a
        store outage can be ridden out on what was last seen.
        """
        listing = self._lists.get(path)
        if listing is None:
            return None
        if not stale_ok and time.monotonic() - listing.fetched_at > self.ttl:
            return None
        self._lists.move_to_end(path)
        return listing

    def put(self, path: str, entries: list[Entry], fetched_at: float) -> Listing:
        listing = Listing(sorted(entries, key=lambda e: e.name), fetched_at)
        self.drop(path)
        if len(entries) <= self.max_entries // 2:
            self._lists[path] = listing
            self._held += len(entries)
            while self._held > self.max_entries:
                _, old = self._lists.popitem(last=False)
                self._held -= len(old.entries)
        return listing

    def update(self, path: str, name: str, entry: Entry | None) -> None:
        """Put (or, with None, remove) one name in the cached listing of ``path``, if there is one.

        A change made through this mount is seen at once, without listing the directory again.
        """
        listing = self._lists.get(path)
        if listing is None:
            return
        entries = [e for e in listing.entries if e.name != name]
        if entry is not None:
            entries.append(entry)
        self._held += len(entries) - len(listing.entries)
        self._lists[path] = Listing(sorted(entries, key=lambda e: e.name), listing.fetched_at)

    def drop_tree(self, path: str) -> None:
        """Forget the listings of ``path`` and of every directory below it."""
        below = path + "/"
        for p in [p for p in self._lists if p == path or p.startswith(below) or path == ""]:
            self.drop(p)

    def drop(self, path: str) -> None:
        old = self._lists.pop(path, None)
        if old is not None:
            self._held -= len(old.entries)

    def __len__(self) -> int:
        return self._held
