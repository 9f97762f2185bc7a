"""The control channel of a running mount: `tierfs warm` and `tierfs log-level` talk to the daemon here.

A mount's root also takes these requests as extended attributes
(``setfattr -n user.tierfs.warm``), but a ``--read-only`` mount is read-only
to the kernel, which refuses every setxattr before the daemon sees it. So
the commands use a Unix socket instead: an abstract one (no file to leave
behind, clean up or protect), named after the daemon's pid, which the
command reads from the root's ``user.tierfs.pid``. Anyone on the host may
connect to an abstract socket; the daemon answers only root and its own user,
checked by the peer's credentials (SO_PEERCRED), as the xattrs check the
caller's uid.

One request per connection: a JSON object on one line, answered by one line,
``{"ok": true}`` (with what the request returns, if anything: a stopped
lineage job's count) or ``{"error": "...", "errno": N}``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tierfs.errors import UserError

log = logging.getLogger(__name__)

MAX_REQUEST = 64 << 10  # bytes: a request names a list file, never holds one
PID_XATTR = "user.tierfs.pid"

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]]


class Refused(Exception):
    """A request the daemon will not carry out; ``errno`` says why (EINVAL, EPERM, …)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.errno = code


def address(pid: int) -> bytes:
    """The abstract socket name of the daemon ``pid``."""
    return b"\0tierfs-control-%d" % pid


def _peer_uid(sock: Any) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


async def serve(handle: Handler, task_status: Any = None) -> None:
    """Answer control requests until cancelled (a task of the mount's nursery: nothing escapes it)."""
    import trio

    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(address(os.getpid()))
        sock.listen(16)
    except OSError as exc:
        sock.close()
        log.warning("no control socket (%s): tierfs warm and log-level need a writable mount's xattrs", exc)
        return
    finally:
        if task_status is not None:
            task_status.started()
    with sock:
        async with trio.open_nursery() as nursery:
            while True:
                conn, _ = await sock.accept()
                nursery.start_soon(_one, conn, handle)


async def _one(conn: Any, handle: Handler) -> None:
    import trio

    with conn:
        try:
            with trio.fail_after(10):  # a client that connects and says nothing holds no task for long
                reply = await _answer(conn, handle)
                await conn.send(json.dumps(reply).encode() + b"\n")
        except (OSError, trio.TooSlowError):
            pass  # (the client went away, or never asked: nothing to answer)


async def _answer(conn: Any, handle: Handler) -> dict[str, Any]:
    data = b""  # (read before answering, even a refusal: the client is still sending)
    while b"\n" not in data and len(data) <= MAX_REQUEST:
        chunk = await conn.recv(4096)
        if not chunk:
            break
        data += chunk
    if _peer_uid(conn) not in (0, os.getuid()):
        return {"error": "only root may control a tierfs mount", "errno": errno.EPERM}
    try:
        request = json.loads(data)
        if not isinstance(request, dict):
            raise ValueError("not an object")
    except ValueError:
        return {"error": "a control request is one JSON object on one line", "errno": errno.EINVAL}
    try:
        result = await handle(request)
    except Refused as exc:
        return {"error": f"{exc}", "errno": exc.errno}
    except Exception as exc:  # (a task of the mount's nursery: a bad request must not stop the mount)
        log.warning("control request %s failed: %s: %s", request.get("op"), type(exc).__name__, exc)
        return {"error": f"{type(exc).__name__}: {exc}", "errno": errno.EIO}
    return {**(result or {}), "ok": True}


def request(mountpoint: Path, req: dict[str, Any], what: str, timeout: float = 30.0) -> dict[str, Any]:
    """Send ``req`` to the daemon serving ``mountpoint``; one line (UserError) if it is refused or cannot be sent.

    ``what`` names the request in those lines ("start a warm job", "set the log level").
    """
    try:
        pid = int(os.getxattr(mountpoint, PID_XATTR))
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "no daemon pid"
        raise UserError(f"cannot {what} on {mountpoint}: {reason} (is it a tierfs mount?)") from None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(address(pid))
            sock.sendall(json.dumps(req).encode() + b"\n")
            data = b""
            while b"\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        raise UserError(f"cannot {what} on {mountpoint}: the daemon (pid {pid}) did not answer "
                        f"({exc.strerror or exc})") from None
    try:
        reply = json.loads(data)
    except ValueError:
        raise UserError(f"cannot {what} on {mountpoint}: the daemon (pid {pid}) gave no answer") from None
    if not reply.get("ok"):
        raise UserError(f"cannot {what} on {mountpoint}: {reply.get('error', 'refused')}")
    return dict(reply)
