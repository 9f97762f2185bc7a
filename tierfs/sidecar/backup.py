"""Backups of a local directory (NVMe scratch, checkpoints) into the lake.

Layout under the backup target (a lake URL with a prefix)::

    backups/<id>.jsonl.gz        one backup: a header line, then one line per file or folder
    blobs/sha256/ab/cd/<sha256>  file contents, stored once however many backups share them
    leases/                      markers of runs and expiries under way (tierfs.versions.leases)

Incremental: a file whose size and mtime match the previous backup reuses its
hash without being read; only contents the target lacks travel, and each is
read back and checked after upload. A backup exists once its manifest is
written (the last step), and the manifest carries a checksum. Retention keeps
the newest N backups and removes contents no remaining backup references.
Restore writes each file to a temporary name, checks its hash, then renames
it into place, with its mode and mtime.

Runs and expiries may overlap (two nodes, a sidecar and a manual run): a run
reuses blobs it finds without uploading them again, so an expiry must never
delete a blob a run under way may reuse. A run holds a lease from before it
looks at the target until its manifest is written; an expiry deletes no blob
while a run's lease is live, and a run that starts during an expiry's sweep
waits for it (``tierfs.versions.leases``). Besides, an expiry keeps blobs
younger than its grace period, and reads the backup list again right before
it deletes blobs, so the newest manifest's contents are never deleted.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tierfs.errors import NotFound, UserError
from tierfs.refs import ObjectRef
from tierfs.store.objects import ObjectStore
from tierfs.versions.leases import creating, sweeping

log = logging.getLogger(__name__)

BACKUPS = "backups"
BLOBS = "blobs/sha256"
LEASES = "leases"
CHUNK = 8 << 20
FORMAT = "tierfs-backup 1"
#: Blobs younger than this are never deleted by an expiry (seconds; a job's ``grace``).
GRACE_SECONDS = 3600.0


@dataclass
class FileEntry:
    path: str
    is_dir: bool
    size: int = 0
    mode: int = 0o644
    mtime_ns: int = 0
    sha256: str = ""

    def to_json(self) -> str:
        d: dict[str, Any] = {"p": self.path, "m": self.mode, "t": self.mtime_ns}
        if self.is_dir:
            d["d"] = 1
        else:
            d.update(s=self.size, h=self.sha256)
        return json.dumps(d, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> FileEntry:
        d = json.loads(line)
        if d.get("d"):
            return cls(d["p"], True, 0, d["m"], d["t"])
        return cls(d["p"], False, d["s"], d["m"], d["t"], d["h"])


@dataclass
class BackupInfo:
    id: str
    created_at: str
    source: str
    files: int
    bytes: int
    new_bytes: int


@dataclass
class Report:
    info: BackupInfo
    uploaded: int = 0  # files whose contents travelled
    reused: int = 0  # files not even read (size and mtime unchanged)
    expired: list[str] | None = None


def blob_key(sha: str) -> str:
    return f"{BLOBS}/{sha[:2]}/{sha[2:4]}/{sha}"


# -- manifests ----------------------------------------------------------------------
def manifest_secret(store: ObjectStore) -> bytes:
    """The secret backup manifests are authenticated with (``[backup] secret_file`` or TIERFS_BACKUP_SECRET)."""
    from tierfs.secrecy import read_secret

    return read_secret("", store.settings.backup_secret_file, "TIERFS_BACKUP_SECRET", "[backup] secret_file",
                       store.settings.allow_readable_secrets)


def _mac(secret: bytes, header: dict[str, Any], body: str) -> str:
    signed = json.dumps({k: v for k, v in header.items() if k != "mac"}, sort_keys=True) + "\n" + body
    return hmac.new(hashlib.sha256(b"tierfs backup manifest\0" + secret).digest(), signed.encode(),
                    hashlib.sha256).hexdigest()


def _write_manifest(store: ObjectStore, info: BackupInfo, entries: list[FileEntry]) -> None:
    body = "\n".join(e.to_json() for e in entries)
    header: dict[str, Any] = {"format": FORMAT, **info.__dict__, "sha256": hashlib.sha256(body.encode()).hexdigest()}
    secret = manifest_secret(store)
    if secret:
        header["mac"] = _mac(secret, header, body)
    raw = gzip.compress((json.dumps(header) + "\n" + body + "\n").encode(), mtime=0)
    store.put_bytes(f"{BACKUPS}/{info.id}.jsonl.gz", raw)


def read_manifest(store: ObjectStore, backup_id: str, authenticate: bool = True) -> tuple[BackupInfo, list[FileEntry]]:
    """A backup's manifest, checked; with ``authenticate`` (and a secret configured) its MAC too."""
    try:
        raw = store.read_all(f"{BACKUPS}/{backup_id}.jsonl.gz")
    except NotFound:
        raise UserError(f"backup {backup_id} does not exist in {store.url} (see tierfs backup list)") from None
    try:
        header_line, _, body = gzip.decompress(raw).decode().partition("\n")
        header = json.loads(header_line)
    except (OSError, EOFError, ValueError):
        raise UserError(f"backup {backup_id} has a truncated or corrupt manifest; it cannot be restored") from None
    body = body.rstrip("\n")
    if header.get("format") != FORMAT or hashlib.sha256(body.encode()).hexdigest() != header.get("sha256"):
        raise UserError(f"backup {backup_id}: its manifest fails its checksum; it cannot be restored")
    secret = manifest_secret(store) if authenticate else b""
    if secret and not hmac.compare_digest(str(header.get("mac", "")), _mac(secret, header, body)):
        raise UserError(f"backup {backup_id}: its manifest is not authenticated by [backup] secret_file (forged, "
                        "or written without that secret); it is not used")
    info = BackupInfo(**{k: header[k] for k in BackupInfo.__dataclass_fields__})
    return info, [FileEntry.from_json(ln) for ln in body.split("\n") if ln]


