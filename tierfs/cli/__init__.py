"""The `tierfs` command: parse arguments, call one function, map errors to exit codes.

Exit codes: 0 success, 1 a failure explained in one line, 2 bad usage.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import TYPE_CHECKING

import click

from tierfs import __version__
from tierfs.errors import TierfsError

if TYPE_CHECKING:
    from tierfs.config import Settings
    from tierfs.store.objects import ObjectStore

log = logging.getLogger("tierfs")

# What str.splitlines() breaks on: a message holding one (from a name, a path, a value) would be two lines.
_LINE_BREAKS = re.compile("[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")


def one_line(text: str) -> str:
    """``text`` as one line: each line break written as its escape."""
    return _LINE_BREAKS.sub(lambda m: repr(m.group())[1:-1], text)


def main() -> None:
    # mount.fuse3 (fstab, `mount -t fuse.tierfs`) runs `tierfs LAKE_URL MOUNTPOINT -o OPTIONS`.
    if len(sys.argv) > 2 and "://" in sys.argv[1]:
        sys.argv.insert(1, "mount")
    try:
        cli.main(prog_name="tierfs", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("tierfs: aborted", err=True)
        sys.exit(1)
    except TierfsError as exc:  # every error raised on purpose (bad input, a store, a corrupt manifest) has its line
        click.echo(f"tierfs: error: {one_line(str(exc))}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # a bug: say so in one line, details in the log at debug level
        log.debug("unexpected error", exc_info=True)
        click.echo(f"tierfs: internal error: {type(exc).__name__}: {one_line(str(exc))} "
                   "(rerun with TIERFS_DEBUG=1 for details)", err=True)
        if os.environ.get("TIERFS_DEBUG"):
            raise
        sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="tierfs")
def cli() -> None:
    """Mount a versioned ML data lake from object storage as a directory.

    Reads go through a RAM tier, then a local disk cache (LMDB-indexed),
    then the object store (S3, GCS, Azure, or a local directory).

    \b
    Examples:
      tierfs mount s3://ml-lake/ /mnt/lake --config /etc/tierfs/train.toml
      tierfs stats /mnt/lake
      tierfs cp ckpt.pt s3://ml-lake/models/ckpt.pt --config /etc/tierfs/train.toml
      tierfs umount /mnt/lake
      tierfs cache du --config /etc/tierfs/train.toml
    """




def open_store(settings: Settings) -> ObjectStore:
    """The lake ``settings`` name. The store's clients are imported here, not when the CLI starts, so that
    `tierfs --help` and `tierfs mount` (whose daemon loads them itself) start quickly."""
    from tierfs.store.objects import ObjectStore

    return ObjectStore.open(settings)


# Commands register themselves on the group.
from tierfs.cli import (  # noqa: E402
    backup_cmds,
    cache_cmds,
    cp_cmd,
    lifecycle_cmds,
    lineage_cmds,
    mount_cmds,
    versions_cmds,
    warm_cmd,
)

__all__ = ["backup_cmds", "cache_cmds", "cli", "cp_cmd", "lifecycle_cmds", "lineage_cmds", "main", "mount_cmds", "versions_cmds",
           "warm_cmd"]
