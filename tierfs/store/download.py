"""Downloads of lake objects to local files: ranged reads in parallel, resumable.

The bytes land in ``TARGET.tierfs-partial``; which chunks are done is saved
beside it (``.json``) after each one. An interrupted download run again goes on
from there, as long as the object is still the same (same ObjectRef); once
every chunk is in, the file is flushed to disk and renamed to TARGET, so
TARGET is never a half-downloaded file.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

from tierfs import statefile
from tierfs.refs import ObjectRef
from tierfs.store.objects import ObjectStore

PARTIAL = ".tierfs-partial"


def download(store: ObjectStore, ref: ObjectRef, target: Path, chunk_size: int, jobs: int,
             progress: Callable[[int], None] | None = None) -> int:
    """Fetch ``ref`` into ``target``; returns how many bytes an earlier run had already fetched."""
    partial = target.with_name(target.name + PARTIAL)
    state_path = partial.with_name(partial.name + ".json")
    identity = ref.identity()
    count = max(1, -(-ref.size // chunk_size))
    done: set[int] = set()
    state = statefile.load(state_path)
    if isinstance(state, dict) and state.get("identity") == identity and state.get("chunk_size") == chunk_size \
            and partial.exists():
        done = {int(i) for i in state.get("done", [])}
    already = sum(min(chunk_size, ref.size - i * chunk_size) for i in done)
    if progress is not None and already:
        progress(already)
    fd = os.open(partial, os.O_RDWR | os.O_CREAT | (0 if done else os.O_TRUNC), 0o644)
    try:
        os.ftruncate(fd, ref.size)

        lock = threading.Lock()

        def save() -> None:
            statefile.save(state_path, {"identity": identity, "chunk_size": chunk_size, "done": sorted(done)})

        def one(index: int) -> None:
            start = index * chunk_size
            end = min(start + chunk_size, ref.size)
            data = store.read_range(ref, start, end)
            os.pwrite(fd, data, start)
            with lock:
                done.add(index)
                save()
            if progress is not None:
                progress(len(data))

        todo = [i for i in range(count) if i not in done and ref.size]
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = [pool.submit(one, i) for i in todo]
            finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for f in futures:
                f.cancel()
            for f in finished:
                f.result()  # raise the first error
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(partial, target)
    state_path.unlink(missing_ok=True)
    return already
