"""A cache disk that turns unwritable under a running mount: reads, writes and fills go on."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers import mounted, random_bytes, write_tree

pytestmark = pytest.mark.mount


def test_a_disk_tier_made_unwritable_mid_run_stops_nothing(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    files = {f"ds/{i}.bin": random_bytes(300_000, seed=i) for i in range(4)}
    write_tree(lake, files)
    cache = tmp_path / "cache"
    frozen = [cache / "blocks", cache / "tmp"]
    with mounted(f"file://{lake}", tmp_path / "mnt", cache, "--ram-size", "0", "--block-size", "64KiB") as m:
        assert (m.mountpoint / "ds/0.bin").read_bytes() == files["ds/0.bin"]
        # immutable (chattr +i): not even root may add a file there; the tier's puts fail with EPERM
        subprocess.run(["chattr", "+i", *map(str, frozen)], check=True)
        try:
            ckpt = random_bytes(500_000, seed=9)
            (m.mountpoint / "ds/ckpt.pt").write_bytes(ckpt)  # uploaded; its fill into the tiers fails
            for rel, data in files.items():
                assert (m.mountpoint / rel).read_bytes() == data  # misses, and puts that fail
            assert (m.mountpoint / "ds/ckpt.pt").read_bytes() == ckpt
            assert (lake / "ds/ckpt.pt").read_bytes() == ckpt
            assert m.stats()["tiers"]["disk"]["errors"] >= 1
        finally:
            subprocess.run(["chattr", "-i", *map(str, frozen)], check=True)
        assert (m.mountpoint / "ds/1.bin").read_bytes() == files["ds/1.bin"]
