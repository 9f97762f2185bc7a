"""Manifest scale: snapshot a lake of N files, mount it, and look up, list and walk both views.

    .venv/bin/python benchmarks/manifest_scale.py --files 1000000

Measures, and prints as a table:
- the wall time and peak RSS of `tierfs snapshot create` (bounded memory: the
  peak must not grow with N);
- from `tierfs mount` returning to the first `ls` of `.snapshots/<ds>/v1/`
  answered, and the mount daemon's RSS after that `ls` (goals: < 2 s, < 300 MB);
- the first lookup deep in the snapshot: it builds the manifest's local index
  (the build's own time from the mount's stats, where it keeps one);
- cold lookups in the snapshot once the manifest is local: the median and
  tail of one `stat` of a file not looked up before (goal: median < 1 ms);
- a shuffled epoch's lookups (a `stat` of every file, in a random order) and
  how many manifest parts were decoded meanwhile (goal: none);
- the daemon's RSS after walking the live view and the snapshot (goal <= 400 MB);
- a second mount on the same cache dir: its first lookup in the snapshot and
  the store requests and bytes it took (the index is reused, no part is read).

The lake is a file:// lake in a scratch dir (`--work`), laid out like an image
dataset: `--dirs` class folders of equal size, small distinct files. With
`--lake DIR` the lake (and its snapshot) is kept there and reused by the next
run, which skips making it. Everything else is removed at the end, and the
mounts are unmounted even on failure. Figures from a tierfs without manifest
stats (before the local index) count parts as the RAM tier's requests instead.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

TIERFS = [sys.executable, "-m", "tierfs"]


def file_names(files: int, dirs: int) -> list[str]:
    """Every file of the lake, relative to the dataset's root, as make_lake lays them out."""
    per = files // dirs
    out = []
    for d in range(dirs):
        for i in range(per if d < dirs - 1 else files - per * (dirs - 1)):
            out.append(f"train/n{d:08d}/img_{i:07d}.jpg")
    return out


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


def rss_mb(pid: int) -> str:
    """The daemon's resident memory: total, the part that is mapped files (the manifest index's pages), the peak."""
    fields = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
    return (f"{fields['VmRSS']:.0f} MB (anon {fields['RssAnon']:.0f}, files {fields['RssFile']:.0f}; "
            f"peak {fields['VmHWM']:.0f})")


class InodePeak(threading.Thread):
    """The most inodes the daemon held during a phase (the kernel forgets them under memory pressure, and
    when anything on the machine drops the caches: the RSS after a walk is that of this many)."""

    def __init__(self, mnt: Path):
        super().__init__(daemon=True)
        self.mnt, self.peak, self.stop = mnt, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.5):
            self.peak = max(self.peak, stats(self.mnt)["inodes"])

    def __enter__(self) -> InodePeak:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join()
        self.peak = max(self.peak, stats(self.mnt)["inodes"])


