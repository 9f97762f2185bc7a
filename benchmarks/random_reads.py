"""Cold random 4 KiB reads into one large file: tierfs beside local disk, rclone mount, s3fs-fuse and the store.

    .venv/bin/python benchmarks/random_reads.py --size 2GiB --repeat 3

Starts SeaweedFS's S3 gateway on loopback (as benchmarks/peers.py does) and
uploads one file of ``--size`` random bytes. For each system, each time on
a fresh mount with an empty cache (the page cache dropped for local disk):

- time to first byte: the median of 11 preads of 4 KiB, each into a 4 MiB
  block of the file not read before, on a file already open (the open's
  own cost apart), ``POSIX_FADV_RANDOM`` set as a random reader would;
- fio ``randread``, 4 KiB, psync, one job, 5 s: IOPS.

``tierfs`` is the default (a random read fetches a ``random_read_unit`` of
64 KiB); ``tierfs-whole`` is ``--random-read-unit 0``, every miss a whole
4 MiB block, as before. The store rows are 4 KiB ranged GETs with obstore,
one at a time. Every read's bytes are checked against the file. Unmounts
and stops everything it started, by PID, even on failure. Needs root (to
drop the page cache), fuse3 and fio; rclone and s3fs are left out with a
line saying so when missing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import BUCKET, System, drop_caches, make_store, unmount_all

from tierfs.config import parse_size

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import SeaweedS3

MiB = 1 << 20
KEY = "rand/big.bin"


def first_bytes(path: Path, data: bytes) -> float:
    """Median ms of 11 cold 4 KiB preads, each in a block not read before."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        time.sleep(1.0)  # what the open started (a first block) is done
        times = []
        for i in range(11):
            off = ((1 + i * 7) * 4 * MiB + 12345) % (len(data) - 4096)
            t0 = time.perf_counter()
            got = os.pread(fd, 4096, off)
            times.append(1000 * (time.perf_counter() - t0))
            if got != data[off:off + 4096]:
                raise AssertionError(f"{path}: wrong bytes at {off}")
    finally:
        os.close(fd)
    return statistics.median(times)


def fio_iops(path: Path) -> float:
    res = subprocess.run(["fio", "--name=rand4k", f"--filename={path}", "--readonly", "--rw=randread", "--bs=4k",
                          "--ioengine=psync", "--runtime=5", "--time_based", "--output-format=json"],
                         capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        raise RuntimeError(f"fio failed: {res.stderr.strip()[-300:]}")
    job = json.loads(res.stdout)["jobs"][0]["read"]
    if job["io_bytes"] == 0:
        raise AssertionError("fio read nothing")
    return float(job["iops"])


def store_rows(server: SeaweedS3, data: bytes) -> tuple[float, float]:
    import obstore

    store = make_store(server.endpoint, server.ACCESS_KEY, server.SECRET_KEY)
    rng = random.Random(3)
    times = []
    for _ in range(11):
        off = rng.randrange(0, len(data) - 4096)
        t0 = time.perf_counter()
        got = bytes(obstore.get_range(store, KEY, start=off, length=4096))
        times.append(1000 * (time.perf_counter() - t0))
        if got != data[off:off + 4096]:
            raise AssertionError("store: wrong bytes")
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 5:
        off = rng.randrange(0, len(data) - 4096)
        obstore.get_range(store, KEY, start=off, length=4096)
        n += 1
    return statistics.median(times), n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="2GiB", help="the file's size")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the median is shown")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tierfs-random-reads-", dir=args.work))
    server = SeaweedS3(work / "weed")
    runners: list[System] = []
    rows: dict[str, tuple[list[float], list[float]]] = {}
    try:
        data = os.urandom(parse_size(args.size))
        local = work / "local"
        (local / "rand").mkdir(parents=True)
        (local / KEY).write_bytes(data)
        server.start()
        fs = server.fs()
        fs.mkdir(BUCKET)
        fs.put(str(local / KEY), f"{BUCKET}/{KEY}")
        names = ["local", "tierfs", "tierfs-whole"] + [n for n in ("rclone", "s3fs") if shutil.which(n)]
        for missing in {"rclone", "s3fs"} - set(names):
            print(f"{missing}: not installed, left out (apt-get install {missing})", file=sys.stderr)
        runners = [System(n, work, server, local,
                          extra=("--random-read-unit", "0") if n == "tierfs-whole" else ()) for n in names]
        for _ in range(args.repeat):
            for sysm in runners:
                ttfb, iops = rows.setdefault(sysm.name, ([], []))
                for measure, into in ((lambda p: first_bytes(p, data), ttfb), (fio_iops, iops)):
                    sysm.mount()
                    try:
                        drop_caches()
                        into.append(measure(sysm.root / KEY))
                    finally:
                        sysm.umount(clear=True)
            t, n = store_rows(server, data)
            rows.setdefault("store (4 KiB GETs)", ([], []))[0].append(t)
            rows["store (4 KiB GETs)"][1].append(n)
    finally:
        unmount_all(runners)
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"cold random 4 KiB reads into one {args.size} file, median of {args.repeat}; "
          "SeaweedFS S3 on loopback; 2 cores, shared VM")
    print(f"{'system':22} {'first byte ms':>14} {'fio IOPS':>10}")
    for name, (ttfb, iops) in rows.items():
        print(f"{name:22} {statistics.median(ttfb):14.2f} {statistics.median(iops):10.0f}")


if __name__ == "__main__":
    main()
