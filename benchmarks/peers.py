"""tierfs against local disk, rclone mount, s3fs-fuse and the store itself, on one S3 server, in one run.

    .venv/bin/python benchmarks/peers.py --small 2000 --shards 2 --shard-size 256MiB --repeat 3

Starts SeaweedFS's S3 gateway on loopback, uploads an ML-shaped dataset
(small files in class folders, a 5,000-entry folder, large shards), and
measures each system on the workloads below, each cold (fresh mount, empty
caches, page cache dropped), warm (the next epoch) and warm-from-disk (page
cache dropped, the system's own caches kept). Every read is checked against
the source's hash. Prints medians and the ratios tierfs/local,
tierfs/best peer and tierfs/store. Unmounts and stops everything it started,
by PID, even on failure. Needs root (to drop the page cache), fuse3, rclone,
s3fs and fio (`apt-get install rclone s3fs fio`).

The ``store`` column is no file system: the same workloads read straight
from the bucket with obstore (Rust, no cache, the GIL released while it
waits), so every cold figure can be read against what the store and one
client give at best on this machine. It is measured cold only (with no cache,
the next epoch is the same reads again): small files are one GET each on N
threads; the DataLoader workers each make their own store after the fork;
shards are read in ranged 8 MiB GETs, one at a time per reader; "os.walk +
stat" is one recursive listing (sizes come with it) and the 5,000-entry
folder one delimited listing; time to first byte is a GET of bytes 0-1.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import xxhash

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import SeaweedS3

from tierfs.config import parse_size

# The DataLoader workloads run 4 workers on however many cores there are (2 here), as users do.
warnings.filterwarnings("ignore", "This DataLoader will create", UserWarning)

BUCKET = "bench-lake"
SYSTEMS = ("local", "tierfs", "rclone", "s3fs", "store")
# Also offered (--systems): tierfs-nopt, tierfs with [fuse] passthrough = false, to show what passthrough buys;
# tierfs-fastlist, tierfs with [metadata] fast_list = true (rclone mount runs without its --fast-list).
STORE_RANGE = 8 << 20  # the store column's shard reads: ranged GETs of this size
PHASES = ("cold", "warm", "warm-from-disk")
MOUNT = "mount -> ready"  # from the mount command to the root answering a stat; empty caches


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
        self.sizes: dict[str, int] = {}
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
        self.sizes[rel] = len(data)


def check(ds: Dataset, rel: str, data: Any) -> None:
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


def fio_random(root: Path, ds: Dataset) -> tuple[float, str]:
    """fio: random 4 KiB reads in a shard for 5 s, one job, plain pread (the page cache as the phase leaves it)."""
    shard = root / ds.shards[0]
    res = subprocess.run(["fio", "--name=rand4k", f"--filename={shard}", "--readonly", "--rw=randread", "--bs=4k",
                          "--ioengine=psync", "--numjobs=1", "--time_based", "--runtime=5", "--invalidate=0",
                          "--randseed=5", "--output-format=json"], capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        raise RuntimeError(f"fio failed: {res.stderr.strip()[-300:]}")
    job = json.loads(res.stdout)["jobs"][0]["read"]
    if job["io_bytes"] == 0:
        raise AssertionError("fio read nothing")
    return float(job["iops"]), "IOPS"


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


# -- the same workloads straight from the store (obstore, no cache) -----------------------
def make_store(endpoint: str, key: str, secret: str) -> Any:
    from obstore.store import S3Store

    return S3Store(BUCKET, endpoint=endpoint, access_key_id=key, secret_access_key=secret, region="us-east-1",
                   client_options={"allow_http": True})


def store_seq_read(store: Any, ds: Dataset, readers: int) -> tuple[float, str]:
    import obstore

    def one(i: int) -> int:
        rel = ds.shards[i % len(ds.shards)]
        h, n, size = xxhash.xxh3_64(), 0, ds.sizes[rel]
        while n < size:  # one ranged GET at a time, as a sequential reader asks for them
            chunk = obstore.get_range(store, rel, start=n, length=min(STORE_RANGE, size - n))
            h.update(chunk)
            n += len(chunk)
        if h.hexdigest() != ds.files[rel]:
            raise AssertionError(f"wrong bytes for {rel}")
        return n

    t0 = time.perf_counter()
    with ThreadPoolExecutor(readers) as pool:
        total = sum(pool.map(one, range(readers)))
    return total / (time.perf_counter() - t0) / 1e6, "MB/s"


def store_random_read(store: Any, ds: Dataset, threads: int) -> tuple[float, str]:
    import obstore

    order = ds.small[:]
    random.Random(2).shuffle(order)

    def one(rel: str) -> None:
        check(ds, rel, obstore.get(store, rel).bytes())

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, order))
    return len(order) / (time.perf_counter() - t0), "files/s"


class _StoreFiles:
    """The DataLoader's dataset for the store column: each worker process makes its own store."""

    def __init__(self, conn: dict[str, str], rels: list[str]):
        self.conn, self.rels = conn, rels
        self._store: Any = None
        self._pid = 0

    def __len__(self) -> int:
        return len(self.rels)

    def __getitem__(self, i: int) -> tuple[str, bytes]:
        import obstore

        if self._pid != os.getpid():  # first item in this (forked) worker
            self._store, self._pid = make_store(**self.conn), os.getpid()
        return self.rels[i], bytes(obstore.get(self._store, self.rels[i]).bytes())