def stats(mnt: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(os.getxattr(mnt, "user.tierfs.stats"))
    return data


def part_loads(s: dict[str, Any]) -> tuple[int, str]:
    """Manifest parts decoded so far, and how that was counted."""
    if "manifests" in s:
        return int(s["manifests"]["parts_decoded"]), "parts decoded"
    ram = s["tiers"].get("ram", {})
    return int(ram.get("hits", 0) + ram.get("misses", 0)), "RAM-tier requests (each a part load)"


def mount(lake: Path, mnt: Path, cache: Path) -> int:
    subprocess.run([*TIERFS, "mount", f"file://{lake}", str(mnt), "--cache-dir", str(cache)],
                   check=True, stdout=subprocess.PIPE)
    return int(os.getxattr(mnt, "user.tierfs.pid"))


def umount(mnt: Path) -> None:
    subprocess.run([*TIERFS, "umount", str(mnt)], check=False, capture_output=True)


def timed_stats(paths: list[Path]) -> list[float]:
    out = []
    for p in paths:
        t0 = time.perf_counter()
        os.stat(p)
        out.append(time.perf_counter() - t0)
    return out


def namespace_bytes(lake: Path, work: Path) -> tuple[float, float, int, int]:
    """What tierfs holds for each file it hands an inode for, in this process (no kernel, which may forget
    inodes meanwhile): both views walked as readdirplus does, traced. Bytes a live file, a snapshot file."""
    import trio

    from tierfs.config import load
    from tierfs.namespace.inodes import ROOT_INODE
    from tierfs.namespace.live import Namespace
    from tierfs.store.objects import ObjectStore

    store = ObjectStore.open(load(None, {"lake_url": f"file://{lake}"}))
    kw: dict[str, Any] = {}
    try:
        from tierfs.versions.index_dir import ManifestIndexes
        kw["manifest_indexes"] = ManifestIndexes(work / "in-process-index")
    except ImportError:  # (a tierfs from before the local index)
        pass

    async def walk(ns: Any, inode: int) -> int:
        parent, files = ns.node(inode), 0
        for e in await ns.list_dir(inode):
            node = ns.entry_node(parent.path, e)
            ns.remember(node)
            files += await walk(ns, node.inode) if e.is_dir else 1
        return files

    async def run() -> tuple[float, float, int, int]:
        ns = Namespace(store, 3600.0, 500_000, trio.CapacityLimiter(4), **kw)
        path = [ROOT_INODE]
        for name in ("datasets", "big", ".snapshots", "big", "v1"):
            node = await ns.lookup(path[-1] if name != ".snapshots" else ROOT_INODE, name)
            ns.remember(node)
            path.append(node.inode)
        live, snap = path[2], path[5]
        await ns.list_dir(snap)  # (the index is built here, not counted)
        gc.collect()
        tracemalloc.start()
        t0 = tracemalloc.get_traced_memory()[0]
        n = await walk(ns, live)
        gc.collect()
        t1 = tracemalloc.get_traced_memory()[0]
        m = await walk(ns, snap)
        gc.collect()
        t2 = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        return (t1 - t0) / n, (t2 - t1) / m, n, m

    return trio.run(run)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--dirs", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--work", type=Path, default=None, help="scratch dir (default: a new temp dir)")
    ap.add_argument("--lake", type=Path, default=None, help="keep the lake here, and reuse it if it is there")
    ap.add_argument("--sample", type=int, default=1000, help="cold lookups timed one by one")
    ap.add_argument("--epoch", type=int, default=0, help="files the shuffled epoch looks up (0: all)")
    ap.add_argument("--in-process", action="store_true",
                    help="also trace tierfs' memory for each file of both views, in this process")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tierfs-manifest-", dir=args.work))
    lake = args.lake or work / "lake"
    mnt, cache = work / "mnt", work / "cache"
    mnt.mkdir()
    rows: list[tuple[str, str]] = []
    names = file_names(args.files, args.dirs)
    rng = random.Random(16)
    try:
        if not (lake / ".tierfs/snapshots/big/v1/meta.json").is_file():
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
        else:
            rows.append(("lake and snapshot", f"reused from {lake}"))
        manifest_bytes = sum(p.stat().st_size for p in (lake / ".tierfs/snapshots/big/v1").iterdir())
        rows.append(("manifest size in the lake", f"{manifest_bytes / 1e6:.1f} MB"))

        subprocess.run(["sync"], check=False)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        t0 = time.perf_counter()
        pid = mount(lake, mnt, cache)
        t_mounted = time.perf_counter()
        snap = mnt / ".snapshots" / "big" / "v1"
        top = os.listdir(snap)
        t_ls = time.perf_counter()
        assert top == ["train"], top
        rows.append(("mount command, until ready", f"{t_mounted - t0:.2f} s"))
        rows.append(("mounted -> ls of the snapshot's root", f"{t_ls - t_mounted:.2f} s  (goal < 2 s)"))
        rows.append(("mount daemon RSS after that ls", rss_mb(pid)))

        # The first lookup deep in the manifest: with a local index, it builds it.
        t0 = time.perf_counter()
        st = os.stat(snap / names[-1])
        first = time.perf_counter() - t0
        rows.append(("first lookup of the last file", f"{first:.3f} s, size {st.st_size}"))
        rows.append(("mount daemon RSS after that", rss_mb(pid)))
        if "manifests" in stats(mnt):  # the index is built in the background: its time, once it is sealed
            deadline = time.monotonic() + 600
            while not stats(mnt)["manifests"]["index_builds"] and time.monotonic() < deadline:
                time.sleep(0.1)
            built = stats(mnt)["manifests"]["index_build_ms"] / 1000
            size = sum(p.stat().st_size for p in (cache / "manifests").glob("*.mdb"))
            rows.append(("manifest index build (background)", f"{built:.1f} s, {size / 1e6:.0f} MB on disk"))

        # Cold lookups, one at a time: files not looked up before, in folders the kernel knows.
        os.listdir(snap / "train")
        sample = rng.sample(names[:-1], min(args.sample, len(names) - 1))
        loads0, how = part_loads(stats(mnt))
        lat = sorted(timed_stats([snap / n for n in sample]))
        loads1, _ = part_loads(stats(mnt))
        q = statistics.quantiles(lat, n=100) if len(lat) > 1 else lat * 99
        rows.append((f"cold lookup in the snapshot, {len(lat):,} files",
                     f"median {1000 * statistics.median(lat):.3f} ms, p90 {1000 * q[89]:.3f} ms, "
                     f"p99 {1000 * q[98]:.3f} ms  (goal median < 1 ms)"))
        rows.append(("  manifest parts loaded meanwhile", f"{loads1 - loads0:,} ({how})"))

        # A shuffled epoch's lookups: every file (or --epoch of them) once, in a random order.
        epoch = list(names)
        rng.shuffle(epoch)
        if args.epoch:
            epoch = epoch[:args.epoch]
        loads0, how = part_loads(stats(mnt))
        t0 = time.perf_counter()
        with InodePeak(mnt) as held:
            for name in epoch:
                os.stat(snap / name)
        dt = time.perf_counter() - t0
        loads1, _ = part_loads(stats(mnt))
        rows.append((f"shuffled epoch: stat of {len(epoch):,} files",
                     f"{dt:.1f} s ({len(epoch) / dt:,.0f} files/s)"))
        rows.append(("  manifest parts loaded meanwhile", f"{loads1 - loads0:,} ({how}; goal 0)"))
        rows.append(("mount daemon RSS after that", rss_mb(pid)))
        rows.append(("  inodes held: most during the epoch", f"{held.peak:,}"))

        # time to first byte, snapshot and live view (cold)
        for label, base in (("snapshot", snap), ("live view", mnt / "datasets/big")):
            f = base / "train" / f"n{args.dirs // 2:08d}" / "img_0000003.jpg"
            t0 = time.perf_counter()
            with open(f, "rb") as fh:
                fh.read(1)
            rows.append((f"time to first byte, {label} (cold)", f"{1000 * (time.perf_counter() - t0):.1f} ms"))

        # Walk both views: every file listed (readdirplus: an inode for each).
        for label, base in (("live view", mnt / "datasets" / "big"), ("snapshot", snap)):
            t0 = time.perf_counter()
            with InodePeak(mnt) as held:
                n = sum(len(files) for _d, _dirs, files in os.walk(base))
            dt = time.perf_counter() - t0
            rows.append((f"{label}: os.walk of every file", f"{dt:.1f} s ({n / dt:,.0f} files/s), {n:,} files"))
            rows.append(("mount daemon RSS after that", rss_mb(pid) + ("  (goal <= 400 MB)" if label == "snapshot"
                                                                      else "")))
            s = stats(mnt)
            rows.append(("  inodes held: most during the walk, at its end", f"{held.peak:,}, {s['inodes']:,}"))
        rows.append(("listing entries cached", f"{s['listing_entries_cached']:,}"
                     + (f" ({s['listing_bytes_cached'] / 2**20:.0f} MiB)" if "listing_bytes_cached" in s else "")))
        umount(mnt)

        # A second mount on the same cache dir: the index is reused, no manifest part read.
        pid = mount(lake, mnt, cache)
        b0 = stats(mnt)["backend"]
        t0 = time.perf_counter()
        os.stat(snap / names[len(names) // 3])
        dt = time.perf_counter() - t0
        s = stats(mnt)
        b1 = s["backend"]
        builds = s.get("manifests", {}).get("index_builds", "-")
        rows.append(("second mount: first lookup deep in the snapshot",
                     f"{1000 * dt:.1f} ms, {b1['requests'] - b0['requests']} store requests, "
                     f"{b1['bytes'] - b0['bytes']:,} bytes read, index builds {builds}"))
        umount(mnt)
        if args.in_process:
            live_b, snap_b, n, m = namespace_bytes(lake, work)
            rows.append(("in process: bytes a file, live view (listing too)", f"{live_b:,.0f} ({n:,} files)"))
            rows.append(("in process: bytes a file, snapshot", f"{snap_b:,.0f} ({m:,} files)"))
            rows.append(("  both views, that many files", f"{(live_b * n + snap_b * m) / 2**20:,.0f} MiB"))
    finally:
        umount(mnt)
        shutil.rmtree(work, ignore_errors=True)

    width = max(len(k) for k, _ in rows)
    print(f"\nmanifest scale: {args.files:,} files in {args.dirs:,} folders "
          f"({os.cpu_count()} cores; shared machine, one run)")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")


if __name__ == "__main__":
    main()
