"""Fast-list: a walk of a tree costs one flat listing, not one listing per folder (rclone's --fast-list).

On SeaweedFS through a loopback proxy that records every request line, on a
real mount: os.walk + stat of the same tree with [metadata] fast_list on,
off, and on with a bound the tree exceeds, must see the same names and
sizes; with it on, the walk sends one listing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from faultproxy import FaultProxy
from helpers import SeaweedS3, mounted

pytestmark = [pytest.mark.servers, pytest.mark.mount]

FOLDERS = ("train/cat", "train/dog", "train/dog/extra", "val/cat", "val/dog", "meta")


def _walk(root: Path) -> list[tuple[str, int]]:
    out = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x != ".snapshots")  # (the lake's; these lakes have none)
        for f in sorted(files):
            p = Path(d) / f
            out.append((str(p.relative_to(root)), p.stat().st_size))
    return out


@pytest.mark.parametrize("fast_list", ["true", "4", "false"])
def test_a_walk_costs_one_flat_listing(s3_server: SeaweedS3, tmp_path: Path, fast_list: str) -> None:
    bucket = f"fast-list-{fast_list}"
    fs = s3_server.fs()
    fs.mkdir(bucket)
    expected = []
    for folder in FOLDERS:
        for i in range(3):
            key = f"{folder}/{i}.bin"
            fs.pipe(f"{bucket}/{key}", key.encode() * (i + 1))
            expected.append((key, len(key.encode()) * (i + 1)))
    with FaultProxy("127.0.0.1", s3_server.s3_port, seed=3) as proxy:
        cfg = s3_server.s3_config(tmp_path / "proxied.toml", endpoint=proxy.endpoint)
        value = fast_list if fast_list in ("true", "false") else int(fast_list)
        cfg.write_text(cfg.read_text() + f"[metadata]\nfast_list = {value}\n")
        with mounted(f"s3://{bucket}", tmp_path / "mnt", tmp_path / "cache", "--read-only", config=cfg) as m:
            before = len(proxy.request_lines())
            assert _walk(m.mountpoint) == sorted(expected)
            lists = [ln for ln in proxy.request_lines()[before:] if "list-type=2" in ln]
            flat = [ln for ln in lists if "delimiter" not in ln]
            if fast_list == "true":
                assert len(lists) == 1 and len(flat) == 1, lists  # the whole tree, and nothing else
            elif fast_list == "4":
                # The folders of at most 4 objects below them (meta, train/cat, train/dog/extra, val/cat,
                # val/dog) are listed flat, once; the larger ones (the lake, train, train/dog, val) try once,
                # then are listed a level at a time.
                assert (len(flat), len(lists) - len(flat)) == (9, 4), lists
            else:
                assert not flat and len(lists) == len(FOLDERS) + 3, lists  # every folder, the lake, train, val
            # A second walk within the TTL asks nothing.
            before = len(proxy.request_lines())
            assert _walk(m.mountpoint) == sorted(expected)
            assert [ln for ln in proxy.request_lines()[before:] if "list-type=2" in ln] == []
