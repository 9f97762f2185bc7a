"""`tierfs backup run|list|restore`: incremental, verified backups of a local folder into the lake."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from tierfs.cli import cli, open_store
from tierfs.config import format_size, load

if TYPE_CHECKING:
    from tierfs.store.objects import ObjectStore

_CONFIG = click.option("--config", "config_file", type=click.Path(path_type=Path), metavar="FILE",
                       help="TOML settings file (endpoint, credentials).")


def _target(url: str, config_file: Path | None, must_exist: bool) -> ObjectStore:
    store = open_store(load(config_file, {"lake_url": url}))
    if must_exist:
        store.check()
    return store


def _bar(label: str) -> object:
    from rich.progress import Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn(f"[bold]{label}"), TextColumn("{task.fields[files]} files, {task.fields[size]}"),
                    TimeElapsedColumn(), transient=True, disable=not sys.stderr.isatty())


@cli.group()
def backup() -> None:
    """Back up a local folder (scratch, checkpoints) into the lake, and restore it.

    Incremental: only changed files travel, each is checked after upload, and
    contents shared between backups are stored once.
    """


@backup.command("run")
@click.argument("source_dir", type=click.Path(path_type=Path))
@click.argument("target")
@click.option("--keep", type=click.IntRange(min=1), help="Then keep only the newest N backups.")
@_CONFIG
def backup_run(source_dir: Path, target: str, keep: int | None, config_file: Path | None) -> None:
    """Back up SOURCE_DIR to TARGET (LAKE_URL/prefix)."""
    from tierfs.sidecar.backup import run_backup

    store = _target(target, config_file, must_exist=False)
    with _bar("backup") as bar:  # type: ignore[attr-defined]
        task = bar.add_task("backup", files=0, size="0 B")
        report = run_backup(source_dir, store, keep,
                            on_progress=lambda n, b: bar.update(task, files=n, size=format_size(b)))
    i = report.info
    click.echo(f"backup {i.id}: {i.files} files, {format_size(i.bytes)}; {report.uploaded} uploaded "
               f"({format_size(i.new_bytes)} new), {report.reused} unchanged")
    if report.expired:
        click.echo(f"expired {len(report.expired)} older backups: {', '.join(report.expired)}")


@backup.command("list")
@click.argument("target")
@_CONFIG
def backup_list(target: str, config_file: Path | None) -> None:
    """Backups in TARGET, oldest first: one a line, its id first."""
    from tierfs.sidecar.backup import list_backups

    for b in list_backups(_target(target, config_file, must_exist=True)):
        click.echo(f"{b.id}\t{b.created_at[:19]}Z\t{b.files} files\t{format_size(b.bytes)}\t"
                   f"{format_size(b.new_bytes)} new\t{b.source}")


@backup.command("restore")
@click.argument("target")
@click.argument("backup_id")
@click.argument("target_dir", type=click.Path(path_type=Path))
@_CONFIG
def backup_restore(target: str, backup_id: str, target_dir: Path, config_file: Path | None) -> None:
    """Restore backup BACKUP_ID from TARGET into TARGET_DIR (new or empty), byte for byte."""
    from tierfs.sidecar.backup import restore

    with _bar("restore") as bar:  # type: ignore[attr-defined]
        task = bar.add_task("restore", files=0, size="0 B")
        info = restore(_target(target, config_file, must_exist=True), backup_id, target_dir,
                       on_progress=lambda n, b: bar.update(task, files=n, size=format_size(b)))
    click.echo(f"restored {info.id}: {info.files} files, {format_size(info.bytes)} into {target_dir}")
