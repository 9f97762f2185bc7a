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
