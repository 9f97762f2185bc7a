"""Node -> the attributes the kernel sees (mode, size, times, link counts, cache timeouts).

The kernel boundary's last step: whatever the namespace knows of a node
becomes a ``stat`` here, including the parts an object store has no answer
for (a prefix's time and link count). Those are chosen as below.

**A directory's time** is its own where the lake keeps one (a local lake's
directories, a marker object's) and otherwise the moment this mount started,
never 0 (1970). A prefix of an object store has no time of its own; the
newest time of its entries would need its listing, which the parent's
listing (where the node is made) does not carry, and it would then change
from one listing to the next without anything in the directory changing, so
``find -newer``, ``make`` and ``rsync`` would see changes that are not there.
The start of the mount is known, fixed, and not in the future of anything it shows.

**A directory's link count is 1.** The classic rule, 2 + the number of
subdirectories, lets ``find`` and ``du`` (gnulib's fts) stop looking for
subdirectories once they have seen that many. Here that number could only
come from a listing up to one metadata TTL old, and a count below the truth
makes them skip a directory; 1 is the convention for "not counted" (fts
reads a count below 2 as unknown and looks at every entry), and every
readdir entry carries its type, so nothing is lost by not counting.

**Owner and mode are the mount's**, the same for every node: the lake keeps
neither, so each file shows ``[fuse] uid``/``gid`` (default: the daemon's)
and ``file_mode``, each directory ``dir_mode``, as rclone and gcsfuse do. A
file created here shows them too (create's mode is not kept, as chmod's and
chown's are not). Snapshots show them without write bits. The kernel
checks them (``default_permissions``, ``tierfs/mount.py``).

**A file being written here** gets attributes the kernel may not keep
(attribute timeout 0): its size and time change with each write and
truncate, and at close become those of the uploaded object. A truncate's
reply would otherwise be kept for a whole TTL, and ``stat`` after
``ftruncate`` + ``close`` would show the time from before the upload.
"""

from __future__ import annotations

import os
import stat
import time

import pyfuse3

from tierfs.namespace.inodes import Node

FOREVER = 365 * 24 * 3600.0
DIR_NLINK = 1  # "subdirectories not counted" (see the module docstring)


class AttrMaker:
    def __init__(self, ttl: float, block_size: int, started_ns: int | None = None, *, uid: int | None = None,
                 gid: int | None = None, file_mode: int = 0o644, dir_mode: int = 0o755):
        self.ttl = ttl
        self.block_size = block_size
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self.file_mode = stat.S_IFREG | file_mode
        self.dir_mode = stat.S_IFDIR | dir_mode
        # Made when the mount is built: the time of whatever has none of its own.
        self.started_ns = time.time_ns() if started_ns is None else started_ns

    def __call__(self, node: Node) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = pyfuse3.InodeT(node.inode)
        a.generation = 0
        # Snapshot contents (and immutable prefixes) never change: the kernel may keep them for good.
        timeout = FOREVER if node.immutable else self.ttl
        a.entry_timeout = timeout
        a.attr_timeout = 0.0 if being_written(node) else timeout
        if node.is_dir:
            a.st_mode = pyfuse3.ModeT(self.dir_mode & ~0o222 if node.read_only else self.dir_mode)
            a.st_nlink = DIR_NLINK
            a.st_size = 0
        else:
            a.st_mode = pyfuse3.ModeT(self.file_mode & ~0o222 if node.read_only else self.file_mode)
            a.st_nlink = 1
            a.st_size = node.size
        a.st_uid = self.uid
        a.st_gid = self.gid
        a.st_rdev = 0
        a.st_blksize = min(self.block_size, 1 << 20)
        a.st_blocks = (a.st_size + 511) // 512
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = node.mtime_ns or self.started_ns
        return a


    def missing(self) -> pyfuse3.EntryAttributes:
        """A name that is not there and never will be (an immutable prefix): the kernel remembers it as missing."""
        a = pyfuse3.EntryAttributes()
        a.st_ino = pyfuse3.InodeT(0)  # (no inode: a negative entry, kept for entry_timeout)
        a.entry_timeout = FOREVER
        return a


def being_written(node: Node) -> bool:
    """Whether ``node`` is open here with no ObjectRef the kernel may cache: a staged file's handle.

    A read handle records the ref whose pages the kernel may keep
    (``cached_ref``); a handle on a staged file (written here) clears it, as
    does a read that found the object changed upstream. Either way what the
    kernel was told of the file is about to be superseded. An immutable node
    (a snapshot's) is never written, and keeps no ``cached_ref``.
    """
    return not node.is_dir and not node.immutable and node.opens > 0 and node.cached_ref is None
