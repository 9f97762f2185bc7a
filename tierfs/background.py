"""Starting a mount in the background, and hearing whether it became ready.

`tierfs mount` without ``--foreground`` runs ``tierfs mount … --foreground``
as a daemon and waits on a pipe for READY or one line of error. This module
imports nothing heavy: the command's own process never loads the mount's
layers (trio, pyfuse3, the store clients), only the daemon does, which is
most of a mount's start time.
"""

from __future__ import annotations

import logging
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from tierfs import prefork
from tierfs.errors import UserError
from tierfs.systemd import sd_notify

log = logging.getLogger("tierfs")

READY = "READY"


def daemon_argv(argv: list[str]) -> tuple[list[str], dict[str, str], str]:
    """The daemon's argv without secrets, the environment that carries them, and what was exposed ('' if none).

    A password in ``--redis redis://:PASSWORD@host`` would sit in the
    daemon's /proc/PID/cmdline for as long as it runs; the daemon gets the URL
    without it and the password in its environment (readable by root only).
    """
    out, env, exposed = list(argv), {}, ""
    for i, arg in enumerate(out):
        flag, eq, value = arg.partition("=")
        if flag == "--redis" and eq:
            index, url = i, value
        elif arg == "--redis" and i + 1 < len(out):
            index, url = i + 1, out[i + 1]
        else:
            continue
        parts = urlsplit(url)
        if parts.password:
            host = parts.netloc.rsplit("@", 1)[1]
            user = f"{parts.username}@" if parts.username else ""
            bare = urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))
            out[index] = f"--redis={bare}" if index == i else bare
            env["TIERFS_REDIS_PASSWORD"] = unquote(parts.password)
            exposed = "the Redis password"
    return out, env, exposed


def spawn_daemon(argv: list[str], log_file: Path | None, timeout: float = 120.0,
                 env: dict[str, str] | None = None) -> tuple[int, str]:
    """Start ``tierfs mount … --foreground`` in the background; returns its pid (and notes) once ready.

    The child reports READY, or one line of error, through a pipe; if it dies
    without a word, the tail of its log says why. It logs to ``log_file``
    (rotated: ``tierfs/logfile.py``), or with None to the stderr it inherits
    (systemd's journal).
    """
    prefork.discard()  # (a fresh interpreter instead of the child forked at the start)
    out = _log_fd(log_file)
    read_fd, write_fd = os.pipe()
    with open(out, "ab") as log_fh, open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(
            # -P: the cwd is not put on sys.path, so a folder named tierfs/ there cannot shadow the package.
            [sys.executable, "-P", "-m", "tierfs", *argv, "--foreground", "--ready-fd", str(write_fd),
             *(["--log-to-file"] if log_file is not None else [])],
            stdin=devnull, stdout=log_fh, stderr=log_fh, pass_fds=(write_fd,),
            start_new_session=True, close_fds=True, env={**os.environ, **(env or {})},
        )
    os.close(write_fd)

    def died() -> int | None:
        return proc.poll()

    def kill() -> None:
        proc.kill()
        proc.wait()

    return proc.pid, _await_ready(read_fd, died, kill, lambda: proc.wait(timeout=30), log_file, timeout)


