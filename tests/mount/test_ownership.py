"""Owners and modes of a real mount (--uid, --gid, --umask, --file-mode, --dir-mode, --allow-root), and who
the kernel lets in: a root daemon serving a training job's user, checked as a user who is not root."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    User,
    as_user,
    assert_one_line_error,
    is_mounted,
    mounted,
    other_user,
    reachable_dir,
    run_tierfs,
)

pytestmark = pytest.mark.mount
CAT = "datasets/toy/train/cat/0001.jpg"


@pytest.fixture(scope="module")
def user() -> Iterator[User]:
    with other_user() as u:
        yield u


@pytest.fixture
def place() -> Iterator[Path]:
    with reachable_dir() as d:
        yield d


def owner_and_mode(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def refused(res: subprocess.CompletedProcess[str]) -> bool:
    """A command the kernel refused with EACCES (cat, ls, stat and sh print its strerror)."""
    return res.returncode != 0 and "Permission denied" in res.stderr


def test_the_owner_given_reads_lists_and_writes(lake: Path, tmp_path: Path, user: User, place: Path) -> None:
    run_tierfs("snapshot", "create", f"file://{lake}", "datasets/toy", "v1", check=True)
    with mounted(f"file://{lake}", place / "mnt", tmp_path / "cache", "--allow-other", "--uid", user.name,
                 "--file-mode", "0640", "--dir-mode", "0750") as m:
        mnt, gid = m.mountpoint, os.getgid()  # --gid not given: the daemon's
        assert owner_and_mode(mnt) == (user.uid, gid, 0o750)
        assert owner_and_mode(mnt / "datasets/toy/train") == (user.uid, gid, 0o750)
        assert owner_and_mode(mnt / CAT) == (user.uid, gid, 0o640)
        res = as_user(user, "cat", str(mnt / CAT))
        assert res.returncode == 0 and res.stdout == "c" * 1000, res.stderr
        res = as_user(user, "ls", str(mnt / "datasets/toy/train"))
        assert res.returncode == 0 and res.stdout.split() == ["cat", "dog"], res.stderr
        res = as_user(user, "stat", "-c", "%u %g %a", str(mnt / CAT), str(mnt / "datasets"))
        assert res.stdout.split("\n")[:2] == [f"{user.uid} {gid} 640", f"{user.uid} {gid} 750"], res.stderr
        # The .snapshots tree and a snapshot's files: the same owner, no write bits.
        snap = mnt / ".snapshots/toy/v1"
        assert owner_and_mode(mnt / ".snapshots") == (user.uid, gid, 0o550)
        assert owner_and_mode(snap / "train") == (user.uid, gid, 0o550)
        assert owner_and_mode(snap / "train/cat/0001.jpg") == (user.uid, gid, 0o440)
        res = as_user(user, "cat", str(snap / "train/cat/0001.jpg"))
        assert res.returncode == 0 and res.stdout == "c" * 1000, res.stderr
        # A file written through the mount, by that user or by root, shows what every file shows.
        res = as_user(user, "sh", "-c", f"echo mine > {mnt}/datasets/by-user.txt")
        assert res.returncode == 0, res.stderr
        os.close(os.open(mnt / "datasets/by-root.txt", os.O_CREAT | os.O_WRONLY, 0o600))
        os.mkdir(mnt / "datasets/new-dir", 0o700)
        for name, mode in (("by-user.txt", 0o640), ("by-root.txt", 0o640), ("new-dir", 0o750)):
            assert owner_and_mode(mnt / "datasets" / name) == (user.uid, gid, mode), name
        assert (lake / "datasets/by-user.txt").read_bytes() == b"mine\n"


@pytest.mark.parametrize("dir_mode", ["0700", "0755"])
def test_a_user_the_modes_exclude_is_refused(lake: Path, tmp_path: Path, user: User, place: Path,
                                             dir_mode: str) -> None:
    """allow_other lets the user reach the mount; the modes (checked by the kernel) keep the files from it."""
    with mounted(f"file://{lake}", place / "mnt", tmp_path / "cache", "--allow-other", "--uid", "0", "--gid", "0",
                 "--file-mode", "0600", "--dir-mode", dir_mode) as m:
        mnt = m.mountpoint
        assert owner_and_mode(mnt / CAT) == (0, 0, 0o600)
        assert owner_and_mode(mnt / "datasets") == (0, 0, int(dir_mode, 8))
        if dir_mode == "0700":
            assert refused(as_user(user, "ls", str(mnt)))
            assert refused(as_user(user, "ls", str(mnt / "datasets")))
        else:  # directories open to all: the user lists them, and still cannot read a file
            res = as_user(user, "ls", str(mnt / "datasets/toy/train"))
            assert res.returncode == 0 and res.stdout.split() == ["cat", "dog"], res.stderr
        assert refused(as_user(user, "cat", str(mnt / CAT)))
        assert refused(as_user(user, "sh", "-c", f"echo x > {mnt}/datasets/x.txt"))
        assert not (lake / "datasets/x.txt").exists()
        assert (mnt / CAT).read_bytes() == b"c" * 1000  # root still reads


def test_a_umask_takes_bits_off_files_and_directories(lake: Path, tmp_path: Path, user: User, place: Path) -> None:
    with mounted(f"file://{lake}", place / "mnt", tmp_path / "cache", "--allow-other", "--umask", "027") as m:
        mnt, me = m.mountpoint, (os.getuid(), os.getgid())
        assert owner_and_mode(mnt) == (*me, 0o750)
        assert owner_and_mode(mnt / "datasets/toy") == (*me, 0o750)
        assert owner_and_mode(mnt / CAT) == (*me, 0o640)
        assert refused(as_user(user, "ls", str(mnt)))  # neither owner nor group: 027 leaves it nothing


@pytest.mark.parametrize("allow", [[], ["--allow-root"]])
def test_without_allow_other_only_the_mounting_user_enters(lake: Path, tmp_path: Path, user: User, place: Path,
                                                           allow: list[str]) -> None:
    """The kernel's rule: modes that would let the user in do not, unless allow_other lets it reach the mount."""
    with mounted(f"file://{lake}", place / "mnt", tmp_path / "cache", "--uid", user.name, "--gid", user.group,
                 *allow) as m:
        mnt = m.mountpoint
        assert owner_and_mode(mnt / CAT) == (user.uid, user.gid, 0o644)
        for argv in (["ls", str(mnt)], ["stat", str(mnt / CAT)], ["cat", str(mnt / CAT)]):
            assert refused(as_user(user, *argv)), argv
        assert (mnt / CAT).read_bytes() == b"c" * 1000
        assert "only " in m.output and "--allow-other" in m.output  # the note says why and what to do


