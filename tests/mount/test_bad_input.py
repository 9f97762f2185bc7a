"""Bad input at mount time: one line on stderr, exit code 1, no traceback, nothing mounted."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import RedisServer, assert_one_line_error, force_cleanup, is_mounted, mounted, run_tierfs

pytestmark = pytest.mark.mount


def mount(lake: str, mnt: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    was_mounted = is_mounted(mnt)
    res = run_tierfs("mount", lake, str(mnt), "--cache-dir", str(cache), *extra)
    if is_mounted(mnt) and not was_mounted:  # a failed test must not leave a mount behind
        force_cleanup(mnt, None)
    return res


def test_mountpoint_missing(lake: Path, tmp_path: Path) -> None:
    res = mount(f"file://{lake}", tmp_path / "nope", tmp_path / "cache")
    assert_one_line_error(res, "does not exist", "mkdir -p")


def test_mountpoint_not_empty(lake: Path, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    (mnt / "precious.txt").write_text("keep me")
    res = mount(f"file://{lake}", mnt, tmp_path / "cache")
    assert_one_line_error(res, "is not empty")
    assert (mnt / "precious.txt").read_text() == "keep me"


def test_mountpoint_is_a_file(lake: Path, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    assert_one_line_error(mount(f"file://{lake}", tmp_path / "f", tmp_path / "cache"), "is not a directory")


def test_already_mounted(lake: Path, tmp_path: Path) -> None:
    with mounted(f"file://{lake}", tmp_path / "mnt", tmp_path / "cache") as m:
        res = mount(f"file://{lake}", m.mountpoint, tmp_path / "cache2")
        assert_one_line_error(res, "already a mount point")
        # the first mount is untouched
        assert (m.mountpoint / "datasets/toy/train/cat/0001.jpg").read_bytes() == b"c" * 1000


def test_cache_dir_in_use(lake: Path, tmp_path: Path) -> None:
    with mounted(f"file://{lake}", tmp_path / "mnt", tmp_path / "cache"):
        (tmp_path / "mnt2").mkdir()
        res = mount(f"file://{lake}", tmp_path / "mnt2", tmp_path / "cache")
        assert_one_line_error(res, "in use by another tierfs process")


def test_cache_dir_not_writable(lake: Path, tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    (tmp_path / "blocker").write_text("a file where a folder should be")
    res = mount(f"file://{lake}", tmp_path / "mnt", tmp_path / "blocker" / "cache", "--log-file", str(tmp_path / "log"))
    assert_one_line_error(res, "cache dir", "not usable")


@pytest.mark.parametrize("kind", ["a file", "below a file"])
def test_cache_dir_that_cannot_be_a_directory(kind: str, lake: Path, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("keep")
    cache = tmp_path / "f" if kind == "a file" else tmp_path / "f/sub"
    (tmp_path / "mnt").mkdir()
    for extra in ((), ("--foreground",)):
        res = mount(f"file://{lake}", tmp_path / "mnt", cache, *extra)
        assert_one_line_error(res, "cache dir", "--cache-dir")
    assert (tmp_path / "f").read_text() == "keep"


def test_lake_path_does_not_exist(tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    res = mount(f"file://{tmp_path}/no-such-lake", tmp_path / "mnt", tmp_path / "cache")
    assert_one_line_error(res, "does not exist")


@pytest.mark.parametrize(("url", "needle"), [
    ("bogus://x/y", "Protocol not known: bogus"),
    ("az://container/prefix", "no usable credentials for az://container/prefix: set connection_string"),
    ("az://ml/prefix", "'ml' is not an Azure container name (3 to 63 lowercase"),
])
def test_unusable_url(url: str, needle: str, tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    assert_one_line_error(mount(url, tmp_path / "mnt", tmp_path / "cache"), needle)


def test_malformed_config(lake: Path, tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[cache]\nsize = \n")
    assert_one_line_error(mount(f"file://{lake}", tmp_path / "mnt", tmp_path / "cache", "--config", str(cfg)),
                          "not valid TOML")
    cfg.write_text('[cache]\nsize = "huge"\n')
    assert_one_line_error(mount(f"file://{lake}", tmp_path / "mnt", tmp_path / "cache", "--config", str(cfg)),
                          "[cache] size = 'huge' is not allowed")


def test_bad_flag_value(lake: Path, tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    assert_one_line_error(mount(f"file://{lake}", tmp_path / "mnt", tmp_path / "cache", "--block-size", "big"),
                          "block_size = 'big' is not allowed")


def test_no_fuse_on_the_machine(lake: Path, tmp_path: Path) -> None:
    """In a mount namespace whose /dev has no fuse device (a real absence, not a stub)."""
    if shutil.which("unshare") is None:
        pytest.skip("util-linux unshare is not installed")
    (tmp_path / "mnt").mkdir()
    script = (
        "mount -t tmpfs none /dev && "
        f"exec {sys.executable} -m tierfs mount file://{lake} {tmp_path / 'mnt'} "
        f"--cache-dir {tmp_path / 'cache'} --foreground"
    )
    res = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                         capture_output=True, text=True, timeout=60)
    assert_one_line_error(res, "no FUSE", "/dev/fuse is missing")


def test_umount_of_something_not_mounted(tmp_path: Path) -> None:
    assert_one_line_error(run_tierfs("umount", str(tmp_path)), "is not mounted")


def test_stats_of_something_not_a_mount(tmp_path: Path) -> None:
    assert_one_line_error(run_tierfs("stats", str(tmp_path)), "not a tierfs mount")


def test_help_and_version() -> None:
    res = run_tierfs("--help", check=True)
    assert "mount" in res.stdout and "umount" in res.stdout and "stats" in res.stdout
    res = run_tierfs("mount", "--help", check=True)
    for flag in ("--config", "--cache-dir", "--cache-size", "--ram-size", "--block-size", "--metadata-ttl", "--foreground",
                 "--endpoint", "--region", "--profile", "--redis", "--read-only", "--nonempty", "--allow-other",
                 "--allow-root", "--uid", "--gid", "--umask", "--file-mode", "--dir-mode"):
        assert flag in res.stdout
    # Every flag that has a TOML twin names it, so a user can move a working command line into a config.
    help_text = " ".join(res.stdout.split())
    for flag, key in (("--endpoint", "[s3] endpoint_url"), ("--region", "[s3] region"), ("--profile", "[s3] profile"),
                      ("--cache-dir", "[cache] dir"), ("--cache-size", "[cache] size"), ("--redis", "[redis] url"),
                      ("--metadata-ttl", "[metadata] ttl"), ("--read-only", "[mount] read_only"),
                      ("--nonempty", "[fuse] nonempty"), ("--allow-other", "[fuse] allow_other"),
                      ("--allow-root", "[fuse] allow_root"), ("--uid", "[fuse] uid"), ("--gid", "[fuse] gid"),
                      ("--umask", "[fuse] umask"), ("--file-mode", "[fuse] file_mode"),
                      ("--dir-mode", "[fuse] dir_mode"),
                      ("--log-level", "[log] level"), ("--metrics", "[metrics] listen")):
        assert f"config: {key}]" in help_text, f"{flag} does not name {key}"
    assert run_tierfs("--version", check=True).stdout.startswith("tierfs, version ")


def test_a_config_holding_a_secret_must_be_private(lake: Path, tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    cfg = tmp_path / "train.toml"
    cfg.write_text('[s3]\nkey = "AKIA"\nsecret = "s3-secret-value"\n')
    cfg.chmod(0o644)
    res = mount(f"file://{lake}", tmp_path / "mnt", tmp_path / "cache", "--config", str(cfg))
    assert_one_line_error(res, "can be read by every user", "chmod 600", "--allow-readable-secrets")
    assert "s3-secret-value" not in res.stderr
    with mounted(f"file://{lake}", tmp_path / "mnt", tmp_path / "cache", "--allow-readable-secrets", config=cfg) as m:
        assert "chmod 600" in m.output
    cfg.chmod(0o640)
    with mounted(f"file://{lake}", tmp_path / "mnt", tmp_path / "cache", config=cfg) as m:
        assert "its group" in m.output
    cfg.chmod(0o600)
    with mounted(f"file://{lake}", tmp_path / "mnt", tmp_path / "cache", config=cfg) as m:
        assert "chmod" not in m.output


def test_a_secret_file_must_be_private(lake: Path, tmp_path: Path, redis_server: RedisServer) -> None:
    """The files [redis] secret_file and [cache] encryption_key_file name are refused readable by others, as a
    config holding a secret is (--allow-readable-secrets overrides, with a note); they were never checked."""
    (tmp_path / "mnt").mkdir()
    secret = tmp_path / "redis.secret"
    secret.write_text("shared-mac-secret-0123456789")
    key = tmp_path / "cache.key"
    key.write_text("k" * 32)
    for name, path, body in (("[redis] secret_file", secret, f'[redis]\nurl = "{redis_server.url}"\nsecret_file = "{secret}"\n'),
                             ("[cache] encryption_key_file", key, f'[cache]\nencryption_key_file = "{key}"\n')):
        cfg = tmp_path / "train.toml"
        cfg.write_text(body)
        for mode, who in ((0o640, "its group"), (0o604, "every user")):
            path.chmod(mode)
            res = mount(f"file://{lake}", tmp_path / "mnt", tmp_path / "cache", "--config", str(cfg))
            assert_one_line_error(res, name, str(path), who, "chmod 600", "--allow-readable-secrets")
            assert path.read_text() not in res.stderr
        with mounted(f"file://{lake}", tmp_path / "mnt", tmp_path / "cache", "--allow-readable-secrets",
                     config=cfg) as m:
            assert f"chmod 600 {path}" in m.output
        path.chmod(0o600)
        with mounted(f"file://{lake}", tmp_path / "mnt", tmp_path / "cache", config=cfg) as m:
            assert "chmod" not in m.output


def test_credentials_in_the_lake_url_are_refused_unshown(tmp_path: Path) -> None:
    """s3://KEY:SECRET@bucket would sit in argv, logs and every message that names the lake: refused, in one
    line that says where credentials go, without the secret."""
    (tmp_path / "mnt").mkdir()
    for url in ("s3://AKIDEXAMPLE:lake-url-secret-31f@ml-lake/prefix", "gs://lake-url-secret-31f@bucket",
                "az://acct:lake-url-secret-31f@container/x"):
        for argv in (("mount", url, str(tmp_path / "mnt"), "--cache-dir", str(tmp_path / "cache")),
                     ("snapshot", "list", url)):
            res = run_tierfs(*argv)
            assert_one_line_error(res, "credentials", "config file")
            assert "lake-url-secret-31f" not in res.stderr + res.stdout, argv
        cfg = tmp_path / "lake.toml"
        cfg.write_text(f'[lake]\nurl = "{url}"\n')
        cfg.chmod(0o600)
        res = run_tierfs("mount", str(tmp_path / "mnt"), "--config", str(cfg))
        assert_one_line_error(res, "credentials", "config file")
        assert "lake-url-secret-31f" not in res.stderr + res.stdout
    assert not any((tmp_path / "mnt").iterdir()) and not (tmp_path / "cache").exists()


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every entry under ``root`` (and root itself, as ''): its mode and size, to see that nothing changed."""
    out = {"": (root.lstat().st_mode, 0)}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_mode, st.st_size if p.is_file() else 0)
    return out


