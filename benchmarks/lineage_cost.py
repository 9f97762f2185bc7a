"""What read-set recording costs on the read path: opens/s of small warm files with and without a lineage job.

    .venv/bin/python benchmarks/lineage_cost.py --files 2000 --size 4KiB --rounds 7

Mounts a file:// lake, reads every file once (the tiers and the kernel's
page cache hold them), then times rounds of open + read + close of every
file on one thread, so each round is one FUSE OPEN per file and nothing
else of note. Rounds alternate: no job, then a job started before the
round (its first open of every file: a set check and an append each), then
the same job again (every open already recorded: a set check only). Each
job is stopped after its rounds (flushing to the lake is not on the read
path and is not timed). Prints the median opens/s of each kind and the
ratios. Every read is checked against the source; the mount is unmounted
and everything removed, even on failure.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tierfs.config import parse_size

TIERFS = [sys.executable, "-m", "tierfs"]


def one_round(mnt: Path, names: list[str], data: dict[str, bytes]) -> float:
    t0 = time.perf_counter()
    for rel in names:
        fd = os.open(mnt / rel, os.O_RDONLY)
        try:
            if os.read(fd, 1 << 20) != data[rel]:
                raise AssertionError(f"wrong bytes for {rel}")
        finally:
            os.close(fd)
    return len(names) / (time.perf_counter() - t0)


def tierfs(*args: str) -> None:
    subprocess.run([*TIERFS, *args], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--size", default="4KiB")
    ap.add_argument("--rounds", type=int, default=7, help="rounds of each kind")
    args = ap.parse_args()
    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="tierfs-lineage-bench-"))
    lake, mnt, cache = work / "lake", work / "mnt", work / "cache"
    rng = random.Random(7)
    data = {f"d{i % 20:02d}/{i:06d}.bin": rng.randbytes(size) for i in range(args.files)}
    for rel, b in data.items():
        (lake / rel).parent.mkdir(parents=True, exist_ok=True)
        (lake / rel).write_bytes(b)
    mnt.mkdir()
    names = sorted(data)
    rates: dict[str, list[float]] = {"off": [], "first open": [], "recorded": []}
    try:
        tierfs("mount", f"file://{lake}", str(mnt), "--cache-dir", str(cache))
        try:
            one_round(mnt, names, data)  # warm: tiers, page cache, lookups
            one_round(mnt, names, data)
            for i in range(args.rounds):
                rates["off"].append(one_round(mnt, names, data))
                tierfs("lineage", "start", f"bench-{i}", str(mnt), "--flush-seconds", "60")
                rates["first open"].append(one_round(mnt, names, data))
                rates["recorded"].append(one_round(mnt, names, data))
                tierfs("lineage", "stop", f"bench-{i}", str(mnt))
        finally:
            subprocess.run([*TIERFS, "umount", str(mnt)], check=False, stdout=subprocess.DEVNULL)
    finally:
        if mnt.is_mount():
            subprocess.run(["fusermount3", "-uz", str(mnt)], check=False)
        shutil.rmtree(work, ignore_errors=True)
    base = statistics.median(rates["off"])
    print(f"{args.files} files of {args.size}, {args.rounds} rounds each, one thread (open + read + close)")
    for kind, values in rates.items():
        med = statistics.median(values)
        print(f"  {kind:<11} {med:9.0f} opens/s  (x{med / base:.3f} of no job; "
              f"rounds {min(values):.0f}..{max(values):.0f})")


if __name__ == "__main__":
    sys.exit(main())