@pytest.mark.parametrize(("args", "needles"), [
    (["--uid", "tierfs-no-such-user"], ["[fuse] uid = 'tierfs-no-such-user' is not allowed", "no user"]),
    (["--gid", "tierfs-no-such-group"], ["[fuse] gid = 'tierfs-no-such-group'", "no group"]),
    (["--uid=-5"], ["[fuse] uid = '-5'", "a number from 0 to 4294967294"]),
    (["--uid", "4294967295"], ["[fuse] uid = '4294967295'", "a number from 0 to 4294967294"]),
    (["--file-mode", "0968"], ["[fuse] file_mode = '0968'", 'octal number', '"0640"']),
    (["--dir-mode", "17777"], ["[fuse] dir_mode = '17777'", "at most 7777"]),
    (["--umask", "0o1000"], ["[fuse] umask = '0o1000'", "at most 777"]),
    (["-o", "file_mode=rw-r-----"], ["[fuse] file_mode = 'rw-r-----'", "octal"]),
    (["--allow-other", "--allow-root"], ["allow_other and allow_root", "cannot both be on", "keep only one"]),
    (["-o", "allow_other,allow_root"], ["allow_other and allow_root", "cannot both be on"]),
])
def test_bad_owners_and_modes_are_one_line(lake: Path, tmp_path: Path, args: list[str], needles: list[str]) -> None:
    (tmp_path / "mnt").mkdir()
    res = run_tierfs("mount", f"file://{lake}", str(tmp_path / "mnt"), "--cache-dir", str(tmp_path / "cache"), *args)
    assert_one_line_error(res, *needles)
    assert not is_mounted(tmp_path / "mnt")


def test_the_mount_asks_the_kernel_to_check_modes(lake: Path, tmp_path: Path) -> None:
    with mounted(f"file://{lake}", tmp_path / "mnt", tmp_path / "cache", "--allow-root") as m:
        with open("/proc/self/mountinfo") as fh:
            line = next(ln for ln in fh if f" {m.mountpoint} " in ln)
        super_options = line.split(" - ", 1)[1].split()[2].split(",")
        assert "default_permissions" in super_options
        assert "allow_other" in super_options  # allow_root is allow_other to the kernel; libfuse refuses the rest
        assert "nosuid" in line.split()[5].split(",")  # a setuid bit in --file-mode is never honoured
