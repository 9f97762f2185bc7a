"""`tierfs cache du | verify | clear`: a node's disk cache, without a mount."""

from __future__ import annotations

import json
import logging
import os
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from tierfs.cli import cli
from tierfs.config import Settings, format_size, load
from tierfs.daemon import setup_logging
from tierfs.errors import CacheDirBusy, UserError

if TYPE_CHECKING:
    from tierfs.tiers.disk import DiskTier

F = TypeVar("F", bound=Callable[..., Any])


def _where(f: F) -> F:
    """The options that name the cache dir, as `tierfs mount` resolves it."""
    f = click.option("--lake", "lake_url", metavar="URL",
                     help="The lake a mount was given without --cache-dir: its cache is the per-lake default.  "
                          "[config: [lake] url]")(f)
    f = click.option("--cache-dir", metavar="DIR", help="The cache dir, as given to the mount (wins over "
                     "--config).  [config: [cache] dir]")(f)
    f = click.option("--config", "config_file", type=click.Path(path_type=Path), metavar="FILE",
                     help="The mount's TOML settings: its [cache] dir (or [lake] url), size and encryption key.")(f)
    return f


def _settings(config_file: Path | None, cache_dir: str | None, lake_url: str | None) -> Settings:
    settings = load(config_file, {"cache_dir": cache_dir, "lake_url": lake_url})
    if not settings.cache_dir and not settings.lake_url:
        raise UserError("which cache? give --cache-dir DIR, or --config FILE with [cache] dir or [lake] url "
                        "(or --lake URL for a mount's default cache dir)")
    return settings


def _root(settings: Settings) -> Path:
    return settings.resolved_cache_dir().absolute()


def _busy(exc: CacheDirBusy, command: str) -> UserError:
    return UserError(f"cache dir {exc.root} is in use by tierfs process {exc.holder} (a mount, or another "
                     f"tierfs cache command; tierfs status lists the mounts): unmount it, then run {command} again")


@cli.group()
def cache() -> None:
    """Inspect, check and clear a node's disk cache, without a mount.

    The cache dir is --cache-dir DIR, or the one a mount with --config FILE
    uses ([cache] dir, else the per-lake default of its [lake] url). verify and
    clear lock it as a mount does: they refuse to run while a mount uses it, and
    no mount starts while they run. du reads it beside a running mount.
    Staged files (writes the lake has not acknowledged yet) are never touched.

    \b
    Examples:
      tierfs cache du --config /etc/tierfs/train.toml
      tierfs cache du --cache-dir /nvme/tierfs --json
      tierfs cache verify --config /etc/tierfs/train.toml --repair
      tierfs cache clear --cache-dir /nvme/tierfs --yes
    """


