"""Node -> the attributes the kernel sees (mode, size, times, cache timeouts)."""

from __future__ import annotations

import os
import stat

import pyfuse3

from tierfs.namespace.inodes import Node

FILE_MODE = stat.S_IFREG | 0o644
DIR_MODE = stat.S_IFDIR | 0o755
FOREVER = 365 * 24 * 3600.0


class AttrMaker:
    def __init__(self, ttl: float, block_size: int):
        self.ttl = ttl
        self.block_size = block_size
        self.uid = os.getuid()
        self.gid = os.getgid()

    def __call__(self, node: Node) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = pyfuse3.InodeT(node.inode)
        a.generation = 0
        # Snapshot contents never change: the kernel may keep them for good.
        timeout = FOREVER if node.immutable else self.ttl
        a.entry_timeout = timeout
        a.attr_timeout = timeout
        if node.is_dir:
            a.st_mode = pyfuse3.ModeT(DIR_MODE & ~0o222 if node.read_only else DIR_MODE)
            a.st_nlink = 2
            a.st_size = 0
        else:
            a.st_mode = pyfuse3.ModeT(FILE_MODE & ~0o222 if node.read_only else FILE_MODE)
            a.st_nlink = 1
            a.st_size = node.size
        a.st_uid = self.uid
        a.st_gid = self.gid
        a.st_rdev = 0
        a.st_blksize = min(self.block_size, 1 << 20)
        a.st_blocks = (a.st_size + 511) // 512
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = node.mtime_ns
        return a
