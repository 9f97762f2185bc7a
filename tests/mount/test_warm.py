"""tierfs warm and the tierfs.torch helper, on real mounts (and a real PyTorch DataLoader)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from helpers import assert_one_line_error, mounted, random_bytes, run_tierfs, wait_for, write_tree

pytestmark = pytest.mark.mount


@pytest.fixture
def lake(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path / "lake"
    files = {f"ds/c{i % 4}/{i:03d}.jpg": random_bytes(20_000 + i, seed=i) for i in range(40)}
    write_tree(root, files)
    return root, files


def progress(mnt: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads(os.getxattr(mnt, "user.tierfs.warm"))
    return data


def test_warm_a_folder_then_read_it_from_the_tiers(lake: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    root, files = lake
    with mounted(f"file://{root}", tmp_path / "mnt", tmp_path / "c", "--ram-size", "0") as m:
        res = run_tierfs("warm", str(m.mountpoint / "ds"), "--jobs", "4", check=True)
        assert "warmed 40 files" in res.stdout
        total = sum(len(d) for d in files.values())
        assert m.backend_bytes() == total
        assert m.stats()["tiers"]["disk"]["entries"] == 40
        for rel, data in files.items():
            assert (m.mountpoint / rel).read_bytes() == data
        assert m.backend_bytes() == total  # every read was a disk hit
        assert m.stats()["tiers"]["disk"]["hits"] >= 40


def test_warm_list_keeps_a_bounded_lead(lake: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    root, files = lake
    order = sorted(files)[::-1]
    with mounted(f"file://{root}", tmp_path / "mnt", tmp_path / "c") as m:
        lst = tmp_path / "order.txt"
        lst.write_text("".join(str(m.mountpoint / p) + "\n" for p in order))
        run_tierfs("warm", "--list", str(lst), "--lead", "5", "--jobs", "2", "--no-wait", check=True)
        wait_for(lambda: int(str(progress(m.mountpoint)["done"])) >= 5, 30, "the job's first five files")
        time.sleep(0.5)  # time to run further, which it must not
        p = progress(m.mountpoint)
        assert p["total"] == 40 and p["done"] == 5  # ran ahead, but no further than the lead
        for i, rel in enumerate(order):
            assert (m.mountpoint / rel).read_bytes() == files[rel]
            if i == 19:
                wait_for(lambda: int(str(progress(m.mountpoint)["done"])) >= 20, 30, "the job following the readers")
                time.sleep(0.3)
                assert int(str(progress(m.mountpoint)["done"])) <= 25  # follows the readers, within the lead
        wait_for(lambda: progress(m.mountpoint)["state"] != "running", 60, "the warm job's end")
        assert progress(m.mountpoint)["state"] == "done", progress(m.mountpoint)


def test_bad_warm_requests(lake: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    root, _ = lake
    res = run_tierfs("warm", str(tmp_path))
    assert res.returncode == 1 and "not inside a tierfs mount" in res.stderr
    with mounted(f"file://{root}", tmp_path / "mnt", tmp_path / "c") as m:
        with pytest.raises(OSError):
            os.setxattr(m.mountpoint, "user.tierfs.warm", b"not json")
        with pytest.raises(OSError):
            os.setxattr(m.mountpoint / "ds", "user.other", b"x")


def test_dataloader_with_warm_sampler(lake: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")  # installed by the test extras (torch==2.13.0, CPU)
    from torch.utils.data import DataLoader, Dataset, RandomSampler

    from tierfs.torch import WarmSampler

    root, files = lake
    with mounted(f"file://{root}", tmp_path / "mnt", tmp_path / "c", "--ram-size", "0") as m:
        paths = sorted(str(m.mountpoint / p) for p in files)

        class Files(Dataset):  # type: ignore[type-arg]
            def __len__(self) -> int:
                return len(paths)

            def __getitem__(self, i: int) -> tuple[str, bytes]:
                return paths[i], Path(paths[i]).read_bytes()

        sampler = WarmSampler(RandomSampler(Files(), generator=torch.Generator().manual_seed(1)),
                              path_of=lambda i: paths[i], lead=8)
        loader = DataLoader(Files(), sampler=sampler, num_workers=2, batch_size=None)
        seen = {}
        for path, data in loader:
            seen[path] = data
        assert {os.path.relpath(p, m.mountpoint): d for p, d in seen.items()} == files
        p = progress(m.mountpoint)
        assert p["total"] == 40 and int(str(p["done"])) >= 32


def test_a_bad_warm_list_leaves_the_mount_serving(lake: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    """Lines that are not UTF-8, name a directory or nothing: `tierfs warm` refuses a list that is not
    UTF-8 in one line; the daemon, handed one all the same, counts each bad line as one failed file."""
    root, files = lake
    with mounted(f"file://{root}", tmp_path / "mnt", tmp_path / "c", "--ram-size", "0") as m:
        mnt = os.fsencode(m.mountpoint)
        lst = tmp_path / "bad.txt"
        lst.write_bytes(mnt + b"/ds/c0/000.jpg\n" + mnt + b"/ds/c1/\xff\xfe.jpg\n" + mnt + b"/ds/c2\n"
                        + mnt + b"/ds/nope.jpg\n" + mnt + b"/ds/c1/001.jpg\n")
        assert_one_line_error(run_tierfs("warm", "--list", str(lst), "--lead", "0"), "not UTF-8")
        ok = tmp_path / "ok.txt"
        ok.write_bytes(lst.read_bytes().replace(b"\xff\xfe", b"missing"))
        res = run_tierfs("warm", "--list", str(ok), "--lead", "0")
        assert res.returncode == 0, res.stderr
        assert "warmed 5 files" in res.stdout and "3 failed (first: " in res.stdout, res.stdout
        # Another client of the xattr hands the daemon the list that is not UTF-8:
        rel = tmp_path / "rel.txt"
        rel.write_bytes(lst.read_bytes().replace(mnt + b"/", b""))
        os.setxattr(m.mountpoint, "user.tierfs.warm", json.dumps({"list": str(rel), "jobs": 2}).encode())
        deadline = time.monotonic() + 10
        while progress(m.mountpoint)["state"] == "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        p = progress(m.mountpoint)
        assert (p["state"], p["done"], p["failed"]) == ("done", 5, 3), p
        m.fills_settled()
        assert m.stats()["tiers"]["disk"]["entries"] == 2
        for rel_path, data in files.items():
            assert (m.mountpoint / rel_path).read_bytes() == data
        assert "3 failed" in m.log_tail()


def test_a_warm_job_whose_list_copy_is_removed_leaves_the_mount_serving(lake: tuple[Path, dict[str, bytes]],
                                                                         tmp_path: Path) -> None:
    """The daemon's private copy of the list goes (a tmp cleaner, a full disk) while the job runs."""
    root, files = lake
    order = sorted(files)
    with mounted(f"file://{root}", tmp_path / "mnt", tmp_path / "c") as m:
        lst = tmp_path / "order.txt"
        lst.write_text("".join(str(m.mountpoint / p) + "\n" for p in order))
        run_tierfs("warm", "--list", str(lst), "--lead", "3", "--jobs", "2", "--no-wait", check=True)
        copies = list((tmp_path / "c").glob("warm-list*"))
        assert len(copies) == 1
        copies[0].unlink()
        for rel in order:  # the readers move on; the job follows, to its end
            assert (m.mountpoint / rel).read_bytes() == files[rel]
        wait_for(lambda: progress(m.mountpoint)["state"] != "running", 60, "the warm job's end")
        assert progress(m.mountpoint)["state"] == "done", progress(m.mountpoint)
        assert (m.mountpoint / order[0]).read_bytes() == files[order[0]]
        assert os.getxattr(m.mountpoint, "user.tierfs.pid")


