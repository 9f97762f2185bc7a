"""systemd: the notify protocol (Type=notify units) without libsystemd, and whether stderr is the journal."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def sd_notify(message: str) -> bool:
    """Tell systemd (Type=notify) about our state, if it is listening; no libsystemd needed."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
        return True
    except OSError as exc:
        log.warning("could not notify systemd at %s: %s", address, exc)
        return False


def journal_stderr() -> bool:
    """Whether stderr is systemd's journal: JOURNAL_STREAM names its device and inode (systemd.exec(5)).

    Compared with stderr itself, not just present: a process started by a
    unit's process with its stderr sent elsewhere (a file, /dev/null)
    inherits the variable. INVOCATION_ID is not enough for the same reason:
    every process of a unit has it, wherever its stderr goes.
    """
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(2)
    except OSError:
        return False
    return bool(value) and value == f"{st.st_dev}:{st.st_ino}"
