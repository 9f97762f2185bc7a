"""The background daemon's log file: rotated by size, reopened when moved away, and where stderr goes.

`tierfs mount` without ``--foreground`` starts a daemon that logs to a file
(``tierfs.log`` in the cache dir, or ``[log] file``) and writes it itself:

- **Rotated** at ``[log] max_size``, keeping ``[log] backups`` older files
  (``tierfs.log.1`` the newest), the stdlib's RotatingFileHandler.
- **0600**, as the log has always been (it names the lake's keys): a file
  it creates gets that mode; one that exists (made by logrotate's
  ``create``, say) keeps its own.
- **logrotate-friendly without a signal**: before each line the name is
  checked against the file being written (WatchedFileHandler's check, one
  stat), and a file moved or deleted from under it is left for a new one.
  No ``postrotate`` is needed; SIGHUP keeps meaning "unmount", which it
  always has (``mount.py``), rather than "reopen the log".
- **Stdout and stderr follow it** (``stdio``): fds 1 and 2 are pointed at
  the file being written, after every rotation or reopen too, so what is
  not a log record (the traceback of a crash, a C library's complaint,
  faulthandler's dump were it on) lands in the current log, counted in its
  size, and no rotated-away file is held open by them.

Under systemd's journal (``tierfs.systemd.journal_stderr``) there is no file:
the daemon logs to stderr and journald keeps and rotates the lines.
"""

from __future__ import annotations

import io
import logging.handlers
import os
from pathlib import Path


class LogFile(logging.handlers.RotatingFileHandler):
    def __init__(self, path: Path, max_bytes: int, backups: int, stdio: bool = False):
        """``max_bytes`` 0: never rotated (still reopened when moved away). ``stdio``: fds 1 and 2 follow the file."""
        self._stdio = stdio
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file being written
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8", errors="backslashreplace")

    def _open(self) -> io.TextIOWrapper:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        st = os.fstat(fd)
        self._identity = (st.st_dev, st.st_ino)
        if self._stdio:
            os.dup2(fd, 1)
            os.dup2(fd, 2)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._reopen_if_moved()
        except Exception:
            self.handleError(record)
            return
        super().emit(record)

    def _reopen_if_moved(self) -> None:
        try:
            st = os.stat(self.baseFilename)
            now: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            now = None
        if now != self._identity and self.stream is not None:
            self.stream.close()
            self.stream = None  # (if the open fails, the next line tries again)
            self.stream = self._open()
