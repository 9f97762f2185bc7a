"""The background daemon's log file (tierfs/logfile.py): rotated by size, private, logrotate-friendly."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tierfs.logfile import LogFile


@pytest.fixture
def log_to() -> Iterator[logging.Logger]:
    """A logger of its own (not tierfs', which pytest captures), emptied after the test."""
    logger = logging.getLogger("tierfs-test-logfile")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    yield logger
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 0: a file made 0600 is so by the handler's choice, not by the umask's."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_the_log_rotates_at_its_size_and_keeps_its_backups_private(tmp_path: Path, log_to: logging.Logger,
                                                                   open_umask: None) -> None:
    path = tmp_path / "tierfs.log"
    log_to.addHandler(LogFile(path, 4096, 3))
    for i in range(400):
        log_to.info("line %04d %s", i, "x" * 80)  # ~90 bytes: some 45 lines a file
    files = [path, *(tmp_path / f"tierfs.log.{n}" for n in (1, 2, 3))]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in files)  # no .4: three kept
    for p in files:
        assert 3500 < p.stat().st_size < 4096, p
        assert p.stat().st_mode & 0o777 == 0o600, p
    newest = path.read_text().splitlines()
    assert newest[-1].startswith("line 0399") and all(line.startswith("line ") for line in newest)
    # The backups are the lines just before, newest first; the oldest lines are gone.
    first = [int(p.read_text().split()[1]) for p in reversed(files)]
    assert first == sorted(first) and first[0] > 0
    assert int(path.read_text().split()[1]) == int((tmp_path / "tierfs.log.1").read_text().splitlines()[-1].split()[1]) + 1


@pytest.mark.parametrize("how", ["moved", "deleted", "copytruncate"])
def test_a_log_moved_away_or_deleted_is_left_for_a_new_one(tmp_path: Path, log_to: logging.Logger,
                                                           open_umask: None, how: str) -> None:
    """logrotate's default (move, then a new file), a deleted log, logrotate's copytruncate: the next line
    starts the file at the name."""
    path = tmp_path / "tierfs.log"
    log_to.addHandler(LogFile(path, 0, 1))
    log_to.info("before")
    if how == "moved":
        path.rename(tmp_path / "tierfs.log-20261201")
        assert (tmp_path / "tierfs.log-20261201").read_text() == "before\n"
    elif how == "deleted":
        path.unlink()
    else:
        shutil.copy(path, tmp_path / "tierfs.log-20261201")
        os.truncate(path, 0)  # (lines are appended: the next one is at the start, not after a hole)
    log_to.info("after")
    assert path.read_text() == "after\n"
    assert path.stat().st_mode & 0o777 == 0o600


def test_stderr_and_a_crash_go_to_the_current_file(tmp_path: Path) -> None:
    """With stdio, fds 1 and 2 follow the log through rotations and moves: a crash's traceback is in the current one."""
    path = tmp_path / "tierfs.log"
    script = textwrap.dedent(f"""
        import logging, os, sys
        from pathlib import Path
        from tierfs.logfile import LogFile
        logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[LogFile(Path({str(path)!r}), 4096, 2, stdio=True)])
        for i in range(200):
            logging.info("line %04d %s", i, "x" * 80)
        os.rename({str(path)!r}, {str(path)!r} + "-moved")
        logging.info("after the move")
        print("to stdout", flush=True)
        os.write(2, b"to fd 2\\n")
        raise RuntimeError("the crash")
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert res.returncode == 1 and res.stdout == res.stderr == ""  # nothing left on the original stdio
    text = path.read_text()
    assert text.startswith("after the move\n")
    for needle in ("to stdout", "to fd 2", "Traceback", "RuntimeError: the crash"):
        assert needle in text
    for old in (tmp_path / "tierfs.log-moved", tmp_path / "tierfs.log.1"):
        assert "the crash" not in old.read_text() and "line " in old.read_text()
