"""The daemon's part of a mount: set up its log, load the mount's layers, serve.

Kept apart from the CLI (no click here) so that a daemon started early by
``tierfs/prefork.py`` loads only what serving needs. The command's own
process imports this module for :func:`setup_logging` and hands
:func:`serve` to the daemon; only the daemon runs it.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tierfs.config import Settings

log = logging.getLogger("tierfs")

# Client libraries that log every request (with credentials-adjacent details) below WARNING.
_CLIENT_LOGGERS = ("botocore", "aiobotocore", "s3fs", "gcsfs", "google", "adlfs", "azure", "fsspec", "urllib3",
                   "pyfuse3", "redis")


def setup_logging(level: int, handler: logging.Handler | None = None) -> None:
    """Log lines to stderr (journald adds the time under systemd) or to ``handler`` (the daemon's log file);
    client libraries at WARNING or above."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=[handler or logging.StreamHandler(sys.stderr)])
    for name in _CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, level))


def serve(settings: Settings, mountpoint: Path, exposed: str, log_to_file: bool,
          ready: Callable[[str], None]) -> None:
    """Log (to stderr, or with ``log_to_file`` to the rotated log file), load the mount's layers, serve."""
    from tierfs.logfile import LogFile

    level = "debug" if os.environ.get("TIERFS_DEBUG") else settings.log_level
    handler = LogFile(settings.resolved_log_file(), settings.log_max_size, settings.log_backups,
                      stdio=True) if log_to_file else None
    setup_logging(getattr(logging, level.upper()), handler)
    if exposed:
        log.warning("%s", exposed)
    from tierfs import prefork

    if prefork.handed:
        log.info("this daemon was forked when the command started, and loaded its layers beside it")
    from tierfs import mount as mount_mod

    mount_mod.run_foreground(settings, mountpoint, ready)
