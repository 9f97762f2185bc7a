"""The writable live view through a real FUSE mount of a local lake."""

from __future__ import annotations

import errno
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from helpers import mounted, random_bytes, write_tree


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every file (bytes) and directory (None) below ``root``, by relative path; tierfs' own names left out."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel == ".":
            dirnames[:] = [d for d in dirnames if d not in (".tierfs", ".snapshots")]
        for d in dirnames:
            out[os.path.normpath(os.path.join(rel, d))] = None
        for f in filenames:
            out[os.path.normpath(os.path.join(rel, f))] = Path(dirpath, f).read_bytes()
    return out


def test_every_write_operation_lands_in_the_lake(lake: Path, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    with mounted(f"file://{lake}", mnt, tmp_path / "cache"):
        # create + write + close: in the lake when close returns
        (mnt / "models").mkdir()
        assert (lake / "models").is_dir()
        (mnt / "models/m.bin").write_bytes(b"x" * 5000)
        assert (lake / "models/m.bin").read_bytes() == b"x" * 5000
        # append, overwrite in the middle (read-modify-write of an existing object)
        with open(mnt / "datasets/toy/train/cat/0001.jpg", "ab") as fh:
            fh.write(b"APPENDED")
        assert (lake / "datasets/toy/train/cat/0001.jpg").read_bytes() == b"c" * 1000 + b"APPENDED"
        with open(mnt / "models/m.bin", "r+b") as fh:
            fh.seek(100)
            fh.write(b"MIDDLE")
            fh.flush()
            os.fsync(fh.fileno())
            assert (lake / "models/m.bin").read_bytes()[100:106] == b"MIDDLE"  # fsync: in the lake
        # truncate by name and through a handle
        os.truncate(mnt / "models/m.bin", 200)
        assert (lake / "models/m.bin").read_bytes() == b"x" * 100 + b"MIDDLE" + b"x" * 94
        with open(mnt / "models/m.bin", "r+b") as fh:
            fh.truncate(50)
        assert (lake / "models/m.bin").stat().st_size == 50
        os.truncate(mnt / "models/m.bin", 80)  # grow: zeros
        assert (mnt / "models/m.bin").read_bytes() == b"x" * 50 + b"\0" * 30
        # O_TRUNC of an existing object
        (mnt / "datasets/toy/train/dog/0001.jpg").write_bytes(b"new dog")
        assert (lake / "datasets/toy/train/dog/0001.jpg").read_bytes() == b"new dog"
        # rename a file, over an existing one, and a directory
        os.rename(mnt / "models/m.bin", mnt / "models/n.bin")
        assert not (lake / "models/m.bin").exists() and (lake / "models/n.bin").stat().st_size == 80
        (mnt / "models/o.bin").write_bytes(b"o")
        os.replace(mnt / "models/o.bin", mnt / "models/n.bin")
        assert (lake / "models/n.bin").read_bytes() == b"o"
        os.rename(mnt / "models", mnt / "models2")
        assert (lake / "models2/n.bin").read_bytes() == b"o" and not (lake / "models").exists()
        assert sorted(os.listdir(mnt / "models2")) == ["n.bin"]
        # mtime is kept by a local lake; chmod is accepted
        os.utime(mnt / "models2/n.bin", ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
        assert (lake / "models2/n.bin").stat().st_mtime_ns == 1_600_000_000_000_000_000
        assert (mnt / "models2/n.bin").stat().st_mtime_ns == 1_600_000_000_000_000_000
        os.chmod(mnt / "models2/n.bin", 0o600)
        # unlink, rmdir (and ENOTEMPTY first)
        with pytest.raises(OSError) as e:
            os.rmdir(mnt / "models2")
        assert e.value.errno == errno.ENOTEMPTY
        os.unlink(mnt / "models2/n.bin")
        os.rmdir(mnt / "models2")
        assert not (lake / "models2").exists()
        assert "models2" not in os.listdir(mnt)
        # errors a user can meet
        with pytest.raises(FileExistsError):
            (mnt / "datasets").mkdir()
        with pytest.raises(IsADirectoryError):
            os.unlink(mnt / "datasets")
        with pytest.raises(OSError) as e:
            os.symlink("x", mnt / "link")
        assert e.value.errno == errno.EPERM
        with pytest.raises(OSError) as e:
            (mnt / ".snapshots/x").mkdir()
        assert e.value.errno == errno.EROFS


def test_overwriting_the_start_of_an_object_keeps_the_rest(lake: Path, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    with mounted(f"file://{lake}", mnt, tmp_path / "cache") as m:
        with open(mnt / "datasets/toy/train/dog/0001.jpg", "r+b") as fh:
            fh.write(b"HEADER")
        assert (lake / "datasets/toy/train/dog/0001.jpg").read_bytes() == b"HEADER" + b"d" * 1994
        with open(mnt / "datasets/toy/train/cat/0001.jpg", "r+b") as fh:
            fh.write(b"C" * 1500)  # longer than the object: nothing of it is left
        assert (lake / "datasets/toy/train/cat/0001.jpg").read_bytes() == b"C" * 1500
        assert m.stats()["writes"]["uploads"] == 2


def test_a_file_just_written_reads_from_the_cache(lake: Path, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    data = random_bytes(3 * 1024 * 1024 + 17, 1)
    with mounted(f"file://{lake}", mnt, tmp_path / "cache") as m:
        (mnt / "ckpt.bin").write_bytes(data)
        deadline = time.monotonic() + 30
        while m.stats()["writes"]["staged_files"] and time.monotonic() < deadline:
            time.sleep(0.05)  # the close has returned; its blocks go into the tiers behind it
        tiers = m.stats()["tiers"]
        assert (tiers["disk"]["entries"], tiers["ram"]["entries"]) == (1, 0)  # the disk tier only, not RAM
        before = m.backend_bytes()
        with open(mnt / "ckpt.bin", "rb") as fh:
            assert fh.read() == data
        assert m.backend_bytes() == before  # served by the tiers, under the new ref
        assert m.stats()["tiers"]["disk"]["hits"] >= 1
        assert m.stats()["writes"]["uploads"] >= 1


def test_a_file_is_visible_here_before_close_and_in_the_lake_only_after(lake: Path, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    with mounted(f"file://{lake}", mnt, tmp_path / "cache"):
        fh = open(mnt / "log.txt", "wb")  # noqa: SIM115 - kept open on purpose
        try:
            fh.write(b"line 1\n")
            fh.flush()
            assert (mnt / "log.txt").read_bytes() == b"line 1\n"  # this mount sees its staged bytes
            assert not (lake / "log.txt").exists()  # other readers see nothing before close
            assert "log.txt" in os.listdir(mnt)
        finally:
            fh.close()
        assert (lake / "log.txt").read_bytes() == b"line 1\n"


def test_a_full_staging_disk_is_enospc_and_changes_nothing(lake: Path, tmp_path: Path) -> None:
    import subprocess

    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], check=True)
    try:
        mnt = tmp_path / "mnt"
        with mounted(f"file://{lake}", mnt, small / "cache", "--cache-size", "0",
                     "--log-file", str(tmp_path / "tierfs.log")):
            for name in ("big.bin", "datasets/toy/train/dog/0001.jpg"):  # a new file, an overwrite
                with pytest.raises(OSError) as e, open(mnt / name, "wb") as fh:
                    for _ in range(8):
                        fh.write(b"x" * (1 << 20))
                        fh.flush()
                assert e.value.errno == errno.ENOSPC
            time.sleep(0.3)  # release is asynchronous
            assert "the staging disk is full" in (tmp_path / "tierfs.log").read_text()
            assert not (lake / "big.bin").exists()  # an incomplete file is never uploaded...
            assert (lake / "datasets/toy/train/dog/0001.jpg").read_bytes() == b"d" * 2000  # ...nor replaces one
            assert (mnt / "datasets/toy/train/dog/0001.jpg").read_bytes() == b"d" * 2000
            assert not (mnt / "big.bin").exists()
            assert (mnt / "datasets/toy/train/cat/0001.jpg").read_bytes() == b"c" * 1000  # reads go on
            (mnt / "small.txt").write_bytes(b"fits")  # and so do writes that fit
            assert (lake / "small.txt").read_bytes() == b"fits"
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_read_only_mount_refuses_writes(lake: Path, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    with mounted(f"file://{lake}", mnt, tmp_path / "cache", "--read-only"):
        for act in (lambda: (mnt / "x").write_bytes(b"x"), lambda: (mnt / "d").mkdir(),
                    lambda: os.unlink(mnt / "datasets/toy/empty.bin")):
            with pytest.raises(OSError) as e:
                act()
            assert e.value.errno == errno.EROFS


def test_torch_checkpoint_saves_and_loads_through_the_mount(lake: Path, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    mnt = tmp_path / "mnt"
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10))
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 256)).sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3}
    with mounted(f"file://{lake}", mnt, tmp_path / "cache"):
        (mnt / "checkpoints").mkdir()
        torch.save(state, mnt / "checkpoints/epoch3.pt")
        loaded = torch.load(mnt / "checkpoints/epoch3.pt", weights_only=True)
        from_lake = torch.load(lake / "checkpoints/epoch3.pt", weights_only=True)
    for got in (loaded, from_lake):
        assert got["epoch"] == 3
        for name, tensor in state["model"].items():
            assert torch.equal(got["model"][name], tensor)
        assert got["optimizer"]["state"][0]["exp_avg"].shape == state["optimizer"]["state"][0]["exp_avg"].shape


