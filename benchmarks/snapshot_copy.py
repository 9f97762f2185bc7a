"""Copy-mode snapshots on SeaweedFS: how many files a second `tierfs snapshot create` freezes.

    .venv/bin/python benchmarks/snapshot_copy.py --files 3000 --size 100KiB --repeat 3

Starts SeaweedFS's S3 gateway on loopback, puts FILES objects of SIZE (random
bytes, in 20 class folders) into an unversioned bucket, and runs
``tierfs snapshot create`` on it as a user would (copy mode: the bucket keeps
no versions), once per repeat under a new name, each time after the previous
snapshots are deleted and collected so that every run copies every object.
Then one more snapshot with the first one kept, which copies nothing (every
object reused by identity). Each snapshot is checked: its manifest names
every file, and a sample of its copies holds the source's bytes. Prints the
median wall time and files/s. Stops everything it started, by PID, and
removes its scratch dir, even on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import SeaweedS3

from tierfs.config import parse_size

TIERFS = [sys.executable, "-m", "tierfs"]
BUCKET = "snap-lake"


def _tierfs(cfg: Path, *args: str) -> str:
    res = subprocess.run([*TIERFS, *args, "--config", str(cfg)], capture_output=True, text=True, timeout=3600)
    if res.returncode != 0:
        raise RuntimeError(f"tierfs {' '.join(args)}: {res.stderr.strip()[-500:]}")
    return res.stdout


def _upload(server: SeaweedS3, files: int, size: int) -> dict[str, bytes]:
    fs = server.fs()
    fs.mkdir(BUCKET)
    rng = random.Random(1)
    data = {f"ds/train/c{i % 20:02d}/{i:06d}.jpg": rng.randbytes(size) for i in range(files)}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda kv: fs.pipe(f"{BUCKET}/{kv[0]}", kv[1]), data.items()))
    return data


def _check(server: SeaweedS3, cfg: Path, name: str, data: dict[str, bytes]) -> None:
    """The manifest names every file, and a sample of its copies holds the source's bytes."""
    from tierfs.config import load
    from tierfs.store.objects import ObjectStore
    from tierfs.versions.catalog import open_snapshot

    store = ObjectStore.open(load(cfg, {"lake_url": f"s3://{BUCKET}"}))
    entries = {e.path: e for e in open_snapshot(store, "ds", name) if not e.is_dir}
    if set(entries) != {k.removeprefix("ds/") for k in data}:
        raise AssertionError(f"{name}: the manifest names {len(entries)} files, not the {len(data)} written")
    for key in random.Random(2).sample(sorted(data), min(50, len(data))):
        e = entries[key.removeprefix("ds/")]
        ref = e.ref()
        assert ref is not None
        if store.read_range(ref, 0, ref.size) != data[key]:
            raise AssertionError(f"{name}: {key}'s copy holds other bytes")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=3000)
    ap.add_argument("--size", default="100KiB")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=None, help="--jobs for snapshot create (default: its own)")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    size = parse_size(args.size)
    load = os.getloadavg()[0]  # (a shared machine: what else ran is part of the figure)
    work = Path(tempfile.mkdtemp(prefix="tierfs-snapcopy-", dir=args.work))
    server = SeaweedS3(work / "weed")
    times: list[float] = []
    try:
        server.start()
        cfg = server.s3_config(work / "s3.toml")
        data = _upload(server, args.files, size)
        jobs = ["--jobs", str(args.jobs)] if args.jobs else []
        for i in range(args.repeat):
            name = f"v{i}"
            t0 = time.perf_counter()
            _tierfs(cfg, "snapshot", "create", f"s3://{BUCKET}", "ds", name, "--mode", "copy", *jobs)
            times.append(time.perf_counter() - t0)
            _check(server, cfg, name, data)
            print(f"  {name}: {times[-1]:.1f} s", file=sys.stderr)
            if i < args.repeat - 1:  # the next run copies everything again
                _tierfs(cfg, "snapshot", "delete", f"s3://{BUCKET}", "ds", name)
                _tierfs(cfg, "gc", f"s3://{BUCKET}", "--grace", "0")
        t0 = time.perf_counter()
        _tierfs(cfg, "snapshot", "create", f"s3://{BUCKET}", "ds", "reuse", "--mode", "copy", *jobs)
        reuse = time.perf_counter() - t0
        _check(server, cfg, "reuse", data)
        show = json.loads(_tierfs(cfg, "snapshot", "show", f"s3://{BUCKET}", "ds", "reuse", "--json"))
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    med = statistics.median(times)
    print(f"\ncopy-mode snapshot: {args.files} x {args.size} files, SeaweedFS S3 on loopback, median of "
          f"{args.repeat}; {os.cpu_count()} cores, shared VM (load average {load:.1f} at the start)")
    print(f"  every object copied           {med:7.1f} s  {args.files / med:8.0f} files/s"
          f"  (runs: {', '.join(f'{t:.1f}' for t in times)} s)")
    print(f"  every object reused           {reuse:7.1f} s  {args.files / reuse:8.0f} files/s"
          f"  ({show['file_count']} files)")


if __name__ == "__main__":
    main()
