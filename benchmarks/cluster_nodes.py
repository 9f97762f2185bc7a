"""Three tierfs nodes in their own network namespaces, one S3 server and one 3-shard Redis Cluster (issue 18).

    .venv/bin/python benchmarks/cluster_nodes.py --files 400 --file-size 96KiB

Runs the campaign's ``cluster`` scenario (tests/campaign/cluster_nodes.py) at
the size given and prints its figures: node A's cold epoch (files/s, backend
bytes), B's and C's first epochs against A's (speed ratio, share of A's
backend bytes), B's epoch with a Redis shard killed in it, and C's epoch with
its link cut (EIO count, slowest read against its bound). Needs root (network
namespaces, FUSE), redis-server and redis-cli, and SeaweedFS' ``weed``. It
makes its namespaces (names carry its PID) and removes them, stops what it
started by PID and removes its work directory, also on failure. Each set of
files is read by 4 threads, as a DataLoader's workers; block size 64 KiB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "tests" / "campaign")]
# The daemons (python -m tierfs, started by the scenario) run this checkout's code too.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
import cluster_nodes  # noqa: E402  (the scenario, and its sizes)

from tierfs.config import parse_size  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=400, help="files in each of the three sets (default: 400)")
    ap.add_argument("--file-size", default="96KiB", help="typical file size; they range over 0.5-1.5x (default: 96KiB)")
    args = ap.parse_args()
    cluster_nodes.SIZES["bench"] = (args.files, parse_size(args.file_size))
    work = Path(tempfile.mkdtemp(prefix="tierfs-cluster-nodes-"))
    t0 = time.monotonic()
    try:
        res = cluster_nodes.cluster_nodes(work, "bench")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{res.name}: {'ok' if res.ok else 'FAILED'} in {time.monotonic() - t0:.0f} s; "
          f"{res.checks} reads checked, {len(res.failures)} failures")
    for key, value in res.figures.items():
        print(f"  {key}: {value}")
    for failure in res.failures[:20]:
        print(f"FAIL {failure}")
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
