"""Staged files written, read and thrown away at once, from several threads: the bytes never mix.

The write path does its disk work in worker threads and closes the fds of
discarded staged files in the background; fd numbers are reused at once. A
write must be seen by a read through another handle as soon as it returns,
and a staged file must never get the bytes of one that was discarded.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from helpers import mounted

ROUNDS = 150
CHUNK = 4100


def _chunk(k: int, i: int) -> bytes:
    return bytes([65 + k]) * (CHUNK - 4) + i.to_bytes(4, "big")


def test_writers_readers_and_discarded_files_at_once(lake: Path, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    with mounted(f"file://{lake}", mnt, tmp_path / "cache"):
        (mnt / "out").mkdir()
        (mnt / "tmp").mkdir()
        stop = threading.Event()
        errors: list[str] = []

        def churn() -> None:
            """Staged files made, unlinked while open, read, and closed: discarded over and over."""
            i = 0
            while not stop.is_set():
                path = mnt / f"tmp/scratch{i % 4}"
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    os.write(fd, b"Z" * 5000)
                    os.unlink(path)
                    if os.pread(fd, 6000, 0) != b"Z" * 5000:
                        errors.append(f"scratch {i}: its bytes changed after unlink")
                finally:
                    os.close(fd)
                i += 1

        def write_and_read(k: int) -> None:
            """Write through one handle, read back through another at once."""
            path = mnt / f"out/f{k}.bin"
            w = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            r = os.open(path, os.O_RDONLY)
            try:
                for i in range(ROUNDS):
                    data = _chunk(k, i)
                    os.pwrite(w, data, i * CHUNK)
                    got = os.pread(r, CHUNK, i * CHUNK)
                    if got != data:
                        errors.append(f"f{k}.bin chunk {i}: read {got[:8]!r}... after writing {data[:8]!r}...")
                        return
            finally:
                os.close(r)
                os.close(w)

        churner = threading.Thread(target=churn)
        workers = [threading.Thread(target=write_and_read, args=(k,)) for k in range(3)]
        churner.start()
        try:
            for t in workers:
                t.start()
            for t in workers:
                t.join(timeout=240)
        finally:
            stop.set()
            churner.join(timeout=60)
        assert not errors, errors[:5]
        for k in range(3):
            expected = b"".join(_chunk(k, i) for i in range(ROUNDS))
            assert (lake / f"out/f{k}.bin").read_bytes() == expected
            assert (mnt / f"out/f{k}.bin").read_bytes() == expected
        assert os.listdir(mnt / "tmp") == [] and os.listdir(lake / "tmp") == []
        # Nothing left behind (the last discarded files are cleaned up just after their close returns).
        staging = tmp_path / "cache/staging"
        deadline = time.monotonic() + 10
        while sorted(p.name for p in staging.iterdir() if p.is_file()) != ["lock"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sorted(p.name for p in staging.iterdir() if p.is_file()) == ["lock"]
