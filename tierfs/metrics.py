"""Counters that every layer keeps, the snapshot `tierfs stats` shows, and Prometheus.

Each component owns a :class:`Counters`; the mount collects their snapshots
into one JSON document that the CLI reads through an extended attribute of the
mount's root (``user.tierfs.stats``), so no socket or port is needed for it.
With ``--metrics HOST:PORT`` the same counters, plus latency histograms, are
served for Prometheus.

Latencies are kept here, in a few lists, not in ``prometheus_client``'s
histograms: the mount observes one per request, and importing the client
(its HTTP server and exposition code) costs a tenth of a mount's start. It
is imported only by ``--metrics``, when it is served.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric


class Counters:
    """Monotonic counters plus gauges read on demand; safe from any thread."""

    def __init__(self, names: Iterable[str], gauges: dict[str, Callable[[], int]] | None = None):
        self._lock = threading.Lock()
        self._values = {n: 0 for n in names}
        self._gauges = dict(gauges or {})

    def add_gauge(self, name: str, read: Callable[[], int]) -> None:
        self._gauges[name] = read

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
BACKEND_COUNTERS = ("requests", "bytes", "bytes_written", "uploads", "errors", "retries")
WRITE_COUNTERS = ("bytes_written", "uploads", "upload_errors", "recovered", "renamed_objects")
WRITE_GAUGES = ("staged_files", "pending_uploads")
FILL_COUNTERS = ("queued", "done", "dropped", "errors")  # background puts into the disk and Redis tiers


# -- Latencies --------------------------------------------------------------------
_LATENCY_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Latencies:
    """A latency histogram per label (Prometheus' buckets, sum and count); safe from any thread."""

    def __init__(self, name: str, help_text: str, label: str):
        self.name, self.help, self.label = name, help_text, label
        self._lock = threading.Lock()
        self._rows: dict[str, list[float]] = {}  # label -> a count per bucket (the last: +Inf), then the sum

    def observe(self, label: str, seconds: float) -> None:
        at = bisect.bisect_left(_LATENCY_BUCKETS, seconds)  # the first bucket whose bound is >= seconds
        with self._lock:
            row = self._rows.get(label)
            if row is None:
                row = self._rows[label] = [0] * (len(_LATENCY_BUCKETS) + 2)
            row[at] += 1
            row[-1] += seconds

    def rows(self) -> dict[str, list[float]]:
        with self._lock:
            return {label: list(row) for label, row in self._rows.items()}

    def summary(self) -> dict[str, dict[str, float]]:
        """Per label: count and mean milliseconds, for `tierfs stats`."""
        out = {}
        for label, row in self.rows().items():
            count = sum(row[:-1])
            out[label] = {"count": count, "mean_ms": round(1000 * row[-1] / count, 3) if count else 0.0}
        return out


TIER_SECONDS = Latencies("tierfs_tier_get_seconds", "Time to ask a tier for a block", "tier")
BACKEND_SECONDS = Latencies("tierfs_backend_request_seconds", "Time of an object-store request, retries included",
                            "op")
FUSE_SECONDS = Latencies("tierfs_fuse_request_seconds", "Time to answer a FUSE request", "op")
_ALL_LATENCIES = (TIER_SECONDS, BACKEND_SECONDS, FUSE_SECONDS)


def observe(hist: Latencies, label: str, seconds: float) -> None:
    """One observation of ``hist`` under ``label``."""
    hist.observe(label, seconds)


def latency_summary(hist: Latencies) -> dict[str, dict[str, float]]:
    """Per label: count and mean milliseconds, for `tierfs stats`."""
    return hist.summary()


# -- Prometheus ------------------------------------------------------------------
# One mount is one process, so one registry per process, made when it is first
# asked for (serve(), the sidecar's own metrics). The counters above are exported
# by a collector that reads the same snapshot `tierfs stats` shows.
_registry: CollectorRegistry | None = None
_snapshot: Callable[[], dict[str, Any]] | None = None


def registry() -> CollectorRegistry:
    """This process's Prometheus registry (importing the client the first time)."""
    global _registry
    if _registry is None:
        from prometheus_client import CollectorRegistry

        _registry = CollectorRegistry(auto_describe=True)
        _registry.register(_Collector())
    return _registry


def export_stats(snapshot: Callable[[], dict[str, Any]]) -> None:
    """Make the Prometheus registry read this snapshot (one per process)."""
    global _snapshot
    _snapshot = snapshot


class _Collector:
    """What a scrape reads: the latency histograms, and the counters of the exported snapshot."""

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import HistogramMetricFamily

        for hist in _ALL_LATENCIES:
            family = HistogramMetricFamily(hist.name, hist.help, labels=[hist.label])
            for label, row in hist.rows().items():
                running, buckets = 0.0, []
                for bound, n in zip((*map(str, _LATENCY_BUCKETS), "+Inf"), row[:-1], strict=True):
                    running += n
                    buckets.append((bound, running))
                family.add_metric([label], buckets, sum_value=row[-1])
            yield family
        if _snapshot is not None:
            yield from _counters(_snapshot())


def _counters(s: dict[str, Any]) -> Iterable[Metric]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    tiers = s.get("tiers", {})
    for name in TIER_COUNTERS:
        m = CounterMetricFamily(f"tierfs_tier_{name}", f"Tier {name.replace('_', ' ')}", labels=["tier"])
        for tier, t in tiers.items():
            m.add_metric([tier], t.get(name, 0))
        yield m
    for name in (*TIER_GAUGES, "up"):
        g = GaugeMetricFamily(f"tierfs_tier_{name}", f"Tier {name.replace('_', ' ')}", labels=["tier"])
        for tier, t in tiers.items():
            g.add_metric([tier], t.get(name, 1))
        yield g
    for name, value in s.get("backend", {}).items():
        yield CounterMetricFamily(f"tierfs_backend_{name}", f"Object store {name.replace('_', ' ')}", value=value)
    for name, value in s.get("writes", {}).items():
        family = GaugeMetricFamily if name in WRITE_GAUGES else CounterMetricFamily
        yield family(f"tierfs_write_{name}", f"Write path {name.replace('_', ' ')}", value=value)
    for name, value in s.get("fills", {}).items():
        family = CounterMetricFamily if name in FILL_COUNTERS else GaugeMetricFamily
        yield family(f"tierfs_fill_{name}", f"Tier fills {name.replace('_', ' ')}", value=value)
    ops = CounterMetricFamily("tierfs_fuse_requests", "FUSE requests answered", labels=["op"])
    for op, n in s.get("fuse", {}).items():
        ops.add_metric([op], n)
    yield ops
    for name in ("in_flight_fetches", "inodes", "open_files", "listing_entries_cached", "listing_bytes_cached"):
        if name in s:
            yield GaugeMetricFamily(f"tierfs_{name}", name.replace("_", " "), value=s[name])


def serve(listen: str) -> Any:
    """Serve /metrics on HOST:PORT (":PORT" is this host only); returns the server (call .shutdown()).

    The metrics have no authentication: they are served on loopback unless a
    host is named, and a wildcard address is said in the log.
    """
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if host in ("0.0.0.0", "::", "*"):
        host = "::" if host == "::" else "0.0.0.0"
        logging.getLogger(__name__).warning(
            "metrics served on every interface (%s), without authentication: anyone who reaches port %s reads "
            "them; bind 127.0.0.1 and scrape through a proxy, or firewall the port", listen, port)
    from prometheus_client import start_http_server

    server, _thread = start_http_server(int(port), addr=host, registry=registry())
    return server
