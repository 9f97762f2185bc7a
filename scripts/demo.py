"""The README's demo: a local lake, mounted, read twice through the tiers, stats printed.

Safe to run again: the lake is rebuilt only if missing, a mount left over from
an interrupted run is unmounted first, and everything started is stopped.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
DEMO = Path(os.environ.get("TIERFS_DEMO_DIR", HERE / "demo-lake"))
LAKE, MNT, CACHE = DEMO / "lake", DEMO / "mnt", DEMO / "cache"
CLASSES = ["cat", "dog", "fox", "owl", "yak"]
PER_CLASS = 200
TIERFS = [sys.executable, "-m", "tierfs"]


def build_lake() -> None:
    """A synthetic image-classification dataset: class folders of ~100 KiB samples.

    Rebuilt on every run (it is deterministic), so its snapshots can be made afresh.
    """
    shutil.rmtree(LAKE, ignore_errors=True)
    rng = random.Random(42)
    root = LAKE / "datasets" / "animals"
    for split, n in (("train", PER_CLASS), ("val", PER_CLASS // 5)):
        for label in CLASSES:
            d = root / split / label
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                (d / f"{label}_{i:04d}.jpg").write_bytes(b"\xff\xd8\xff\xe0" + rng.randbytes(rng.randrange(60_000, 140_000)))
    (root / "labels.csv").write_text("label,index\n" + "".join(f"{c},{i}\n" for i, c in enumerate(CLASSES)))
    (root / "README.txt").write_text("A synthetic image-classification dataset made by scripts/demo.py.\n")


def make_versions() -> None:
    """v1 as built; v2 after a new class is added and a bad class dropped from val."""
    lake = f"file://{LAKE}"
    print(sh("snapshot", "create", lake, "datasets/animals", "v1", "-m", "5 classes",
             "--meta", "classes=5", "--meta", "license=CC0").stdout.strip())
    root = LAKE / "datasets" / "animals"
    rng = random.Random(7)
    (root / "train" / "emu").mkdir()
    for i in range(40):
        (root / "train" / "emu" / f"emu_{i:04d}.jpg").write_bytes(b"\xff\xd8\xff\xe0" + rng.randbytes(80_000))
    shutil.rmtree(root / "val" / "yak")
    (root / "labels.csv").write_text((root / "labels.csv").read_text() + "emu,5\n")
    print(sh("snapshot", "create", lake, "datasets/animals", "v2", "-m", "add emu, drop yak from val",
             "--meta", "classes=6").stdout.strip())
    print("\n$ tierfs snapshot list " + lake)
    print(sh("snapshot", "list", lake).stdout.rstrip())
    print("$ tierfs snapshot diff " + lake + " animals v1 v2   (last line)")
    print(sh("snapshot", "diff", lake, "animals", "v1", "v2").stdout.strip().splitlines()[-1])


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([*TIERFS, *args], text=True, capture_output=True)
    if check and res.returncode != 0:
        sys.exit(f"demo: tierfs {args[0]} failed: {res.stderr.strip()}")
    return res


def read_pass(name: str) -> None:
    files = sorted(p for p in (MNT / "datasets" / "animals").rglob("*") if p.is_file())
    t0 = time.perf_counter()
    total = sum(len(p.read_bytes()) for p in files)
    dt = time.perf_counter() - t0
    print(f"\n== {name}: read {len(files)} files, {total / 1e6:.1f} MB in {dt:.2f} s ({len(files) / dt:.0f} files/s)")
    print(sh("stats", str(MNT)).stdout)


def drop_page_cache() -> None:
    """Make the next pass reach tierfs, not the kernel's page cache.

    By default only the demo's own files' cached pages are dropped
    (posix_fadvise DONTNEED, no root needed, nothing else on the machine
    touched); `make demo DROP_CACHES=1` drops the machine's whole page cache.
    """
    if "--drop-caches" in sys.argv:
        try:
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
            print("(dropped the kernel page cache, as asked, so the next pass really goes to tierfs' tiers)")
            return
        except OSError:
            print("(not root: cannot drop the whole page cache; dropping the demo's files' pages only)")
    for path in sorted((MNT / "datasets").rglob("*")):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    print("(dropped the demo's files from the kernel page cache, so the next pass really goes to tierfs' tiers)")


def read_snapshot(name: str) -> None:
    snap = MNT / ".snapshots" / "animals" / name
    before = json.loads(sh("stats", str(MNT), "--json").stdout)["backend"]["bytes"]
    files = sorted(p for p in snap.rglob("*") if p.is_file())
    total = sum(len(p.read_bytes()) for p in files)
    after = json.loads(sh("stats", str(MNT), "--json").stdout)["backend"]["bytes"]
    print(f"\n== read {snap}: {len(files)} files, {total / 1e6:.1f} MB; "
          f"backend bytes for it: {after - before} (its unchanged files share cache blocks with the live view)")


def write_checkpoint() -> None:
    """The live view is writable: a checkpoint saved through the mount is in the lake when close returns."""
    ckpt = MNT / "models" / "demo" / "ckpt.bin"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    data = os.urandom(32 << 20)
    t0 = time.perf_counter()
    ckpt.write_bytes(data)
    dt = time.perf_counter() - t0
    in_lake = (LAKE / "models" / "demo" / "ckpt.bin").read_bytes() == data
    print(f"\n== wrote {ckpt.relative_to(MNT)} ({len(data) >> 20} MiB) through the mount in {dt:.2f} s; "
          f"in the lake when close returned: {in_lake}")


def main() -> None:
    MNT.mkdir(parents=True, exist_ok=True)
    with open("/proc/self/mountinfo") as fh:
        if any(line.split()[4] == str(MNT) for line in fh):
            sh("umount", str(MNT), "--lazy", check=False)
    build_lake()
    make_versions()
    shutil.rmtree(CACHE, ignore_errors=True)  # start cold, so pass 1 shows the store at work
    res = sh("mount", f"file://{LAKE}", str(MNT), "--cache-dir", str(CACHE), "--ram-size", "256MiB")
    print(res.stdout.strip())
    try:
        print(f"\n$ ls {MNT}/datasets/animals/train")
        print("  ".join(sorted(os.listdir(MNT / "datasets" / "animals" / "train"))))
        read_pass("pass 1 (cold: from the object store)")
        drop_page_cache()
        read_pass("pass 2 (warm: from the RAM tier, zero backend bytes added)")
        print(sh("umount", str(MNT)).stdout.strip())
        print("\n$ remount: the RAM tier starts empty, the disk cache is kept")
        sh("mount", f"file://{LAKE}", str(MNT), "--cache-dir", str(CACHE), "--ram-size", "256MiB")
        drop_page_cache()
        read_pass("pass 3 (after remount: from the disk tier, promoted into RAM, zero backend bytes)")
        print(f"$ ls {MNT}/.snapshots/animals")
        print("  ".join(sorted(os.listdir(MNT / ".snapshots" / "animals"))))
        read_snapshot("v1")
        write_checkpoint()
    finally:
        print(sh("umount", str(MNT), check=False).stdout.strip())


if __name__ == "__main__":
    main()