def _store_dataloader_child(spec_path: str) -> None:
    """Runs in a fresh interpreter (see store_dataloader); prints files/s."""
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    spec = json.loads(Path(spec_path).read_text())
    data = _StoreFiles(spec["conn"], spec["small"])
    loader = DataLoader(data, sampler=RandomSampler(data, generator=torch.Generator().manual_seed(3)),  # type: ignore[arg-type]
                        num_workers=4, batch_size=None)
    t0 = time.perf_counter()
    n = 0
    for rel, payload in loader:
        if xxhash.xxh3_64_hexdigest(payload) != spec["files"][rel]:
            raise AssertionError(f"wrong bytes for {rel}")
        n += 1
    print(n / (time.perf_counter() - t0))


def store_dataloader(conn: dict[str, str], ds: Dataset, work: Path) -> tuple[float, str]:
    """The DataLoader workload on obstore. Its worker processes are forked, and a process
    forked after obstore's runtime started hangs in its first request: so the loader runs
    in a fresh interpreter that has made no store (its start-up is not timed), and each
    worker makes its store after the fork."""
    spec = work / "store-dataloader.json"
    spec.write_text(json.dumps({"conn": conn, "small": ds.small, "files": ds.files}))
    # run() kills the child (and so its workers, which watch their parent) on any failure
    res = subprocess.run([sys.executable, __file__, "--store-dataloader-child", str(spec)],
                         capture_output=True, text=True, timeout=1800, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"store DataLoader failed: {res.stderr[-2000:]}")
    return float(res.stdout.split()[-1]), "files/s"


def store_walk(store: Any, ds: Dataset) -> tuple[float, str]:
    import obstore

    t0 = time.perf_counter()
    n = sum(len(batch) for batch in obstore.list(store))
    if n < len(ds.files):
        raise AssertionError(f"listing saw {n} objects, expected {len(ds.files)}")
    return n / (time.perf_counter() - t0), "files/s"


