"""Names the lake cannot hold are refused at the call that makes them (ENAMETOOLONG), never at close."""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import SeaweedS3, mounted, wait_for, write_tree

from tierfs import statefile

pytestmark = pytest.mark.mount


def _enametoolong(call: Callable[[], Any]) -> None:
    """``call`` must fail with ENAMETOOLONG; a descriptor it wrongly hands back is closed."""
    try:
        result = call()
    except OSError as exc:
        assert exc.errno == errno.ENAMETOOLONG, exc
        return
    if isinstance(result, int):
        os.close(result)
    raise AssertionError(f"no ENAMETOOLONG: the call returned {result!r}")


def _nothing_staged(cache: Path) -> None:
    assert not list((cache / "staging").glob("*.json")), "a refused name was staged"
    assert not list((cache / "staging").glob("*.data")), "a refused name was staged"


def test_a_name_past_the_local_limit_is_refused_at_the_call(lake: Path, tmp_path: Path) -> None:
    limit = os.statvfs(lake).f_namemax  # 255 on every usual Linux filesystem
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    (lake / "short.txt").write_bytes(b"s")
    with mounted(f"file://{lake}", mnt, cache) as m:
        long = "n" * (limit + 1)
        _enametoolong(lambda: os.open(mnt / long, os.O_CREAT | os.O_WRONLY, 0o644))
        os.listdir(mnt / "datasets")  # a listed directory answers lookups from its listing, not the lake
        _enametoolong(lambda: os.open(mnt / "datasets" / long, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644))
        _enametoolong(lambda: os.mkdir(mnt / long))
        _enametoolong(lambda: os.rename(mnt / "short.txt", mnt / long))
        _enametoolong(lambda: os.stat(mnt / long))
        # The limit counts bytes: 128 two-byte characters are 256 bytes.
        _enametoolong(lambda: os.open(mnt / ("é" * ((limit + 1) // 2 + 1)), os.O_CREAT | os.O_WRONLY, 0o644))
        _nothing_staged(cache)
        assert m.stats()["writes"]["uploads"] == 0
        assert sorted(p.name for p in lake.iterdir()) == ["datasets", "short.txt"]
        assert (mnt / "short.txt").read_bytes() == b"s"
        assert os.statvfs(mnt).f_namemax == limit  # what pathconf(_PC_NAME_MAX) tells programs

        # A name of exactly the limit works end to end.
        name, other = "a" * limit, "b" * limit
        (mnt / name).write_bytes(b"longest name")
        assert (lake / name).read_bytes() == b"longest name"
        assert name in os.listdir(mnt) and (mnt / name).read_bytes() == b"longest name"
        (mnt / "d").mkdir()
        os.rename(mnt / name, mnt / "d" / other)
        assert (lake / "d" / other).read_bytes() == b"longest name" and not (lake / name).exists()
        (mnt / "d" / name).mkdir()
        assert (lake / "d" / name).is_dir()
        os.unlink(mnt / "d" / other)
        os.rmdir(mnt / "d" / name)
        assert not (lake / "d" / other).exists() and not (lake / "d" / name).exists()


def _deep_dirs(base: Path, left: int) -> Path:
    """Directories below ``base`` whose path leaves exactly ``left`` bytes of PATH_MAX (4096, with its NUL)."""
    path = base
    while (rest := 4095 - len(os.fsencode(str(path))) - left) > 0:
        path = path / ("c" * (250 if rest > 252 else rest - 1))
    return path


def test_a_path_past_path_max_is_refused_and_a_directory_rename_checks_every_key(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    deep = _deep_dirs(lake / "a", left=201)  # room in it for a name of 200 bytes, well below 255
    rel = deep.relative_to(lake)
    write_tree(lake, {str(rel / "f.bin"): b"deep"})
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    with mounted(f"file://{lake}", mnt, cache):
        fd = os.open(mnt / rel, os.O_RDONLY | os.O_DIRECTORY)  # names relative to it: the caller's path stays short
        try:
            _enametoolong(lambda: os.open("x" * 201, os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
            _enametoolong(lambda: os.mkdir("x" * 201, dir_fd=fd))
            _nothing_staged(cache)
            ok = os.open("y" * 200, os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd)  # a path of 4095 bytes
            os.write(ok, b"fits")
            os.close(ok)
        finally:
            os.close(fd)
        assert (deep / ("y" * 200)).read_bytes() == b"fits"
        # Renaming "a" to a longer name would push the keys below it past the limit: nothing moves.
        _enametoolong(lambda: os.rename(mnt / "a", mnt / ("a" * 200)))
        assert (deep / "f.bin").read_bytes() == b"deep" and not (lake / ("a" * 200)).exists()
        os.rename(mnt / "a", mnt / "b")  # the same length: every key still fits
        assert (lake / "b" / rel.relative_to("a") / "f.bin").read_bytes() == b"deep"


def test_a_leftover_the_lake_cannot_hold_does_not_stop_the_next_mount(lake: Path, tmp_path: Path) -> None:
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    with mounted(f"file://{lake}", mnt, cache):
        pass  # makes the cache and staging dirs as a mount does
    staging = cache / "staging"
    # What an older version could leave: records written as staging.py writes them
    # (ID.data + ID.json), with keys past the lake's limit, and one good one.
    left = [
        ("deep/" + "x" * 300, "pending", b"closed, never uploaded"),  # a name of 300 bytes: never uploadable
        ("logs/" + "y" * 200 + "/" + "z" * 200, "dirty", b"never closed"),  # fits the lake, not one file name
        ("ok/model.bin", "pending", b"uploaded now"),
    ]
    for key, state, data in left:
        sid = uuid.uuid4().hex
        (staging / f"{sid}.data").write_bytes(data)
        statefile.save(staging / f"{sid}.json", {"key": key, "state": state})
    with mounted(f"file://{lake}", mnt, cache) as m:
        assert "uploading 1 file(s) left staged by the previous run" in m.output, m.output
        assert "2 unclosed file(s)" in m.output, m.output
        wait_for(lambda: (lake / "ok/model.bin").exists(), 30, "the good leftover to be uploaded")
        assert (lake / "ok/model.bin").read_bytes() == b"uploaded now"
        wait_for(lambda: m.stats()["writes"]["pending_uploads"] == 0, 10, "nothing left to retry")
        kept = {p.read_bytes(): p.name for p in (staging / "unclosed").iterdir()}
        assert set(kept) == {b"closed, never uploaded", b"never closed"}
        assert all(len(os.fsencode(n)) <= os.statvfs(staging).f_namemax for n in kept.values())
        # (an uploaded file's staged bytes go once they are in the disk tier, a moment after the upload)
        wait_for(lambda: not list(staging.glob("*.json")) and not list(staging.glob("*.data")), 10,
                 "the uploaded leftover's staged files to be removed")
        assert not (lake / "deep").exists() and not (lake / "logs").exists()
        log = (cache / "tierfs.log").read_text()
        assert "deep/" + "x" * 300 in log and "the lake cannot hold its name" in log, log[-3000:]


@pytest.mark.servers
def test_s3_keys_longer_than_1024_bytes_are_refused_at_create(s3_server: SeaweedS3, tmp_path: Path) -> None:
    fs = s3_server.fs()
    if not fs.exists("names-lake"):
        fs.mkdir("names-lake")
    prefix = "p" * 100  # the lake's root prefix counts: its keys start with "ppp…/"
    fs.pipe(f"names-lake/{prefix}/readme.txt", b"a lake below a long prefix")
    cfg = s3_server.s3_config(tmp_path / "s3.toml")
    with mounted(f"s3://names-lake/{prefix}", tmp_path / "mnt", tmp_path / "cache", config=cfg) as m:
        mnt = m.mountpoint
        deep = mnt
        for i in range(4):
            deep = deep / (str(i) * 200)
            deep.mkdir()
        used = len(prefix) + 1 + 4 * 201  # bytes of the key before the file name
        _enametoolong(lambda: os.open(deep / ("f" * 200), os.O_CREAT | os.O_WRONLY, 0o644))
        _enametoolong(lambda: os.open(deep / ("f" * (1024 - used + 1)), os.O_CREAT | os.O_WRONLY, 0o644))
        _nothing_staged(tmp_path / "cache")
        assert os.statvfs(mnt).f_namemax == 1024 - len(prefix) - 1  # the longest name at the top
        name = "f" * (1024 - used)  # a key of exactly 1024 bytes
        (deep / name).write_bytes(b"fits")
        key = f"names-lake/{prefix}/{deep.relative_to(mnt)}/{name}"
        assert fs.cat(key) == b"fits"
        # Renaming the top directory to a longer name would make that key 1025 bytes: nothing moves.
        _enametoolong(lambda: os.rename(mnt / ("0" * 200), mnt / ("0" * 201)))
        assert fs.cat(key) == b"fits"
        assert m.stats()["writes"]["pending_uploads"] == 0
