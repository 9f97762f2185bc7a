"""Latency histograms are kept without prometheus_client, and scraped in its format."""

from __future__ import annotations

import sys

from prometheus_client import generate_latest

from tierfs.metrics import _ALL_LATENCIES, Latencies, registry


def test_buckets_are_cumulative_with_prometheus_bounds_and_the_summary_is_the_mean() -> None:
    hist = Latencies("tierfs_test_seconds", "a test", "op")
    for seconds in (0.0001, 0.0003, 0.002, 0.002, 30.0):  # on a bound, between, twice, past the last
        hist.observe("read", seconds)
    hist.observe("list", 0.5)
    assert hist.summary() == {"read": {"count": 5, "mean_ms": round(1000 * 30.0044 / 5, 3)},
                              "list": {"count": 1, "mean_ms": 500.0}}
    row = hist.rows()["read"]
    assert row[0] == 1 and row[1] == 1 and row[3] == 2 and row[-2] == 1  # <=0.0001, <=0.0005, <=0.0025, +Inf


def test_a_scrape_shows_each_label_s_buckets_sum_and_count() -> None:
    hist = _ALL_LATENCIES[0]
    hist.observe("test-tier", 0.003)
    hist.observe("test-tier", 0.2)
    text = generate_latest(registry()).decode()
    assert f'{hist.name}_bucket{{le="0.0025",tier="test-tier"}} 0.0' in text
    assert f'{hist.name}_bucket{{le="0.005",tier="test-tier"}} 1.0' in text
    assert f'{hist.name}_bucket{{le="+Inf",tier="test-tier"}} 2.0' in text
    assert f'{hist.name}_count{{tier="test-tier"}} 2.0' in text
    assert f'{hist.name}_sum{{tier="test-tier"}} 0.203' in text


def test_the_mount_s_layers_do_not_import_the_prometheus_client() -> None:
    import subprocess

    code = "import sys, tierfs.mount, tierfs.store.s3; print('prometheus_client' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
