from __future__ import annotations

from pathlib import Path

import pytest

from tierfs.config import format_size, load, parse_size
from tierfs.errors import ConfigError


@pytest.mark.parametrize(("text", "n"), [("4MiB", 4 << 20), ("10GiB", 10 << 30), ("1k", 1000), ("512", 512), (7, 7), ("1.5 MiB", 1572864)])
def test_parse_size(text: object, n: int) -> None:
    assert parse_size(text) == n


@pytest.mark.parametrize("bad", ["ten", "4XB", "-1", True, ""])
def test_parse_size_refuses(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)


def test_format_size() -> None:
    assert format_size(0) == "0 B"
    assert format_size(4 << 20) == "4.0 MiB"


def test_defaults() -> None:
    s = load(None, {"lake_url": "memory://"})
    assert s.block_size == 4 << 20 and s.metadata_ttl == 60 and s.cache_size == 10 << 30


def test_toml_and_flags_override(tmp_path: Path) -> None:
    cfg = tmp_path / "t.toml"
    cfg.write_text('[cache]\nsize = "2GiB"\nblock_size = "1MiB"\n[metadata]\nttl = 5\n[s3]\nendpoint_url = "http://x"\n')
    s = load(cfg, {"block_size": "2MiB"})
    assert s.cache_size == 2 << 30 and s.block_size == 2 << 20 and s.metadata_ttl == 5
    assert s.s3_endpoint_url == "http://x"


@pytest.mark.parametrize(("text", "message"), [
    ('[cache]\nsize = "lots"\n', r"\[cache\] size = 'lots' is not allowed; expected a size"),
    ('[cache]\nsise = "1GiB"\n', r"unknown key \[cache\] sise; keys of \[cache\]: dir, size"),
    ('[cahce]\nsize = "1GiB"\n', r"unknown section \[cahce\]"),
    ("[metadata]\nttl = -3\n", r"\[metadata\] ttl = -3 is not allowed; expected a number of seconds"),
    ("[cache\n", r"is not valid TOML"),
    ('[cache]\nlow_watermark = 0.9\nhigh_watermark = 0.8\n', r"low_watermark = 0.9 must be below"),
    ('[cache]\nblock_size = "1KiB"\n', r"block_size = 1024: must be between 4KiB and 256MiB"),
    ('[fuse]\nallow_other = "perhaps"\n', r"expected true or false"),
])
def test_bad_values_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load(cfg)


def test_bad_flag_value() -> None:
    with pytest.raises(ConfigError, match=r"command line: \[cache\] ram_size = '12 apples'"):
        load(None, {"ram_size": "12 apples"})


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.toml")


def test_default_cache_dir_is_per_lake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    a = load(None, {"lake_url": "s3://a"}).resolved_cache_dir()
    b = load(None, {"lake_url": "s3://b"}).resolved_cache_dir()
    assert a != b and a.parent == tmp_path / "tierfs"


@pytest.mark.parametrize(("given", "modes"), [
    ({}, (0o644, 0o755)),  # today's modes: 0666 and 0777 less the default umask 022
    ({"umask": "027"}, (0o640, 0o750)),  # rclone: 0666 and 0777 less the umask
    ({"umask": "002"}, (0o664, 0o775)),
    ({"umask": "0"}, (0o666, 0o777)),
    ({"file_mode": "0666"}, (0o666, 0o755)),  # gcsfuse: the mode as given (the default umask is not taken off)
    ({"file_mode": "0640", "dir_mode": "0o750"}, (0o640, 0o750)),
    ({"file_mode": "666", "umask": "022"}, (0o644, 0o755)),  # both: the umask is taken off the mode too
    ({"dir_mode": "1777", "umask": "077"}, (0o600, 0o1700)),
])
def test_modes_from_umask_and_modes(given: dict[str, str], modes: tuple[int, int]) -> None:
    assert load(None, given).modes() == modes


def test_owners_by_name_or_number(tmp_path: Path) -> None:
    s = load(None)
    assert (s.uid, s.gid, s.umask, s.file_mode, s.dir_mode, s.allow_root) == (None, None, None, None, None, False)
    s = load(None, {"uid": "root", "gid": "root"})
    assert (s.uid, s.gid) == (0, 0)
    s = load(None, {"uid": "1234", "gid": "4294967294"})
    assert (s.uid, s.gid) == (1234, 4294967294)
    cfg = tmp_path / "t.toml"
    cfg.write_text('[fuse]\nuid = 1000\ngid = "root"\nfile_mode = "0640"\ndir_mode = "0o750"\numask = "027"\n'
                   "allow_root = true\n")
    s = load(cfg)
    assert (s.uid, s.gid, s.file_mode, s.dir_mode, s.umask, s.allow_root) == (1000, 0, 0o640, 0o750, 0o27, True)


