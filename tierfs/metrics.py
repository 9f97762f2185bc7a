"""Counters that every layer keeps, the snapshot `tierfs stats` shows, and Prometheus.

Each component owns a :class:`Counters`; the mount collects their snapshots
into one JSON document that the CLI reads through an extended attribute of the
mount's root (``user.tierfs.stats``), so no socket or port is needed for it.
With ``--metrics HOST:PORT`` the same counters, plus latency histograms, are
served for Prometheus.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


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


# -- Prometheus ------------------------------------------------------------------
# One mount is one process, so one registry per process. Latencies are
# histograms observed where the work happens; the counters above are exported
# by a collector that reads the same snapshot `tierfs stats` shows.
REGISTRY = CollectorRegistry(auto_describe=True)
_LATENCY_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
TIER_SECONDS = Histogram("tierfs_tier_get_seconds", "Time to ask a tier for a block", ["tier"],
                         registry=REGISTRY, buckets=_LATENCY_BUCKETS)
BACKEND_SECONDS = Histogram("tierfs_backend_request_seconds", "Time of an object-store request, retries included",
                            ["op"], registry=REGISTRY, buckets=_LATENCY_BUCKETS)
FUSE_SECONDS = Histogram("tierfs_fuse_request_seconds", "Time to answer a FUSE request", ["op"],
                         registry=REGISTRY, buckets=_LATENCY_BUCKETS)


@functools.cache
def _child(hist: Histogram, label: str) -> Any:
    return hist.labels(label)


def observe(hist: Histogram, label: str, seconds: float) -> None:
    """One observation of ``hist`` under ``label``; the labelled child is looked up once, not per request."""
    _child(hist, label).observe(seconds)


class _StatsCollector(Collector):
    def __init__(self, snapshot: Callable[[], dict[str, Any]]):
        self.snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        s = self.snapshot()
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


_collector: _StatsCollector | None = None


def export_stats(snapshot: Callable[[], dict[str, Any]]) -> None:
    """Make the Prometheus registry read this snapshot (one per process)."""
    global _collector
    if _collector is not None:
        REGISTRY.unregister(_collector)
    _collector = _StatsCollector(snapshot)
    REGISTRY.register(_collector)


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
    server, _thread = start_http_server(int(port), addr=host, registry=REGISTRY)
    return server


def latency_summary(hist: Histogram) -> dict[str, dict[str, float]]:
    """Per label: count and mean milliseconds, for `tierfs stats`."""
    out: dict[str, dict[str, float]] = {}
    for metric in hist.collect():
        sums: dict[str, float] = {}
        counts: dict[str, float] = {}
        for sample in metric.samples:
            label = next(iter(sample.labels.values()), "") if sample.name.endswith(("_sum", "_count")) else None
            if label is None:
                continue
            (sums if sample.name.endswith("_sum") else counts)[label] = sample.value
        for label, count in counts.items():
            out[label] = {"count": count, "mean_ms": round(1000 * sums.get(label, 0) / count, 3) if count else 0.0}
    return out
