"""Every setting, its default and its validation, in one place.

Settings come from a TOML file (``--config``) and are overridden by command
line flags. Both go through the same parsers, so a bad value is refused with
the same one line wherever it came from: which key, what was given, what is
allowed.
"""

from __future__ import annotations

import grp
import hashlib
import math
import os
import pwd
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tierfs.errors import ConfigError
from tierfs.secrecy import hidden, url_credentials

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3,
    "t": 1000**4, "tb": 1000**4, "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*([0-9]{1,30})(?:\.([0-9]{1,30}))?\s*([a-zA-Z]*)\s*$")
#: Past this no file, cache or part can be (an off_t): larger numbers are typos, and overflow C code later.
MAX_NUMBER = 2**63 - 1
#: The umask of the modes the mount shows when none is given: files 0644, directories 0755.
DEFAULT_UMASK = 0o022


def parse_size(value: Any) -> int:
    """'4MiB' -> 4194304; plain integers are bytes."""
    expected = "a size such as 512MiB, 10GiB or a number of bytes"
    if isinstance(value, bool):
        raise ValueError(expected)
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size of zero or more")
        n = value
    else:
        m = _SIZE_RE.match(str(value))  # ([0-9], not \d: int() refuses some of what \d takes, such as '²')
        if not m or m.group(3).lower() not in _UNITS:
            raise ValueError(expected)
        whole, fraction, unit = m.group(1), m.group(2) or "", _UNITS[m.group(3).lower()]
        # Counted exactly (float rounds past 15 digits and overflows past 308), then rounded down to a byte.
        n = (int(whole + fraction) * unit) // 10 ** len(fraction)
    if n > MAX_NUMBER:
        raise ValueError(f"{expected}, below 8 EiB")
    return n


