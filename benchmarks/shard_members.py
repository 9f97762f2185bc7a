"""A cold DataLoader over the members of tar shards against the same files as separate objects (issue 18).

    PYTHONPATH=. .venv/bin/python benchmarks/shard_members.py --small 2000 --small-size 100KiB --per-shard 500

Starts SeaweedFS's S3 gateway on loopback (as benchmarks/peers.py does) and
uploads one set of small files twice: as separate objects
(``files/cNN/NNNNNN.jpg``) and packed into tar shards (``wds/shard-NNN.tar``,
WebDataset's layout: ``NNNNNN.jpg`` members). One tierfs mount with
``--shard-members wds`` serves both. Each measurement is cold: a fresh mount,
an empty cache, the page cache dropped; a DataLoader (4 workers) reads every
file once in a random order, and every file's bytes are checked against the
source's hash. Prints files/s of each side and their ratio. Unmounts and
stops everything it started, by PID, even on failure. Needs root (to drop
the page cache) and fuse3.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import xxhash

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import BUCKET, System, _Files, drop_caches, unmount_all

from tierfs.config import parse_size

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import SeaweedS3


def make_data(n: int, size: int, per_shard: int) -> tuple[dict[str, bytes], dict[str, list[str]], dict[str, str]]:
    """The objects to upload, the paths each side reads (files, members) and every path's hash."""
    rng = random.Random(1)
    objects: dict[str, bytes] = {}
    hashes: dict[str, str] = {}
    paths: dict[str, list[str]] = {"separate objects": [], "tar shard members": []}
    for start in range(0, n, per_shard):
        shard = f"wds/shard-{start // per_shard:03d}.tar"
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(start, min(n, start + per_shard)):
                data = rng.randbytes(size)
                rel = f"files/c{i % 20:02d}/{i:06d}.jpg"
                objects[rel] = data
                info = tarfile.TarInfo(f"{i:06d}.jpg")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                member = f"{shard}/{i:06d}.jpg"
                hashes[rel] = hashes[member] = xxhash.xxh3_64_hexdigest(data)
                paths["separate objects"].append(rel)
                paths["tar shard members"].append(member)
        objects[shard] = buf.getvalue()
    return objects, paths, hashes


def run_loader(root: Path, rels: list[str], hashes: dict[str, str]) -> float:
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    data = _Files(root, rels)
    loader = DataLoader(data, sampler=RandomSampler(data, generator=torch.Generator().manual_seed(3)),  # type: ignore[arg-type]
                        num_workers=4, batch_size=None)
    t0 = time.perf_counter()
    n = 0
    for rel, payload in loader:
        if xxhash.xxh3_64_hexdigest(payload) != hashes[rel]:
            raise AssertionError(f"wrong bytes for {rel}")
        n += 1
    if n != len(rels):
        raise AssertionError(f"read {n} of {len(rels)} files")
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", type=int, default=2000, help="small files")
    ap.add_argument("--small-size", default="100KiB")
    ap.add_argument("--per-shard", type=int, default=500, help="files packed into each tar shard")
    ap.add_argument("--repeat", type=int, default=1, help="cold runs of each side; the median is shown")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--warm", action="store_true",
                    help="also a second epoch on each mount (page cache dropped, tierfs' own tiers warm): "
                         "what the cold epoch would be without the store and the member index build")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tierfs-shards-", dir=args.work))
    server = SeaweedS3(work / "weed")
    runners: list[System] = []
    results: dict[str, list[float]] = {}
    try:
        objects, paths, hashes = make_data(args.small, parse_size(args.small_size), args.per_shard)
        server.start()
        print("uploading to SeaweedFS ...", file=sys.stderr)
        fs = server.fs()
        fs.mkdir(BUCKET)
        fs.pipe({f"{BUCKET}/{k}": v for k, v in objects.items()})
        del objects
        tierfs = System("tierfs", work, server, work / "unused", extra=("--shard-members", "wds"))
        runners = [tierfs]
        for _ in range(args.repeat):
            for side, rels in paths.items():
                tierfs.umount(clear=True)
                tierfs.mount()
                os.stat(tierfs.root)
                drop_caches()
                results.setdefault(side, []).append(run_loader(tierfs.root, rels, hashes))
                print(f"  {side}: {results[side][-1]:.1f} files/s", file=sys.stderr)
                if args.warm:
                    drop_caches()
                    results.setdefault(f"{side}, warm", []).append(run_loader(tierfs.root, rels, hashes))
                    print(f"  {side}, warm: {results[f'{side}, warm'][-1]:.1f} files/s", file=sys.stderr)
        tierfs.umount(clear=True)
    finally:
        unmount_all(runners)
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    shards = -(-args.small // args.per_shard)
    print(f"\ncold DataLoader (4 workers, random order, bytes verified): {args.small} x {args.small_size} files; "
          f"{shards} tar shards of {args.per_shard}; median of {args.repeat}; SeaweedFS S3 on loopback; "
          f"{os.cpu_count()} cores, shared VM")
    med = {side: statistics.median(v) for side, v in results.items()}
    for side, v in med.items():
        print(f"{side:<28}{v:>10.1f} files/s")
    print(f"{'members / objects':<28}{med['tar shard members'] / med['separate objects']:>10.2f} x")


if __name__ == "__main__":
    main()
