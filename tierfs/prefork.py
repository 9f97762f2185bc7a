"""The `tierfs` entry point: a mount's daemon is forked first, and loads its layers while the command parses.

`tierfs mount` in the background is two processes, and each has its own
imports: the command loads its CLI (click, the config: about a tenth of a
second here), then forks the daemon, which loads the mount's layers (trio,
pyfuse3, the tiers, the store clients: a quarter of a second or more). One
after the other, they were most of a mount's start.

On a command line that will fork a daemon, :func:`main` forks before it
imports anything else: the child imports the mount's layers on one core
while the parent imports the CLI and reads the options on the other. The
parent then hands the child what ``fork_daemon`` would have run
(``tierfs/background.py``): the serve call, pickled over a private socket
pair, with the daemon's log and ready-pipe fds beside it (SCM_RIGHTS) and
the environment as the parent left it. From there on the child is the
daemon, exactly as a freshly forked one.

A command line that turns out not to need it (``--help``, a bad option, a
mount that fails its checks, a secret that sends the daemon to a fresh
interpreter) discards the child: it is killed and reaped before the command
exits. The child holds none of the command's stdio, so a caller reading the
command's output is never kept waiting by it. ``TIERFS_PREFORK=0`` turns
this off.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # (this module runs before the fork: only what it needs is imported)
    from collections.abc import Callable
    from typing import NoReturn

#: Arguments after which no daemon is forked by this command.
_NO_DAEMON = ("--help", "-h", "--foreground", "-f", "--version")


class Child:
    def __init__(self, pid: int, sock: socket.socket):
        self.pid, self.sock = pid, sock


_child: Child | None = None
#: In the daemon: True when it is the child forked at the command's start (the log says so).
handed = False


def main() -> None:
    """``tierfs …``: start the daemon's imports if a daemon is coming, then run the CLI.

    A background mount's command then exits at once, without the
    interpreter's teardown of the modules it loaded (30-50 ms here, after the
    mount is ready, before the shell or unit that waits on it goes on).
    """
    start(sys.argv)
    from tierfs.cli import main as cli_main

    if _child is None:
        cli_main()
        return
    try:
        cli_main()
        code: object = 0
    except SystemExit as exc:
        code = exc.code
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()  # (discard(), if no daemon was handed over)
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # (a reader that went away: nothing left to tell it)
            pass
    os._exit(code or 0)


def wanted(argv: list[str]) -> bool:
    """Whether ``argv`` is a background mount, the one command that forks a daemon (a guess: a wrong
    yes costs a fork, a wrong no the head start)."""
    args = argv[1:]
    if not args or os.environ.get("TIERFS_PREFORK") == "0" or os.environ.get("TIERFS_EXEC_DAEMON"):
        return False
    if args[0] != "mount" and not (len(args) > 2 and "://" in args[0]):  # (mount.fuse3's form: tierfs URL DIR)
        return False
    return not any(a in _NO_DAEMON or "foreground" in a for a in args)


def start(argv: list[str]) -> None:
    """Fork the daemon-to-be if ``argv`` wants one (at most once; no thread may run yet)."""
    global _child
    if _child is not None or not wanted(argv):
        return
    try:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    except OSError:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError:
        ours.close()
        theirs.close()
        return
    if pid == 0:
        ours.close()
        _daemon_to_be(theirs)
    theirs.close()
    _child = Child(pid, ours)
    atexit.register(discard)


def take() -> Child | None:
    """The forked child, for the caller to :func:`hand` a daemon's work to (None: fork one now)."""
    global _child
    child, _child = _child, None
    return child


def hand(child: Child, serve: Callable[[Callable[[str], None]], None], log_fd: int, ready_fd: int) -> bool:
    """Make ``child`` the daemon: it runs ``serve(ready)``, logging to ``log_fd``, reporting on ``ready_fd``.

    False (and the child is gone) if it cannot be told: the caller forks a daemon as before.
    """
    import pickle

    try:
        message = pickle.dumps((serve, dict(os.environ)))
        socket.send_fds(child.sock, [message], [log_fd, ready_fd])
    except (OSError, pickle.PicklingError, AttributeError, TypeError):
        _stop(child)
        return False
    child.sock.close()
    return True


def discard() -> None:
    """Kill and reap a child no daemon was handed to (at exit, or when the daemon is started another way)."""
    child = take()
    if child is not None:
        _stop(child)


def _stop(child: Child) -> None:
    child.sock.close()
    try:
        os.kill(child.pid, signal.SIGKILL)
        os.waitpid(child.pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def _daemon_to_be(sock: socket.socket) -> NoReturn:
    """The child: load the mount's layers, wait for the serve call, and be the daemon (or exit if none comes)."""
    code = 1
    try:
        os.setsid()  # (the terminal's ^C is the command's, as for a daemon forked later)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)
        failed = ""
        try:
            # The point of forking early: these imports, beside the command's own.
            import tierfs.daemon
            import tierfs.mount  # noqa: F401
        except BaseException as exc:
            failed = f"the tierfs daemon failed during start-up: {type(exc).__name__}: {exc}"
        message, fds, _flags, _addr = socket.recv_fds(sock, 1 << 20, 2)
        sock.close()
        # No message: the command went another way, or is gone.
        code = _be_the_daemon(message, fds[0], fds[1], failed) if message and len(fds) == 2 else 0
    finally:
        os._exit(code)


def _be_the_daemon(message: bytes, log_fd: int, ready_fd: int, failed: str) -> int:
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    import pickle

    from tierfs import background

    if failed:
        background.report_failure(ready_fd, failed)
        return 1
    global handed
    handed = True
    serve, env = pickle.loads(message)
    os.environ.clear()
    os.environ.update(env)
    return background.run_daemon(serve, ready_fd)
