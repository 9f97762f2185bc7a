"""Riding out a store outage on the live view's last-seen metadata.

When the store fails a listing or a stat (StoreError), the live view answers
from the last listing or stat it saw, however old (``live.py``). This module
keeps the bookkeeping of that:

- for a few seconds after a failure the store is taken as down, and requests
  that have a stale answer get it at once instead of each waiting out a store
  call that is likely to fail too;
- one log line per path per interval, not one per request;
- the paths served stale, which a background task refreshes once the store
  answers again (until then, the foreground keeps serving them stale).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import trio

from tierfs.errors import StoreError

log = logging.getLogger(__name__)

RETRY_SECONDS = 5.0  # how long the store is taken as down after a failure; the refresher's period
LOG_INTERVAL = 60.0  # one warning per path per this many seconds
_MAX_TRACKED = 10_000  # paths remembered for logging and for refresh

LISTING, STAT = "listing", "stat"
Refresh = Callable[[str, str], Awaitable[None]]  # (LISTING or STAT, path)


class Outage:
    def __init__(self, retry: float = RETRY_SECONDS, log_interval: float = LOG_INTERVAL):
        self.retry = retry
        self.log_interval = log_interval
        self._down_until = 0.0
        self._failing = False
        self._logged: dict[str, float] = {}
        self._pending: dict[tuple[str, str], None] = {}  # (kind, path), in the order they were served stale

    def down(self) -> bool:
        """Whether the store failed a moment ago (and has not answered since)."""
        return time.monotonic() < self._down_until

    def failed(self) -> None:
        self._down_until = time.monotonic() + self.retry
        self._failing = True

    def answered(self) -> None:
        self._down_until = 0.0
        if self._failing:
            self._failing = False
            log.info("store answering again; %d stale listings or stats left to refresh", len(self._pending))

    def served_stale(self, kind: str, path: str, seen_at: float) -> None:
        """``path`` was answered from what was seen at ``seen_at`` (monotonic): log it (rate-limited), refresh it later."""
        now = time.monotonic()
        if len(self._pending) < _MAX_TRACKED:
            self._pending[(kind, path)] = None
        last = self._logged.get(path)
        if last is None or now - last >= self.log_interval:
            if len(self._logged) >= _MAX_TRACKED:
                self._logged.clear()
            self._logged[path] = now
            log.warning("store unavailable; %s of %s served from what was seen %.0f s ago",
                        kind, path or "/", now - seen_at)

    def pending(self) -> int:
        return len(self._pending)

    async def run(self, refresh: Refresh) -> None:
        """Refresh what was served stale once the store answers: a task of the mount's nursery."""
        while True:
            await trio.sleep(self.retry)
            await self.refresh_once(refresh)

    async def refresh_once(self, refresh: Refresh) -> None:
        """One round: refresh the paths served stale, in order, until the store fails again."""
        for item in list(self._pending):
            try:
                await refresh(*item)
            except StoreError:
                return  # still down: the rest waits for the next round
            except Exception as exc:
                # Gone meanwhile (NotFound), or a bug: nothing to retry; the
                # next request asks the store itself.
                log.debug("refreshing %s %s: %s: %s", item[0], item[1] or "/", type(exc).__name__, exc)
            self._pending.pop(item, None)