def list_backups(store: ObjectStore) -> list[BackupInfo]:
    """Backups, oldest first (ids sort by time)."""
    try:
        names = sorted(e.name for e in store.list_dir(BACKUPS) if e.name.endswith(".jsonl.gz"))
    except NotFound:
        return []
    out = []
    for name in names:
        try:
            out.append(read_manifest(store, name.removesuffix(".jsonl.gz"))[0])
        except UserError:
            continue
    return out


# -- run -----------------------------------------------------------------------------
def _walk(source: Path) -> Iterator[FileEntry]:
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, source)
        if rel_dir != ".":
            st = os.stat(dirpath)
            yield FileEntry(rel_dir, True, 0, stat.S_IMODE(st.st_mode), st.st_mtime_ns)
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if not stat.S_ISREG(st.st_mode):
                continue  # symlinks, sockets, devices are not backed up
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            yield FileEntry(rel, False, st.st_size, stat.S_IMODE(st.st_mode), st.st_mtime_ns)


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _upload(store: ObjectStore, path: Path, sha: str, size: int) -> None:
    """Upload a file's contents under its hash, then read them back and check them."""
    key = blob_key(sha)
    tmp = f"blobs/tmp/{secrets.token_hex(8)}"
    with open(path, "rb") as src, store.open_write(tmp) as dst:
        h = hashlib.sha256()
        while chunk := src.read(CHUNK):
            h.update(chunk)
            dst.write(chunk)
    if h.hexdigest() != sha:
        store.delete(tmp)
        raise UserError(f"{path} changed while it was backed up; run the backup again")
    store.move(tmp, key)
    back = hashlib.sha256()
    with store.open_read(ObjectRef(key, size)) as fh:
        while chunk := fh.read(CHUNK):
            back.update(chunk)
    if back.hexdigest() != sha:
        store.delete(key)
        raise UserError(f"{key}: what the store returned differs from what was uploaded; nothing recorded")


