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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1GiB", help="checkpoint size")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    size = parse_size(args.size)
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