@pytest.mark.parametrize(("attr", "raw", "message"), [
    ("uid", "tierfs-no-such-user", r"\[fuse\] uid = 'tierfs-no-such-user' is not allowed; expected a user name "
                                   r"this host knows .*; this host has no user 'tierfs-no-such-user'"),
    ("gid", "tierfs-no-such-group", r"this host has no group 'tierfs-no-such-group'"),
    ("uid", "-1", r"a number from 0 to 4294967294"),
    ("uid", "4294967295", r"a number from 0 to 4294967294"),  # (uid_t -1: chown's "no change")
    ("uid", "", r"a user name"),
    ("uid", "ro\0ot", r"this host has no user"),
    ("gid", True, r"a group name"),
    ("uid", 1.5, r"a user name"),
    ("file_mode", "0988", r"expected an octal number as a quoted string, such as \"0640\", at most 7777"),
    ("file_mode", "10000", r"at most 7777"),
    ("dir_mode", "", r"octal number"),
    ("dir_mode", " 0755", r"octal number"),
    ("dir_mode", "0x1ed", r"octal number"),
    ("dir_mode", "\u0667\u0665\u0665", r"octal number"),  # Arabic-Indic 755: digits int() reads, not octal ones
    ("umask", "1000", r"such as \"027\", at most 777"),
    ("umask", "-022", r"octal number"),
    ("file_mode", 0o640, r"\[fuse\] file_mode = 416 is not allowed; expected an octal number as a quoted string"),
])
def test_bad_owners_and_modes(attr: str, raw: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(None, {attr: raw})


def test_a_bare_toml_number_is_no_mode(tmp_path: Path) -> None:
    """TOML reads `file_mode = 640` as the decimal 640 (0o1200): refused, with how to write it."""
    cfg = tmp_path / "t.toml"
    cfg.write_text("[fuse]\nfile_mode = 640\n")
    with pytest.raises(ConfigError, match=r"\[fuse\] file_mode = 640 is not allowed; expected an octal number as a "
                                          r"quoted string, such as \"0640\""):
        load(cfg)


def test_allow_other_and_allow_root_together_are_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "t.toml"
    cfg.write_text("[fuse]\nallow_other = true\n")
    with pytest.raises(ConfigError, match=r"allow_other and allow_root .* cannot both be on: FUSE refuses the pair"):
        load(cfg, {"allow_root": True})


def test_mount_options_for_owners_and_modes() -> None:
    from tierfs.cli import mount_options

    opts = mount_options.parse(("rw,uid=1000,gid=staff,umask=027,file_mode=0640,dir-mode=0750,allow_root",))
    assert opts.overrides == {"read_only": False, "uid": "1000", "gid": "staff", "umask": "027",
                              "file_mode": "0640", "dir_mode": "0750", "allow_root": True}


def test_immutable_prefixes_from_the_config_flags_and_mount_options(tmp_path: Path) -> None:
    from tierfs.cli import mount_options

    cfg = tmp_path / "t.toml"
    cfg.write_text('[metadata]\nimmutable_prefixes = ["datasets/imagenet/", "/datasets/coco", "/"]\n')
    assert load(cfg).immutable_prefixes == ("datasets/imagenet", "datasets/coco")
    cfg.write_text("[metadata]\nimmutable_prefixes = 3\n")
    with pytest.raises(ConfigError, match=r"\[metadata\] immutable_prefixes = 3 is not allowed; expected a list of "
                                          r"lake prefixes"):
        load(cfg)
    opts = mount_options.parse(("immutable_prefixes=datasets/a:datasets/b/,read_only_prefixes=raw",))
    s = load(None, opts.overrides)
    assert (s.immutable_prefixes, s.read_only_prefixes) == (("datasets/a", "datasets/b"), ("raw",))


def test_log_rotation_settings(tmp_path: Path) -> None:
    s = load(None)
    assert (s.log_max_size, s.log_backups) == (64 << 20, 5)
    cfg = tmp_path / "t.toml"
    cfg.write_text('[log]\nmax_size = "64KiB"\nbackups = 2\n')
    assert (load(cfg).log_max_size, load(cfg).log_backups) == (64 << 10, 2)
    for text, message in (('max_size = "1KiB"', r"\[log\] max_size = 1024 bytes: give 0 \(never rotate\) or at "
                                                 r"least 4KiB"),
                          ("backups = 0", r"\[log\] backups = 0 is not allowed; expected a whole number of 1")):
        cfg.write_text(f"[log]\n{text}\n")
        with pytest.raises(ConfigError, match=message):
            load(cfg)
    cfg.write_text("[log]\nmax_size = 0\n")
    assert load(cfg).log_max_size == 0


def test_the_kernels_background_slots(tmp_path: Path) -> None:
    assert load(None).fuse_max_background == 256
    cfg = tmp_path / "t.toml"
    cfg.write_text("[fuse]\nmax_background = 1024\n")
    assert load(cfg).fuse_max_background == 1024
    for value, message in (("0", "expected a whole number of 1 or more"),
                           ("70000", "expected a whole number from 1 to 65535")):
        cfg.write_text(f"[fuse]\nmax_background = {value}\n")
        with pytest.raises(ConfigError, match=rf"\[fuse\] max_background = {value} is not allowed; {message}"):
            load(cfg)


@pytest.mark.parametrize(("text", "shown"), [
    ("[redis]\npassword = ['pw-1f2e']\n", r"\[redis\] password = <hidden> is not allowed"),
    ("[redis]\nsecret = ['pw-1f2e']\n", r"\[redis\] secret = <hidden> is not allowed"),
    ("[s3]\nsecret = ['pw-1f2e']\n", r"\[s3\] secret = <hidden> is not allowed"),
    ("[store]\noptions = 'account_key=pw-1f2e'\n", r"\[store\] options = <hidden> is not allowed"),
    ("[redis]\nurl = ['redis://:pw-1f2e@host:6379/0']\n", r"\[redis\] url = <hidden> is not allowed"),
    ("[lake]\nurl = 's3://AKID:pw-1f2e@bucket/x'\n", r"\[lake\] url = 's3://<hidden>@bucket/x' is not allowed; "
                                                     r"expected a lake URL without credentials"),
])
def test_a_secret_is_never_echoed_by_a_config_error(tmp_path: Path, text: str, shown: str) -> None:
    """A config error used to echo the value (`[redis] password = ['…'] is not allowed`): a secret's is hidden."""
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=shown) as e:
        load(cfg)
    assert "pw-1f2e" not in str(e.value)


