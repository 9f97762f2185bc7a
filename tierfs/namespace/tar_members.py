"""The members of a tar shard: where each regular file's bytes lie in the shard.

A scan walks the tar headers (ustar, GNU long names, pax ``path`` and
``size``) with small ranged reads through a read function the caller gives
(the tier chain's block reader: the blocks read here are the ones member reads
use next). Each header is decoded by Python's ``tarfile`` (``TarInfo.frombuf``);
only the walk from header to header is ours. Directories, links, devices and
sparse files are skipped: a member is a regular file.

A malformed or truncated shard yields the members parsed before the damage
and the reason, never an exception: the caller logs it once.
"""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

BLOCK = 512
MAX_META = 1 << 20  # the most a long name or a pax header may hold (a bad size must not make us read gigabytes)
_REGULAR = frozenset({tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE})
_SKIPPED_META = frozenset({tarfile.XGLTYPE, tarfile.GNUTYPE_LONGLINK, b"V", b"M"})  # global pax, long link names

Read = Callable[[int, int], Awaitable[bytes]]  # bytes [offset, offset+length) of the shard


@dataclass
class Scan:
    """What a scan found: ``members`` maps a member's path to (offset of its data, size)."""

    members: dict[str, tuple[int, int]] = field(default_factory=dict)
    problem: str = ""  # why the scan stopped early ('' if it reached the end)


def clean_name(raw: str) -> str | None:
    """A member's path as the mount shows it, or None if it cannot be one (absolute escapes, '..')."""
    parts = [p for p in raw.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or ".." in parts or any("\0" in p for p in parts):
        return None
    return "/".join(parts)


def parse_pax(data: bytes) -> dict[str, str]:
    """The records of a pax extended header: ``"%d %s=%s\\n"``, the length counting the whole record."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(data[pos:space])
        except ValueError:
            raise tarfile.HeaderError("bad pax record length") from None
        if length <= 0 or pos + length > len(data):
            raise tarfile.HeaderError("bad pax record length")
        record = data[space + 1 : pos + length].rstrip(b"\n")
        key, eq, value = record.partition(b"=")
        if not eq:
            raise tarfile.HeaderError("bad pax record")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


async def scan(read: Read, size: int) -> Scan:
    """Every regular member of a tar of ``size`` bytes, read through ``read``."""
    out = Scan()
    offset = 0
    long_name: str | None = None
    pax: dict[str, str] = {}
    while True:
        if offset + BLOCK > size:
            if offset < size:
                out.problem = f"truncated at byte {offset} (a partial header)"
            break  # (a tar without its end-of-archive blocks is still read to its last whole member)
        header = await read(offset, BLOCK)
        if len(header) < BLOCK:
            out.problem = f"truncated at byte {offset}"
            break
        if header == b"\0" * BLOCK:
            break  # end of archive
        try:
            info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            out.problem = f"bad header at byte {offset}: {exc}"
            break
        data_at = offset + BLOCK
        data_size = info.size
        kind = info.type
        try:
            if kind in (tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE):
                if data_size > MAX_META or data_at + data_size > size:
                    raise tarfile.HeaderError(f"a {data_size}-byte name or pax header")
                meta = await read(data_at, data_size)
                if kind == tarfile.GNUTYPE_LONGNAME:
                    long_name = meta.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                else:
                    pax = parse_pax(meta)
            elif kind in _SKIPPED_META:
                pass
            else:
                if "size" in pax:
                    try:
                        data_size = int(pax["size"])
                    except ValueError:
                        raise tarfile.HeaderError(f"pax size {pax['size']!r}") from None
                if kind in _REGULAR:
                    if data_at + data_size > size:
                        out.problem = f"truncated: member at byte {offset} ends past the shard's end"
                        break
                    name = clean_name(pax.get("path") or long_name or info.name)
                    if name is not None:
                        out.members[name] = (data_at, data_size)  # (a later member of the same name wins, as tar's)
                long_name, pax = None, {}
        except tarfile.HeaderError as exc:
            out.problem = f"bad header at byte {offset}: {exc}"
            break
        if data_size < 0:
            out.problem = f"bad header at byte {offset}: negative size"
            break
        offset = data_at + -(-data_size // BLOCK) * BLOCK
    return out


@dataclass
class MemberTree:
    """A scan's members arranged as directories: each directory's entries, sorted, in one list."""

    files: dict[str, tuple[int, int]]
    dirs: dict[str, list[tuple[str, bool, int, int]]]  # dir -> [(name, is_dir, offset, size)], by name

    @classmethod
    def of(cls, members: dict[str, tuple[int, int]]) -> MemberTree:
        dirs: dict[str, set[str]] = {"": set()}
        for path in members:
            parent = posixpath.dirname(path)
            while parent not in dirs:
                dirs[parent] = set()
                parent = posixpath.dirname(parent)
        for d in list(dirs):
            if d:
                dirs[posixpath.dirname(d)].add(posixpath.basename(d))
        # A name that is both a file and a directory ('a' and 'a/b'): the directory stands.
        files = {p: v for p, v in members.items() if p not in dirs}
        listed: dict[str, list[tuple[str, bool, int, int]]] = {d: [] for d in dirs}
        for path, (off, size) in files.items():
            listed[posixpath.dirname(path)].append((posixpath.basename(path), False, off, size))
        for d, children in dirs.items():
            listed[d].extend((c, True, 0, 0) for c in children)
        for entries in listed.values():
            entries.sort()
        return cls(files, listed)

    def find(self, path: str) -> tuple[str, bool, int, int] | None:
        if path in self.dirs:
            return (posixpath.basename(path), True, 0, 0)
        hit = self.files.get(path)
        return None if hit is None else (posixpath.basename(path), False, *hit)

    def members(self) -> int:
        return len(self.files)