def fork_daemon(serve: Callable[[Callable[[str], None]], None], log_file: Path | None,
                timeout: float = 120.0) -> tuple[int, str]:
    """Run ``serve(ready)`` in a forked daemon; returns its pid (and notes) once it called ``ready``.

    What ``spawn_daemon`` does without a second interpreter: the child keeps
    the modules and settings this process has already loaded, which saves a
    tenth of a second of start. The child forked at the command's start
    (``tierfs/prefork.py``), its imports done or under way, is used if there
    is one. Only for an argv that holds no secret (the
    child's /proc/PID/cmdline is this process's). No thread may run here yet:
    only the forking thread survives a fork.
    """
    out = _log_fd(log_file)
    read_fd, write_fd = os.pipe()
    child = prefork.take()
    if child is not None and prefork.hand(child, serve, out, write_fd):
        pid = child.pid  # forked at the command's start, its imports done or under way
    else:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the daemon
            code = 1
            try:
                os.close(read_fd)
                os.setsid()
                devnull = os.open(os.devnull, os.O_RDONLY)
                os.dup2(devnull, 0)
                os.dup2(out, 1)
                os.dup2(out, 2)
                for fd in (devnull, out):
                    os.close(fd)
                code = run_daemon(serve, write_fd)
            finally:
                os._exit(code)
    os.close(write_fd)
    os.close(out)

    def died() -> int | None:
        done, status = os.waitpid(pid, os.WNOHANG)
        return None if done == 0 else os.waitstatus_to_exitcode(status)

    def kill() -> None:
        os.kill(pid, 9)
        os.waitpid(pid, 0)

    def reap() -> int | None:
        try:
            return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        except ChildProcessError:  # already reaped by died()
            return None

    return pid, _await_ready(read_fd, died, kill, reap, log_file, timeout)


def run_daemon(serve: Callable[[Callable[[str], None]], None], ready_fd: int) -> int:
    """The daemon's life, in a forked child with its stdio set: ``serve(ready)``; the exit code."""
    try:
        serve(notify_ready(ready_fd))
        return 0
    except UserError as exc:
        report_failure(ready_fd, f"{exc}")
    except BaseException as exc:  # the daemon's last word, whatever went wrong
        log.exception("the tierfs daemon stopped")
        report_failure(ready_fd, f"the tierfs daemon failed during start-up: {type(exc).__name__}: {exc}")
    finally:
        logging.shutdown()
    return 1


def _log_fd(log_file: Path | None) -> int:
    if log_file is None:
        return os.dup(2)  # the journal, as ours
    try:
        log_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # (the cache dir, as tierfs makes it)
        # 0600: the log names the lake's keys. Until the daemon opens the log itself, its output goes
        # here (what a start that fails before that prints).
        return os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError as exc:
        where = "cache dir" if log_file.name == "tierfs.log" else "log file"
        raise UserError(f"cannot write the daemon's log {log_file} ({exc.strerror or exc}): give a {where} "
                        "that can be written (--cache-dir DIR, or --log-file FILE)") from None


def _await_ready(read_fd: int, died: Callable[[], int | None], kill: Callable[[], None],
                 reap: Callable[[], int | None],
                 log_file: Path | None, timeout: float) -> str:
    """The daemon's notes once it said READY; its one line of error (or its log's last) as a UserError."""
    message = b""
    code: int | None = None
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([read_fd], [], [], 0.5)
            if ready:
                chunk = os.read(read_fd, 4096)
                if not chunk:
                    break
                message += chunk
                if b"\n" in message:
                    break
            else:
                code = died()
                if code is not None:
                    break
        else:
            kill()
            raise UserError(f"the mount did not become ready within {timeout:.0f} s; see {log_file or 'the journal'}")
    finally:
        os.close(read_fd)
    line = message.decode(errors="replace").strip()
    if line.startswith(READY):
        return line[len(READY):].strip()
    if code is None:
        code = reap()
    if line:
        raise UserError(line)
    raise UserError(f"the tierfs daemon exited during start-up{f' (code {code})' if code is not None else ''}: "
                    f"{_tail(log_file)}")


def notify_ready(fd: int | None) -> Callable[[str], None]:
    def ready(notes: str) -> None:
        if notes:
            log.warning("%s", notes)
        sd_notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=serving" + (f"; {notes}" if notes else ""))
        if fd is not None:
            os.write(fd, f"{READY} {notes}\n".encode())
            os.close(fd)

    return ready


def report_failure(fd: int | None, message: str) -> None:
    if fd is not None:
        try:
            os.write(fd, (message.replace("\n", " ") + "\n").encode())
        except OSError:
            pass


def _tail(path: Path | None) -> str:
    if path is None:
        return "see the journal (journalctl)"
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return f"see {path}"
    return lines[-1] if lines else f"see {path}"
