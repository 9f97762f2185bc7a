"""Azure Blob lakes against Azurite on loopback: mount reads, access tiers, lifecycle, archive and restore."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from helpers import Azurite, assert_one_line_error, check_reads_through_tiers, mounted, random_bytes, run_tierfs

pytestmark = [pytest.mark.servers, pytest.mark.mount,
              # adlfs hands aiohttp whole bytes bodies when the tests upload their fixtures
              pytest.mark.filterwarnings("ignore:Sending a large body:ResourceWarning")]
MiB = 1 << 20



def upload(azure: Azurite, container: str, files: dict[str, bytes]) -> None:
    fs = azure.fs()
    if not fs.exists(container):
        fs.mkdir(container)
    for key, data in files.items():
        fs.pipe(f"{container}/{key}", data)


def tier(azure: Azurite, container: str, name: str) -> str:
    from azure.storage.blob import BlobServiceClient

    with BlobServiceClient.from_connection_string(azure.connection_string) as client:
        return str(client.get_blob_client(container, name).get_blob_properties().blob_tier)


def test_mount_an_azure_lake(azure: Azurite, tmp_path: Path) -> None:
    files = {f"datasets/toy/c{i % 3}/{i}.jpg": random_bytes(40_000 + i, seed=i) for i in range(20)}
    files["datasets/toy/shard.tar"] = random_bytes(3 * MiB + 5, seed=7)
    upload(azure, "lake", files)
    cfg = azure.config(tmp_path / "az.toml")
    with mounted("az://lake/datasets", tmp_path / "mnt", tmp_path / "cache", "--block-size", "1MiB", config=cfg) as m:
        check_reads_through_tiers(m, files, strip="datasets/")


def test_lifecycle_moves_access_tiers_and_expires(azure: Azurite, tmp_path: Path) -> None:
    upload(azure, "tiers", {"raw/a.bin": b"a" * 4000, "raw/b.bin": b"b" * 6000, "experiments/run1/log.txt": b"l" * 10,
                            "models/production/m.pt": b"m" * 100})
    cfg = azure.config(tmp_path / "az.toml")
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nid = "raw-cool"\nprefix = "raw/"\ntransitions = [{ days = 0, class = "Cool" }]\n\n'
                     '[[rule]]\nid = "experiments-expire"\nprefix = "experiments/"\nexpiration_days = 0\n')
    plan = run_tierfs("lifecycle", "plan", "az://tiers", "--rules", str(rules), "--config", str(cfg), check=True).stdout
    assert "raw/a.bin\t-> Cool\t(rule raw-cool)" in plan
    assert "experiments/run1/log.txt\texpire\t(rule experiments-expire)" in plan
    # hand-computed: 10110 bytes Hot at 0.0184 USD/GB-month; after: 10000 bytes Cool at 0.01 and 100 Hot
    before, after = 10110 * 0.0184 / 1e9, (10000 * 0.01 + 100 * 0.0184) / 1e9
    assert f"monthly cost {before:.4f} -> {after:.4f} USD (azure prices)" in plan
    out = run_tierfs("lifecycle", "apply", "az://tiers", "--rules", str(rules), "--config", str(cfg), check=True).stdout
    assert "2 transitioned, 1 expired" in out
    assert tier(azure, "tiers", "raw/a.bin") == "Cool" and tier(azure, "tiers", "raw/b.bin") == "Cool"
    assert tier(azure, "tiers", "models/production/m.pt") == "Hot"
    assert not azure.fs().exists("tiers/experiments/run1/log.txt")
    again = run_tierfs("lifecycle", "apply", "az://tiers", "--rules", str(rules), "--config", str(cfg), check=True).stdout
    assert "0 transitioned, 0 expired" in again  # idempotent: the tiers are read back from Azure
    cost = run_tierfs("cost", "az://tiers", "--config", str(cfg), check=True).stdout
    assert any(line.split()[:3] == ["raw", "Cool", "2"] for line in cost.splitlines()), cost


def test_an_archived_blob_is_a_clear_error_and_restore_brings_it_back(azure: Azurite, tmp_path: Path) -> None:
    upload(azure, "cold", {"old/ckpt.pt": b"frozen" * 1000, "old/notes.txt": b"readable"})
    cfg = azure.config(tmp_path / "az.toml")
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nid = "deep"\nprefix = "old/ckpt"\ntransitions = [{ days = 0, class = "Archive" }]\n')
    run_tierfs("lifecycle", "apply", "az://cold", "--rules", str(rules), "--config", str(cfg), check=True)
    assert tier(azure, "cold", "old/ckpt.pt") == "Archive"
    with mounted("az://cold", tmp_path / "mnt", tmp_path / "cache", config=cfg) as m:
        with pytest.raises(OSError) as e:
            (m.mountpoint / "old/ckpt.pt").read_bytes()
        assert e.value.errno == errno.EIO
        assert (m.mountpoint / "old/notes.txt").read_bytes() == b"readable"
        assert ("old/ckpt.pt is archived (Archive tier): restore it first with "
                "`tierfs restore az://cold old/ckpt.pt`") in m.log_tail()
        out = run_tierfs("restore", "az://cold", "old/ckpt.pt", "--config", str(cfg), check=True).stdout
        assert "rehydration to Hot started" in out
        # Azurite rehydrates at once; Azure itself takes hours.
        assert tier(azure, "cold", "old/ckpt.pt") == "Hot"
        assert (m.mountpoint / "old/ckpt.pt").read_bytes() == b"frozen" * 1000


def test_copy_mode_snapshot_outlives_expiration(azure: Azurite, tmp_path: Path) -> None:
    """Azure blob versions are not used (Azurite does not keep them): snapshots copy, and survive the rules."""
    files = {f"ds/{i}.bin": random_bytes(3000 + i, seed=i) for i in range(4)}
    upload(azure, "snaps", files)
    cfg = azure.config(tmp_path / "az.toml")
    res = run_tierfs("snapshot", "create", "az://snaps", "ds", "v1", "--config", str(cfg), check=True)
    assert "(copy)" in res.stdout
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nid = "all-gone"\nexpiration_days = 0\n')
    out = run_tierfs("lifecycle", "apply", "az://snaps", "--rules", str(rules), "--config", str(cfg), check=True).stdout
    assert "4 expired" in out
    with mounted("az://snaps", tmp_path / "mnt", tmp_path / "cache", config=cfg) as m:
        snap = m.mountpoint / ".snapshots/ds/v1"
        assert {p.name: p.read_bytes() for p in snap.iterdir()} == {os.path.basename(k): v for k, v in files.items()}
        assert not (m.mountpoint / "ds").exists() or not any((m.mountpoint / "ds").iterdir())


def test_bad_azure_credentials_are_one_line(azure: Azurite, tmp_path: Path) -> None:
    upload(azure, "locked", {"x": b"x"})
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[store]\noptions = { connection_string = "'
                   + azure.connection_string.replace("AccountKey=Eby8", "AccountKey=AAAA") + '" }\nretries = 1\n')
    assert_one_line_error(run_tierfs("cost", "az://locked", "--config", str(cfg)),
                          "no usable credentials for az://locked", "connection_string")
    good = azure.config(tmp_path / "good.toml")
    assert_one_line_error(run_tierfs("cost", "az://no-such-container", "--config", str(good)),
                          "lake az://no-such-container does not exist")
    assert_one_line_error(run_tierfs("restore", "az://locked", "x", "--config", str(good)),
                          "x is not archived (tier Hot)")