def test_warm_and_log_level_work_on_a_read_only_mount(lake: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    """A training node's mount is often --read-only, which the kernel enforces (ro): it refuses every setxattr,
    so the control requests must reach the daemon another way."""
    root, files = lake
    with mounted(f"file://{root}", tmp_path / "mnt", tmp_path / "c", "--read-only", "--ram-size", "0") as m:
        res = run_tierfs("warm", str(m.mountpoint / "ds"), "--jobs", "4")
        assert res.returncode == 0, res.stderr
        assert "warmed 40 files" in res.stdout
        assert m.stats()["tiers"]["disk"]["entries"] == 40
        res = run_tierfs("log-level", str(m.mountpoint), "debug")
        assert res.returncode == 0, res.stderr
        assert "log level set to debug" in m.log_tail()
        for rel, data in files.items():
            assert (m.mountpoint / rel).read_bytes() == data


def test_control_requests_are_refused_to_other_users(lake: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    import sys

    from helpers import as_user, other_user, reachable_dir

    root, _ = lake
    with other_user() as user, reachable_dir() as place, \
            mounted(f"file://{root}", place / "mnt", tmp_path / "c", "--read-only", "--allow-other") as m:
        for argv in (("warm", str(m.mountpoint / "ds")), ("log-level", str(m.mountpoint), "debug")):
            res = as_user(user, sys.executable, "-P", "-m", "tierfs", *argv)
            assert res.returncode != 0
            assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
            assert "root" in res.stderr, res.stderr
        assert m.stats()["tiers"]["disk"]["entries"] == 0
        assert "log level set" not in m.log_tail()