def _random_ops(root: Path, rng: random.Random, steps: int) -> None:
    """A random mix of creates, writes, appends, truncates, renames and deletes under ``root``."""
    dirs = ["", "a", "a/b", "c"]
    for d in dirs[1:]:
        (root / d).mkdir(exist_ok=True)
    for _ in range(steps):
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
                       and ".tierfs" not in p.parts and ".snapshots" not in p.parts)
        op = rng.choice(["create", "create", "write", "append", "truncate", "rename", "unlink", "rename_dir"])
        if op == "create" or not files:
            name = f"{rng.choice(dirs)}/f{rng.randrange(30)}".lstrip("/")
            (root / name).write_bytes(rng.randbytes(rng.randrange(0, 200_000)))
        elif op == "write":
            name = rng.choice(files)
            with open(root / name, "r+b") as fh:
                fh.seek(rng.choice([0, rng.randrange(0, 250_000)]))  # the start too: a partial overwrite
                fh.write(rng.randbytes(rng.randrange(1, 70_000)))
        elif op == "append":
            with open(root / rng.choice(files), "ab") as fh:
                fh.write(rng.randbytes(rng.randrange(1, 10_000)))
        elif op == "truncate":
            os.truncate(root / rng.choice(files), rng.randrange(0, 300_000))
        elif op == "rename":
            src = rng.choice(files)
            dst = f"{rng.choice(dirs)}/g{rng.randrange(30)}".lstrip("/")
            if not (root / dst).is_dir():
                os.replace(root / src, root / dst)
        elif op == "unlink":
            os.unlink(root / rng.choice(files))
        elif op == "rename_dir":
            # c <-> d: a directory rename (a copy of many objects on object stores)
            src, dst = ("c", "d") if (root / "c").exists() else ("d", "c")
            os.rename(root / src, root / dst)
            dirs[3] = dst