def run_backup(source: Path, store: ObjectStore, keep: int | None = None,
               on_progress: Callable[[int, int], None] | None = None,
               grace_seconds: float = GRACE_SECONDS) -> Report:
    if not source.exists():
        raise UserError(f"{source} does not exist: nothing to back up")
    if not source.is_dir():
        raise UserError(f"{source} is not a directory")
    manifest_secret(store)  # (a secret file that cannot be used is said before anything is uploaded)
    # From before the target is looked at until the manifest names what was reused.
    with creating(store, LEASES, "backup", "expire"):
        report = _run(source, store, on_progress)
    if keep is not None:  # after the lease is gone: this run's own expiry must not wait for itself
        report.expired = expire(store, keep, grace_seconds)
    return report


def _run(source: Path, store: ObjectStore, on_progress: Callable[[int, int], None] | None) -> Report:
    previous: dict[str, FileEntry] = {}
    backups = list_backups(store)
    if backups:
        previous = {e.path: e for e in read_manifest(store, backups[-1].id)[1] if not e.is_dir}
    now = dt.datetime.now(dt.UTC)
    info = BackupInfo(now.strftime("%Y%m%dT%H%M%S%fZ") + "-" + secrets.token_hex(2), now.isoformat(),
                      str(source.absolute()), 0, 0, 0)
    report = Report(info)
    entries: list[FileEntry] = []
    for e in _walk(source):
        if not e.is_dir:
            old = previous.get(e.path)
            if old is not None and (old.size, old.mtime_ns) == (e.size, e.mtime_ns):
                e.sha256 = old.sha256  # the previous backup holds these contents
                report.reused += 1
            else:
                e.sha256 = _hash_file(source / e.path)
            if (old is None or old.sha256 != e.sha256) and not store.exists(blob_key(e.sha256)):
                _upload(store, source / e.path, e.sha256, e.size)
                report.uploaded += 1
                info.new_bytes += e.size
            info.files += 1
            info.bytes += e.size
            if on_progress:
                on_progress(info.files, info.bytes)
        entries.append(e)
    _write_manifest(store, info, entries)  # the commit point
    return report


def expire(store: ObjectStore, keep: int, grace_seconds: float = GRACE_SECONDS) -> list[str]:
    """Keep the newest ``keep`` backups; remove the others, then contents nothing references.

    A blob goes only if no backup listed right before the sweep references
    it, it is older than ``grace_seconds``, and no run is under way (one may
    be about to reuse it; its blobs go at the next expiry instead).
    """
    if keep < 1:
        raise UserError("--keep must be 1 or more")
    with sweeping(store, LEASES, "expire", "backup") as runs:
        backups = list_backups(store)
        gone = [b.id for b in backups[:-keep]]
        for backup_id in gone:
            store.delete(f"{BACKUPS}/{backup_id}.jsonl.gz")
        if runs:
            log.info("backup expiry removed no contents: %s; they go at the next expiry", runs[0])
            return gone
        # Listed again: a run that committed since (before this sweep's lease) counts too. Every manifest
        # there counts, authenticated or not: one written before a secret was set still holds a backup.
        referenced: set[str] = set()
        try:
            names = [e.name for e in store.list_dir(BACKUPS) if e.name.endswith(".jsonl.gz")]
        except NotFound:
            names = []
        for name in names:
            try:
                entries = read_manifest(store, name.removesuffix(".jsonl.gz"), authenticate=False)[1]
            except UserError:
                continue
            referenced.update(e.sha256 for e in entries if not e.is_dir)
        now = time.time()
        for obj in store.walk_files(BLOBS):
            if obj.name.rsplit("/", 1)[-1] in referenced or now - obj.mtime_ns / 1e9 < grace_seconds:
                continue
            store.delete(f"{BLOBS}/{obj.name}")
    return gone