@pytest.mark.parametrize("url", ["s3://AKID:pw-1f2e@bucket", "gs://pw-1f2e@bucket/p", "s3a://pw-1f2e@bucket",
                                 "az://account:pw-1f2e@container", "abfs://c:pw-1f2e@acct.dfs.core.windows.net/p"])
def test_credentials_in_a_lake_url_are_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="credentials in it: put them in the config file") as e:
        load(None, {"lake_url": url})
    assert "pw-1f2e" not in str(e.value)


@pytest.mark.parametrize("url", ["abfs://container@account.dfs.core.windows.net/p", "file:///data/a@b",
                                 "s3://bucket/key@2x", "memory://x"])
def test_an_at_sign_that_is_no_credential_is_taken(url: str) -> None:
    assert load(None, {"lake_url": url}).lake_url == url


def test_shard_prefixes_from_the_config_and_mount_options(tmp_path: Path) -> None:
    from tierfs.cli import mount_options

    cfg = tmp_path / "t.toml"
    cfg.write_text('[shards]\nprefixes = ["datasets/wds/", "/laion"]\n')
    assert load(cfg).shard_prefixes == ("datasets/wds", "laion")
    cfg.write_text('[shards]\nprefixes = "datasets/wds"\n')  # (one string: one prefix, as a flag gives it)
    assert load(cfg).shard_prefixes == ("datasets/wds",)
    cfg.write_text("[shards]\nprefixes = [1]\n")
    with pytest.raises(ConfigError, match=r"\[shards\] prefixes = \[1\] is not allowed; expected a list of lake prefixes"):
        load(cfg)
    opts = mount_options.parse(("shard_members=datasets/a:datasets/b/",))
    assert load(None, opts.overrides).shard_prefixes == ("datasets/a", "datasets/b")


@pytest.mark.parametrize(("value", "objects"), [("true", 100_000), ("false", 0), ("2500", 2500), ("0", 0)])
def test_fast_list_is_a_switch_or_a_bound(tmp_path: Path, value: str, objects: int) -> None:
    from tierfs.cli import mount_options

    cfg = tmp_path / "t.toml"
    cfg.write_text(f"[metadata]\nfast_list = {value}\n")
    assert load(cfg).fast_list == objects
    assert load(None, {"fast_list": True}).fast_list == 100_000  # --fast-list
    opts = mount_options.parse(("fast_list",))
    assert load(None, opts.overrides).fast_list == 100_000
    assert load(None, mount_options.parse(("fast_list=300",)).overrides).fast_list == 300
    with pytest.raises(ConfigError, match=r"\[metadata\] fast_list"):
        load(None, {"fast_list": "lots"})