def test_random_operations_match_a_local_directory(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    plain = tmp_path / "plain"
    write_tree(lake, {"a/seed.bin": b"seed" * 1000})
    write_tree(plain, {"a/seed.bin": b"seed" * 1000})
    mnt = tmp_path / "mnt"
    with mounted(f"file://{lake}", mnt, tmp_path / "cache", "--block-size", "64KiB"):
        _random_ops(mnt, random.Random(7), 150)
        _random_ops(plain, random.Random(7), 150)
        assert _tree(mnt) == _tree(plain)
    assert _tree(lake) == _tree(plain)  # and the lake holds exactly that after unmount
    shutil.rmtree(plain)


def test_deletes_can_be_forbidden_and_prefixes_made_read_only(lake: Path, tmp_path: Path) -> None:
    """`rm -rf` on one node must not be able to wipe the lake: --no-delete and --read-only-prefix."""
    mnt = tmp_path / "mnt"
    with mounted(f"file://{lake}", mnt, tmp_path / "cache", "--no-delete", "--read-only-prefix", "datasets/"):
        res = subprocess.run(["rm", "-rf", str(mnt / "datasets")], capture_output=True, text=True)
        assert res.returncode != 0
        assert (lake / "datasets/toy/train/cat/0001.jpg").read_bytes() == b"c" * 1000
        for call in (lambda: (mnt / "datasets/new.txt").write_bytes(b"x"),
                     lambda: os.rename(mnt / "datasets", mnt / "elsewhere"),
                     lambda: open(mnt / "datasets/toy/empty.bin", "ab").close()):
            with pytest.raises(OSError) as e:
                call()
            assert e.value.errno == errno.EROFS
        (mnt / "runs").mkdir()
        (mnt / "runs/a.txt").write_bytes(b"a")  # outside the prefix: writable
        os.rename(mnt / "runs/a.txt", mnt / "runs/b.txt")  # a move deletes nothing
        (mnt / "runs/c.txt").write_bytes(b"c")
        for call in (lambda: os.unlink(mnt / "runs/b.txt"), lambda: os.replace(mnt / "runs/c.txt", mnt / "runs/b.txt")):
            with pytest.raises(OSError) as e:
                call()
            assert e.value.errno == errno.EPERM
        assert (lake / "runs/b.txt").read_bytes() == b"a" and (lake / "runs/c.txt").read_bytes() == b"c"


def test_a_file_in_a_renamed_directory_can_be_appended_to_at_once(tmp_path: Path) -> None:
    """A directory rename moves its nodes; what they knew of their objects (the old keys) must not be used after."""
    lake = tmp_path / "lake"
    write_tree(lake, {"a/seed.bin": b"seed" * 1000})
    with mounted(f"file://{lake}", tmp_path / "mnt", tmp_path / "cache") as m:
        root = m.mountpoint
        (root / "c").mkdir()
        os.replace(root / "a/seed.bin", root / "c/g20")
        assert sorted(os.listdir(root / "c")) == ["g20"] and (root / "c/g20").is_file()
        os.rename(root / "c", root / "d")
        assert sorted(os.listdir(root / "d")) == ["g20"]  # (the kernel may list it from its own cache)
        assert (root / "d/g20").is_file()
        with open(root / "d/g20", "ab") as fh:
            fh.write(b"more")
        assert (lake / "d/g20").read_bytes() == b"seed" * 1000 + b"more"