@cache.command("du")
@_where
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def du(config_file: Path | None, cache_dir: str | None, lake_url: str | None, as_json: bool) -> None:
    """What the disk cache holds, and what staged writes wait there.

    The blocks and bytes the index counts against [cache] size, what the
    cache's files take on disk, the free space kept for staged writes, and the
    staged files pending upload: those are not the cache's (never evicted,
    never cleared) until the lake has them. Runs beside a mount.

    \b
    Examples:
      tierfs cache du --config /etc/tierfs/train.toml
      tierfs cache du --cache-dir /nvme/tierfs --json | jq .staging.pending
    """
    from tierfs.tiers.cache_admin import NOT_RECORDED, usage
    from tierfs.write.staging import staged_summary

    settings = _settings(config_file, cache_dir, lake_url)
    root = _root(settings)
    use = usage(root, settings.cache_min_free)
    staged = staged_summary(root / "staging")
    held = use.index.bytes if use.index is not None else None
    data: dict[str, Any] = {
        "cache_dir": str(root), "sealing": use.sealing, "in_use_by_pid": int(use.holder) if use.holder else None,
        "configured_bytes": settings.cache_size, "index_unclean": use.unclean or None,
        "index": asdict(use.index) if use.index is not None else None, "index_unread": use.unread or None,
        "evictable_bytes": held, "on_disk_bytes": use.on_disk, "block_files": use.block_files,
        "filesystem_free_bytes": use.free, "reserve_bytes": use.reserve, "staging": asdict(staged),
        "objects": None, "per_prefix": None, "not_recorded": NOT_RECORDED,
    }
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    size_from = f"[cache] size in {config_file}" if config_file else "the default [cache] size"
    rows = [("cache dir", str(root))]
    if use.holder:
        rows.append(("in use", f"by tierfs process {use.holder}; the figures are those of now"))
    rows.append(("encryption", use.sealing))
    if use.index is not None:
        ix = use.index
        rows.append(("blocks", f"{ix.blocks:,} ({format_size(ix.bytes)}) of {format_size(settings.cache_size)}, "
                               f"{size_from}"))
        if ix.never_hit:
            rows.append(("", f"{ix.never_hit:,} not read again since they landed: the first to be evicted"))
        if use.unclean:
            rows.append(("", f"not closed cleanly ({use.unclean}): the next mount checks it"))
    else:
        rows.append(("index", use.unread))
    rows.append(("on disk", f"{format_size(use.on_disk)}: {use.block_files:,} block files, the index and tmp/"))
    rows.append(("filesystem", f"{format_size(use.free)} free, {format_size(use.reserve)} of it kept for staged "
                               "writes"))
    rows.append(("staged", f"{staged.pending} pending upload(s), {format_size(staged.pending_bytes)}: not in the "
                           "lake yet, never evicted"))
    if staged.other or staged.unclosed:
        rows.append(("", f"{staged.other} other staged file(s), {format_size(staged.other_bytes)}; "
                         f"{staged.unclosed} set aside in staging/unclosed, {format_size(staged.unclosed_bytes)}"))
    rows.append(("objects", NOT_RECORDED))
    for label, value in rows:
        # (paths are not broken: a long one runs past 80 columns rather than being cut)
        lines = textwrap.wrap(value, 80 - 12, break_long_words=False, break_on_hyphens=False) or [""]
        click.echo(f"{label:<12}{lines[0]}".rstrip())
        for more in lines[1:]:
            click.echo(" " * 12 + more)


@cache.command()
@_where
@click.option("--repair", is_flag=True,
              help="Drop the blocks that fail (their index entries and files, nothing else); a mount fetches "
                   "them again.")
def verify(config_file: Path | None, cache_dir: str | None, lake_url: str | None, repair: bool) -> None:
    """Read every cached block and check it against its index entry.

    Each block file is read whole and checked as a mount's read checks it:
    against the size and checksum its index entry records and, in an
    encrypted cache, by opening it under the key ([cache] encryption_key_file
    or TIERFS_CACHE_KEY), which verify then needs. It reports the good, bad and
    missing blocks, and exits 1 if any is bad or missing and not repaired.
    An index that a crash left open is first checked against the block files,
    as the next mount's start would.

    \b
    Examples:
      tierfs cache verify --config /etc/tierfs/train.toml
      tierfs cache verify --cache-dir /nvme/tierfs --repair
    """
    from tierfs.tiers.cache_admin import cache_sealing, hold_staging, key_for
    from tierfs.tiers.disk import DiskTier
    from tierfs.tiers.seal import cache_key

    settings = _settings(config_file, cache_dir, lake_url)
    root = _root(settings)
    sealing, configured = cache_sealing(root), cache_key(settings, root)
    key = key_for(root, sealing, configured)
    if configured and not key:
        click.echo(f"note: {root} is not encrypted, but a cache key is given: the next mount with that key starts "
                   "it afresh")
    setup_logging(logging.WARNING)  # (what opening it logs, such as an index rebuilt after a power cut)
    try:
        tier = DiskTier(root, settings.cache_size or Settings.cache_size, settings.high_watermark,
                        settings.low_watermark, settings.cache_policy, settings.cache_min_free, data_key=key)
    except CacheDirBusy as exc:
        raise _busy(exc, "tierfs cache verify") from None
    staging = None
    try:
        staging = hold_staging(root)
        _verify(tier, root, repair)
    except CacheDirBusy as exc:
        raise _busy(exc, "tierfs cache verify") from None
    finally:
        tier.close()
        if staging is not None:
            os.close(staging)


