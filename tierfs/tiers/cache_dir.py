"""What a cache dir is before anything reads it: its marker, its lock, and the checks made before it is used.

The disk tier (``disk.py``), staging (``write/staging.py``) and the `tierfs
cache` commands share these: each refuses a directory that is a symlink,
another user's, or someone else's (no marker, foreign files), and takes the
flock on ``lock`` that makes one process the user of the directory.
"""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path

from tierfs.errors import CacheDirBusy, UserError

#: The first line of ``LAYOUT``; the second names the sealing (``sealing: none`` or ``sealing: aes-gcm <key id>``).
LAYOUT = "tierfs-disk-cache 1\n"


def layout_text(sealing: str) -> str:
    return LAYOUT + f"sealing: {sealing}\n"


def read_marker(root: Path) -> str | None:
    """The text of ``root``'s LAYOUT marker, or None if it has none."""
    try:
        return (root / "LAYOUT").read_text(errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return None


def sealing_of(marker: str) -> str | None:
    """The sealing a marker names ('none' or 'aes-gcm <key id>'), or None if it is of another layout."""
    if marker == LAYOUT:
        return "none"  # (a marker from before it named the sealing: plain blocks)
    head, _, rest = marker.partition("\n")
    if head + "\n" != LAYOUT or not rest.startswith("sealing: "):
        return None
    return rest[len("sealing: "):].strip()


# What tierfs puts in a cache dir before the disk tier writes its marker (the lock, the daemon's log):
# anything else there, without the marker, is someone else's.
def ours(name: str) -> bool:
    # (staging/: a writable mount without a disk tier; lost+found: a filesystem of its own, as a cache disk is)
    return name in ("lock", "LAYOUT.tmp", "staging", "lost+found") or name.startswith(("tierfs.log", ".probe."))


def check_cache_dir(root: Path) -> None:
    """Refuse a cache dir that is a symlink (tierfs creates, chmods and removes files in there: it never
    follows a link to do so) or that another user owns. Creates nothing."""
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise UserError(f"cache dir {root} is not usable ({exc.strerror or exc}); give a writable --cache-dir") from None
    if st is not None and stat.S_ISLNK(st.st_mode):
        raise UserError(f"cache dir {root} is a symlink; tierfs does not follow links there: give the directory "
                        f"it points to ({os.path.realpath(root)}) as --cache-dir")
    if st is not None and stat.S_ISDIR(st.st_mode) and st.st_uid != os.geteuid():
        raise UserError(f"cache dir {root} belongs to uid {st.st_uid}, not to the user tierfs runs as "
                        f"({os.geteuid()}); give a directory of this user's as --cache-dir")


def prepare_cache_dir(root: Path) -> int:
    """Create the cache dir (0700), check it is ours and writable, and lock it for this process."""
    check_cache_dir(root)
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        probe = root / f".probe.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(
            f"cache dir {root} is not usable ({exc.strerror or exc}); give a writable --cache-dir"
        ) from None
    fd = os.open(root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        if holder == str(os.getpid()):
            raise CacheDirBusy(
                f"cache dir {root} is in use by another tierfs instance in this process (a mount or a "
                "tierfs:// filesystem); give each its own cache dir (cache_dir=... for tierfs://), or reuse the one",
                root, holder) from None
        raise CacheDirBusy(
            f"cache dir {root} is in use by another tierfs process (pid {holder}); "
            "give each mount its own --cache-dir", root, holder
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def lock_holder(root: Path) -> str:
    """The pid of the process holding ``root``'s lock now ('' if none), read without taking the lock.

    From /proc/locks, where the kernel lists every flock by inode: a probe
    with flock itself, however short, could make a mount starting at that
    moment fail.
    """
    try:
        fd = os.open(root / "lock", os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return ""
    try:
        st = os.fstat(fd)
        written = os.pread(fd, 32, 0).decode(errors="replace").strip()
    finally:
        os.close(fd)
    try:
        with open("/proc/locks") as fh:
            table = fh.read().splitlines()
    except OSError:
        return ""
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"
    for line in table:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234 0 EOF" (a waiter's line has "->" after the id)
        if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK":
            continue
        dev, _, ino = fields[5].rpartition(":")
        # (btrfs subvolumes show another device there than stat does: the pid the holder wrote tells then)
        if ino == str(st.st_ino) and (dev == device or fields[4] == written):
            return fields[4]
    return ""
