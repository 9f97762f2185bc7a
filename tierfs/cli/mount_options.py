"""`-o` mount options, as fstab and `mount -t fuse.tierfs` pass them (mount.fuse3 runs `tierfs SRC DIR -o OPTS`).

Each option is a flag's twin: `config=FILE` is `--config FILE`, `cache_size=50GiB`
is `--cache-size 50GiB`, `ro` is `--read-only`, `allow_other` is `[fuse]
allow_other`, `uid=alice,file_mode=0640` is `--uid alice --file-mode 0640`
(mount(8) hands on `uid=alice` as `uid=1001`), `immutable_prefixes=datasets/a:datasets/b`
is `--immutable-prefix datasets/a --immutable-prefix datasets/b` (a list takes
':' between its items, since ',' separates options). The options mount(8) and systemd
keep for themselves (`_netdev`, `nofail`, `noauto`, `x-systemd.*`, …) are
accepted and ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tierfs.errors import ConfigError

#: option -> Settings attribute (the value as a flag would give it)
_VALUED = {
    "cache_dir": "cache_dir", "cache_size": "cache_size", "ram_size": "ram_size", "block_size": "block_size",
    "random_read_unit": "random_read_unit", "fast_list": "fast_list",  # fast_list=20000 (objects)
    "metadata_ttl": "metadata_ttl", "log_file": "log_file", "log_level": "log_level", "metrics": "metrics_listen",
    "read_only_prefixes": "read_only_prefixes",  # read_only_prefixes=datasets:raw (':' between prefixes)
    "immutable_prefixes": "immutable_prefixes",  # immutable_prefixes=datasets/imagenet:datasets/coco
    "shard_members": "shard_prefixes",  # shard_members=datasets/wds:datasets/laion
    "endpoint": "s3_endpoint_url", "region": "s3_region", "profile": "s3_profile",
    "uid": "uid", "gid": "gid", "umask": "umask", "file_mode": "file_mode", "dir_mode": "dir_mode",
}
#: Options that carry a list: ':' between its items (fstab's ',' already separates options). Given twice, the
#: last one wins, as for every option: one option names the whole list.
_LISTS = frozenset({"read_only_prefixes", "immutable_prefixes", "shard_members"})
#: flags -> (Settings attribute, value)
_FLAGS: dict[str, tuple[str, Any]] = {
    "ro": ("read_only", True), "rw": ("read_only", False), "read_only": ("read_only", True),
    "allow_other": ("allow_other", True), "allow_root": ("allow_root", True), "nonempty": ("allow_nonempty", True),
    "no_delete": ("allow_delete", False), "no_passthrough": ("passthrough", False), "fast_list": ("fast_list", True),
}
#: What mount(8), fstab and systemd mean for themselves; the kernel's generic flags tierfs has no use for.
_IGNORED = frozenset({"defaults", "_netdev", "nofail", "noauto", "auto", "user", "users", "nouser", "owner",
                      "dev", "nodev", "suid", "nosuid", "exec", "noexec", "async", "sync", "atime", "noatime",
                      "relatime", "strictatime", "nodiratime", "diratime", "silent", "loud"})


@dataclass
class MountOptions:
    config: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    allow_readable_secrets: bool = False
    foreground: bool = False


def parse(groups: tuple[str, ...]) -> MountOptions:
    """Every ``-o a,b=c`` given, in order (later ones win); one clear line for an option tierfs does not know."""
    out = MountOptions()
    for group in groups:
        for opt in (o.strip() for o in group.split(",")):
            if not opt:
                continue
            name, eq, value = opt.partition("=")
            key = name.replace("-", "_")
            if name in _IGNORED or name.startswith(("x-", "comment=")) or key in ("setuid",):
                continue
            if key == "config" and eq:
                out.config = value
            elif key in _VALUED and eq:
                out.overrides[_VALUED[key]] = value.replace(":", ",") if key in _LISTS else value
            elif key in _FLAGS and not eq:
                attr, flag = _FLAGS[key]
                out.overrides[attr] = flag
            elif key == "allow_readable_secrets" and not eq:
                out.allow_readable_secrets = True
            elif key in ("foreground", "f") and not eq:
                out.foreground = True
            else:
                known = ", ".join(sorted([*_VALUED, *_FLAGS, "config", "allow_readable_secrets"]))
                raise ConfigError(f"mount option {opt!r} is not one tierfs knows; it takes {known} "
                                  "(and ignores fstab's own, such as _netdev, nofail and x-systemd.*)")
    return out
