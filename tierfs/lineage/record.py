"""The read-set format in the lake: one directory per job under ``.tierfs/lineage/``.

::

    .tierfs/lineage/NAME/start.json           written by `lineage start` (refused if it exists)
    .tierfs/lineage/NAME/part-000001.jsonl.gz one batch of first opens, each a whole object
    .tierfs/lineage/NAME/stop.json            written last, by `lineage stop` (or at unmount)

A part is put whole (never appended to), so a crash leaves every part that
was written readable and loses only the batch not yet flushed.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from typing import Any

from tierfs.errors import TierfsError
from tierfs.refs import ObjectRef
from tierfs.versions.manifest import RESERVED, validate_name

LINEAGE = f"{RESERVED}/lineage"
FORMAT = "tierfs-lineage 1"
LIVE = "live"


class LineageError(TierfsError):
    """A read-set in the lake cannot be read as one (a part is corrupt, a record is missing)."""


def job_dir(name: str) -> str:
    return f"{LINEAGE}/{validate_name('job', name)}"


def part_key(name: str, n: int) -> str:
    return f"{job_dir(name)}/part-{n:06d}.jsonl.gz"


@dataclass(frozen=True, slots=True)
class Read:
    """One first open: in which view, which path of it, and exactly which bytes (the ObjectRef)."""

    view: str  # "live", or "snapshot:DATASET/NAME"
    path: str  # inside the view ('/'-separated, no leading '/')
    ref: ObjectRef
    mtime_ns: int = 0
    pid: int = 0
    at: float = 0.0  # unix seconds of the first open

    @property
    def where(self) -> tuple[str, str]:
        return self.view, self.path

    def to_dict(self) -> dict[str, Any]:
        r = self.ref
        d: dict[str, Any] = {"view": self.view, "path": self.path, "key": r.key, "size": r.size}
        for k, v in (("etag", r.etag), ("version", r.version), ("sha256", r.content_hash),
                     ("cache_id", r.cache_id)):
            if v:
                d[k] = v
        d.update(mtime_ns=self.mtime_ns, pid=self.pid, at=round(self.at, 3))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Read:
        ref = ObjectRef(str(d["key"]), int(d["size"]), str(d.get("etag", "")), str(d.get("version", "")),
                        str(d.get("sha256", "")), str(d.get("cache_id", "")))
        return cls(str(d["view"]), str(d["path"]), ref, int(d.get("mtime_ns", 0)), int(d.get("pid", 0)),
                   float(d.get("at", 0.0)))


def encode_part(reads: list[Read]) -> bytes:
    body = "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in reads)
    return gzip.compress(body.encode("utf-8", "surrogateescape"), compresslevel=5, mtime=0)


def decode_part(raw: bytes, where: str) -> list[Read]:
    try:
        text = gzip.decompress(raw).decode("utf-8", "surrogateescape")
        return [Read.from_dict(json.loads(line)) for line in text.splitlines() if line.strip()]
    except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise LineageError(f"{where} is not a readable read-set part ({type(exc).__name__}: {exc})") from None


def view_of(mount_path: str) -> tuple[str, str]:
    """(view, path in it) of a path in the mount: ``.snapshots/DS/NAME/rest`` is ``snapshot:DS/NAME``, ``rest``."""
    if mount_path.startswith(".snapshots/"):
        parts = mount_path.split("/", 3)
        if len(parts) == 4:
            return f"snapshot:{parts[1]}/{parts[2]}", parts[3]
    return LIVE, mount_path
