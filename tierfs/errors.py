"""The error tree, and the one place where errors become errno values.

Every layer raises either a builtin ``OSError`` (as fsspec does) or one of the
classes below. The FUSE adapter calls :func:`to_errno` once per failed request;
the CLI prints :class:`UserError` as one line and exits non-zero.
"""

from __future__ import annotations

import errno


class TierfsError(Exception):
    """Base of every error tierfs raises on purpose."""

    errno = errno.EIO


class UserError(TierfsError):
    """Bad input or a broken environment: shown to the user as one line.

    The message says what is wrong and, where it can, what to do about it.
    """


class ConfigError(UserError):
    """A setting (in the TOML file or on the command line) is not acceptable."""


class CacheDirBusy(UserError):
    """Another process (or tierfs instance) holds the cache dir's lock; ``holder`` is the pid it wrote there."""

    def __init__(self, message: str, root: object, holder: str):
        super().__init__(message)
        self.root, self.holder = root, holder


class StoreError(TierfsError):
    """The object store failed after retries (network, server, throttling)."""


class Archived(TierfsError):
    """The object is in an archive storage class and must be restored before it can be read."""


class NotFound(TierfsError):
    errno = errno.ENOENT


class ReadOnly(TierfsError):
    errno = errno.EROFS


class NotPermitted(TierfsError):
    """Refused by this mount's policy (deletes forbidden), whoever asks."""

    errno = errno.EPERM


class NoSpace(TierfsError):
    errno = errno.ENOSPC


class Exists(TierfsError):
    errno = errno.EEXIST


class NotEmpty(TierfsError):
    errno = errno.ENOTEMPTY


class BadKey(UserError):
    """A key that is no key of the lake: a leading '/', an empty, '.' or '..' component, or a NUL."""

    errno = errno.EINVAL


class NameTooLong(TierfsError):
    """A name (one component, or the whole key) is longer than the lake can hold."""

    errno = errno.ENAMETOOLONG


class CorruptBlock(TierfsError):
    """A cached block failed its checksum; the caller drops it and refetches."""


def to_errno(exc: BaseException) -> int:
    """The errno a failed FUSE request answers with.

    Concurrent work (the blocks of one read) fails as an exception group: its
    errno is the first specific one among what failed, EIO if none is.
    """
    if isinstance(exc, BaseExceptionGroup):
        codes = [to_errno(e) for e in exc.exceptions]
        return next((c for c in codes if c != errno.EIO), errno.EIO)
    if isinstance(exc, TierfsError):
        return exc.errno
    if isinstance(exc, FileNotFoundError):
        return errno.ENOENT
    if isinstance(exc, IsADirectoryError):
        return errno.EISDIR
    if isinstance(exc, NotADirectoryError):
        return errno.ENOTDIR
    if isinstance(exc, PermissionError):
        return errno.EACCES
    if isinstance(exc, TimeoutError):
        return errno.ETIMEDOUT
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO


def leaf(exc: BaseException) -> BaseException:
    """The first error inside an exception group (itself if it is none): what a log line should name."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
