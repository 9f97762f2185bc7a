from __future__ import annotations

from pathlib import Path

from helpers import run_tierfs


def test_bench_measures_and_cleans_up(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    lake.mkdir()
    res = run_tierfs("bench", f"file://{lake}", "--small-count", "20", "--large-count", "2", "--large-size", "2MiB",
                     check=True)
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["operation", "objects", "size", "MB/s", "obj/s", "p50", "ms", "p95", "ms"]
    ops = [ln.split()[0] + " " + ln.split()[1] for ln in lines[1:5]]
    assert ops == ["upload small", "download small", "upload large", "download large"]
    assert not list((lake / ".tierfs" / "bench").glob("*"))  # nothing left behind


def test_bench_bad_size(tmp_path: Path) -> None:
    res = run_tierfs("bench", f"file://{tmp_path}", "--small-size", "tiny")
    assert res.returncode == 1 and "expected a size" in res.stderr
