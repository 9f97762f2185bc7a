"""Where an epoch's CPU goes: the tierfs daemon's (by thread, user and kernel), the store's, the machine's.

    .venv/bin/python benchmarks/daemon_cpu.py --side objects --epochs cold,warm,warm
    .venv/bin/python benchmarks/daemon_cpu.py --side members
    .venv/bin/python benchmarks/daemon_cpu.py --side sequential --epochs cold,cold,cold

On a machine of two cores every cold workload here is short of CPU, not of
the store: a change that saves the daemon CPU shows here before it shows in
files/s. Starts SeaweedFS's S3 gateway on loopback and one tierfs mount
(``--shard-members wds``), uploads the data of benchmarks/shard_members.py
(small files as separate objects and packed in tar shards) or, for
``sequential``, one object of ``--big`` bytes, and runs the epochs listed on
that one mount: ``cold`` remounts with an empty cache first, ``warm`` keeps
tierfs' tiers and drops only the page cache. A DataLoader epoch (4 workers,
random order, bytes verified) for the small files; one reader, 1 MiB reads,
for ``sequential``. Each epoch prints files/s (or MiB/s), the daemon's CPU
seconds by thread name (``python``: the event loop and the fill workers;
``Trio thread``: trio's worker threads; ``tokio-rt-worker``: obstore's),
SeaweedFS's, and how busy the machine was. Unmounts and stops everything it
started, by PID, even on failure. Needs root (to drop the page cache).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import BUCKET, System, drop_caches, unmount_all
from shard_members import make_data, run_loader

from tierfs.config import parse_size

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import SeaweedS3

HZ = os.sysconf("SC_CLK_TCK")
SIDES = {"objects": "separate objects", "members": "tar shard members", "sequential": ""}


def machine() -> tuple[int, int]:
    """(all jiffies, idle jiffies) of the whole machine since boot."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v), v[3] + v[4]


def threads(pid: int) -> dict[tuple[str, str], tuple[int, int]]:
    """(tid, name) -> (user, system) jiffies of each thread of ``pid``."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                raw = f.read()
        except OSError:
            continue  # (a thread that ended meanwhile)
        fields = raw.rsplit(")", 1)[1].split()
        out[(tid, raw[raw.index("(") + 1 : raw.rindex(")")])] = (int(fields[11]), int(fields[12]))
    return out


def by_name(before: dict[tuple[str, str], tuple[int, int]], after: dict[tuple[str, str], tuple[int, int]]) -> str:
    spent: collections.Counter[str] = collections.Counter()
    for key, (user, system) in after.items():
        u0, s0 = before.get(key, (0, 0))
        name = key[1].rstrip("0123456789 -_")
        spent[f"{name} user"] += user - u0
        spent[f"{name} sys"] += system - s0
    return ", ".join(f"{k} {v / HZ:.2f}" for k, v in spent.most_common() if v)


def cpu_of(pid: int) -> float:
    return sum(u + s for u, s in threads(pid).values()) / HZ


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", choices=sorted(SIDES), default="objects")
    ap.add_argument("--epochs", default="cold,warm", help="comma-separated: cold (empty cache) or warm")
    ap.add_argument("--small", type=int, default=2000)
    ap.add_argument("--small-size", default="100KiB")
    ap.add_argument("--per-shard", type=int, default=500)
    ap.add_argument("--big", default="256MiB", help="the object --side sequential reads")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    epochs = [e.strip() for e in args.epochs.split(",") if e.strip()]
    if not epochs or set(epochs) - {"cold", "warm"}:
        sys.exit("daemon_cpu.py: --epochs takes cold and warm, comma-separated")

    work = Path(tempfile.mkdtemp(prefix="tierfs-cpu-", dir=args.work))
    server = SeaweedS3(work / "weed")
    runners: list[System] = []
    try:
        rels: list[str] = []
        hashes: dict[str, str] = {}
        if args.side == "sequential":
            objects = {"big/one.bin": os.urandom(parse_size(args.big))}
        else:
            objects, paths, hashes = make_data(args.small, parse_size(args.small_size), args.per_shard)
            rels = paths[SIDES[args.side]]
        server.start()
        print("uploading to SeaweedFS ...", file=sys.stderr)
        fs = server.fs()
        fs.mkdir(BUCKET)
        fs.pipe({f"{BUCKET}/{k}": v for k, v in objects.items()})
        size = sum(len(v) for v in objects.values()) if not rels else len(rels) * parse_size(args.small_size)
        del objects
        if rels:
            import torch  # noqa: F401 - imported before the first epoch, whose time it would be part of
        tierfs = System("tierfs", work, server, work / "unused", extra=("--shard-members", "wds"))
        runners = [tierfs]
        print(f"{args.side}: {len(rels) or 1} files, {size / 2**20:.0f} MiB; SeaweedFS S3 on loopback; "
              f"{os.cpu_count()} cores; CPU seconds in each epoch")
        for epoch in epochs:
            if epoch == "cold" or tierfs.pid is None:
                tierfs.umount(clear=True)
                tierfs.mount()
                os.stat(tierfs.root)
            drop_caches()
            assert tierfs.pid is not None and server.proc is not None
            t_before, m_before, w_before = threads(tierfs.pid), machine(), cpu_of(server.proc.pid)
            t0 = time.perf_counter()
            if rels:
                rate = f"{run_loader(tierfs.root, rels, hashes):7.0f} files/s"
            else:
                with open(tierfs.root / "big/one.bin", "rb", buffering=0) as f:
                    while f.read(1 << 20):
                        pass
                rate = f"{size / 2**20 / (time.perf_counter() - t0):7.0f} MiB/s"
            elapsed = time.perf_counter() - t0
            m_after = machine()
            busy = 1 - (m_after[1] - m_before[1]) / max(1, m_after[0] - m_before[0])
            print(f"{epoch:<5} {rate} in {elapsed:5.2f} s; machine {100 * busy:3.0f}% busy; "
                  f"SeaweedFS {cpu_of(server.proc.pid) - w_before:.2f}; "
                  f"daemon: {by_name(t_before, threads(tierfs.pid))}")
        tierfs.umount(clear=True)
    finally:
        unmount_all(runners)
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