def test_a_cache_dir_that_is_not_a_cache_is_refused_untouched(lake: Path, tmp_path: Path) -> None:
    """`--cache-dir /srv/data` once removed /srv/data/tmp: a non-empty dir without our marker is refused.

    Before anything is done to it: it was once chmodded 0700 and given a lock and the daemon's log before the
    refusal said nothing was touched; and with no disk tier (--cache-size 0) it was taken, staging/ and the
    log put in it, left 0755."""
    (tmp_path / "mnt").mkdir()
    data = tmp_path / "srv-data"
    (data / "tmp").mkdir(parents=True)
    (data / "tmp" / "run.log").write_text("mine")
    (data / "index").mkdir()
    data.chmod(0o755)
    before = tree(data)
    for extra in ((), ("--cache-size", "0"), ("--cache-size", "0", "--read-only")):
        res = mount(f"file://{lake}", tmp_path / "mnt", data, *extra)
        assert_one_line_error(res, "is not a tierfs cache", "nothing in it was touched")
        assert tree(data) == before, extra
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert_one_line_error(mount(f"file://{lake}", tmp_path / "mnt", tmp_path / "link"), "is a symlink")


def test_a_staging_dir_is_ours_by_what_it_holds_not_by_its_name(lake: Path, tmp_path: Path) -> None:
    """A foreign dir with staging/*.data and *.json was taken for a staging-only cache, and those files deleted."""
    (tmp_path / "mnt").mkdir()
    data = tmp_path / "srv-data"
    (data / "staging").mkdir(parents=True)
    (data / "staging" / "run.data").write_bytes(b"")  # (empty: what leftovers() removes outright)
    (data / "staging" / "run.json").write_text('{"key": "x", "state": "clean"}')
    (data / "staging" / "notes.txt").write_text("mine")
    before = tree(data)
    for extra in ((), ("--cache-size", "0")):
        res = mount(f"file://{lake}", tmp_path / "mnt", data, *extra)
        assert_one_line_error(res, "is not a tierfs cache", "staging")
        assert tree(data) == before, extra
    # One of ours (its lock holds the pid of the mount that used it) is taken, as before.
    ours = tmp_path / "ours"
    with mounted(f"file://{lake}", tmp_path / "mnt", ours, "--cache-size", "0") as m:
        (m.mountpoint / "new.txt").write_text("x")
    assert (ours / "staging" / "lock").read_text().strip().isdigit()
    with mounted(f"file://{lake}", tmp_path / "mnt", ours, "--cache-size", "0") as m:
        assert (m.mountpoint / "new.txt").read_text() == "x"
