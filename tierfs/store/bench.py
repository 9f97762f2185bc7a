"""Measure the object store itself, without the mount: what the backend can give.

Uploads and downloads small and large objects under a scratch prefix of the
lake (``.tierfs/bench/<id>/``), in parallel, timing every request, and removes
everything it wrote, also when interrupted.
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tierfs.refs import ObjectRef
from tierfs.store.objects import ObjectStore


@dataclass
class BenchRow:
    op: str
    count: int
    size: int
    seconds: float
    latencies: list[float]

    @property
    def mb_per_s(self) -> float:
        return self.count * self.size / self.seconds / 1e6 if self.seconds else 0.0

    @property
    def p50_ms(self) -> float:
        return 1000 * statistics.median(self.latencies)

    @property
    def p95_ms(self) -> float:
        lat = sorted(self.latencies)
        return 1000 * lat[min(len(lat) - 1, int(0.95 * len(lat)))]


def run_bench(store: ObjectStore, small_count: int, small_size: int, large_count: int, large_size: int,
              jobs: int, on_step: Callable[[str, int], None] | None = None) -> list[BenchRow]:
    base = f".tierfs/bench/{uuid.uuid4().hex[:12]}"
    rows: list[BenchRow] = []
    written: list[str] = []
    try:
        for label, count, size in (("small", small_count, small_size), ("large", large_count, large_size)):
            if not count:
                continue
            payload = os.urandom(size)
            keys = [f"{base}/{label}-{i:05d}" for i in range(count)]

            def put(key: str, payload: bytes = payload) -> float:
                t0 = time.perf_counter()
                store.put_bytes(key, payload)
                if on_step:
                    on_step("upload", 1)
                return time.perf_counter() - t0

            def get(key: str, size: int = size, payload: bytes = payload) -> float:
                t0 = time.perf_counter()
                data = store.read_range(ObjectRef(key, size), 0, size)
                if data != payload:
                    raise AssertionError(f"{key}: downloaded bytes differ from what was uploaded")
                if on_step:
                    on_step("download", 1)
                return time.perf_counter() - t0

            with ThreadPoolExecutor(jobs) as pool:
                t0 = time.perf_counter()
                lat = list(pool.map(put, keys))
                rows.append(BenchRow(f"upload {label}", count, size, time.perf_counter() - t0, lat))
                written.extend(keys)
                t0 = time.perf_counter()
                lat = list(pool.map(get, keys))
                rows.append(BenchRow(f"download {label}", count, size, time.perf_counter() - t0, lat))
    finally:
        for key in written:
            store.delete(key)
        store.delete_tree(base)
    return rows
