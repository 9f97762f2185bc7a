"""Writing a checkpoint: tierfs against local disk, rclone mount and s3fs-fuse, in one run.

    .venv/bin/python benchmarks/checkpoint_write.py --size 1GiB --repeat 3

Saves a PyTorch checkpoint (``torch.save`` of a state dict of float32
tensors, SIZE in all) to local disk, to a tierfs mount of a local lake, and to
tierfs, rclone and s3fs-fuse mounts of the same SeaweedFS S3 bucket on
loopback. Two times per save:

- ``close``: until ``torch.save`` returned (the file is closed), which is
  what a training loop waits for;
- ``durable``: until the checkpoint is in the store. For tierfs and s3fs that
  is the same moment (close returns once the store has acknowledged the
  upload); rclone uploads after close, so the script waits until the object
  has its full size in the bucket. For local disk, ``durable`` adds an fsync.

Each checkpoint is read back (``torch.load`` from the store side) and compared
once. Prints medians and MiB/s, and tierfs' ratios to local disk. Unmounts and
stops everything it started, by PID, even on failure. Needs root, fuse3,
rclone, s3fs and torch.

    .venv/bin/python benchmarks/checkpoint_write.py --warm 3000 --size 512MiB

``--warm N`` measures instead what a checkpoint does to the dataset a job
reads: a tierfs mount of the bucket (default RAM tier, 512 MiB) reads N
files of 100 KiB into its RAM tier, then ``torch.save`` writes SIZE once
straight to its name and once to a temporary name renamed into place (as
Lightning and Hugging Face do). After each, once the tier fills are done,
the mount's stats say how many dataset blocks the RAM tier still holds
(none was read meanwhile: entries less evictions) and what the disk tier
took; then the checkpoint is read back through the mount (``torch.load``)
and compared, and the bytes that read fetched from the store are counted
(0: it was served from the disk tier, filled under the checkpoint's name),
with the RAM evictions the read-back's own promotions caused. Each case on a
fresh mount.
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import BUCKET, System, drop_caches, unmount_all

from tierfs.config import parse_size

SYSTEMS = ("local", "tierfs-local-lake", "tierfs", "rclone", "s3fs")


def _state(size: int) -> dict[str, object]:
    import torch

    torch.manual_seed(0)
    n = 4
    per = size // n // 4
    return {"model": {f"layer{i}.weight": torch.rand(per) for i in range(n)}, "step": 1000}


def _save(state: dict[str, object], path: Path, fsync: bool) -> float:
    import torch

    t0 = time.perf_counter()
    with open(path, "wb") as fh:
        torch.save(state, fh)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())
    return time.perf_counter() - t0


def _wait_in_bucket(fs: object, key: str, size: int, t0: float, timeout: float = 600) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if fs.size(key) == size:  # type: ignore[attr-defined]
                return time.perf_counter() - t0
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{key} did not reach the bucket")


def _stats(mnt: Path) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(os.getxattr(mnt, "user.tierfs.stats"))
    return out


def _settled(mnt: Path) -> dict[str, Any]:
    """The mount's stats once the tier fills queued behind the replies (and a checkpoint's disk fill) are done."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        s = _stats(mnt)
        if not s["fills"]["pending_bytes"] and not s["writes"]["staged_files"]:
            return s
        time.sleep(0.05)
    raise TimeoutError("tier fills did not settle")


