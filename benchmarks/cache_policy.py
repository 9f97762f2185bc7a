"""Disk-tier hit ratio over three epochs of a dataset twice the cache size: lru vs stable.

    .venv/bin/python benchmarks/cache_policy.py --files 2000 --size 100KiB

Mounts a file:// lake with the RAM tier off and a disk cache half the size of
the dataset, reads every file three times (in the same order each epoch, and
in a new random order each epoch, as a shuffling sampler does), dropping the
page cache between epochs, and prints the disk tier's hit ratio per epoch for
each policy. Every read is checked; everything is unmounted and removed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tierfs.config import parse_size

TIERFS = [sys.executable, "-m", "tierfs"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--size", default="100KiB")
    args = ap.parse_args()
    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="tierfs-policy-"))
    lake, mnt = work / "lake", work / "mnt"
    mnt.mkdir()
    rng = random.Random(1)
    data = {}
    for i in range(args.files):
        rel = f"train/c{i % 10}/{i:06d}.jpg"
        (lake / rel).parent.mkdir(parents=True, exist_ok=True)
        data[rel] = rng.randbytes(size)
        (lake / rel).write_bytes(data[rel])
    total = args.files * size
    cache = total // 2
    print(f"{args.files} files of {args.size}: dataset {total / 1e6:.0f} MB, disk cache {cache / 1e6:.0f} MB, RAM tier off")
    print(f"{'order':<10}{'policy':<8}{'epoch 1':>9}{'epoch 2':>9}{'epoch 3':>9}   (disk-tier hit ratio)")
    try:
        for order in ("cyclic", "shuffled"):
            for policy in ("lru", "stable"):
                cfg = work / "c.toml"
                cfg.write_text(f'[cache]\npolicy = "{policy}"\n')
                cdir = work / f"cache-{policy}-{order}"
                subprocess.run([*TIERFS, "mount", f"file://{lake}", str(mnt), "--cache-dir", str(cdir),
                                "--cache-size", str(cache), "--ram-size", "0", "--block-size", "1MiB",
                                "--config", str(cfg)], check=True, stdout=subprocess.DEVNULL)
                try:
                    ratios = []
                    rels = sorted(data)
                    for epoch in range(3):
                        if order == "shuffled":
                            random.Random(epoch).shuffle(rels)
                        Path("/proc/sys/vm/drop_caches").write_text("3\n")
                        before = json.loads(os.getxattr(mnt, "user.tierfs.stats"))["tiers"]["disk"]
                        for rel in rels:
                            if (mnt / rel).read_bytes() != data[rel]:
                                raise AssertionError(f"wrong bytes for {rel}")
                        after = json.loads(os.getxattr(mnt, "user.tierfs.stats"))["tiers"]["disk"]
                        hits, misses = after["hits"] - before["hits"], after["misses"] - before["misses"]
                        ratios.append(hits / max(1, hits + misses))
                    print(f"{order:<10}{policy:<8}" + "".join(f"{r:>9.1%}" for r in ratios))
                finally:
                    subprocess.run([*TIERFS, "umount", str(mnt)], check=False, capture_output=True)
    finally:
        subprocess.run(["fusermount3", "-uz", str(mnt)], check=False, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
