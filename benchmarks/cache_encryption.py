"""What an encrypted disk cache costs: a warm-from-disk epoch with and without `[cache] encryption_key_file`.

    .venv/bin/python benchmarks/cache_encryption.py --files 2000 --size 100KiB --shard 256MiB --repeat 5

Mounts a file:// lake with the RAM tier off, reads everything once (the disk
tier fills), then measures epochs served from the disk tier with the page
cache dropped before each: small files on 8 threads, and one shard read
sequentially. Once with a cache key (AES-256-GCM) and once without, in the
same run; prints medians and the ratio. The second system measured pays for
the first one's writes still settling on a small VM: run it both ways
(``--encrypted-first``). Every read is checked against the
source; everything is unmounted and removed, even on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import xxhash

from tierfs.config import parse_size

TIERFS = [sys.executable, "-m", "tierfs"]


def drop_caches() -> None:
    subprocess.run(["sync"], check=False)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def epoch_small(mnt: Path, names: list[str], sums: dict[str, str]) -> float:
    def one(rel: str) -> None:
        if xxhash.xxh3_64_hexdigest((mnt / rel).read_bytes()) != sums[rel]:
            raise AssertionError(f"wrong bytes for {rel}")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, names))
    return len(names) / (time.perf_counter() - t0)


def epoch_shard(mnt: Path, rel: str, want: str) -> float:
    h, n = xxhash.xxh3_64(), 0
    t0 = time.perf_counter()
    with open(mnt / rel, "rb", buffering=0) as fh:
        while chunk := fh.read(4 << 20):
            h.update(chunk)
            n += len(chunk)
    if h.hexdigest() != want:
        raise AssertionError(f"wrong bytes for {rel}")
    return n / (time.perf_counter() - t0) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--size", default="100KiB")
    ap.add_argument("--shard", default="256MiB")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--encrypted-first", action="store_true",
                    help="measure the encrypted cache first (the order matters on a small VM: run both)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tierfs-crypt-", dir=args.work))
    lake, mnt = work / "lake", work / "mnt"
    mnt.mkdir()
    sums: dict[str, str] = {}
    try:
        size = parse_size(args.size)
        names = [f"train/c{i % 20:02d}/{i:06d}.jpg" for i in range(args.files)]
        for rel in [*names, "shards/shard-000.tar"]:
            data = os.urandom(parse_size(args.shard) if rel.startswith("shards/") else size)
            (lake / rel).parent.mkdir(parents=True, exist_ok=True)
            (lake / rel).write_bytes(data)
            sums[rel] = xxhash.xxh3_64_hexdigest(data)
        key = work / "cache.key"
        key.write_text(os.urandom(32).hex())
        key.chmod(0o600)
        results: dict[tuple[str, str], list[float]] = {}
        for mode in ("encrypted", "plain") if args.encrypted_first else ("plain", "encrypted"):
            cfg = work / f"{mode}.toml"
            cfg.write_text(f'[cache]\nencryption_key_file = "{key}"\n' if mode == "encrypted" else "")
            cache = work / f"cache-{mode}"
            subprocess.run([*TIERFS, "mount", f"file://{lake}", str(mnt), "--cache-dir", str(cache), "--ram-size", "0",
                            "--config", str(cfg)], check=True, stdout=subprocess.DEVNULL)
            try:
                epoch_small(mnt, names, sums)  # fills the disk tier
                epoch_shard(mnt, "shards/shard-000.tar", sums["shards/shard-000.tar"])
                stats = json.loads(os.getxattr(mnt, "user.tierfs.stats"))
                while stats["fills"]["pending_bytes"]:
                    time.sleep(0.05)
                    stats = json.loads(os.getxattr(mnt, "user.tierfs.stats"))
                missed = stats["tiers"]["disk"]["misses"]
                for _ in range(args.repeat):
                    drop_caches()
                    results.setdefault(("small files, 8 threads", mode), []).append(epoch_small(mnt, names, sums))
                    drop_caches()
                    results.setdefault(("shard, 1 reader", mode), []).append(
                        epoch_shard(mnt, "shards/shard-000.tar", sums["shards/shard-000.tar"]))
                stats = json.loads(os.getxattr(mnt, "user.tierfs.stats"))
                reads = args.repeat * (len(names) + parse_size(args.shard) // (4 << 20))
                if stats["tiers"]["disk"]["misses"] - missed > reads // 50:  # (a few fills dropped while filling)
                    raise AssertionError(f"{mode}: epochs were not served by the disk tier "
                                         f"({stats['tiers']['disk']['misses'] - missed} misses)")
            finally:
                subprocess.run([*TIERFS, "umount", str(mnt)], check=False, stdout=subprocess.DEVNULL)
    finally:
        if mnt.is_mount():
            subprocess.run(["fusermount3", "-uz", str(mnt)], check=False)
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nwarm-from-disk epochs, {args.files} x {args.size} files and a {args.shard} shard, median of "
          f"{args.repeat}; RAM tier off, page cache dropped; {os.cpu_count()} cores, shared VM")
    print(f"{'workload':<26}{'plain':>10}{'encrypted':>11}{'ratio':>8}  unit")
    for name, unit in (("small files, 8 threads", "files/s"), ("shard, 1 reader", "MB/s")):
        plain = statistics.median(results[(name, "plain")])
        enc = statistics.median(results[(name, "encrypted")])
        print(f"{name:<26}{plain:>10.1f}{enc:>11.1f}{enc / plain:>8.2f}  {unit}")


if __name__ == "__main__":
    main()
