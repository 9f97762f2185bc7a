"""What a cache dir is before anything reads it: its marker, its lock, and the checks made before it is used.

The disk tier (``disk.py``), staging (``write/staging.py``), the mount
command (before the daemon's log goes in there) and the `tierfs cache`
commands share these: each refuses a directory that is a symlink, another
user's, or someone else's (no marker, foreign files) before anything is done
to it, makes it 0700, and takes the flock on ``lock`` that makes one process
the user of the directory. Every directory tierfs makes in there is 0700 and
every file 0600.
"""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path

from tierfs.config import as_written
from tierfs.errors import CacheDirBusy, UserError

_KIND = "tierfs-disk-cache"
#: The first line of ``LAYOUT``; the second names the sealing (``sealing: none`` or ``sealing: aes-gcm <key id>``).
LAYOUT = f"{_KIND} 1\n"


def layout_text(sealing: str) -> str:
    return LAYOUT + f"sealing: {sealing}\n"


def read_marker(root: Path) -> str | None:
    """The text of ``root``'s LAYOUT marker, or None if it has none."""
    try:
        return (root / "LAYOUT").read_text(errors="replace")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def sealing_of(marker: str) -> str | None:
    """The sealing a marker names ('none' or 'aes-gcm <key id>'), or None if it is of another layout."""
    if marker == LAYOUT:
        return "none"  # (a marker from before it named the sealing: plain blocks)
    head, _, rest = marker.partition("\n")
    if head + "\n" != LAYOUT or not rest.startswith("sealing: "):
        return None
    return rest[len("sealing: "):].strip()


def _has_our_marker(root: Path) -> bool:
    """A LAYOUT of a disk cache, of any version, or one a power cut emptied: the dir is ours."""
    marker = read_marker(root)
    return marker is not None and (marker.startswith(f"{_KIND} ") or not marker.strip("\0"))


def staging_is_ours(staging: Path) -> bool:
    """A staging dir is ours by what it holds, never by its name: the lock a mount left there (a regular file
    holding that mount's pid), or nothing else than an empty lock (nothing there to lose)."""
    try:
        if not stat.S_ISDIR(os.lstat(staging).st_mode):
            return False
        names = os.listdir(staging)
    except FileNotFoundError:
        return True  # (none: nothing to take)
    except OSError:
        return False
    if not names:
        return True
    try:
        fd = os.open(staging / "lock", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        held = os.pread(fd, 32, 0) if stat.S_ISREG(os.fstat(fd).st_mode) else b"?"
    finally:
        os.close(fd)
    return held.rstrip(b"\n").isdigit() or (held == b"" and names == ["lock"])


# What tierfs puts in a cache dir before the disk tier writes its marker (the lock, the daemon's log, a
# marker's temp file) or beside it (staging/, if it is ours): anything else there, without the marker, is
# someone else's. lost+found: a filesystem of its own, as a cache disk is.
def _ours(root: Path, name: str, staging: str) -> bool:
    if name == staging:
        return staging_is_ours(root / name)
    return name in ("lock", "lost+found") or name.endswith("LAYOUT.tmp") or name.startswith(("tierfs.log", ".probe."))


def foreign_entries(root: Path, staging: str = "staging") -> list[str]:
    """What in ``root`` tierfs did not put there: none if it has our marker, is missing or holds only ours
    (``staging``: the name of its staging dir)."""
    try:
        names = os.listdir(root)
    except (FileNotFoundError, NotADirectoryError):
        return []
    if not names or _has_our_marker(root):
        return []
    legacy = (root / "index" / "data.mdb").is_file()  # a cache from before the marker: ours
    own = {"index", "blocks", "tmp"} if legacy else set()
    return sorted(n for n in names if n not in own and not _ours(root, n, staging))


def refuse_foreign(root: Path, staging: str = "staging") -> None:
    """Refuse a non-empty dir that is not a tierfs cache: before anything is done to it (no chmod, probe,
    lock or log), so that nothing in it is touched. Reads only."""
    foreign = foreign_entries(root, staging)
    if foreign:
        raise UserError(f"cache dir {root} is not empty and is not a tierfs cache (it holds "
                        f"{', '.join(map(as_written, foreign[:3]))}{' …' if len(foreign) > 3 else ''}): give an empty "
                        "or new directory as --cache-dir; nothing in it was touched")


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


def private_dir(path: Path) -> None:
    """Make directory ``path`` (its parent exists), 0700 whatever the umask; an existing one is left as it is."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return
    os.chmod(path, 0o700)


def _make_private(root: Path) -> None:
    """Create ``root`` (and its parents) if need be, make it 0700, and check that files can be made in it."""
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        probe = root / f".probe.{os.getpid()}"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        probe.unlink()
    except OSError as exc:
        raise UserError(
            f"cache dir {root} is not usable ({exc.strerror or exc}); give a writable --cache-dir"
        ) from None


def prepare_cache_dir(root: Path) -> int:
    """Check that ``root`` is ours (a foreign one is refused before anything is done to it), then create it
    0700, check it is writable and lock it for this process: the fd holding the lock."""
    check_cache_dir(root)
    refuse_foreign(root)
    _make_private(root)
    return _lock(root)


def prepare_staging_dir(staging: Path) -> int:
    """The staging dir of a cache dir, with or without a disk tier: the cache dir is checked and made private as
    the disk tier's is (without its lock, which a disk tier may hold), then staging/ is made 0700 and locked."""
    for d in (staging.parent, staging):
        check_cache_dir(d)
    refuse_foreign(staging.parent, staging.name)  # (staging/ among what is judged: ours only by what it holds)
    _make_private(staging.parent)
    _make_private(staging)
    return _lock(staging)


def _lock(root: Path) -> int:
    """Take the flock on ``root``'s lock file and write this process' pid in it; the fd holding it."""
    try:
        fd = os.open(root / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise UserError(f"cache dir {root} is not usable: its lock cannot be opened ({exc.strerror or exc})") from None
    os.fchmod(fd, 0o600)
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
