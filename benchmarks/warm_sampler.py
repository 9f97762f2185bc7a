"""A first epoch with and without the WarmSampler, on one tierfs mount of a SeaweedFS bucket.

    .venv/bin/python benchmarks/warm_sampler.py --small 2000 --repeat 3

Each run starts from a fresh mount with empty caches and the page cache
dropped, and reads every small file once through a PyTorch DataLoader (4
workers, shuffled), checking each file's bytes:

- ``plain``: the DataLoader alone;
- ``sampler LEAD/JOBS``: the same order handed to the mount by
  ``tierfs.torch.WarmSampler`` (``--leads``, ``--jobs``);
- ``warm, then epoch``: ``tierfs warm`` of the whole list first; the figure
  is files over the warm plus the epoch (what the user waits for in all), and
  the warm alone is shown beside it.

Prints medians in files/s, with the ratio to ``plain``. Unmounts and stops
everything it started, by PID, even on failure. Needs root (to drop the page
cache), fuse3 and torch.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import BUCKET, Dataset, System, check, drop_caches

from tierfs.config import parse_size


def epoch(root: Path, ds: Dataset, lead: int | None, jobs: int) -> float:
    """Files/s of one shuffled DataLoader epoch over the small files; with ``lead``, through the WarmSampler."""
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    from tierfs.torch import WarmSampler

    class Files:
        def __len__(self) -> int:
            return len(ds.small)

        def __getitem__(self, i: int) -> tuple[str, bytes]:
            return ds.small[i], (root / ds.small[i]).read_bytes()

    data = Files()
    sampler: object = RandomSampler(data, generator=torch.Generator().manual_seed(3))  # type: ignore[arg-type]
    if lead is not None:
        sampler = WarmSampler(sampler, path_of=lambda i: root / ds.small[i], lead=lead, jobs=jobs)  # type: ignore[arg-type]
    loader = DataLoader(data, sampler=sampler, num_workers=4, batch_size=None)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    n = 0
    for rel, payload in loader:
        check(ds, rel, payload)
        n += 1
    return n / (time.perf_counter() - t0)


def warm_all(root: Path, ds: Dataset, jobs: int, work: Path) -> float:
    """Seconds of `tierfs warm` (no lead: as fast as it goes) over the small files."""
    listing = work / "warm-list.txt"
    listing.write_text("".join(f"{root / rel}\n" for rel in ds.small))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tierfs", "warm", "--list", str(listing), "--jobs", str(jobs), "--lead", "0"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", type=int, default=2000, help="small files")
    ap.add_argument("--small-size", default="100KiB")
    ap.add_argument("--leads", default="64,256,1024", help="WarmSampler leads to try, comma-separated")
    ap.add_argument("--jobs", type=int, default=8, help="the warm job's files in flight")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    leads = [int(x) for x in args.leads.split(",") if x]

    from helpers import SeaweedS3

    work = Path(tempfile.mkdtemp(prefix="tierfs-warm-", dir=args.work))
    server = SeaweedS3(work / "weed")
    sysm: System | None = None
    results: dict[str, list[float]] = {}
    warm_alone: list[float] = []
    try:
        local = work / "local"
        ds = Dataset(local, args.small, parse_size(args.small_size), 0, 0)
        shutil.rmtree(local / ds.big_dir)  # (not read here)
        server.start()
        fs = server.fs()
        fs.mkdir(BUCKET)
        fs.put(str(local) + "/", f"{BUCKET}/", recursive=True)
        sysm = System("tierfs", work, server, local)
        cases: list[tuple[str, int | None]] = [("plain", None), *((f"sampler {lead}/{args.jobs}", lead) for lead in leads)]
        for _ in range(args.repeat):
            for name, lead in cases:
                sysm.umount(clear=True)
                sysm.mount()
                drop_caches()
                results.setdefault(name, []).append(epoch(sysm.root, ds, lead, args.jobs))
            sysm.umount(clear=True)
            sysm.mount()
            drop_caches()
            secs = warm_all(sysm.root, ds, args.jobs, work)
            t0 = time.perf_counter()
            epoch(sysm.root, ds, None, args.jobs)
            total = secs + time.perf_counter() - t0
            warm_alone.append(len(ds.small) / secs)
            results.setdefault("warm, then epoch", []).append(len(ds.small) / total)
            print(f"  run {len(warm_alone)} of {args.repeat} done", file=sys.stderr)
    finally:
        if sysm is not None:
            sysm.umount(clear=True)
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nfirst epoch, {args.small} x {args.small_size} files, DataLoader 4 workers, median of {args.repeat}; "
          f"SeaweedFS on loopback; {os.cpu_count()} cores, shared VM")
    plain = statistics.median(results["plain"])
    print(f"{'case':<24}{'files/s':>10}{'vs plain':>10}")
    for name, values in results.items():
        med = statistics.median(values)
        print(f"{name:<24}{med:>10.1f}{med / plain:>10.2f}")
    print(f"{'(warm alone)':<24}{statistics.median(warm_alone):>10.1f}")


if __name__ == "__main__":
    main()
