"""Manifest scale: snapshot a lake of N files, then mount it and list the snapshot's root.

    .venv/bin/python benchmarks/manifest_scale.py --files 1000000

Measures, and prints as a table:
- the wall time and peak RSS of `tierfs snapshot create` (bounded memory: the
  peak must not grow with N);
- from `tierfs mount` returning to the first `ls` of `.snapshots/<ds>/v1/`
  answered, and the mount daemon's RSS after that `ls` (goals: < 2 s, < 300 MB);
- a `stat` of the last file in the manifest (a lookup deep in its last part).

The lake is a file:// lake in a scratch dir (`--work`), laid out like an image
dataset: `--dirs` class folders of equal size, small distinct files. Everything
it creates is removed at the end, and the mount is unmounted even on failure.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TIERFS = [sys.executable, "-m", "tierfs"]


def make_lake(root: Path, files: int, dirs: int) -> None:
    per = files // dirs
    made = 0
    for d in range(dirs):
        folder = root / "datasets" / "big" / "train" / f"n{d:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per if d < dirs - 1 else files - made):
            fd = os.open(folder / f"img_{i:07d}.jpg", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
            os.write(fd, b"%08d-%07d" % (d, i))
            os.close(fd)
            made += 1
        if d % 100 == 0:
            print(f"  lake: {made:,} / {files:,} files", file=sys.stderr, flush=True)


def vm_hwm_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(("VmHWM:", "VmRSS:")) and line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--dirs", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--work", type=Path, default=None, help="scratch dir (default: a new temp dir)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tierfs-manifest-", dir=args.work))
    lake, mnt, cache = work / "lake", work / "mnt", work / "cache"
    mnt.mkdir()
    rows: list[tuple[str, str]] = []
    try:
        t0 = time.perf_counter()
        make_lake(lake, args.files, args.dirs)
        rows.append(("make the lake (not tierfs)", f"{time.perf_counter() - t0:.1f} s"))

        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t0 = time.perf_counter()
        subprocess.run([*TIERFS, "snapshot", "create", f"file://{lake}", "datasets/big", "v1",
                        "--jobs", str(args.jobs)], check=True, stdout=subprocess.PIPE)
        create_s = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        rows.append(("snapshot create: wall time", f"{create_s:.1f} s ({args.files / create_s:,.0f} files/s)"))
        rows.append(("snapshot create: peak RSS", f"{max(peak, before) / 1024:.0f} MB"))
        manifest_bytes = sum(p.stat().st_size for p in (lake / ".tierfs/snapshots/big/v1").iterdir())
        rows.append(("manifest size in the lake", f"{manifest_bytes / 1e6:.1f} MB"))

        subprocess.run(["sync"], check=False)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        t0 = time.perf_counter()
        subprocess.run([*TIERFS, "mount", f"file://{lake}", str(mnt), "--cache-dir", str(cache)],
                       check=True, stdout=subprocess.PIPE)
        t_mounted = time.perf_counter()
        pid = int(os.getxattr(mnt, "user.tierfs.pid"))
        names = os.listdir(mnt / ".snapshots" / "big" / "v1")
        t_ls = time.perf_counter()
        rss = vm_hwm_mb(pid)
        assert names == ["train"], names
        rows.append(("mount command, until ready", f"{t_mounted - t0:.2f} s"))
        rows.append(("mounted -> ls of the snapshot's root", f"{t_ls - t_mounted:.2f} s  (goal < 2 s)"))
        rows.append(("mount daemon RSS after that ls", f"{rss:.0f} MB  (goal < 300 MB)"))
        t0 = time.perf_counter()
        last = mnt / ".snapshots/big/v1/train" / f"n{args.dirs - 1:08d}"
        st = os.stat(last / sorted(os.listdir(last))[-1])
        rows.append(("stat of the last file (its part loaded)", f"{time.perf_counter() - t0:.2f} s, size {st.st_size}"))
        rows.append(("mount daemon RSS after that", f"{vm_hwm_mb(pid):.0f} MB"))

        # time to first byte, snapshot and live view (cold)
        for label, base in (("snapshot", mnt / ".snapshots/big/v1"), ("live view", mnt / "datasets/big")):
            f = base / "train" / f"n{args.dirs // 2:08d}" / "img_0000003.jpg"
            t0 = time.perf_counter()
            with open(f, "rb") as fh:
                fh.read(1)
            rows.append((f"time to first byte, {label} (cold)", f"{1000 * (time.perf_counter() - t0):.1f} ms"))

        # the live view: list every one of the files
        t0 = time.perf_counter()
        n = sum(len(files) for _d, _dirs, files in os.walk(mnt / "datasets" / "big"))
        dt = time.perf_counter() - t0
        rows.append(("live view: os.walk of every file", f"{dt:.1f} s ({n / dt:,.0f} files/s), {n:,} files"))
        rows.append(("mount daemon RSS after that", f"{vm_hwm_mb(pid):.0f} MB"))
        t0 = time.perf_counter()
        n = sum(len(files) for _d, _dirs, files in os.walk(mnt / ".snapshots/big/v1"))
        dt = time.perf_counter() - t0
        rows.append(("snapshot: os.walk of every file", f"{dt:.1f} s ({n / dt:,.0f} files/s), {n:,} files"))
        rows.append(("mount daemon RSS after that", f"{vm_hwm_mb(pid):.0f} MB"))
    finally:
        subprocess.run([*TIERFS, "umount", str(mnt)], check=False, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)

    width = max(len(k) for k, _ in rows)
    print(f"\nmanifest scale: {args.files:,} files in {args.dirs:,} folders "
          f"({os.cpu_count()} cores; shared machine, one run)")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")


if __name__ == "__main__":
    main()
