"""Mountpoint checks and unmounting: the kernel side of `mount` and `umount`.

Each check fails with one line that says what is wrong and what to do.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time
from pathlib import Path

from tierfs.errors import UserError

#: What the kernel answers on a FUSE mount whose daemon has gone.
DEAD_MOUNT_ERRNOS = (errno.ENOTCONN, errno.ECONNABORTED)


def check_fuse() -> None:
    if not os.path.exists("/dev/fuse"):
        raise UserError("this machine has no FUSE (/dev/fuse is missing): install fuse3 and load the fuse module (modprobe fuse)")
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
        os.close(fd)
    except OSError as exc:
        raise UserError(f"cannot open /dev/fuse ({exc.strerror}): run as a user allowed to use FUSE") from None
    if shutil.which("fusermount3") is None and os.geteuid() != 0:
        raise UserError("fusermount3 is not installed: apt-get install fuse3")


def check_mountpoint(path: Path, allow_nonempty: bool = False) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UserError(f"mountpoint {path} does not exist: create it with mkdir -p {path}") from None
    except OSError as exc:
        if exc.errno in DEAD_MOUNT_ERRNOS:
            raise UserError(f"{path} is a dead FUSE mount (its daemon is gone): run tierfs umount {path} first") from None
        raise UserError(f"mountpoint {path} cannot be used: {exc.strerror}") from None
    if not os.path.isdir(path):
        raise UserError(f"mountpoint {path} is not a directory")
    if is_mounted(path):
        try:
            os.statvfs(path)  # never answered from the kernel's caches
        except OSError as exc:
            if exc.errno in DEAD_MOUNT_ERRNOS:
                raise UserError(f"{path} is a dead FUSE mount (its daemon is gone): run tierfs umount {path} first") from None
        raise UserError(f"{path} is already a mount point: unmount it first (tierfs umount {path})")
    del st
    if not allow_nonempty and any(os.scandir(path)):
        raise UserError(f"mountpoint {path} is not empty: mount on an empty directory (or set [fuse] nonempty = true)")


def is_mounted(path: Path) -> bool:
    target = os.path.join(os.path.realpath(path.parent), path.name)  # never stat the mount itself
    try:
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) > 4 and unescape_mountinfo(fields[4]) == target:
                    return True
    except OSError:
        return os.path.ismount(path)
    return False


def unmount(path: Path, lazy: bool = False) -> None:
    """Unmount a FUSE mount; one clear line if that is not possible."""
    if not is_mounted(path):
        raise UserError(f"{path} is not mounted")
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    cmd: list[str] = [tool, "-u"] if tool else ["umount"]
    if lazy:
        cmd = [tool, "-u", "-z"] if tool else ["umount", "-l"]
    res = subprocess.run([*cmd, str(path)], capture_output=True, text=True)
    if res.returncode != 0:
        why = (res.stderr or res.stdout).strip().splitlines()
        reason = why[-1] if why else f"exit code {res.returncode}"
        if "busy" in reason.lower():
            raise UserError(f"{path} is busy (a process has a file or directory open there): close it, or use --lazy")
        raise UserError(f"cannot unmount {path}: {reason}")


def wait_for_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().split(") ", 1)[1].startswith("Z"):
                    return True  # a zombie has finished its work
        except (OSError, IndexError):
            return True
        time.sleep(0.05)
    return False


def unescape_mountinfo(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
