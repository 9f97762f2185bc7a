"""The disk cache without a mount: what `tierfs cache du | verify | clear` read, check and remove.

Each first makes sure the directory is a disk cache of this layout (its
LAYOUT marker), creating and changing nothing. ``usage`` takes no lock: it
reads the index through LMDB's read-only open, which is safe beside the mount
that writes it. ``verify`` opens the cache as a mount's disk tier does (the
lock, then the repair of what a crash left) and reads every block through
the tier's own check; ``clear`` holds the lock while it removes the index, the
block files and the manifest indexes. Neither touches ``staging/``: what the user wrote and the
lake has not acknowledged is not the cache's to drop.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import lmdb

from tierfs.errors import UserError
from tierfs.refs import BlockKey
from tierfs.tiers.cache_dir import check_cache_dir, lock_holder, prepare_staging_dir, read_marker, sealing_of
from tierfs.tiers.disk import DiskTier, reserve_bytes
from tierfs.tiers.lmdb_index import Summary, read_summary, unclean
from tierfs.tiers.seal import Sealer

#: What the index records of a block, and so what `du` can count by: not the object it belongs to.
NOT_RECORDED = ("not recorded: the index keeps each block's digest (a one-way hash of its object's identity "
                "and block number), size, checksum and age, not the object or prefix it belongs to")
#: What a cache holds that `clear` removes, the index first (see ``clear``).
_CACHE_PARTS = ("index", "index.rebuilt", "index.torn", "tmp", "blocks", "manifests", "shards")
MISSING = "in the index, no block file"


def cache_sealing(root: Path) -> str:
    """Check that ``root`` is a disk cache of this layout, touching nothing; the sealing its marker names
    ('none' or 'aes-gcm <key id>')."""
    check_cache_dir(root)
    if not root.is_dir():
        raise UserError(f"cache dir {root} does not exist" if not root.exists() else
                        f"cache dir {root} is not a directory")
    marker = read_marker(root)
    if marker is None:
        raise UserError(f"{root} is not a tierfs disk cache (it has no LAYOUT marker); nothing in it was touched")
    sealing = sealing_of(marker)
    if sealing is None:
        raise UserError(f"cache dir {root} has another layout ({(marker.splitlines() or [''])[0][:40]!r}): the next mount "
                        "starts it afresh; nothing in it was touched")
    return sealing


def key_for(root: Path, sealing: str, key: bytes) -> bytes:
    """The data key to open ``root``'s blocks with (b'': they are not encrypted), or one line saying why not."""
    if sealing == "none":
        return b""
    if not key:
        raise UserError(f"cache dir {root} is encrypted ({sealing}): give its key, as [cache] encryption_key_file "
                        "in --config or in TIERFS_CACHE_KEY; nothing was checked")
    if Sealer(data_key=key).key_id != sealing:
        raise UserError(f"cache dir {root} is encrypted under another key ({sealing}) than the one given "
                        f"({Sealer(data_key=key).key_id}); nothing was checked")
    return key


@dataclass
class Usage:
    sealing: str
    holder: str  # the pid of the process holding the lock ('' if none): a mount, or a verify or clear
    unclean: str  # why the index is not known to be whole ('' after a clean close)
    index: Summary | None  # None: not read (see ``unread``)
    unread: str
    on_disk: int  # bytes the index, the block files and tmp/ take on the filesystem: what `clear` frees
    block_files: int
    free: int  # free bytes on the cache dir's filesystem
    reserve: int  # of which the disk tier keeps this much free for staged writes


