"""tierfs from fstab: `mount -t fuse.tierfs LAKE DIR -o …` through mount(8) and its helper, and the units
systemd makes of an fstab line with x-systemd.automount."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import (
    as_user,
    assert_one_line_error,
    force_cleanup,
    is_mounted,
    other_user,
    reachable_dir,
    run_tierfs,
    write_tree,
)

pytestmark = pytest.mark.mount
HELPER = Path("/usr/sbin/mount.fuse.tierfs")


@pytest.fixture
def fstab_lake(tmp_path: Path) -> Path:
    if not HELPER.exists():
        pytest.fail(f"{HELPER} is missing: scripts/bootstrap.sh installs it")
    lake = tmp_path / "lake"
    write_tree(lake, {"d/x.txt": b"hello from fstab"})
    return lake


def test_mount_dash_t_fuse_tierfs_honours_its_options(fstab_lake: Path, tmp_path: Path) -> None:
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    mnt.mkdir()
    cfg = tmp_path / "train.toml"
    cfg.write_text('[cache]\nram_size = "64MiB"\n[metadata]\nttl = 7\n')
    opts = f"config={cfg},cache_dir={cache},ro,allow_other,_netdev,nofail,x-systemd.automount"
    try:
        res = subprocess.run(["mount", "-t", "fuse.tierfs", f"file://{fstab_lake}", str(mnt), "-o", opts],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        assert (mnt / "d/x.txt").read_bytes() == b"hello from fstab"
        with open("/proc/self/mountinfo") as fh:
            line = next(ln for ln in fh if f" {mnt} " in ln)
        assert " - fuse.tierfs " in line and "allow_other" in line
        with pytest.raises(OSError) as e:
            (mnt / "new.txt").write_bytes(b"x")
        assert e.value.errno == errno.EROFS  # ro
        assert (cache / "tierfs.log").exists()  # cache_dir
        assert os.stat(mnt / "d/x.txt").st_size == 16
        assert "ttl" not in res.stderr
        res = run_tierfs("umount", str(mnt))
        assert res.returncode == 0, res.stderr
        assert not is_mounted(mnt)
    finally:
        force_cleanup(mnt, None)


def test_owner_and_modes_come_from_mount_options(fstab_lake: Path, tmp_path: Path) -> None:
    """uid=, gid=, file_mode=, dir_mode= as an fstab line gives them (mount(8) passes them on to the helper)."""
    with other_user() as user, reachable_dir() as place:
        mnt, pid = place / "mnt", None
        mnt.mkdir()
        opts = (f"cache_dir={tmp_path / 'cache'},allow_other,uid={user.name},gid={user.group},file_mode=0640,"
                "dir_mode=0750,_netdev")
        try:
            res = subprocess.run(["mount", "-t", "fuse.tierfs", f"file://{fstab_lake}", str(mnt), "-o", opts],
                                 capture_output=True, text=True, timeout=120)
            assert res.returncode == 0, res.stderr
            pid = int(os.getxattr(mnt, "user.tierfs.pid"))
            for path, mode in ((mnt / "d", 0o750), (mnt / "d/x.txt", 0o640)):
                st = os.stat(path)
                assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (user.uid, user.gid, mode), path
            res = as_user(user, "cat", str(mnt / "d/x.txt"))
            assert res.returncode == 0 and res.stdout == "hello from fstab", res.stderr
            assert run_tierfs("umount", str(mnt)).returncode == 0
        finally:
            force_cleanup(mnt, pid)


def test_an_unknown_mount_option_is_one_line(fstab_lake: Path, tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    res = run_tierfs("mount", f"file://{fstab_lake}", str(tmp_path / "mnt"), "-o", "config=/dev/null,frobnicate=1")
    assert_one_line_error(res, "mount option 'frobnicate=1'", "config")
    assert not is_mounted(tmp_path / "mnt")


def test_an_fstab_line_with_automount_makes_units_that_verify(tmp_path: Path) -> None:
    generator = Path("/lib/systemd/system-generators/systemd-fstab-generator")
    if not generator.exists() or shutil.which("systemd-analyze") is None:
        pytest.fail("systemd (systemd-fstab-generator, systemd-analyze) is needed")
    fstab, out = tmp_path / "fstab", tmp_path / "units"
    out.mkdir()
    fstab.write_text("s3://ml-lake /mnt/lake fuse.tierfs config=/etc/tierfs/train.toml,allow_other,_netdev,"
                     "x-systemd.automount 0 0\n")
    res = subprocess.run([str(generator), str(out), str(out), str(out)], env={**os.environ, "SYSTEMD_FSTAB": str(fstab)},
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    mount_unit, automount = out / "mnt-lake.mount", out / "mnt-lake.automount"
    assert "Type=fuse.tierfs" in mount_unit.read_text() and automount.exists()
    assert (out / "remote-fs.target.requires" / "mnt-lake.automount").exists()  # _netdev: after the network
    res = subprocess.run(["systemd-analyze", "verify", "--man=no", mount_unit.name, automount.name], cwd=out,
                         capture_output=True, text=True)
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr
