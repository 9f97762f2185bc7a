"""Small JSON state files (journal records, resume points), replaced atomically and durably.

A reader sees the old state or the new one, never a torn write, whenever the
process is killed; and once ``save`` returns the new state survives a power
cut: it is written to a temp file, fsynced, renamed over the old one, and the
directory is fsynced so the rename itself is on disk.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def save(path: Path, state: Any, durable: bool = True) -> None:
    """Replace the state at ``path``; with ``durable`` (the default), on disk when this returns.

    Without it only the atomicity against a killed process holds: after a
    power cut the file may hold the state before this one, or nothing
    readable (``load`` answers None). For states whose loss costs nothing.
    """
    replace_bytes(path, json.dumps(state).encode(), durable)


def replace_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    """Replace the file at ``path`` with ``data`` (mode 0600) atomically; with ``durable``, on disk on return.

    The temp file beside it has a name of its own, made with O_EXCL
    (``mkstemp``): a fixed name opened with O_TRUNC would write through a
    symlink someone planted there. It ends in ``.<name>.tmp``.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=f".{path.name}.tmp")
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                # Before the rename: a rename that reached the disk before the
                # bytes did would leave an empty or torn state where a good one was.
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load(path: Path) -> Any:
    """The state saved at ``path``, or None if there is none or it cannot be read."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