def usage(root: Path, min_free: int | float | None) -> Usage:
    """The cache's figures, read beside a mount: the index's (unless it may be torn) and the files'."""
    sealing = cache_sealing(root)
    holder = lock_holder(root)
    why, torn = unclean(root / "index")
    if why == "it is new":
        why = ""
    if holder:  # open in the process holding it, not left open; "checking" there is a mount's start
        why = "being checked by the process that holds it (a mount starting)" if torn else ""
    summary, unread = None, ""
    if torn:
        unread = f"not read: {why}" + ("" if holder else "; the next mount or tierfs cache verify checks it")
    elif (root / "index" / "data.mdb").exists():
        try:
            summary = read_summary(root / "index")
        except lmdb.Error as exc:
            unread = f"not read: {type(exc).__name__}: {exc}"
    else:
        unread = "none yet"
    on_disk = block_files = 0
    for part in _CACHE_PARTS:
        files, allocated = tree_size(root / part)
        on_disk += allocated
        block_files += files if part == "blocks" else 0
    st = os.statvfs(root)
    return Usage(sealing, holder, "" if holder else why, summary, unread, on_disk, block_files,
                 st.f_bavail * st.f_frsize, reserve_bytes(min_free, st.f_blocks * st.f_frsize))


def tree_size(path: Path) -> tuple[int, int]:
    """(files, bytes allocated) below ``path``, links not followed; what goes meanwhile (evicted) is not counted."""
    files = allocated = 0
    stack = [str(path)]
    while stack:
        try:
            it = os.scandir(stack.pop())
        except (FileNotFoundError, NotADirectoryError):
            continue
        with it:
            for e in it:
                try:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                        continue
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                files, allocated = files + 1, allocated + st.st_blocks * 512
    return files, allocated


@dataclass
class Verified:
    good: int = 0
    good_bytes: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)  # (block, why)
    missing: list[str] = field(default_factory=list)
    unknown: int = 0  # block files the index does not know: left alone (a mount's unclean start removes them)
    dropped: int = 0  # entries dropped by --repair, with their files


def verify(tier: DiskTier, repair: bool, progress: Callable[[], None] = lambda: None) -> Verified:
    """Read every block file and check it as a read would (``DiskTier.check``: size, checksum, the key's seal);
    with ``repair``, drop the entries that fail and their files, and nothing else."""
    out = Verified()
    for digest, meta, found in tier.entries_and_files():
        if digest is None:
            out.unknown += 1
            continue
        if found is None:
            out.missing.append(digest.hex())
        else:
            why = "an unreadable index entry" if meta is None else _check_file(tier, digest, meta, found.path)
            if why == MISSING:
                out.missing.append(digest.hex())
            elif why:
                out.bad.append((digest.hex(), why))
            else:
                out.good, out.good_bytes = out.good + 1, out.good_bytes + (meta[0] if meta else 0)
        progress()
    if repair:
        for hexkey in [*out.missing, *(b for b, _ in out.bad)]:
            tier.evict(BlockKey(bytes.fromhex(hexkey)))  # (the entry, then its file: as a read drops a bad block)
            out.dropped += 1
    return out


def _check_file(tier: DiskTier, digest: bytes, meta: tuple[int, int], path: str) -> str:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return MISSING
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    return tier.check(digest, meta, data)[1]


def hold_staging(root: Path) -> int | None:
    """Lock ``root``'s staging dir, if there is one, as a mount's staging does: no mount without a disk tier
    (which locks only that) runs or starts meanwhile. The fd to close, or None."""
    if not (root / "staging").is_dir():
        return None
    return prepare_staging_dir(root / "staging")


def clear(root: Path) -> tuple[int, int]:
    """Remove the index, tmp/, the block files, manifests/ and shards/; the caller holds the lock. Returns (block files,
    bytes) freed.

    The index goes first: interrupted after it, the next start finds a new
    index and removes the block files it does not know. ``staging/``, the
    marker, the lock and the log stay.
    """
    blocks = freed = 0
    for part in _CACHE_PARTS:
        path = root / part
        if not os.path.lexists(path):
            continue
        files, allocated = tree_size(path)
        try:
            shutil.rmtree(path)  # (refuses a symlink: nothing outside the cache dir is followed)
        except OSError as exc:
            raise UserError(f"cannot remove {path} ({exc.strerror or exc}): the cache is cleared in part; "
                            "run tierfs cache clear again once that is fixed") from None
        blocks += files if part == "blocks" else 0
        freed += allocated
    return blocks, freed