def warm_dataset(files: int, size: int, work: Path) -> None:
    """--warm: the RAM tier's dataset blocks before and after a checkpoint write (and its read-back)."""
    import torch
    from helpers import SeaweedS3

    server = SeaweedS3(work / "weed")
    state = _state(size)
    rows = []
    try:
        server.start()
        fs = server.fs()
        fs.mkdir(BUCKET)
        data = {f"ds/c{i % 20:02d}/{i:06d}.jpg": os.urandom(100 << 10) for i in range(files)}
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda kv: fs.pipe(f"{BUCKET}/{kv[0]}", kv[1]), data.items()))
        cfg = server.s3_config(work / "s3.toml")
        for how in ("direct", "renamed"):  # each on a fresh mount, its dataset read into RAM first
            mnt, cache = work / f"mnt-{how}", work / f"cache-{how}"
            mnt.mkdir()
            subprocess.run([sys.executable, "-m", "tierfs", "mount", f"s3://{BUCKET}", str(mnt), "--config", str(cfg),
                            "--cache-dir", str(cache), "--cache-size", "20GiB"], check=True, stdout=subprocess.DEVNULL)
            try:
                for key, payload in data.items():
                    if (mnt / key).read_bytes() != payload:
                        raise AssertionError(f"wrong bytes for {key}")
                before = _settled(mnt)
                final = mnt / f"ckpt/{how}.pt"
                final.parent.mkdir(exist_ok=True)
                target = final.with_suffix(".tmp") if how == "renamed" else final
                t0 = time.perf_counter()
                torch.save(state, target)
                if how == "renamed":
                    os.rename(target, final)
                took = time.perf_counter() - t0
                s = _settled(mnt)
                drop_caches()
                back = torch.load(final, weights_only=True)
                if not all(torch.equal(back["model"][k], v) for k, v in state["model"].items()):  # type: ignore[attr-defined]
                    raise AssertionError(f"{final} reads back other bytes")
                after = _stats(mnt)
                # no dataset block is read meanwhile: what RAM held of it, less what it evicted
                rows.append((how, before["tiers"]["ram"]["entries"],
                             before["tiers"]["ram"]["entries"] - s["tiers"]["ram"]["evictions"], took,
                             s["tiers"]["disk"]["bytes_held"] - before["tiers"]["disk"]["bytes_held"],
                             after["backend"]["bytes"] - s["backend"]["bytes"],
                             after["tiers"]["ram"]["evictions"] - s["tiers"]["ram"]["evictions"]))
            finally:
                subprocess.run([sys.executable, "-m", "tierfs", "umount", str(mnt)], check=False,
                               stdout=subprocess.DEVNULL)
                shutil.rmtree(cache, ignore_errors=True)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\ncheckpoint vs a warm dataset: {files} x 100 KiB read into the RAM tier (512 MiB), then torch.save of "
          f"{size / 2**20:.0f} MiB, then torch.load of it; SeaweedFS S3 on loopback; {os.cpu_count()} cores, shared VM")
    head = (f"{'checkpoint':<10}{'dataset blocks in RAM':>23}{'after the save':>16}{'save s':>8}{'disk tier +MiB':>16}"
            f"{'load: store MiB':>17}{'load: RAM evictions':>21}")
    print(head)
    print("-" * len(head))
    for how, held, left, took, disk, fetched, evicted in rows:
        print(f"{how:<10}{held:>23}{left:>16}{took:>8.1f}{disk / 2**20:>16.0f}{fetched / 2**20:>17.0f}{evicted:>21}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1GiB", help="checkpoint size")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--warm", type=int, default=0, metavar="N",
                    help="measure the RAM tier's dataset blocks around a checkpoint write instead (N files)")
    args = ap.parse_args()
    size = parse_size(args.size)
    if args.warm:
        warm_dataset(args.warm, size, Path(tempfile.mkdtemp(prefix="tierfs-ckpt-", dir=args.work)))
        return
    systems = args.systems.split(",")
    work = Path(tempfile.mkdtemp(prefix="tierfs-ckpt-", dir=args.work))
    from helpers import SeaweedS3, mounted

    server = SeaweedS3(work / "weed")
    runners: list[System] = []
    close_t: dict[str, list[float]] = {}
    durable_t: dict[str, list[float]] = {}
    state = _state(size)
    try:
        server.start()
        fs = server.fs()
        fs.mkdir(BUCKET)
        local = work / "local"
        local.mkdir()
        lake = work / "lake"
        lake.mkdir()
        for name in systems:
            for i in range(args.repeat):
                drop_caches()
                key = f"ckpt/{name}-{i}.pt"
                if name == "local":
                    (local / "ckpt").mkdir(exist_ok=True)
                    close_t.setdefault(name, []).append(_save(state, local / f"{key}.a", fsync=False))
                    durable_t.setdefault(name, []).append(_save(state, local / key, fsync=True))
                    continue
                if name == "tierfs-local-lake":
                    with mounted(f"file://{lake}", work / "mnt-tl", work / "cache-tl", "--cache-size", "20GiB",
                                 "--ram-size", "2GiB") as m:
                        (m.mountpoint / "ckpt").mkdir(exist_ok=True)
                        t = _save(state, m.mountpoint / key, fsync=False)
                    close_t.setdefault(name, []).append(t)
                    durable_t.setdefault(name, []).append(t)
                    shutil.rmtree(work / "cache-tl", ignore_errors=True)
                    continue
                sysm = System(name, work, server, local, writable=True)
                runners.append(sysm)
                sysm.mount()
                try:
                    (sysm.root / "ckpt").mkdir(exist_ok=True)
                    t0 = time.perf_counter()
                    t = _save(state, sysm.root / key, fsync=False)
                    close_t.setdefault(name, []).append(t)
                    expected = (local / "ckpt/local-0.pt").stat().st_size if "local" in systems else None
                    durable = _wait_in_bucket(fs, f"{BUCKET}/{key}", expected, t0) if expected else t
                    durable_t.setdefault(name, []).append(durable)
                finally:
                    sysm.umount(clear=True)
            print(f"  {name} done", file=sys.stderr)
        # One read-back: what the store holds is the checkpoint.
        import torch

        key = f"{BUCKET}/ckpt/tierfs-0.pt"
        if "tierfs" in systems:
            fs.get(key, str(work / "check.pt"))
            back = torch.load(work / "check.pt", weights_only=True)
            assert all(torch.equal(back["model"][k], v) for k, v in state["model"].items())  # type: ignore[attr-defined]
    finally:
        unmount_all(runners)
        server.stop()
        subprocess.run(["sync"], check=False)
        shutil.rmtree(work, ignore_errors=True)

    mib = size / 2**20
    print(f"\ncheckpoint write: torch.save of {args.size} of tensors, median of {args.repeat}; "
          f"SeaweedFS S3 on loopback; {os.cpu_count()} cores, shared VM")
    head = f"{'system':<20}{'close s':>10}{'MiB/s':>9}{'durable s':>11}{'MiB/s':>9}{'close vs local':>16}{'durable vs local':>18}"
    print(head)
    print("-" * len(head))
    base_c = statistics.median(close_t["local"]) if "local" in close_t else None
    base_d = statistics.median(durable_t["local"]) if "local" in durable_t else None
    for name in systems:
        c, d = statistics.median(close_t[name]), statistics.median(durable_t[name])
        row = f"{name:<20}{c:>10.2f}{mib / c:>9.0f}{d:>11.2f}{mib / d:>9.0f}"
        if base_c and base_d:
            row += f"{base_c / c:>16.2f}{base_d / d:>18.2f}"
        print(row)


if __name__ == "__main__":
    main()
