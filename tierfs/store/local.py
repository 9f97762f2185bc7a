"""A lake in a local directory (``file://``): real directories, atomic renames, emulated classes.

An object's identity is its inode, mtime and size (a local filesystem has no
ETags): an upload is a new file renamed into place, so it gets a new inode,
and an in-place rewrite changes the mtime. A read checks the identity on the
open file before and after it reads, so it never returns another version's
bytes. Storage classes are emulated in an extended attribute, so lifecycle
rules can be tried on a laptop.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import posixpath
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

from tierfs.errors import Archived, UserError
from tierfs.refs import ObjectRef
from tierfs.store.backend import ARCHIVE_CLASSES, Backend, Changed, Entry, expected_etag, require_identity

#: Where a local lake keeps an object's emulated storage class.
LOCAL_CLASS_XATTR = "user.tierfs.class"
#: Where an upload lands before its rename into place (hidden from the live view with all of .tierfs/).
UPLOAD_DIR = ".tierfs/upload"
_FICLONE = 0x40049409  # linux/fs.h: share the source's extents (btrfs, XFS)


class LocalBackend(Backend):
    provider: ClassVar[str] = "local"

    @functools.cached_property
    def name_limits(self) -> tuple[int, int]:
        """The local filesystem's: a name of f_namemax bytes, a path of PATH_MAX."""
        root = self.full("")
        try:
            component = os.statvfs(root).f_namemax
        except OSError:
            component = 255
        try:
            path_max = os.pathconf(root, "PC_PATH_MAX")
        except (OSError, ValueError):
            path_max = 4096
        return component, path_max - 1  # PATH_MAX counts the terminating NUL

    # -- data ---------------------------------------------------------------
    def read_range(self, ref: ObjectRef, start: int, end: int) -> bytes:
        self._refuse_archived(ref)
        fd = os.open(self.full(ref.key), os.O_RDONLY)
        try:
            self._same(ref, os.fstat(fd))
            data = os.pread(fd, end - start, start)
            self._same(ref, os.fstat(fd))  # not rewritten in place while we read
        finally:
            os.close(fd)
        return data

    def _same(self, ref: ObjectRef, st: os.stat_result) -> None:
        expected = expected_etag(ref)
        if expected and _identity(st) != expected:
            raise Changed(f"{ref.key} changed upstream (it is not the version this read was for)")

    # -- writes ---------------------------------------------------------------
    def put_file(self, local: Path, key: str) -> Entry:
        """Copied under .tierfs/upload, then renamed into place: atomic, and its identity is the copy's."""
        return self._put(key, lambda tmp: self.fs.put_file(str(local), tmp))

    def put_bytes(self, key: str, data: bytes) -> Entry:
        return self._put(key, lambda tmp: Path(tmp).write_bytes(data))

    def _put(self, key: str, write: Callable[[str], object]) -> Entry:
        tmp_dir = self.full(UPLOAD_DIR)
        os.makedirs(tmp_dir, exist_ok=True)
        tmp = f"{tmp_dir}/{uuid.uuid4().hex}"
        try:
            write(tmp)
            return self._into_place(tmp, key)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _into_place(self, tmp: str, key: str) -> Entry:
        # The identity is read off the file before the rename (which keeps the inode):
        # a second writer of the same key cannot slip its identity in between.
        st = os.stat(tmp)
        full = self.full(key)
        parent = os.path.dirname(full)
        if parent:
            os.makedirs(parent, exist_ok=True)
        os.replace(tmp, full)
        return Entry(posixpath.basename(key), False, st.st_size, st.st_mtime_ns,
                     ObjectRef(key, st.st_size, _identity(st)))

    def delete_if(self, key: str, ref: ObjectRef) -> bool:
        """Take the file out of the way, then check it: no rewrite can slip in between check and delete.

        The file at ``key`` is renamed under .tierfs/upload (atomic: whatever
        was there, and only that, is taken), and its identity is checked on
        the taken inode. Not the one ``ref`` named: it is linked back under
        its name, unless a newer one was written there meanwhile (which then
        stays, as the last writer). While it is out, a reader of ``key`` finds
        nothing for that instant; handles already open keep reading it.
        """
        require_identity(ref)
        full = self.full(key)
        try:
            if not stat.S_ISREG(os.lstat(full).st_mode):
                return False  # a directory (or a link): not an object
        except FileNotFoundError:
            return False
        tmp_dir = self.full(UPLOAD_DIR)
        os.makedirs(tmp_dir, exist_ok=True)
        taken = f"{tmp_dir}/{uuid.uuid4().hex}.deleting"
        try:
            os.rename(full, taken)
        except FileNotFoundError:
            return False
        if ref.etag == _identity(os.stat(taken)):
            os.unlink(taken)
            return True
        try:
            os.link(taken, full)  # back under its name, never over a newer file
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links
            if not os.path.lexists(full):
                os.rename(taken, full)
        if os.path.lexists(taken):
            os.unlink(taken)
        return False

    def copy(self, src: str, dst: str) -> None:
        parent = posixpath.dirname(self.full(dst))
        if parent:
            os.makedirs(parent, exist_ok=True)
        self.fs.copy(self.full(src), self.full(dst))

    def copy_ref(self, ref: ObjectRef, dst: str) -> Entry:
        """A copy of the open source file, reflinked where the filesystem can, checked before and after.

        The source's identity is compared on the open file before the copy and
        after it (not rewritten in place meanwhile), and the copy lands by
        rename, so ``dst`` never holds another version's bytes, nor part of them.
        """
        fd = os.open(self.full(ref.key), os.O_RDONLY)
        tmp_dir = self.full(UPLOAD_DIR)
        os.makedirs(tmp_dir, exist_ok=True)
        tmp = f"{tmp_dir}/{uuid.uuid4().hex}"
        try:
            self._same(ref, os.fstat(fd))
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                _clone(fd, out, ref.size)
            finally:
                os.close(out)
            self._same(ref, os.fstat(fd))
            if os.stat(tmp).st_size != ref.size:
                raise Changed(f"{ref.key} changed upstream (not {ref.size} bytes any more)")
            return self._into_place(tmp, dst)
        finally:
            os.close(fd)
            if os.path.exists(tmp):
                os.unlink(tmp)

    # -- directories and times ------------------------------------------------
    def make_dir(self, rel: str) -> bool:
        os.mkdir(self.full(rel))
        return True

    def remove_dir(self, rel: str) -> None:
        os.rmdir(self.full(rel))

    def rename_dir(self, src: str, dst: str) -> bool:
        os.rename(self.full(src), self.full(dst))
        return True

    def set_mtime(self, rel: str, mtime_ns: int) -> bool:
        os.utime(self.full(rel), ns=(mtime_ns, mtime_ns))
        return True

    # -- emulated storage classes ------------------------------------------------
    def local_class(self, key: str) -> str:
        """The emulated storage class of ``key`` ('' when none is set)."""
        try:
            return os.getxattr(self.full(key), LOCAL_CLASS_XATTR).decode()
        except OSError:
            return ""

    def set_local_class(self, key: str, storage_class: str) -> None:
        os.setxattr(self.full(key), LOCAL_CLASS_XATTR, storage_class.encode())

    def _refuse_archived(self, ref: ObjectRef) -> None:
        """Refuse a read of an emulated archive class, as S3 would."""
        cls = self.local_class(ref.key)
        if cls in ARCHIVE_CLASSES:
            raise Archived(archived_message(self.url, ref.key, cls))

    def objects_with_classes(self, walk: Iterator[Entry]) -> Iterator[Entry]:
        for e in walk:
            yield Entry(e.name, False, e.size, e.mtime_ns, e.ref, self.local_class(e.name))

    def set_class(self, key: str, storage_class: str, pinned: frozenset[tuple[str, str]],
                  etag: str, listed_version: str) -> bool:
        self.set_local_class(key, storage_class)
        return True

    def restore(self, key: str, days: int) -> str:
        current = self.local_class(key)
        if current not in ARCHIVE_CLASSES:
            raise UserError(f"{key} is not archived (class {current or 'STANDARD'}); it can be read as it is")
        self.set_local_class(key, "STANDARD")
        return f"{key} is readable again (class STANDARD)"

    def credentials_hint(self) -> str:
        return "check that the directory exists and tierfs may read it"


def _clone(src: int, dst: int, size: int) -> None:
    """``size`` bytes of ``src`` into ``dst``: a reflink (shared extents) where the filesystem has them,
    else copy_file_range (in the kernel, server side on NFS), else read and write."""
    try:
        fcntl.ioctl(dst, _FICLONE, src)
        return
    except OSError:
        pass  # not btrfs/XFS with reflinks, or another filesystem than the source's
    done = 0
    try:
        while done < size:
            n = os.copy_file_range(src, dst, size - done, done, done)
            if n == 0:
                break  # shorter than the ref says: the size check after says so
            done += n
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    while chunk := os.pread(src, min(8 << 20, size - done), done):
        os.pwrite(dst, chunk, done)
        done += len(chunk)


def _identity(st: os.stat_result) -> str:
    """The stand-in ETag of a local file (the same formula as a listing's; see Backend.entry)."""
    return f"{st.st_ino}-{int(st.st_mtime * 1e9):x}-{st.st_size:x}"  # float mtime: what fsspec's info gives


def archived_message(url: str, key: str, where: str) -> str:
    return (f"{key} is archived ({where}): restore it first with `tierfs restore {url} {key}` "
            "(hours on S3 Glacier and Azure Archive), then read again")

