"""What writing a large file (a checkpoint) does to the tiers, through a real FUSE mount of a local lake.

A dataset is read into the RAM tier first; then a file larger than what the
RAM tier has left is written. Written bytes go into the disk tier only, so
the dataset's blocks stay in RAM; a file written under a temporary name and
renamed into place is on the disk tier once, under its final name, so
reading it back is served from there (no store bytes). The mount's stats say
what each tier holds. Without passthrough: its whole-file copies are disk
entries too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Mount, mounted, random_bytes, wait_for, write_tree

pytestmark = pytest.mark.mount
MiB = 1 << 20
DATASET = {f"ds/c{i % 3}/{i:03d}.bin": random_bytes(MiB, seed=i) for i in range(24)}
BIG = 40 * MiB  # more than the RAM tier (48 MiB) has left beside the dataset (24 MiB)


@pytest.fixture
def warm(tmp_path: Path) -> Iterator[Mount]:
    """A mount whose RAM tier holds the dataset, read once; fills done."""
    lake = tmp_path / "lake"
    write_tree(lake, {**DATASET, "ckpt/old.pt": random_bytes(BIG, seed=100)})
    with mounted(f"file://{lake}", tmp_path / "mnt", tmp_path / "cache", "--ram-size", "48MiB", "--block-size", "1MiB",
                 "--no-passthrough") as m:
        for key, data in DATASET.items():
            assert (m.mountpoint / key).read_bytes() == data
        settled(m)
        ram = m.stats()["tiers"]["ram"]
        assert (ram["entries"], ram["evictions"]) == (len(DATASET), 0)
        yield m


def settled(m: Mount) -> dict[str, Any]:
    """The mount's stats once the written files' disk fills and the reads' tier fills are done."""
    def done() -> bool:
        s = m.stats()
        return not s["fills"]["pending_bytes"] and not s["writes"]["staged_files"]

    wait_for(done, 60, "the tier fills")
    return m.stats()


def dataset_still_in_ram(m: Mount) -> dict[str, Any]:
    s = settled(m)
    ram = s["tiers"]["ram"]
    assert ram["evictions"] == 0, f"writing evicted {ram['evictions']} dataset blocks from RAM"
    assert ram["entries"] == len(DATASET)
    return s


def reads_back_from_disk(m: Mount, rel: str, data: bytes) -> None:
    """``rel`` reads back as ``data``, every byte from the disk tier: no store bytes, nothing added to the disk."""
    before = settled(m)
    assert (m.mountpoint / rel).read_bytes() == data
    after = settled(m)
    assert after["backend"]["bytes"] == before["backend"]["bytes"], "read back from the store, not the disk tier"
    assert after["tiers"]["disk"]["bytes_held"] == before["tiers"]["disk"]["bytes_held"]


def test_a_file_written_straight_to_its_name_leaves_the_dataset_in_ram(warm: Mount) -> None:
    disk0 = warm.stats()["tiers"]["disk"]["bytes_held"]
    data = random_bytes(BIG, seed=1)
    (warm.mountpoint / "ckpt/direct.pt").write_bytes(data)
    s = dataset_still_in_ram(warm)
    assert s["tiers"]["disk"]["bytes_held"] == disk0 + BIG
    reads_back_from_disk(warm, "ckpt/direct.pt", data)


def test_a_file_renamed_into_place_is_filled_once_under_its_final_name(warm: Mount) -> None:
    disk0 = warm.stats()["tiers"]["disk"]["bytes_held"]
    data = random_bytes(BIG, seed=2)
    (warm.mountpoint / "ckpt/model.pt.tmp").write_bytes(data)
    os.rename(warm.mountpoint / "ckpt/model.pt.tmp", warm.mountpoint / "ckpt/model.pt")
    s = dataset_still_in_ram(warm)
    assert s["tiers"]["disk"]["bytes_held"] == disk0 + BIG  # once: nothing left under the temporary name
    reads_back_from_disk(warm, "ckpt/model.pt", data)


def test_a_directory_renamed_into_place_fills_its_files_under_their_final_names(warm: Mount) -> None:
    """Hugging Face's Trainer writes tmp-checkpoint-N/ and renames it checkpoint-N/."""
    disk0 = warm.stats()["tiers"]["disk"]["bytes_held"]
    data = random_bytes(BIG // 2, seed=3)
    (warm.mountpoint / "ckpt/tmp-checkpoint-7").mkdir()
    (warm.mountpoint / "ckpt/tmp-checkpoint-7/model.safetensors").write_bytes(data)
    os.rename(warm.mountpoint / "ckpt/tmp-checkpoint-7", warm.mountpoint / "ckpt/checkpoint-7")
    s = dataset_still_in_ram(warm)
    assert s["tiers"]["disk"]["bytes_held"] == disk0 + BIG // 2
    reads_back_from_disk(warm, "ckpt/checkpoint-7/model.safetensors", data)


def test_appending_to_a_large_file_leaves_the_dataset_in_ram(warm: Mount) -> None:
    """The old bytes an append copies in (read-modify-write) go into no tier: they are being replaced."""
    old = random_bytes(BIG, seed=100)
    with open(warm.mountpoint / "ckpt/old.pt", "ab") as fh:
        fh.write(b"one more step")
    dataset_still_in_ram(warm)
    reads_back_from_disk(warm, "ckpt/old.pt", old + b"one more step")
