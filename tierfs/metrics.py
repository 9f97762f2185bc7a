"""Counters that every layer keeps, and the snapshot that `tierfs stats` shows.

Each component owns a :class:`Counters`; the mount collects their snapshots
into one JSON document that the CLI reads through an extended attribute of the
mount's root (``user.tierfs.stats``), so no socket or port is needed for it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable


class Counters:
    """Monotonic counters plus gauges read on demand; safe from any thread."""

    def __init__(self, names: Iterable[str], gauges: dict[str, Callable[[], int]] | None = None):
        self._lock = threading.Lock()
        self._values = {n: 0 for n in names}
        self._gauges = dict(gauges or {})

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def get(self, name: str) -> int:
        if name in self._gauges:
            return self._gauges[name]()
        with self._lock:
            return self._values[name]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            out = dict(self._values)
        for name, read in self._gauges.items():
            out[name] = read()
        return out


TIER_COUNTERS = ("hits", "misses", "bytes_served", "evictions", "errors")
TIER_GAUGES = ("bytes_held", "entries")
BACKEND_COUNTERS = ("requests", "bytes", "bytes_written", "errors", "retries")
