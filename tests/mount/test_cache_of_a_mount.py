"""`tierfs cache du | verify | clear` on the cache of a real mount, as an operator uses them on a node."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import assert_one_line_error, mounted, random_bytes, run_tierfs, wait_for, write_tree

pytestmark = pytest.mark.mount
BLOCK = 64 << 10


def test_du_verify_repair_and_clear_around_a_real_mount(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    files = {f"datasets/toy/{i:02d}.bin": random_bytes(200 << 10, seed=i) for i in range(4)}  # 4 blocks each
    write_tree(lake, files)
    total = sum(len(d) for d in files.values())
    cache, mnt = tmp_path / "cache", tmp_path / "mnt"
    # Passthrough off: its whole-file copies would be entries beside the blocks counted here.
    cfg = tmp_path / "t.toml"
    cfg.write_text("[fuse]\npassthrough = false\n")
    args = ("--ram-size", "0", "--block-size", "64KiB", "--config", str(cfg))
    where = ("--cache-dir", str(cache))
    checkpoint = random_bytes(100 << 10, seed=99)
    # A file where the local lake stages its uploads: every upload fails, so a checkpoint closed through the
    # mount stays staged, pending, as when the store is down.
    (lake / ".tierfs").mkdir()
    (lake / ".tierfs" / "upload").write_bytes(b"")

    with mounted(f"file://{lake}", mnt, cache, *args) as m:
        for rel, data in files.items():
            assert (mnt / rel).read_bytes() == data
        m.fills_settled()
        with pytest.raises(OSError):
            (mnt / "ckpt.pt").write_bytes(checkpoint)
        assert m.stats()["writes"]["pending_uploads"] == 1
        for command in (("verify",), ("verify", "--repair"), ("clear", "--yes")):
            assert_one_line_error(run_tierfs("cache", *command, *where), f"is in use by tierfs process {m.pid}")
        res = run_tierfs("cache", "du", *where, "--json", check=True)
        beside = json.loads(res.stdout)  # read beside the mount
        assert beside["in_use_by_pid"] == m.pid and beside["index"]["blocks"] == 16
        assert (mnt / "datasets/toy/00.bin").read_bytes() == files["datasets/toy/00.bin"]  # the mount unharmed

    data = json.loads(run_tierfs("cache", "du", *where, "--json", check=True).stdout)
    assert data["in_use_by_pid"] is None and data["index_unclean"] is None
    assert data["index"]["blocks"] == 16 and data["index"]["bytes"] == total == data["evictable_bytes"]
    assert data["staging"]["pending"] == 1 and data["staging"]["pending_bytes"] == len(checkpoint)
    res = run_tierfs("cache", "verify", *where)
    assert res.returncode == 0 and "good 16   bad 0   missing 0" in res.stdout, res.stdout + res.stderr

    spoiled = sorted(p for p in (cache / "blocks").rglob("*") if p.is_file())[7]
    raw = bytearray(spoiled.read_bytes())
    raw[1000] ^= 0xFF
    spoiled.write_bytes(bytes(raw))
    res = run_tierfs("cache", "verify", *where)
    assert_one_line_error(res, "1 of 16 blocks", "not repaired", "--repair")
    assert "good 15   bad 1   missing 0" in res.stdout and f"bad: {spoiled.name[:16]}…" in res.stdout
    res = run_tierfs("cache", "verify", *where, "--repair")
    assert res.returncode == 0 and "repaired: 1 dropped" in res.stdout, res.stdout + res.stderr
    assert not spoiled.exists()
    assert "good 15   bad 0" in run_tierfs("cache", "verify", *where, check=True).stdout

    with mounted(f"file://{lake}", mnt, cache, *args) as m:
        for rel, data in files.items():
            assert (mnt / rel).read_bytes() == data
        assert m.backend_bytes() == len(raw)  # the dropped block, fetched again; the rest from the disk
        assert m.stats()["writes"]["pending_uploads"] == 1  # (its upload still fails)

    staged = {p.name: p.read_bytes() for p in (cache / "staging").iterdir() if p.is_file() and p.name != "lock"}
    assert checkpoint in staged.values()
    res = run_tierfs("cache", "clear", *where, "--yes")
    assert_one_line_error(res, "holds 1 staged file(s) pending upload", "nothing was removed")
    assert {p.name: p.read_bytes() for p in (cache / "staging").iterdir()
            if p.is_file() and p.name != "lock"} == staged
    after = json.loads(run_tierfs("cache", "du", *where, "--json", check=True).stdout)
    assert after["index"]["blocks"] == 16  # (the block fetched again landed again)

    (lake / ".tierfs" / "upload").unlink()  # the store takes uploads again: the next mount uploads it
    with mounted(f"file://{lake}", mnt, cache, *args) as m:
        wait_for(lambda: m.stats()["writes"]["pending_uploads"] == 0, 30, "the staged checkpoint's upload")
        assert (lake / "ckpt.pt").read_bytes() == checkpoint
    res = run_tierfs("cache", "clear", *where, "--yes")
    assert res.returncode == 0 and res.stdout.startswith(f"cleared {cache}: "), res.stdout + res.stderr
    assert not (cache / "blocks").exists() and not (cache / "index").exists() and (cache / "staging").is_dir()
    with mounted(f"file://{lake}", mnt, cache, *args) as m:  # an empty cache: everything from the lake
        for rel, data in files.items():
            assert (mnt / rel).read_bytes() == data
        assert (mnt / "ckpt.pt").read_bytes() == checkpoint
        assert m.backend_bytes() == total + len(checkpoint)