def _verify(tier: DiskTier, root: Path, repair: bool) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    from tierfs.tiers.cache_admin import MISSING, verify

    why = tier.index.unclean
    if why and (why != "it is new" or tier.recovered):
        state = "is new" if why == "it is new" else f"was not closed cleanly ({why})"
        click.echo(f"{root}: the index {state}; checked against the block files first, as a mount's start "
                   f"does: {tier.recovered} dropped or removed")
    total, held = tier.entries(), tier.bytes_held()
    t0 = time.monotonic()
    with Progress("[bold]verify", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                  transient=True, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("verify", total=total)
        report = verify(tier, repair, lambda: bar.advance(task))
    failing = len(report.bad) + len(report.missing)
    click.echo(f"{root}: {total:,} blocks, {format_size(held)}, read in {time.monotonic() - t0:.1f} s")
    click.echo(f"  good {report.good:,}   bad {len(report.bad):,}   missing {len(report.missing):,}")
    for block, why in report.bad[:5]:
        click.echo(f"  bad: {block[:16]}…: {why}")
    for block in report.missing[:5]:
        click.echo(f"  missing: {block[:16]}…: {MISSING}")
    if hidden := failing - min(5, len(report.bad)) - min(5, len(report.missing)):
        click.echo(f"  (and {hidden:,} more)")
    if report.unknown:
        click.echo(f"  {report.unknown:,} block file(s) the index does not know, left alone (not counted in "
                   "its size)")
    if report.dropped:
        click.echo(f"  repaired: {report.dropped:,} dropped (index entries and files); a mount fetches them "
                   "again")
    elif failing:
        raise UserError(f"{failing:,} of {total:,} blocks in {root} are bad or missing and were not repaired: "
                        "run tierfs cache verify --repair to drop them (a mount fetches them again)")


@cache.command()
@_where
@click.option("--yes", "-y", is_flag=True, help="Clear without asking first.")
def clear(config_file: Path | None, cache_dir: str | None, lake_url: str | None, yes: bool) -> None:
    """Remove every cached block and the index; staged files stay.

    Refused while staged files wait for their upload (closed through a mount
    that ended before the lake acknowledged them: checkpoints the lake does not
    have): mount again so they are uploaded, then clear. staging/, the LAYOUT
    marker, the lock and the log are never removed; the next mount starts with
    an empty cache.

    \b
    Examples:
      tierfs cache clear --config /etc/tierfs/train.toml
      tierfs cache clear --cache-dir /nvme/tierfs --yes
    """
    from tierfs.tiers.cache_admin import cache_sealing, clear, hold_staging, tree_size
    from tierfs.tiers.cache_dir import prepare_cache_dir
    from tierfs.write.staging import staged_summary

    settings = _settings(config_file, cache_dir, lake_url)
    root = _root(settings)
    cache_sealing(root)
    held: list[int] = []
    try:
        held.append(prepare_cache_dir(root))
        staging = hold_staging(root)
        if staging is not None:
            held.append(staging)
        staged = staged_summary(root / "staging")
        if staged.pending:
            raise UserError(f"cache dir {root} holds {staged.pending} staged file(s) pending upload "
                            f"({format_size(staged.pending_bytes)}, not in the lake yet): mount it again so they "
                            "are uploaded, then clear; nothing was removed")
        blocks, size = tree_size(root / "blocks")
        if not yes and not _confirmed(f"Remove {blocks:,} cached block file(s) ({format_size(size)}) and the "
                                      f"index from {root}? Staged files stay"):
            raise UserError("not confirmed: nothing was removed (--yes clears without asking)")
        removed, freed = clear(root)
    except CacheDirBusy as exc:
        raise _busy(exc, "tierfs cache clear") from None
    finally:
        for fd in held:
            os.close(fd)
    kept = f"; staging/ kept ({staged.other + staged.unclosed} file(s))" if staged.other or staged.unclosed else ""
    click.echo(f"cleared {root}: {removed:,} block file(s) and the index, {format_size(freed)} freed{kept}")


def _confirmed(question: str) -> bool:
    try:
        answer = click.confirm(question, err=True)
    except click.Abort:  # (no answer: the end of the input)
        answer = False
        click.echo(err=True)
    else:
        if not sys.stdin.isatty():
            click.echo(err=True)  # (the answer came from a pipe: nothing ended the question's line)
    return answer