# -- restore -----------------------------------------------------------------------------
# A manifest comes from the lake, where anyone who can write the backup prefix
# may have forged it: its paths are checked before anything is written, and
# the restore works below the target through directory file descriptors that
# never follow a symlink, so even a directory swapped for a link mid-restore
# leads nowhere outside the target.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _check_entries(backup_id: str, entries: list[FileEntry]) -> None:
    """One line, and nothing restored, if the manifest names a path outside the target (or is no manifest of ours)."""
    seen: set[str] = set()
    for e in entries:
        parts = e.path.split("/")
        if (not e.path or e.path.startswith("/") or "\0" in e.path
                or any(p in ("", ".", "..") for p in parts)):
            raise UserError(f"backup {backup_id}: its manifest names {e.path!r}, which is not a path inside the "
                            "target (forged or damaged manifest?); nothing was restored")
        if e.path in seen:
            raise UserError(f"backup {backup_id}: its manifest names {e.path!r} twice; nothing was restored")
        seen.add(e.path)
        if not e.is_dir and not _SHA256.fullmatch(e.sha256):
            raise UserError(f"backup {backup_id}: its manifest gives {e.path!r} no valid sha256; nothing was restored")


def _open_dir(root_fd: int, rel: str, create: bool) -> int:
    """A descriptor of directory ``rel`` below ``root_fd``, made if ``create``; never through a symlink."""
    fd = os.dup(root_fd)
    try:
        for name in rel.split("/") if rel else []:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o700, dir_fd=fd)
            try:
                nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise UserError(f"cannot restore into {rel}: {name} is not a directory tierfs made "
                                f"({exc.strerror}); nothing is written through a symlink") from None
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def restore(store: ObjectStore, backup_id: str, target: Path,
            on_progress: Callable[[int, int], None] | None = None) -> BackupInfo:
    info, entries = read_manifest(store, backup_id)
    _check_entries(backup_id, entries)
    if target.is_symlink():
        raise UserError(f"{target} is a symlink: restore into a directory, given by its real path")
    if target.exists() and any(target.iterdir()):
        raise UserError(f"{target} is not empty: restore into a new or empty directory")
    target.mkdir(parents=True, exist_ok=True)
    root_fd = os.open(target, _DIR_FLAGS)
    # Without a secret nobody vouches for the manifest: no setuid, setgid or sticky bit from it.
    mode_mask = 0o7777 if manifest_secret(store) else 0o777
    try:
        done = nbytes = 0
        dirs = [e for e in entries if e.is_dir]
        for e in dirs:
            os.close(_open_dir(root_fd, e.path, create=True))
        for e in entries:
            if e.is_dir:
                continue
            parent, _, name = e.path.rpartition("/")
            dir_fd = _open_dir(root_fd, parent, create=True)
            try:
                _restore_file(store, backup_id, e, dir_fd, name, mode_mask)
            finally:
                os.close(dir_fd)
            done += 1
            nbytes += e.size
            if on_progress:
                on_progress(done, nbytes)
        for e in reversed(dirs):  # after their contents, which would change their mtimes
            fd = _open_dir(root_fd, e.path, create=False)
            try:
                os.chmod(fd, e.mode & mode_mask)
                os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))
            finally:
                os.close(fd)
    finally:
        os.close(root_fd)
    return info


def _restore_file(store: ObjectStore, backup_id: str, e: FileEntry, dir_fd: int, name: str, mode_mask: int) -> None:
    tmp = f".{name}.tierfs-restore"[:255]
    h = hashlib.sha256()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        with store.open_read(ObjectRef(blob_key(e.sha256), e.size)) as src, open(fd, "wb", closefd=False) as out:
            while chunk := src.read(CHUNK):
                h.update(chunk)
                out.write(chunk)
        if h.hexdigest() != e.sha256:
            raise UserError(f"backup {backup_id}: the stored contents of {e.path} fail their checksum")
        os.chmod(fd, e.mode & mode_mask)
        os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))
    except FileNotFoundError:
        os.unlink(tmp, dir_fd=dir_fd)
        raise UserError(f"backup {backup_id}: the contents of {e.path} are missing from {store.url}") from None
    except BaseException:
        os.unlink(tmp, dir_fd=dir_fd)
        raise
    finally:
        os.close(fd)
    os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
