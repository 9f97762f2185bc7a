"""tierfs against local disk, rclone mount and s3fs-fuse, on one S3 server, in one run.

    .venv/bin/python benchmarks/peers.py --small 2000 --shards 2 --shard-size 256MiB --repeat 3

Starts SeaweedFS's S3 gateway on loopback, uploads an ML-shaped dataset
(small files in class folders, a 5,000-entry folder, large shards), and
measures each system on the workloads below, each cold (fresh mount, empty
caches, page cache dropped), warm (the next epoch) and warm-from-disk (page
cache dropped, the system's own caches kept). Every read is checked against
the source's hash. Prints medians and the ratios tierfs/local and
tierfs/best peer. Unmounts and stops everything it started, by PID, even on
failure. Needs root (to drop the page cache), fuse3, rclone and s3fs.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import xxhash

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import SeaweedS3

from tierfs.config import parse_size

BUCKET = "bench-lake"
SYSTEMS = ("local", "tierfs", "rclone", "s3fs")
PHASES = ("cold", "warm", "warm-from-disk")


def drop_caches() -> None:
    subprocess.run(["sync"], check=False)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def is_mounted(p: Path) -> bool:
    with open("/proc/self/mountinfo") as fh:
        return any(line.split()[4] == str(p) for line in fh)


class Dataset:
    def __init__(self, root: Path, small: int, small_size: int, shards: int, shard_size: int):
        rng = random.Random(1)
        self.files: dict[str, str] = {}  # rel -> xxh3 hex
        self.small = [f"train/c{i % 20:02d}/{i:06d}.jpg" for i in range(small)]
        self.shards = [f"shards/shard-{i:03d}.tar" for i in range(shards)]
        self.big_dir = "listing5k"
        for rel in self.small:
            self._write(root, rel, rng.randbytes(small_size))
        for i in range(5000):
            self._write(root, f"{self.big_dir}/{i:05d}.txt", b"%05d" % i)
        for rel in self.shards:
            self._write(root, rel, os.urandom(shard_size))

    def _write(self, root: Path, rel: str, data: bytes) -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        self.files[rel] = xxhash.xxh3_64_hexdigest(data)


def check(ds: Dataset, rel: str, data: bytes) -> None:
    if xxhash.xxh3_64_hexdigest(data) != ds.files[rel]:
        raise AssertionError(f"wrong bytes for {rel}")


# -- workloads: each returns (value, unit) ------------------------------------------------
def seq_read(root: Path, ds: Dataset, readers: int) -> tuple[float, str]:
    def one(i: int) -> int:
        rel = ds.shards[i % len(ds.shards)]
        h, n = xxhash.xxh3_64(), 0
        with open(root / rel, "rb", buffering=0) as fh:
            while chunk := fh.read(4 << 20):
                h.update(chunk)
                n += len(chunk)
        if h.hexdigest() != ds.files[rel]:
            raise AssertionError(f"wrong bytes for {rel}")
        return n

    t0 = time.perf_counter()
    with ThreadPoolExecutor(readers) as pool:
        total = sum(pool.map(one, range(readers)))
    return total / (time.perf_counter() - t0) / 1e6, "MB/s"


def random_read(root: Path, ds: Dataset, threads: int) -> tuple[float, str]:
    order = ds.small[:]
    random.Random(2).shuffle(order)

    def one(rel: str) -> None:
        check(ds, rel, (root / rel).read_bytes())

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, order))
    return len(order) / (time.perf_counter() - t0), "files/s"


class _Files:
    def __init__(self, root: Path, rels: list[str]):
        self.root, self.rels = root, rels

    def __len__(self) -> int:
        return len(self.rels)

    def __getitem__(self, i: int) -> tuple[str, bytes]:
        return self.rels[i], (self.root / self.rels[i]).read_bytes()


def dataloader(root: Path, ds: Dataset) -> tuple[float, str]:
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    data = _Files(root, ds.small)
    loader = DataLoader(data, sampler=RandomSampler(data, generator=torch.Generator().manual_seed(3)),  # type: ignore[arg-type]
                        num_workers=4, batch_size=None)
    t0 = time.perf_counter()
    n = 0
    for rel, payload in loader:
        check(ds, rel, payload)
        n += 1
    return n / (time.perf_counter() - t0), "files/s"


def walk(root: Path, ds: Dataset) -> tuple[float, str]:
    t0 = time.perf_counter()
    n = 0
    for d, _dirs, files in os.walk(root):
        for f in files:
            os.stat(os.path.join(d, f))
            n += 1
    if n < len(ds.files):
        raise AssertionError(f"walk saw {n} files, expected {len(ds.files)}")
    return n / (time.perf_counter() - t0), "files/s"


def list_big(root: Path, ds: Dataset) -> tuple[float, str]:
    t0 = time.perf_counter()
    names = os.listdir(root / ds.big_dir)
    if len(names) != 5000:
        raise AssertionError(f"listing saw {len(names)} entries")
    return 5000 / (time.perf_counter() - t0), "entries/s"


def ttfb(root: Path, ds: Dataset) -> tuple[float, str]:
    times = []
    for rel in random.Random(4).sample(ds.small, 5):
        t0 = time.perf_counter()
        with open(root / rel, "rb") as fh:
            first = fh.read(1)
        times.append(time.perf_counter() - t0)
        if not first:
            raise AssertionError(f"{rel}: no first byte")
    return 1000 * statistics.median(times), "ms (lower is better)"


WORKLOADS: list[tuple[str, Callable[[Path, Dataset], tuple[float, str]]]] = [
    ("sequential shard read, 1 reader", lambda r, d: seq_read(r, d, 1)),
    ("sequential shard read, 4 readers", lambda r, d: seq_read(r, d, 4)),
    ("random small files, 1 thread", lambda r, d: random_read(r, d, 1)),
    ("random small files, 8 threads", lambda r, d: random_read(r, d, 8)),
    ("DataLoader num_workers=4", dataloader),
    ("os.walk + stat", walk),
    ("list a 5,000-entry folder", list_big),
    ("time to first byte", ttfb),
]


# -- systems -------------------------------------------------------------------------------
class System:
    def __init__(self, name: str, work: Path, server: SeaweedS3, local: Path, writable: bool = False):
        self.name, self.work, self.server, self.local = name, work, server, local
        self.writable = writable
        self.mnt = work / f"mnt-{name}"
        self.cache = work / f"cache-{name}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None

    @property
    def root(self) -> Path:
        return self.local if self.name == "local" else self.mnt

    def mount(self) -> None:
        if self.name == "local":
            return
        self.mnt.mkdir(parents=True, exist_ok=True)
        self.cache.mkdir(parents=True, exist_ok=True)
        s = self.server
        if self.name == "tierfs":
            cfg = s.s3_config(self.work / "tierfs.toml")
            subprocess.run([sys.executable, "-m", "tierfs", "mount", f"s3://{BUCKET}", str(self.mnt),
                            "--config", str(cfg), "--cache-dir", str(self.cache), "--cache-size", "20GiB",
                            "--ram-size", "2GiB", *([] if self.writable else ["--read-only"])],
                           check=True, stdout=subprocess.DEVNULL)
            self.pid = int(os.getxattr(self.mnt, "user.tierfs.pid"))
            return
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}  # rclone refuses it
        if self.name == "rclone":
            remote = (f":s3,provider=Other,endpoint='{s.endpoint}',access_key_id={s.ACCESS_KEY},"
                      f"secret_access_key={s.SECRET_KEY}:{BUCKET}")
            cmd = ["rclone", "mount", remote, str(self.mnt), "--vfs-cache-mode", "full",
                   "--cache-dir", str(self.cache), "--dir-cache-time", "1h", "--attr-timeout", "1h",
                   "--vfs-cache-max-size", "20G", *(["--vfs-write-back", "0s"] if self.writable else ["--read-only"])]
        else:
            pw = self.work / "s3fs.passwd"
            pw.write_text(f"{s.ACCESS_KEY}:{s.SECRET_KEY}\n")
            pw.chmod(0o600)
            cmd = ["s3fs", BUCKET, str(self.mnt), "-f", "-o", f"url={s.endpoint}", "-o", "use_path_request_style",
                   "-o", f"passwd_file={pw}", "-o", f"use_cache={self.cache}", *([] if self.writable else ["-o", "ro"])]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + 30
        while not is_mounted(self.mnt):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} mount did not come up")
            time.sleep(0.1)

    def umount(self, clear: bool) -> None:
        if self.name == "local":
            return
        if is_mounted(self.mnt):
            subprocess.run(["fusermount3", "-u", str(self.mnt)], capture_output=True, check=False)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            self.proc = None
        if self.pid is not None:
            deadline = time.monotonic() + 30
            while Path(f"/proc/{self.pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            self.pid = None
        if is_mounted(self.mnt):
            subprocess.run(["fusermount3", "-uz", str(self.mnt)], capture_output=True, check=False)
        if clear:
            shutil.rmtree(self.cache, ignore_errors=True)


def unmount_all(runners: list[System]) -> None:
    """Unmount and stop every system, whatever failed; say what could not be cleaned."""
    for sysm in runners:
        try:
            sysm.umount(clear=True)
        except Exception as exc:
            print(f"cleanup of {sysm.name}: {exc}", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", type=int, default=2000, help="small files")
    ap.add_argument("--small-size", default="100KiB")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--shard-size", default="256MiB")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the median is shown")
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    systems = args.systems.split(",")

    work = Path(tempfile.mkdtemp(prefix="tierfs-peers-", dir=args.work))
    server = SeaweedS3(work / "weed")
    runners: list[System] = []
    results: dict[tuple[str, str, str], list[float]] = {}
    units: dict[str, str] = {}
    try:
        local = work / "local"
        print(f"making the dataset in {local} ...", file=sys.stderr)
        ds = Dataset(local, args.small, parse_size(args.small_size), args.shards, parse_size(args.shard_size))
        server.start()
        print("uploading it to SeaweedFS ...", file=sys.stderr)
        fs = server.fs()
        fs.mkdir(BUCKET)
        fs.put(str(local) + "/", f"{BUCKET}/", recursive=True)
        runners = [System(n, work, server, local) for n in systems]
        for name, fn in WORKLOADS:
            for sysm in runners:
                for _ in range(args.repeat):
                    # cold: fresh mount, empty caches, page cache dropped
                    sysm.umount(clear=True)
                    sysm.mount()
                    drop_caches()
                    v, unit = fn(sysm.root, ds)
                    results.setdefault((name, "cold", sysm.name), []).append(v)
                    v, unit = fn(sysm.root, ds)  # the next epoch
                    results.setdefault((name, "warm", sysm.name), []).append(v)
                    drop_caches()
                    v, unit = fn(sysm.root, ds)
                    results.setdefault((name, "warm-from-disk", sysm.name), []).append(v)
                    units[name] = unit
                print(f"  {name}: {sysm.name} done", file=sys.stderr)
                sysm.umount(clear=True)
    finally:
        unmount_all(runners)
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\ntierfs vs peers: {args.small} x {args.small_size} files, {args.shards} x {args.shard_size} shards, "
          f"median of {args.repeat}; SeaweedFS S3 on loopback; {os.cpu_count()} cores, shared VM")
    peers = [s for s in systems if s in ("rclone", "s3fs")]
    head = f"{'workload':<34}{'phase':<16}" + "".join(f"{s:>10}" for s in systems) + f"{'tfs/local':>11}{'tfs/peer':>10}  unit"
    print(head)
    print("-" * len(head))
    for name, _fn in WORKLOADS:
        lower_better = "lower" in units.get(name, "")
        for phase in PHASES:
            med = {s: statistics.median(results[(name, phase, s)]) for s in systems if (name, phase, s) in results}
            row = f"{name:<34}{phase:<16}" + "".join(f"{med.get(s, float('nan')):>10.1f}" for s in systems)
            t = med.get("tierfs")
            if t and "local" in med:
                row += f"{(med['local'] / t if lower_better else t / med['local']):>11.2f}"
            if t and peers:
                best = min(med[p] for p in peers) if lower_better else max(med[p] for p in peers)
                row += f"{(best / t if lower_better else t / best):>10.2f}"
            print(row + f"  {units.get(name, '')}")


if __name__ == "__main__":
    main()