def format_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _finite(value: Any, expected: str) -> float:
    """A number (or its text) as a float; NaN and infinity refused, since every comparison with NaN is false."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(expected)
    try:
        f = float(value)
    except (ValueError, OverflowError):
        raise ValueError(expected) from None
    if not math.isfinite(f):
        raise ValueError(expected)
    return f


def _positive_float(value: Any) -> float:
    f = _finite(value, "a number of seconds, zero or more")
    if f < 0:
        raise ValueError("a number of seconds, zero or more")
    return f


def _fraction(value: Any) -> float:
    f = _finite(value, "a fraction between 0 and 1, such as 0.9")
    if not 0 < f <= 1:
        raise ValueError("a fraction between 0 and 1, such as 0.9")
    return f


def _whole(minimum: int) -> Callable[[Any], int]:
    """A parser for whole numbers of at least ``minimum``."""
    expected = f"a whole number of {minimum} or more"

    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(expected)
        if isinstance(value, float) and not value.is_integer():  # (4.0 is 4; 1.5, NaN and infinity are no count)
            raise ValueError(expected)
        try:
            n = int(value)
        except (ValueError, OverflowError):
            raise ValueError(expected) from None
        if not minimum <= n <= MAX_NUMBER:
            raise ValueError(expected)
        return n

    return parse


_count = _whole(1)
_retries = _whole(0)


def _background_slots(value: Any) -> int:
    n = _count(value)
    if n > 65535:  # (the kernel keeps the number in 16 bits)
        raise ValueError("a whole number from 1 to 65535")
    return n


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("a string")
    return value


def _lake_url(value: Any) -> str:
    """A lake URL without credentials: it is shown wherever the lake is named (argv, logs, stats, messages)."""
    if url_credentials(_string(value)):
        raise ValueError("a lake URL without credentials in it: put them in the config file ([s3] key and secret, "
                         "or [store] options), mode 0600")
    return str(value)


def _path(value: Any) -> str:
    """A local path: a string the filesystem can take (no NUL byte, which every system call refuses)."""
    if not isinstance(value, str) or "\0" in value:
        raise ValueError("a path (a string without NUL bytes)")
    return value


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("1", "true", "yes", "on"):
        return True
    if str(value).lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("true or false")


FAST_LIST_DEFAULT = 100_000  # objects in one flat listing, for [metadata] fast_list = true


def _fast_list(value: Any) -> int:
    """true/false, or the most objects one flat listing may hold (0: off)."""
    if isinstance(value, bool) or str(value).lower() in ("true", "false", "yes", "no", "on", "off"):
        return FAST_LIST_DEFAULT if _bool(value) else 0
    try:
        return _retries(value)
    except ValueError:
        raise ValueError("true, false, or the most objects one flat listing may hold") from None


def _prefixes(value: Any) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(p, str) for p in items):
        raise ValueError('a list of lake prefixes, such as ["datasets/", "raw/"]')
    return tuple(p.strip().strip("/") for p in items if p.strip().strip("/"))


def _table(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError("a table of fsspec storage options")
    return dict(value)


def _versions(value: Any) -> str:
    v = str(value).lower() if not isinstance(value, bool) else ("on" if value else "off")
    if v not in ("auto", "on", "off"):
        raise ValueError("auto, on or off")
    return v


def _prices(value: Any) -> dict[str, float]:
    if not isinstance(value, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < math.inf for v in value.values()):
        raise ValueError("a table of storage class = USD per GB-month, such as { STANDARD_IA = 0.0125 }")
    return {str(k): float(v) for k, v in value.items()}


def _min_free(value: Any) -> int | float:
    """'5%' -> 0.05 (a fraction of the cache dir's filesystem); a size -> bytes."""
    expected = "a size such as 20GiB or a percentage of the cache dir's filesystem such as 5%"
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            percent = _finite(value.strip()[:-1], expected)
        except ValueError:
            raise ValueError(expected) from None
        if not 0 <= percent < 100:
            raise ValueError(expected)
        return percent / 100
    if isinstance(value, float):
        raise ValueError(expected)
    try:
        return parse_size(value)
    except ValueError:
        raise ValueError(expected) from None


def _policy(value: Any) -> str:
    if value not in ("lru", "stable"):
        raise ValueError("lru or stable")
    return str(value)


def _host_port(value: Any) -> str:
    text = str(value)
    _host, sep, port = text.rpartition(":")
    # ASCII digits only: isdigit() takes '²' and '٣', which int() refuses or reads as another number.
    if not sep or not (port.isascii() and port.isdigit() and len(port) <= 5) or not 0 < int(port) < 65536:
        raise ValueError("HOST:PORT, such as 127.0.0.1:9464 or :9464")
    return text


#: Largest uid or gid an owner can have: uid_t -1 (4294967295) means "no change" to chown(2), never an owner.
_ID_MAX = 2**32 - 2


def _owner(kind: str, database: str, lookup: Callable[[str], Any]) -> Callable[[Any], int]:
    """A parser for a user (or group): a number, or a name resolved on this host (pwd/grp)."""
    expected = f"a {kind} name this host knows (getent {database}) or a number from 0 to {_ID_MAX}"

    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
            raise ValueError(expected)
        if isinstance(value, str) and not (value.isascii() and value.isdigit()):
            try:
                return int(lookup(value)[2])  # (pw_uid, gr_gid: the third field of either)
            except (KeyError, ValueError):  # (ValueError: a NUL byte in the name)
                raise ValueError(f"{expected}; this host has no {kind} {shown(value)}") from None
        n = int(value)
        if not 0 <= n <= _ID_MAX:
            raise ValueError(expected)
        return n

    return parse


_uid = _owner("user", "passwd", pwd.getpwnam)
_gid = _owner("group", "group", grp.getgrnam)
_OCTAL_RE = re.compile(r"^(?:0[oO])?([0-7]{1,12})$")


def _octal(example: str, limit: int) -> Callable[[Any], int]:
    """A parser for permission bits written in octal ("0640", "640" or "0o640"), at most ``limit``."""
    expected = f'an octal number as a quoted string, such as "{example}", at most {limit:o}'

    def parse(value: Any) -> int:
        # A TOML number is refused: a bare 640 is the decimal number 640, not the mode 0640.
        m = _OCTAL_RE.match(value) if isinstance(value, str) else None
        if m is None or int(m.group(1), 8) > limit:
            raise ValueError(expected)
        return int(m.group(1), 8)

    return parse


_mode = _octal("0640", 0o7777)
_umask = _octal("027", 0o777)


def _log_level(value: Any) -> str:
    v = str(value).lower()
    if v not in ("debug", "info", "warning", "error"):
        raise ValueError("one of debug, info, warning, error")
    return v


@dataclass(frozen=True)
class _Key:
    section: str
    name: str
    parse: Callable[[Any], Any]
    attr: str


# (section, key in TOML) -> attribute of Settings. The TOML layout:
#   [lake] url   [store] retries timeout options *_concurrency   [s3] endpoint_url region ...
#   [cache] dir size ram_size block_size random_read_unit high_watermark low_watermark fill_memory
#   [redis] url password db key_prefix ttl max_block_size pool_size timeout secret secret_file username
#           ca_file cert_file key_file allow_no_auth cluster
#   [mount] mountpoint read_only   [write] part_size upload_concurrency rename_concurrency
#   [metrics] listen   [metadata] ttl lookup_bytes fast_list listing_memory listing_entries negative_ttl immutable_prefixes
#   [fuse] workers max_background allow_other allow_root nonempty uid gid umask file_mode dir_mode read_ahead_kb passthrough
#   [log] level file max_size backups   [shards] prefixes
#   [backup] secret_file
_KEYS = [
    _Key("lake", "url", _lake_url, "lake_url"),
    _Key("mount", "mountpoint", _path, "mountpoint"),
    _Key("mount", "read_only", _bool, "read_only"),
    _Key("mount", "read_only_prefixes", _prefixes, "read_only_prefixes"),
    _Key("mount", "allow_delete", _bool, "allow_delete"),
    _Key("write", "part_size", parse_size, "part_size"),
    _Key("write", "upload_concurrency", _count, "upload_concurrency"),
    _Key("write", "rename_concurrency", _count, "rename_concurrency"),
    _Key("store", "retries", _retries, "store_retries"),
    _Key("store", "timeout", _positive_float, "store_timeout"),
    _Key("store", "read_deadline", _positive_float, "store_read_deadline"),
    _Key("store", "metadata_deadline", _positive_float, "store_metadata_deadline"),
    _Key("store", "options", _table, "store_options"),
    _Key("store", "versions", _versions, "store_versions"),
    _Key("store", "metadata_concurrency", _count, "metadata_concurrency"),
    _Key("store", "read_concurrency", _count, "read_concurrency"),
    _Key("store", "prefetch_concurrency", _count, "prefetch_concurrency"),
    _Key("store", "manifest_concurrency", _count, "manifest_concurrency"),
    _Key("store", "write_concurrency", _count, "write_concurrency"),
    _Key("s3", "endpoint_url", _string, "s3_endpoint_url"),
    _Key("s3", "region", _string, "s3_region"),
    _Key("s3", "profile", _string, "s3_profile"),
    _Key("s3", "key", _string, "s3_key"),
    _Key("s3", "secret", _string, "s3_secret"),
    _Key("s3", "anon", _bool, "s3_anon"),
    _Key("redis", "url", _string, "redis_url"),
    _Key("redis", "password", _string, "redis_password"),
    _Key("redis", "db", _retries, "redis_db"),
    _Key("redis", "key_prefix", _string, "redis_key_prefix"),
    _Key("redis", "ttl", _positive_float, "redis_ttl"),
    _Key("redis", "max_block_size", parse_size, "redis_max_block_size"),
    _Key("redis", "pool_size", _count, "redis_pool_size"),
    _Key("redis", "timeout", _positive_float, "redis_timeout"),
    _Key("redis", "secret", _string, "redis_secret"),
    _Key("redis", "secret_file", _path, "redis_secret_file"),
    _Key("backup", "secret_file", _path, "backup_secret_file"),
    _Key("redis", "username", _string, "redis_username"),
    _Key("redis", "ca_file", _path, "redis_ca_file"),
    _Key("redis", "cert_file", _path, "redis_cert_file"),
    _Key("redis", "key_file", _path, "redis_key_file"),
    _Key("redis", "allow_no_auth", _bool, "redis_allow_no_auth"),
    _Key("redis", "cluster", _bool, "redis_cluster"),
    _Key("metrics", "listen", _host_port, "metrics_listen"),
    _Key("prices", "s3", _prices, "prices_s3"),
    _Key("prices", "gcs", _prices, "prices_gcs"),
    _Key("prices", "azure", _prices, "prices_azure"),
    _Key("cache", "dir", _path, "cache_dir"),
    _Key("cache", "size", parse_size, "cache_size"),
    _Key("cache", "ram_size", parse_size, "ram_size"),
    _Key("cache", "block_size", parse_size, "block_size"),
    _Key("cache", "high_watermark", _fraction, "high_watermark"),
    _Key("cache", "low_watermark", _fraction, "low_watermark"),
    _Key("cache", "policy", _policy, "cache_policy"),
    _Key("cache", "min_free", _min_free, "cache_min_free"),
    _Key("cache", "read_ahead", parse_size, "read_ahead"),
    _Key("cache", "random_read_unit", parse_size, "random_read_unit"),
    _Key("cache", "prefetch_memory", parse_size, "prefetch_memory"),
    _Key("cache", "encryption_key_file", _path, "cache_key_file"),
    _Key("cache", "fill_memory", parse_size, "fill_memory"),
    _Key("fuse", "read_ahead_kb", _retries, "kernel_read_ahead_kb"),
    _Key("metadata", "ttl", _positive_float, "metadata_ttl"),
    _Key("metadata", "lookup_bytes", parse_size, "lookup_bytes"),
    _Key("metadata", "fast_list", _fast_list, "fast_list"),
    _Key("metadata", "listing_memory", parse_size, "listing_memory"),
    _Key("metadata", "listing_entries", _count, "listing_entries"),
    _Key("metadata", "negative_ttl", _positive_float, "negative_ttl"),
    _Key("metadata", "immutable_prefixes", _prefixes, "immutable_prefixes"),
    _Key("shards", "prefixes", _prefixes, "shard_prefixes"),
    _Key("fuse", "workers", _count, "fuse_workers"),
    _Key("fuse", "max_background", _background_slots, "fuse_max_background"),
    _Key("fuse", "allow_other", _bool, "allow_other"),
    _Key("fuse", "nonempty", _bool, "allow_nonempty"),
    _Key("fuse", "passthrough", _bool, "passthrough"),
    _Key("fuse", "allow_root", _bool, "allow_root"),
    _Key("fuse", "uid", _uid, "uid"),
    _Key("fuse", "gid", _gid, "gid"),
    _Key("fuse", "umask", _umask, "umask"),
    _Key("fuse", "file_mode", _mode, "file_mode"),
    _Key("fuse", "dir_mode", _mode, "dir_mode"),
    _Key("log", "level", _log_level, "log_level"),
    _Key("log", "file", _path, "log_file"),
    _Key("log", "max_size", parse_size, "log_max_size"),
    _Key("log", "backups", _count, "log_backups"),
]
_BY_ATTR = {k.attr: k for k in _KEYS}


@dataclass(frozen=True)
class Settings:
    lake_url: str = ""
    mountpoint: str = ""
    read_only: bool = False  # the live view refuses writes (EROFS), as snapshots always do
    read_only_prefixes: tuple[str, ...] = ()  # parts of the live view that refuse writes (datasets/, say)
    allow_delete: bool = True  # False: unlink, rmdir and rename over a file are refused (EPERM) in the live view
    part_size: int = 32 * 1024**2  # multipart upload part; S3 wants 5 MiB at least, 10,000 parts at most
    upload_concurrency: int = 4  # parts of one upload in flight (memory: this many parts)
    rename_concurrency: int = 16  # object copies in flight while a directory is renamed
    store_retries: int = 5  # attempts after the first, all within the call's deadline
    store_timeout: float = 10.0  # one attempt (connect + answer)
    # A whole call to the store, retries included: a stalled store becomes EIO this fast.
    store_read_deadline: float = 30.0
    store_metadata_deadline: float = 10.0
    store_options: dict[str, Any] = field(default_factory=dict, repr=False)  # may hold account keys
    # Read object versions (S3 version ids): "auto" asks the bucket whether versioning is on.
    store_versions: str = "auto"
    # Store calls in flight, per kind of work: each kind waits for its own
    # tokens only, so read-ahead never starves the reads a reader waits on.
    metadata_concurrency: int = 16  # listings and stats of the live view
    read_concurrency: int = 32  # block reads a reader waits on
    prefetch_concurrency: int = 16  # read-ahead and warm jobs
    manifest_concurrency: int = 8  # snapshot manifests: stats, parts
    write_concurrency: int = 16  # uploads, copies, deletes of the write path
    s3_endpoint_url: str = ""
    s3_region: str = ""
    s3_profile: str = ""
    s3_key: str = ""
    s3_secret: str = field(default="", repr=False)
    s3_anon: bool = False
    redis_url: str = field(default="", repr=False)  # empty: no Redis tier (may carry a password: not in reprs)
    redis_password: str = field(default="", repr=False)
    # The secret every node shares: each Redis value carries a MAC under it (or TIERFS_REDIS_SECRET).
    redis_secret: str = field(default="", repr=False)
    redis_secret_file: str = ""
    # Backup manifests carry a MAC under this secret (or TIERFS_BACKUP_SECRET); restore refuses one that fails.
    backup_secret_file: str = ""
    redis_username: str = ""  # Redis 6 ACL user (AUTH user password)
    redis_ca_file: str = ""  # rediss://: the CA that signed the server's certificate
    redis_cert_file: str = ""  # rediss://: this node's client certificate, where the server checks them
    redis_key_file: str = ""
    redis_allow_no_auth: bool = False  # a Redis off this host without a password is refused unless set
    redis_cluster: bool = False  # redis_url names one node of a Redis Cluster: blocks spread over its shards
    # AES-GCM for disk blocks and Redis values: a file holding the key (or TIERFS_CACHE_KEY), never in the cache dir.
    cache_key_file: str = ""
    redis_db: int | None = None
    redis_key_prefix: str = "tierfs:"
    redis_ttl: float = 7 * 24 * 3600.0
    redis_max_block_size: int = 8 * 1024**2
    redis_pool_size: int = 32
    redis_timeout: float = 0.25
    metrics_listen: str = ""  # HOST:PORT for Prometheus; empty: off
    # USD per GB-month by storage class, over the built-in list prices
    prices_s3: dict[str, float] = field(default_factory=dict)
    prices_gcs: dict[str, float] = field(default_factory=dict)
    prices_azure: dict[str, float] = field(default_factory=dict)
    cache_dir: str = ""  # empty: a per-lake folder under the user's cache dir
    cache_size: int = 10 * 1024**3
    ram_size: int = 512 * 1024**2
    block_size: int = 4 * 1024**2
    high_watermark: float = 0.95
    low_watermark: float = 0.85
    cache_policy: str = "stable"  # disk eviction: "stable" (cyclic epochs) or "lru"
    # Free space the disk tier leaves on its filesystem (staged writes need it): bytes, or a
    # fraction of it; None: 5 %, but at least 1 GiB or half the filesystem if smaller (tiers/disk.py).
    cache_min_free: int | float | None = None
    read_ahead: int = 32 * 1024**2  # largest read-ahead window of one open file
    # A random read into a file of more than one block fetches what it asks rounded out to this (up to a
    # block), kept in RAM apart from the tiers, not its whole block; 0: whole blocks always.
    random_read_unit: int = 64 * 1024
    prefetch_memory: int = 128 * 1024**2  # bound on blocks being prefetched at once
    fill_memory: int = 256 * 1024**2  # bound on blocks waiting to go into the disk and Redis tiers
    kernel_read_ahead_kb: int = 4096  # the mount's bdi read_ahead_kb: larger FUSE read requests
    metadata_ttl: float = 60.0
    # The first lookup of a name in a folder not listed yet asks for the object's first this-many bytes
    # where a HEAD would ask for none: a small file's bytes come with its size and ETag (the open and read
    # that follow cost no request). 0: a HEAD, as before. At most a block.
    lookup_bytes: int = 256 * 1024
    # A folder listed is listed with everything below it in one flat listing (rclone's --fast-list) when
    # that holds at most this many objects; 0 (the default): a level at a time. true: 100,000.
    fast_list: int = 0
    listing_memory: int = 200 * 1024**2  # cached directory entries, by what they hold in memory (names, refs)
    listing_entries: int = 500_000  # and at most this many of them
    # Seconds a name found missing (by a stat, in a directory not listed) is answered missing without asking
    # again: Python's imports and config searches probe many. 0: ask every time.
    negative_ttl: float = 5.0
    # Parts of the live view that never change (datasets): their metadata is cached until remount, and they
    # refuse writes as read_only_prefixes do.
    immutable_prefixes: tuple[str, ...] = ()
    # Where a .tar object (a tar or WebDataset shard) is shown as a read-only directory of its members.
    shard_prefixes: tuple[str, ...] = ()
    fuse_workers: int = 64
    # The kernel's background slots for this mount (read-ahead and async reads wait for one; releases take
    # one without waiting): asked for at FUSE INIT; the kernel's own 12 let a flood of closes starve reads.
    fuse_max_background: int = 256
    allow_other: bool = False
    allow_root: bool = False  # the mounting user and root only (libfuse refuses the others)
    allow_nonempty: bool = False
    # FUSE passthrough: a small file whose bytes are on the disk tier is read by the kernel from the block file.
    passthrough: bool = True
    # What every file and directory shows (the lake keeps no owners or modes), as rclone and gcsfuse do;
    # None: the daemon's uid and gid, and the modes of modes() below.
    uid: int | None = None
    gid: int | None = None
    umask: int | None = None
    file_mode: int | None = None
    dir_mode: int | None = None
    log_level: str = "info"
    log_file: str = ""  # the background daemon's log; empty: tierfs.log in the cache dir
    log_max_size: int = 64 * 1024**2  # that log is rotated at this size (0: never)...
    log_backups: int = 5  # ...keeping this many older files (tierfs.log.1 is the newest)
    # --allow-readable-secrets: take secret files other users can read; None: the command has no such flag.
    allow_readable_secrets: bool | None = None

    def resolved_cache_dir(self) -> Path:
        if self.cache_dir:
            return Path(self.cache_dir).expanduser()
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        if os.geteuid() == 0 and "XDG_CACHE_HOME" not in os.environ:
            base = Path("/var/cache")
        lake_id = hashlib.sha256(self.lake_url.encode()).hexdigest()[:12]
        return base / "tierfs" / lake_id

    def resolved_log_file(self) -> Path:
        """The background daemon's log: [log] file, or tierfs.log in the cache dir."""
        return Path(self.log_file) if self.log_file else self.resolved_cache_dir() / "tierfs.log"

    def modes(self) -> tuple[int, int]:
        """The permission bits of (files, directories).

        rclone's rule where a umask is given: 0666 and 0777 less the umask, and
        the umask is taken off a file_mode or dir_mode given with it too.
        gcsfuse's where only a mode is given: that mode, as written. Neither:
        0644 and 0755 (0666 and 0777 less the default umask 022).
        """
        umask = DEFAULT_UMASK if self.umask is None else self.umask
        given = self.umask or 0
        files = 0o666 & ~umask if self.file_mode is None else self.file_mode & ~given
        dirs = 0o777 & ~umask if self.dir_mode is None else self.dir_mode & ~given
        return files, dirs

    def check(self) -> Settings:
        """Cross-field rules; returns self so calls chain."""
        if self.allow_other and self.allow_root:
            raise ConfigError("[fuse] allow_other and allow_root (--allow-other, --allow-root) cannot both be on: "
                              "FUSE refuses the pair; allow_other already lets root in, so keep only one")
        if self.block_size < 4096 or self.block_size > 256 * 1024**2:
            raise ConfigError(
                f"[cache] block_size = {self.block_size}: must be between 4KiB and 256MiB"
            )
        if 0 < self.random_read_unit < 4096:
            raise ConfigError(f"[cache] random_read_unit = {self.random_read_unit}: give 0 (whole blocks always) "
                              "or at least 4KiB")
        if not 5 * 1024**2 <= self.part_size <= 5 * 1024**3:
            raise ConfigError(f"[write] part_size = {self.part_size}: must be between 5MiB and 5GiB (S3's limits)")
        if self.low_watermark >= self.high_watermark:
            raise ConfigError(
                f"[cache] low_watermark = {self.low_watermark} must be below "
                f"high_watermark = {self.high_watermark}"
            )
        if 0 < self.log_max_size < 4096:
            raise ConfigError(f"[log] max_size = {self.log_max_size} bytes: give 0 (never rotate) or at least 4KiB")
        if 0 < self.cache_size < 2 * self.block_size:
            raise ConfigError(
                f"[cache] size = {self.cache_size} bytes is smaller than two blocks "
                f"({2 * self.block_size} bytes); give a larger size or 0 to turn the disk tier off"
            )
        return self


def load(path: str | os.PathLike[str] | None, overrides: Mapping[str, Any] | None = None) -> Settings:
    """Settings from a TOML file (optional) with command-line ``overrides``.

    ``overrides`` maps Settings attribute names to raw values (strings from
    flags, or already-typed values); ``None`` values are ignored.
    """
    values: dict[str, Any] = {}
    if path is not None:
        values.update(_read_toml(Path(path)))
    for attr, raw in (overrides or {}).items():
        if raw is None:
            continue
        key = _BY_ATTR[attr]
        values[attr] = _parse(key, raw, origin="command line")
    known = {f.name for f in fields(Settings)}
    assert set(values) <= known
    return Settings(**values).check()


def shown(value: Any, limit: int = 80) -> str:
    """A value for a one-line message: repr (line breaks and control characters escaped), cut short."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 5] + "…" + text[-4:]


def as_written(name: str) -> str:
    """A section or key name as written: bare when it reads as one, quoted when it could break the line."""
    return name if name.isprintable() and name.strip() == name and name else shown(name)


def _parse(key: _Key, raw: Any, origin: str) -> Any:
    try:
        return key.parse(raw)
    except ValueError as exc:
        raise ConfigError(
            f"{origin}: [{key.section}] {key.name} = {shown(hidden(key.section, key.name, raw))} is not allowed; "
            f"expected {exc}"
        ) from None


#: A file of settings (TOML, metadata JSON) is a few kilobytes; reading stops here (/dev/zero never ends).
MAX_FILE_BYTES = 16 * 1024**2


def read_toml_file(path: Path, what: str = "config file") -> dict[str, Any]:
    """A TOML document, or one line saying why it cannot be had (for every TOML file tierfs reads)."""
    where = as_written(str(path))
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{what} {where} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {where} is a directory, not a TOML file") from None
    except PermissionError:
        raise ConfigError(f"{what} {where} cannot be read (permission denied)") from None
    except OSError as exc:  # below a file, a name too long, a symlink loop, an I/O error
        raise ConfigError(f"{what} {where} cannot be read: {exc.strerror or exc}") from None
    except ValueError:  # a NUL byte in the path
        raise ConfigError(f"{what} {where} is not a path a file can have") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"{what} {where} is larger than {MAX_FILE_BYTES >> 20} MiB: not a tierfs TOML file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {where} is not UTF-8 (byte {exc.start}); TOML files are UTF-8 text") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {where} is not valid TOML: {exc}") from None


def _read_toml(path: Path) -> dict[str, Any]:
    doc = read_toml_file(path)
    where = as_written(str(path))
    out: dict[str, Any] = {}
    sections = sorted({k.section for k in _KEYS})
    for section, table in doc.items():
        if section not in sections:
            raise ConfigError(
                f"{where}: unknown section [{as_written(section)}]; known sections: {', '.join(sections)}"
            )
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: '{section}' must be a table, written [{section}]")
        for name, raw in table.items():
            key = next((k for k in _KEYS if k.section == section and k.name == name), None)
            if key is None:
                names = ", ".join(k.name for k in _KEYS if k.section == section)
                raise ConfigError(
                    f"{where}: unknown key [{section}] {as_written(name)}; keys of [{section}]: {names}"
                )
            out[key.attr] = _parse(key, raw, origin=where)
    return out
