"""Mount -> ready: tierfs (an S3 bucket and a local lake) beside rclone mount and s3fs-fuse, in one run.

    .venv/bin/python benchmarks/mount_start.py --repeat 7

Starts SeaweedFS's S3 gateway on loopback with a small bucket, then mounts it
``--repeat`` times with each system, each time with an empty cache dir, and
times from the mount command's start to the mount's root answering a stat
(what a systemd unit or a training script waits for), then the first
listing of a folder of ``--big`` entries right after (what a training
script does next; background work a mount starts when it is ready shows
here). tierfs also mounts a local directory holding the same files. The
store rows are the bucket's first listings with obstore from a fresh client
(no mount at all). Prints the median and the spread in ms. Unmounts and stops everything it started, by
PID, even on failure. Needs fuse3, rclone and s3fs (`apt-get install rclone
s3fs`); a system that is missing is left out with a line saying so.

``--baseline DIR`` adds a row for the tierfs package in DIR (a checkout of an
older commit: ``git worktree add DIR COMMIT``), mounted the same way in the
same run, so a change's before and after are side by side. It runs in this
checkout's venv (the same pyfuse3 and libraries).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import BUCKET, System, make_store  # the same mounts, options and store client as the peers benchmark

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import SeaweedS3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=7, help="mounts of each system; the median is shown")
    ap.add_argument("--big", type=int, default=5000, help="entries of the folder listed right after the mount")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--baseline", type=Path, default=None, metavar="DIR",
                    help="also time the tierfs package of this checkout (an older commit's worktree)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tierfs-mount-start-", dir=args.work))
    server = SeaweedS3(work / "weed")
    runners: list[System] = []
    results: dict[str, list[float]] = {}
    listed: dict[str, list[float]] = {}
    try:
        local = work / "local"
        for i in range(20):
            path = local / f"class-{i % 4}" / f"{i:03d}.bin"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(4096))
        server.start()
        fs = server.fs()
        fs.mkdir(BUCKET)
        fs.put(str(local) + "/", f"{BUCKET}/", recursive=True)
        from concurrent.futures import ThreadPoolExecutor

        import obstore

        uploader = make_store(endpoint=server.endpoint, key=server.ACCESS_KEY, secret=server.SECRET_KEY)
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: obstore.put(uploader, f"big/{i:06d}.bin", b"x" * 100), range(args.big)))
        names = ["tierfs"] + [n for n in ("rclone", "s3fs") if shutil.which(n)]
        for missing in {"rclone", "s3fs"} - set(names):
            print(f"{missing}: not installed, left out (apt-get install {missing})", file=sys.stderr)
        runners = [System(n, work, server, local) for n in names]
        if args.baseline is not None:
            runners.insert(1, System("tierfs-before", work, server, local, code=args.baseline.resolve()))
        for _ in range(args.repeat):
            for sysm in runners:
                sysm.umount(clear=True)
                t0 = time.perf_counter()
                sysm.mount()
                os.stat(sysm.root)
                results.setdefault(sysm.name, []).append(1000 * (time.perf_counter() - t0))
                t0 = time.perf_counter()
                if len(os.listdir(sysm.root / "big")) != args.big:
                    raise AssertionError(f"{sysm.name}: the listing is short")
                listed.setdefault(sysm.name, []).append(1000 * (time.perf_counter() - t0))
                sysm.umount(clear=True)
            t0 = time.perf_counter()
            store = make_store(endpoint=server.endpoint, key=server.ACCESS_KEY, secret=server.SECRET_KEY)
            obstore.list_with_delimiter(store, None)
            results.setdefault("store (first listing)", []).append(1000 * (time.perf_counter() - t0))
            t0 = time.perf_counter()
            if len(obstore.list_with_delimiter(store, "big/")["objects"]) != args.big:
                raise AssertionError("store: the listing is short")
            listed.setdefault("store", []).append(1000 * (time.perf_counter() - t0))
        results["tierfs, local lake"] = _local_mounts(work, local, args.repeat)
    finally:
        for sysm in runners:
            try:
                sysm.umount(clear=True)
            except Exception as exc:
                print(f"cleanup of {sysm.name}: {exc}", file=sys.stderr)
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"mount -> ready, empty caches, {args.repeat} mounts each; SeaweedFS S3 on loopback; 2 cores, shared VM")
    print(f"{'system':28} {'median ms':>10} {'min':>7} {'max':>7}")
    for name, ms in results.items():
        print(f"{name:28} {statistics.median(ms):10.0f} {min(ms):7.0f} {max(ms):7.0f}")
    print(f"\nthen the first listing of a {args.big}-entry folder (ls right after ready)")
    print(f"{'system':28} {'median ms':>10} {'min':>7} {'max':>7}")
    for name, ms in listed.items():
        print(f"{name:28} {statistics.median(ms):10.0f} {min(ms):7.0f} {max(ms):7.0f}")


def _local_mounts(work: Path, local: Path, repeat: int) -> list[float]:
    """tierfs on a file:// lake: what a mount costs with no store client at all."""
    import subprocess

    from peers import is_mounted

    mnt = work / "mnt-local-lake"
    mnt.mkdir()
    out = []
    for i in range(repeat):
        cache = work / f"cache-local-lake-{i}"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tierfs", "mount", f"file://{local}", str(mnt), "--cache-dir",
                        str(cache), "--read-only"], check=True, stdout=subprocess.DEVNULL)
        try:
            os.stat(mnt)
            out.append(1000 * (time.perf_counter() - t0))
        finally:
            subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
            deadline = time.monotonic() + 30
            while is_mounted(mnt) and time.monotonic() < deadline:
                time.sleep(0.05)
            shutil.rmtree(cache, ignore_errors=True)
    return out


if __name__ == "__main__":
    main()
