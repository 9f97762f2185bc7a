"""`tierfs cache du | verify | clear` on caches filled through the disk tier itself, run as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers import assert_one_line_error, run_tierfs

from tierfs import statefile
from tierfs.refs import ObjectRef
from tierfs.tiers import lmdb_index
from tierfs.tiers.disk import DiskTier, checksum
from tierfs.tiers.seal import Sealer
from tierfs.write.staging import DIRTY, Staging

KEY = "k" * 32


def key(n: int):
    return ObjectRef(f"datasets/toy/{n:03d}.bin", 100, etag="e").block_key(0, 4096)


def block(n: int) -> bytes:
    return bytes([n % 251]) * (1000 + n)


def filled(root: Path, n: int = 20, data_key: bytes = b"") -> DiskTier:
    t = DiskTier(root, 1 << 24, policy="stable", data_key=data_key)
    for i in range(n):
        t.put(key(i), block(i))
    return t


def fill(root: Path, n: int = 20, data_key: bytes = b"") -> None:
    filled(root, n, data_key).close()


def stage(root: Path, pending: int = 0, dirty: int = 0) -> None:
    """Staged files as a mount leaves them: closed ones journalled pending (the lake never acknowledged
    them), others being written."""
    staging = Staging(root / "staging")
    try:
        for i in range(pending + dirty):
            sf = staging.create(f"ckpt/{i}.pt")
            os.pwrite(sf.fd, b"checkpoint %d" % i, 0)
            if i < pending:
                staging.seal(sf)
            else:
                staging.mark(sf, DIRTY)
            os.close(sf.fd)
    finally:
        staging.close()


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` and its bytes (but the locks, which name their last holder)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "lock"}


def cache(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    if input is None:
        return run_tierfs("cache", *args)
    from helpers import TIERFS

    return subprocess.run([*TIERFS, "cache", *args], input=input, capture_output=True, text=True, timeout=120)


def du(root: Path) -> dict[str, object]:
    res = cache("du", "--cache-dir", str(root), "--json")
    assert res.returncode == 0, res.stderr
    data: dict[str, object] = json.loads(res.stdout)
    return data


def test_du_counts_blocks_bytes_and_what_is_staged(tmp_path: Path) -> None:
    root = tmp_path / "c"
    fill(root)
    stage(root, pending=2, dirty=1)
    data = du(root)
    assert data["index"] == {"blocks": 20, "bytes": sum(len(block(i)) for i in range(20)), "never_hit": 20,
                             "pending": 0}
    assert data["evictable_bytes"] == sum(len(block(i)) for i in range(20))
    assert data["block_files"] == 20 and data["in_use_by_pid"] is None and data["sealing"] == "none"
    assert data["staging"] == {"pending": 2, "pending_bytes": 2 * len(b"checkpoint 0"), "other": 1,
                               "other_bytes": len(b"checkpoint 2"), "unclosed": 0, "unclosed_bytes": 0}
    assert data["objects"] is None and data["per_prefix"] is None and "not recorded" in str(data["not_recorded"])
    res = cache("du", "--cache-dir", str(root))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == f"cache dir   {root}"
    assert all(len(line) <= 80 for line in lines[1:]), res.stdout
    text = res.stdout
    assert "blocks      20 (19.7 KiB) of 10.0 GiB, the default [cache] size\n" in text
    assert "            20 not read again since they landed: the first to be evicted\n" in text
    assert "staged      2 pending upload(s), 24 B: not in the lake yet, never evicted\n" in text
    assert "            1 other staged file(s), 12 B; 0 set aside in staging/unclosed, 0 B\n" in text
    assert "objects     not recorded: the index keeps each block's digest" in text


def test_du_reads_beside_the_process_holding_the_cache_and_the_others_refuse(tmp_path: Path) -> None:
    root = tmp_path / "c"
    t = filled(root)  # holds the lock, as a mount does
    try:
        before = snapshot(root / "blocks")
        data = du(root)
        assert data["in_use_by_pid"] == os.getpid()
        assert data["index"] is not None and data["index"]["blocks"] == 20  # type: ignore[index]
        for args in (("verify",), ("verify", "--repair"), ("clear", "--yes")):
            res = cache(*args, "--cache-dir", str(root))
            assert_one_line_error(res, f"cache dir {root} is in use by tierfs process {os.getpid()}",
                                  f"run tierfs cache {args[0]} again")
        assert snapshot(root / "blocks") == before
        assert all(t.get(key(i)) == block(i) for i in range(20))
    finally:
        t.close()


def test_du_leaves_an_index_a_power_cut_may_have_torn_unread(tmp_path: Path) -> None:
    root = tmp_path / "c"
    t = filled(root, 3)
    t.index.env.close()  # left open, then the system went down: reading the file could abort the reader
    os.close(t._lock_fd)
    statefile.save(root / "index" / lmdb_index.STATE, {"open": True, "boot": "another boot"})
    data = du(root)
    assert data["index"] is None and data["evictable_bytes"] is None and data["block_files"] == 3
    assert str(data["index_unread"]).startswith("not read: the system went down while it was open")
    assert "the next mount or tierfs cache verify checks it" in str(data["index_unread"])
    res = cache("verify", "--cache-dir", str(root))  # rebuilt apart, then checked, as a mount's start does
    assert res.returncode == 0, res.stderr
    assert "the index was not closed cleanly (the system went down" in res.stdout
    assert "good 3   bad 0   missing 0" in res.stdout


def test_a_mount_without_a_disk_tier_holds_its_staging_dir_and_verify_and_clear_refuse(tmp_path: Path) -> None:
    root = tmp_path / "c"
    fill(root)
    staging = Staging(root / "staging")  # a writable mount whose disk tier is off locks only this
    try:
        for args in (("verify",), ("clear", "--yes")):
            assert_one_line_error(cache(*args, "--cache-dir", str(root)), "is in use by tierfs process")
    finally:
        staging.close()
    assert du(root)["block_files"] == 20


def test_verify_finds_bad_and_missing_blocks_and_repair_drops_only_those(tmp_path: Path) -> None:
    root = tmp_path / "c"
    t = filled(root)
    paths = [t._path(key(i).hex) for i in range(20)]
    t.close()
    res = cache("verify", "--cache-dir", str(root))
    assert res.returncode == 0, res.stderr
    assert "20 blocks, 19.7 KiB" in res.stdout and "good 20   bad 0   missing 0" in res.stdout

    flipped = bytearray(paths[3].read_bytes())
    flipped[7] ^= 0x01
    paths[3].write_bytes(bytes(flipped))  # same size, other bytes: only reading it tells
    os.truncate(paths[5], 10)  # cut short
    paths[8].unlink()  # gone
    stray = root / "blocks" / "ff" / "ff" / ("ff" * 20)  # a file the index does not know
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"not indexed")
    before = snapshot(root)
    res = cache("verify", "--cache-dir", str(root))
    assert_one_line_error(res, "3 of 20 blocks", "are bad or missing and were not repaired", "--repair")
    assert "good 17   bad 2   missing 1" in res.stdout
    assert f"bad: {key(3).hex[:16]}…: wrong size or checksum" in res.stdout
    assert f"missing: {key(8).hex[:16]}…" in res.stdout
    assert "1 block file(s) the index does not know, left alone" in res.stdout
    assert snapshot(root / "blocks") == {k.removeprefix("blocks/"): v for k, v in before.items()
                                         if k.startswith("blocks/")}  # nothing changed without --repair

    res = cache("verify", "--cache-dir", str(root), "--repair")
    assert res.returncode == 0, res.stderr
    assert "good 17   bad 2   missing 1" in res.stdout and "repaired: 3 dropped" in res.stdout
    assert not paths[3].exists() and not paths[5].exists()
    assert stray.read_bytes() == b"not indexed"  # never anything else
    assert all(paths[i].read_bytes() == block(i) for i in range(20) if i not in (3, 5, 8))
    res = cache("verify", "--cache-dir", str(root))
    assert res.returncode == 0 and "good 17   bad 0   missing 0" in res.stdout, res.stdout + res.stderr
    t = DiskTier(root, 1 << 24)  # a mount's next start: the good blocks served, the dropped ones misses
    try:
        assert t.entries() == 17
        assert all(t.get(key(i)) == block(i) for i in range(20) if i not in (3, 5, 8))
        assert t.get(key(3)) is None and t.get(key(8)) is None
    finally:
        t.close()


def test_verify_after_a_kill_checks_the_index_as_a_mount_start_does(tmp_path: Path) -> None:
    root = tmp_path / "c"
    t = filled(root, 6)
    t._path(key(2).hex).unlink()
    t.index.env.close()  # what a kill -9 leaves: the index not closed
    os.close(t._lock_fd)
    res = cache("verify", "--cache-dir", str(root))
    assert res.returncode == 0, res.stderr
    assert "the index was not closed cleanly (the last run did not close it: killed, or it crashed)" in res.stdout
    assert "1 dropped or removed" in res.stdout and "good 5   bad 0   missing 0" in res.stdout


def test_an_encrypted_cache_is_verified_under_its_key_only(tmp_path: Path) -> None:
    root = tmp_path / "c"
    t = filled(root, 5, data_key=KEY.encode())
    # A block file sealed under another key, with an index entry that matches its bytes: only the key tells.
    digest = key(1).digest
    foreign = Sealer(data_key=b"x" * 32).seal(digest, block(1))
    t._path(key(1).hex).write_bytes(foreign)
    t.index.add(digest, len(foreign), checksum(foreign))
    t.close()
    before = snapshot(root)
    res = cache("verify", "--cache-dir", str(root))
    assert_one_line_error(res, f"cache dir {root} is encrypted (aes-gcm ", "give its key", "nothing was checked")
    res = run_tierfs("cache", "verify", "--cache-dir", str(root), env={"TIERFS_CACHE_KEY": "y" * 32})
    assert_one_line_error(res, "is encrypted under another key")
    assert snapshot(root) == before  # refused untouched: no cache started afresh under the wrong key
    key_file = tmp_path / "cache.key"
    key_file.write_text(KEY)
    key_file.chmod(0o600)  # (one others can read is refused)
    cfg = tmp_path / "train.toml"
    cfg.write_text(f'[cache]\ndir = "{root}"\nencryption_key_file = "{key_file}"\n')
    res = cache("verify", "--config", str(cfg))
    assert_one_line_error(res, "1 of 5 blocks")
    assert f"bad: {key(1).hex[:16]}…: does not open under the cache key" in res.stdout
    assert "good 4   bad 1   missing 0" in res.stdout
    assert cache("verify", "--config", str(cfg), "--repair").returncode == 0
    assert "good 4   bad 0" in cache("verify", "--config", str(cfg)).stdout
    assert "encryption  aes-gcm " in cache("du", "--config", str(cfg)).stdout


def test_clear_removes_blocks_and_index_and_keeps_staging(tmp_path: Path) -> None:
    root = tmp_path / "c"
    fill(root)
    stage(root, dirty=1)
    (root / "staging" / "unclosed").mkdir()
    (root / "staging" / "unclosed" / "20261201T000000-ab-ckpt__x.pt").write_bytes(b"set aside")
    staged = snapshot(root / "staging")
    res = cache("clear", "--cache-dir", str(root), "--yes")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"cleared {root}: 20 block file(s) and the index, ")
    assert "staging/ kept (2 file(s))" in res.stdout
    assert sorted(os.listdir(root)) == ["LAYOUT", "lock", "staging"]
    assert snapshot(root / "staging") == staged
    data = du(root)
    assert data["index"] is None and data["index_unread"] == "none yet" and data["block_files"] == 0
    t = DiskTier(root, 1 << 24)  # the next mount: an empty cache, not refused
    try:
        assert t.entries() == 0 and t.get(key(1)) is None
        t.put(key(1), block(1))
        assert t.get(key(1)) == block(1)
    finally:
        t.close()


def test_clear_refuses_while_staged_files_wait_for_their_upload(tmp_path: Path) -> None:
    root = tmp_path / "c"
    fill(root)
    stage(root, pending=1)
    before = snapshot(root)
    res = cache("clear", "--cache-dir", str(root), "--yes")
    assert_one_line_error(res, "holds 1 staged file(s) pending upload", "mount it again so they are uploaded",
                          "nothing was removed")
    assert snapshot(root) == before


def test_clear_asks_first(tmp_path: Path) -> None:
    root = tmp_path / "c"
    fill(root)
    for answer in ("n\n", ""):
        res = cache("clear", "--cache-dir", str(root), input=answer)
        assert res.returncode == 1 and "Remove 20 cached block file(s)" in res.stderr, res.stderr
        assert res.stderr.splitlines()[-1] == "tierfs: error: not confirmed: nothing was removed (--yes clears " \
                                              "without asking)"
        assert du(root)["block_files"] == 20
    res = cache("clear", "--cache-dir", str(root), input="y\n")
    assert res.returncode == 0 and "cleared" in res.stdout, res.stderr
    assert du(root)["block_files"] == 0


@pytest.mark.parametrize("command", [("du",), ("verify", "--repair"), ("clear", "--yes")])
def test_a_directory_that_is_not_a_cache_is_refused_untouched(tmp_path: Path, command: tuple[str, ...]) -> None:
    data = tmp_path / "srv-data"
    (data / "blocks").mkdir(parents=True)
    (data / "blocks" / "precious.bin").write_bytes(b"keep me")
    (data / "notes.txt").write_text("mine")
    before = snapshot(data)
    assert_one_line_error(cache(*command, "--cache-dir", str(data)), "is not a tierfs disk cache",
                          "nothing in it was touched")
    assert snapshot(data) == before and sorted(os.listdir(data)) == ["blocks", "notes.txt"]
    assert_one_line_error(cache(*command, "--cache-dir", str(tmp_path / "none")), "does not exist")
    assert not (tmp_path / "none").exists()
    (tmp_path / "link").symlink_to(data)
    assert_one_line_error(cache(*command, "--cache-dir", str(tmp_path / "link")), "is a symlink")
    for n, marker in enumerate(("tierfs-disk-cache 0\n", "")):  # another version; one a power cut emptied
        other = tmp_path / f"other-layout-{n}"
        other.mkdir()
        (other / "LAYOUT").write_text(marker)
        assert_one_line_error(cache(*command, "--cache-dir", str(other)), "has another layout")
        assert os.listdir(other) == ["LAYOUT"]


def test_the_cache_dir_is_found_as_a_mount_finds_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = tmp_path / "explicit"
    fill(explicit, 3)
    cfg = tmp_path / "train.toml"
    cfg.write_text(f'[cache]\ndir = "{explicit}"\nsize = "1GiB"\n')
    res = cache("du", "--config", str(cfg))
    assert res.returncode == 0, res.stderr
    unwrapped = res.stdout.replace("\n" + " " * 12, " ")
    assert f"cache dir   {explicit}\n" in unwrapped and f"of 1.0 GiB, [cache] size in {cfg} " in unwrapped
    # No [cache] dir: the per-lake default of the lake's URL, from the config or --lake.
    from tierfs.config import load

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # (the commands run below inherit it)
    default = load(None, {"lake_url": "s3://ml-lake/datasets"}).resolved_cache_dir()
    fill(default, 4)
    cfg.write_text('[lake]\nurl = "s3://ml-lake/datasets"\n')
    for args in (("--config", str(cfg)), ("--lake", "s3://ml-lake/datasets")):
        res = cache("du", "--json", *args)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["cache_dir"] == str(default)
        assert json.loads(res.stdout)["index"]["blocks"] == 4
    # --cache-dir wins over the config, as it does for a mount
    assert json.loads(cache("du", "--json", "--config", str(cfg), "--cache-dir", str(explicit)).stdout)[
        "cache_dir"] == str(explicit)
    cfg.write_text("[cache]\nsize = \"1GiB\"\n")
    assert_one_line_error(cache("du", "--config", str(cfg)), "which cache? give --cache-dir DIR")
    assert_one_line_error(cache("verify"), "which cache?")


def test_help_reads_with_examples() -> None:
    res = run_tierfs("cache", "--help")
    assert res.returncode == 0 and "tierfs cache verify --config /etc/tierfs/train.toml --repair" in res.stdout
    for sub in ("du", "verify", "clear"):
        res = run_tierfs("cache", sub, "--help")
        assert res.returncode == 0 and "--cache-dir DIR" in res.stdout and "--config FILE" in res.stdout
    assert "staged files stay" in run_tierfs("cache", "clear", "--help").stdout
