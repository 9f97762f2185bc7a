"""Changing the storage class of many objects: `tierfs lifecycle apply` against `rclone settier`, in one run.

    .venv/bin/python benchmarks/lifecycle_apply.py --objects 2000 --repeat 3 [--server moto]

Fills one bucket of an S3 server on loopback (moto by default; SeaweedFS
with --server seaweedfs, where rclone settier fails: SeaweedFS refuses the
metadata-COPY self-copy rclone sends) with OBJECTS small objects, then moves
all of them from STANDARD to STANDARD_IA, resetting them to STANDARD (with
rclone, untimed) before every run:

- ``tierfs -j 1`` and ``tierfs -j 16``: `tierfs lifecycle apply` with a
  rule that moves everything (the time includes the plan's listing);
- ``rclone settier``: rclone's command for the same job (its default
  concurrency), the peer a user would reach for.

Each run is checked: every object must be in the target class afterwards.
Prints median seconds and objects per second, and ratios to rclone. Stops
everything it started, by PID, even on failure. Needs rclone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import MotoS3, SeaweedS3

Server = SeaweedS3 | MotoS3

BUCKET = "lifecycle-bench"
TARGET = "STANDARD_IA"


def _keys(server: Server) -> tuple[str, str]:
    return (server.ACCESS_KEY, server.SECRET_KEY) if isinstance(server, SeaweedS3) else ("moto", "moto")


def _config(server: Server, path: Path) -> Path:
    return server.s3_config(path) if isinstance(server, SeaweedS3) else server.config(path)


def _tierfs(server: Server, work: Path, target: str, jobs: int) -> None:
    rules = work / f"{target}.toml"
    rules.write_text(f'[[rule]]\nid = "all"\ntransitions = [{{ days = 0, class = "{target}" }}]\n')
    subprocess.run([sys.executable, "-m", "tierfs", "lifecycle", "apply", f"s3://{BUCKET}", "--rules", str(rules),
                    "--config", str(_config(server, work / "s3.toml")), "-j", str(jobs)],
                   check=True, stdout=subprocess.DEVNULL)


def _rclone(server: Server, work: Path, target: str, jobs: int) -> None:
    key, secret = _keys(server)
    remote = (f":s3,provider=Other,endpoint='{server.endpoint}',region=us-east-1,access_key_id={key},"
              f"secret_access_key={secret}:{BUCKET}")
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}  # rclone refuses it
    subprocess.run(["rclone", "settier", target, remote], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _classes(server: Server) -> set[str]:
    fs = server.fs()
    return {str(info.get("StorageClass")) for info in fs.ls(BUCKET, detail=True, refresh=True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--server", choices=("moto", "seaweedfs"), default="moto")
    args = ap.parse_args()
    systems = {"tierfs -j 1": (_tierfs, 1), "tierfs -j 16": (_tierfs, 16), "rclone settier": (_rclone, 0)}
    with tempfile.TemporaryDirectory(prefix="tierfs-lifecycle-bench-") as tmp:
        work = Path(tmp)
        server: Server = SeaweedS3(work / "seaweed").start() if args.server == "seaweedfs" else MotoS3(work / "moto").start()
        try:
            fs = server.fs()
            fs.call_s3("create_bucket", Bucket=BUCKET)
            fs.pipe({f"{BUCKET}/obj-{i:06d}": b"x" * 1024 for i in range(args.objects)})
            times: dict[str, list[float]] = {name: [] for name in systems}
            for _ in range(args.repeat):
                for name, (run, jobs) in systems.items():
                    _rclone(server, work, "STANDARD", 0)
                    assert _classes(server) == {"STANDARD"}
                    t0 = time.perf_counter()
                    run(server, work, TARGET, jobs)
                    times[name].append(time.perf_counter() - t0)
                    assert _classes(server) == {TARGET}, (name, _classes(server))
        finally:
            server.stop()
    peer = statistics.median(times["rclone settier"]) if times["rclone settier"] else 0.0
    print(f"{args.objects} objects of 1 KiB, {args.server} on loopback, median of {args.repeat}")
    print(f"{'system':<16}{'seconds':>10}{'objects/s':>12}{'vs rclone':>11}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<16}{med:>10.2f}{args.objects / med:>12.0f}{peer / med:>10.2f}x")


if __name__ == "__main__":
    main()