def store_fio_random(store: Any, ds: Dataset) -> tuple[float, str]:
    """The store's 4 KiB random ranged GETs in a shard for 5 s, one at a time (what fio asks of a mount)."""
    import obstore

    rel, size = ds.shards[0], ds.sizes[ds.shards[0]]
    rng = random.Random(5)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 5:
        off = rng.randrange(0, size // 4096) * 4096
        if len(obstore.get_range(store, rel, start=off, length=4096)) != 4096:
            raise AssertionError(f"{rel}: short range")
        n += 1
    return n / (time.perf_counter() - t0), "IOPS"


def store_list_big(store: Any, ds: Dataset) -> tuple[float, str]:
    import obstore

    t0 = time.perf_counter()
    n = len(obstore.list_with_delimiter(store, ds.big_dir + "/")["objects"])
    if n != 5000:
        raise AssertionError(f"listing saw {n} entries")
    return 5000 / (time.perf_counter() - t0), "entries/s"


def store_ttfb(store: Any, ds: Dataset) -> tuple[float, str]:
    import obstore

    times = []
    for rel in random.Random(4).sample(ds.small, 5):
        t0 = time.perf_counter()
        first = obstore.get(store, rel, options={"range": (0, 1)}).bytes()
        times.append(time.perf_counter() - t0)
        if len(first) != 1:
            raise AssertionError(f"{rel}: no first byte")
    return 1000 * statistics.median(times), "ms (lower is better)"


Workload = Callable[[Path, Dataset], tuple[float, str]]
StoreWorkload = Callable[["System", Dataset], tuple[float, str]]
WORKLOADS: list[tuple[str, Workload, StoreWorkload]] = [
    ("sequential shard read, 1 reader", lambda r, d: seq_read(r, d, 1), lambda s, d: store_seq_read(s.store, d, 1)),
    ("sequential shard read, 4 readers", lambda r, d: seq_read(r, d, 4), lambda s, d: store_seq_read(s.store, d, 4)),
    ("random small files, 1 thread", lambda r, d: random_read(r, d, 1), lambda s, d: store_random_read(s.store, d, 1)),
    ("random small files, 8 threads", lambda r, d: random_read(r, d, 8),
     lambda s, d: store_random_read(s.store, d, 8)),
    ("DataLoader num_workers=4", dataloader, lambda s, d: store_dataloader(s.store_conn, d, s.work)),
    ("fio random 4 KiB reads, 1 job", fio_random, lambda s, d: store_fio_random(s.store, d)),
    ("os.walk + stat", walk, lambda s, d: store_walk(s.store, d)),
    ("list a 5,000-entry folder", list_big, lambda s, d: store_list_big(s.store, d)),
    ("time to first byte", ttfb, lambda s, d: store_ttfb(s.store, d)),
]


# -- systems -------------------------------------------------------------------------------
class System:
    def __init__(self, name: str, work: Path, server: SeaweedS3, local: Path, writable: bool = False,
                 extra: tuple[str, ...] = (), code: Path | None = None):
        self.name, self.work, self.server, self.local = name, work, server, local
        self.code = code  # a tierfs system: another checkout's package (a worktree of an older commit), or ours
        self.writable = writable
        self.extra = extra  # more `tierfs mount` flags (benchmarks/shard_members.py: --shard-members)
        self.mnt = work / f"mnt-{name}"
        self.cache = work / f"cache-{name}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self.store: Any = None  # the store column: an obstore S3Store, made at "mount"
        self.store_conn = {"endpoint": server.endpoint, "key": server.ACCESS_KEY, "secret": server.SECRET_KEY}

    @property
    def root(self) -> Path:
        return self.local if self.name == "local" else self.mnt

    def mount(self) -> None:
        if self.name == "local":
            return
        if self.name == "store":  # nothing to mount: a client with a fresh connection pool
            self.store = make_store(**self.store_conn)
            return
        self.mnt.mkdir(parents=True, exist_ok=True)
        self.cache.mkdir(parents=True, exist_ok=True)
        s = self.server
        if self.name.startswith("tierfs"):
            cfg = s.s3_config(self.work / f"{self.name}.toml")
            if self.name == "tierfs-nopt":
                cfg.write_text(cfg.read_text() + "\n[fuse]\npassthrough = false\n")
            if self.name == "tierfs-fastlist":
                cfg.write_text(cfg.read_text() + "\n[metadata]\nfast_list = true\n")
            subprocess.run([sys.executable, "-m", "tierfs", "mount", f"s3://{BUCKET}", str(self.mnt),
                            "--config", str(cfg), "--cache-dir", str(self.cache), "--cache-size", "20GiB",
                            "--ram-size", "2GiB", *([] if self.writable else ["--read-only"]), *self.extra],
                           check=True, stdout=subprocess.DEVNULL,
                           **({} if self.code is None else {"env": {**os.environ, "PYTHONPATH": str(self.code)},
                                                            "cwd": "/"}))
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
            time.sleep(0.005)

    def umount(self, clear: bool) -> None:
        self.store = None  # drops its connection pool
        if self.name in ("local", "store"):
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
    ap.add_argument("--baseline", type=Path, default=None, metavar="DIR",
                    help="also run the tierfs package of this checkout, as the system tierfs-before (an older "
                         "commit's worktree: git worktree add DIR COMMIT), so a change's before and after share a run")
    ap.add_argument("--workloads", default="", metavar="WORDS",
                    help="only the workloads whose name holds one of these comma-separated words "
                         "(e.g. 'small files,DataLoader'); default: all")
    args = ap.parse_args()
    systems = args.systems.split(",")
    if args.baseline is not None and "tierfs-before" not in systems:
        systems.insert(systems.index("tierfs") + 1 if "tierfs" in systems else 0, "tierfs-before")
    wanted = [w.strip().lower() for w in args.workloads.split(",") if w.strip()]
    workloads = [w for w in WORKLOADS if not wanted or any(x in w[0].lower() for x in wanted)]
    if not workloads:
        sys.exit(f"peers.py: no workload matches --workloads {args.workloads!r}; "
                 f"the workloads are: {'; '.join(w[0] for w in WORKLOADS)}")

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
        runners = [System(n, work, server, local, code=args.baseline.resolve() if n == "tierfs-before" else None)
                   for n in systems]
        for name, fn, store_fn in workloads:
            for sysm in runners:
                for _ in range(args.repeat):
                    # cold: fresh mount, empty caches, page cache dropped
                    sysm.umount(clear=True)
                    t0 = time.perf_counter()  # (each system's program and libraries are in the page cache by now)
                    sysm.mount()
                    if sysm.name not in ("local", "store"):
                        os.stat(sysm.root)  # ready: the root answers
                        results.setdefault((MOUNT, "cold", sysm.name), []).append(1000 * (time.perf_counter() - t0))
                    drop_caches()
                    if sysm.name == "store":  # no cache: only cold says anything
                        v, units[name] = store_fn(sysm, ds)
                        results.setdefault((name, "cold", sysm.name), []).append(v)
                        continue
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
    width = {s: max(10, len(s) + 2) for s in systems}
    head = (f"{'workload':<34}{'phase':<16}" + "".join(f"{s:>{width[s]}}" for s in systems)
            + f"{'tfs/local':>11}{'tfs/peer':>10}{'tfs/store':>11}  unit")
    print(head)
    print("-" * len(head))

    def ratio(t: float | None, other: float | None, lower_better: bool, width: int) -> str:
        if not t or not other:
            return f"{'-':>{width}}"
        return f"{(other / t if lower_better else t / other):>{width}.2f}"

    units[MOUNT] = "ms (lower is better)"
    for name in [w[0] for w in workloads] + [MOUNT]:
        lower_better = "lower" in units.get(name, "")
        for phase in PHASES:
            if not any((name, phase, s) in results for s in systems):
                continue
            med = {s: statistics.median(results[(name, phase, s)]) for s in systems if (name, phase, s) in results}
            row = f"{name:<34}{phase:<16}" + "".join(f"{med[s]:>{width[s]}.1f}" if s in med else f"{'-':>{width[s]}}"
                                                     for s in systems)
            t = med.get("tierfs")
            best = None
            if peers and all(p in med for p in peers):
                best = min(med[p] for p in peers) if lower_better else max(med[p] for p in peers)
            row += ratio(t, med.get("local"), lower_better, 11) + ratio(t, best, lower_better, 10)
            row += ratio(t, med.get("store"), lower_better, 11)
            print(row + f"  {units.get(name, '')}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--store-dataloader-child"]:
        _store_dataloader_child(sys.argv[2])
    else:
        main()
