"""Mountpoint checks and unmounting: the kernel side of `mount` and `umount`.

Each check fails with one line that says what is wrong and what to do.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

from tierfs.errors import UserError

log = logging.getLogger(__name__)

#: What the kernel answers on a FUSE mount whose daemon has gone.
DEAD_MOUNT_ERRNOS = (errno.ENOTCONN, errno.ECONNABORTED)
#: How our mounts appear in /proc/self/mountinfo (subtype=tierfs).
OUR_FSTYPE = "fuse.tierfs"


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


def check_mountpoint(path: Path, allow_nonempty: bool = False) -> str:
    """Refuse a mountpoint that cannot be used; returns a note ('' if none) for what was put right.

    A dead tierfs mount (its daemon was killed, or OOM-killed) is cleared here:
    that is what lets systemd's Restart=on-failure bring the node's mount back.
    A dead mount of any other filesystem is not ours to touch.
    """
    note = ""
    if is_mounted(path) and _is_dead(path):
        note = clear_dead_mount(path)
    try:
        path.stat()
    except FileNotFoundError:
        raise UserError(f"mountpoint {path} does not exist: create it with mkdir -p {path}") from None
    except OSError as exc:
        raise UserError(f"mountpoint {path} cannot be used: {exc.strerror}") from None
    if not os.path.isdir(path):
        raise UserError(f"mountpoint {path} is not a directory")
    if is_mounted(path):
        raise UserError(f"{path} is already a mount point: unmount it first (tierfs umount {path})")
    if not allow_nonempty and any(os.scandir(path)):
        raise UserError(f"mountpoint {path} is not empty: mount on an empty directory (or set [fuse] nonempty = true)")
    return note


def _is_dead(path: Path) -> bool:
    """A FUSE mount at ``path`` whose daemon is gone (statvfs is never answered from the kernel's caches)."""
    try:
        os.statvfs(path)
    except OSError as exc:
        return exc.errno in DEAD_MOUNT_ERRNOS
    return False


def clear_dead_mount(path: Path) -> str:
    """Detach the dead tierfs mount at ``path``; UserError if the dead mount is another filesystem's."""
    fstype = mount_type(path)
    if fstype != OUR_FSTYPE:
        what = f"a dead {fstype} mount" if fstype else "a dead FUSE mount"
        raise UserError(f"{path} is {what} (its daemon is gone), not tierfs': unmount it first "
                        f"(fusermount3 -u -z {path})")
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    cmd = [tool, "-u", "-z", str(path)] if tool else ["umount", "-l", str(path)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0 or _is_dead(path):
        why = (res.stderr or res.stdout).strip().splitlines()
        raise UserError(f"{path} is a dead tierfs mount that could not be cleared ({why[-1] if why else 'still there'}): "
                        f"run tierfs umount {path}")
    note = f"cleared a dead tierfs mount at {path} (its daemon had died)"
    log.warning("%s", note)
    return note


def mount_type(path: Path) -> str:
    """The filesystem type /proc/self/mountinfo gives for the mount at ``path`` ('' if none)."""
    target = os.path.join(os.path.realpath(path.parent), path.name)
    fstype = ""
    try:
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) > 4 and unescape_mountinfo(fields[4]) == target and " - " in line:
                    fstype = line.split(" - ", 1)[1].split()[0]  # the last mount there is the visible one
    except OSError:
        return ""
    return fstype


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


def tierfs_mounts() -> list[str]:
    """The mountpoint of every tierfs mount on this host, as /proc/self/mountinfo lists them."""
    out = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            if " - " in line and line.split(" - ", 1)[1].split()[0] == OUR_FSTYPE:
                out.append(unescape_mountinfo(line.split()[4]))
    return out


def mount_holding(path: str) -> str | None:
    """The innermost tierfs mount that ``path`` (absolute) is in, or is the root of; None if none."""
    inside = [m for m in tierfs_mounts() if path == m or path.startswith(m.rstrip("/") + "/")]
    return max(inside, key=len) if inside else None


def unescape_mountinfo(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
