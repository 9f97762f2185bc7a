"""`tierfs warm`: fill the tiers with files before (or while) a job reads them."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import click

from tierfs import control
from tierfs.cli import cli
from tierfs.config import format_size
from tierfs.errors import UserError

WARM_XATTR = "user.tierfs.warm"


def find_mount(path: Path) -> Path:
    """The tierfs mount that holds ``path``."""
    from tierfs.fuse.mountpoint import mount_holding

    best = mount_holding(os.path.abspath(path))
    if best is None:
        raise UserError(f"{path} is not inside a tierfs mount")
    return Path(best)


def _lines(list_file: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of a warm list, which is UTF-8 text (as the mount reads it); one line if it is not."""
    n = 0
    try:
        with open(list_file, encoding="utf-8") as src:
            for n, line in enumerate(src, 1):
                yield n, line
    except UnicodeDecodeError:
        raise UserError(f"{list_file}: line {n + 1} is not UTF-8; a warm list is UTF-8 text, one path a line") from None
    except OSError as exc:
        raise UserError(f"{list_file} cannot be read: {exc.strerror}") from None


def start_warm(mountpoint: Path, rel_paths: list[str] | None, list_file: Path | None, jobs: int, lead: int) -> None:
    """Hand a list to the mount's daemon (through an extended attribute of its root)."""
    with tempfile.NamedTemporaryFile("w", prefix="tierfs-warm-", suffix=".txt", delete=False, encoding="utf-8") as tmp:
        try:
            if rel_paths is not None:
                for p in rel_paths:
                    if not _is_utf8(p):
                        raise UserError(f"{p!r} is not a UTF-8 name; a warm list (which the mount reads) "
                                        "can name UTF-8 paths only")
                    tmp.write(p + "\n")
            else:
                assert list_file is not None
                root = str(mountpoint).rstrip("/") + "/"
                for _n, line in _lines(list_file):
                    p = line.strip()
                    if p:
                        tmp.write((p[len(root):] if p.startswith(root) else p.lstrip("/")) + "\n")
        except BaseException:
            tmp.close()
            os.unlink(tmp.name)
            raise
    try:
        control.request(mountpoint, {"op": "warm", "list": tmp.name, "jobs": jobs, "lead": lead}, "start a warm job")
    finally:
        os.unlink(tmp.name)  # the daemon keeps its own copy


def warm_progress(mountpoint: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads(os.getxattr(mountpoint, WARM_XATTR))
    return data


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--list", "list_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Files to warm, one per line, in the order the readers will read them.")
@click.option("--jobs", default=8, show_default=True, help="Files fetched in parallel.")
@click.option("--lead", type=int, default=None,
              help="With --list: stay at most this many files ahead of the readers.  [default: 256 with --list, else no bound]")
@click.option("--no-wait", is_flag=True, help="Start the warm job and return.")
def warm(paths: tuple[Path, ...], list_file: Path | None, jobs: int, lead: int | None, no_wait: bool) -> None:
    """Fetch PATHS (files or folders under a mount) into the cache tiers in parallel.

    With --list, warm in the sampler's order, running ahead of the readers by a
    bounded lead (the mount sees which listed files they open), so the cache
    holds what the next epoch reads next.
    """
    if not paths and list_file is None:
        raise UserError("give PATHS to warm, or --list FILE")
    mountpoint = find_mount(paths[0] if paths else Path.cwd() if list_file is None else _first_listed(list_file))
    rel: list[str] | None = None
    if list_file is None:
        rel = []
        for p in paths:
            if find_mount(p) != mountpoint:
                raise UserError(f"{p} is not in the same mount as {paths[0]}")
            if p.is_dir():
                for d, _dirs, files in os.walk(p):
                    rel.extend(os.path.relpath(os.path.join(d, f), mountpoint) for f in sorted(files))
            else:
                rel.append(os.path.relpath(p, mountpoint))
    start_warm(mountpoint, rel, list_file, jobs, (256 if list_file else 0) if lead is None else lead)
    if no_wait:
        click.echo(f"warming started in {mountpoint}; follow it with: getfattr -n {WARM_XATTR} {mountpoint}")
        return
    from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress("[bold]warm", BarColumn(), MofNCompleteColumn(), DownloadColumn(), TimeElapsedColumn(),
                  disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("warm", total=None)
        while True:
            prog = warm_progress(mountpoint)
            bar.update(task, total=int(str(prog["total"])), completed=int(str(prog["done"])))
            if prog["state"] != "running":
                break
            time.sleep(0.2)
    if prog["state"] == "failed":
        raise UserError(f"the warm job failed after {prog['done']} of {prog['total']} files: "
                        f"{_printable(prog.get('error'))}")
    first = f" (first: {_printable(prog['first_failure'])})" if prog.get("first_failure") else ""
    click.echo(f"warmed {prog['done']} files, {format_size(int(str(prog['bytes'])))} in {prog['seconds']} s"
               + (f"; {prog['failed']} failed{first}" if prog["failed"] else "") + f" ({prog['state']})")


def _printable(text: object) -> str:
    """``text`` with the bytes of names that are not UTF-8 shown as \\xNN, not written raw to the terminal."""
    return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a name os.fsdecode made from bytes that are not UTF-8
        return False
    return True


def _first_listed(list_file: Path) -> Path:
    for _n, line in _lines(list_file):
        if line.strip().startswith("/"):
            return Path(line.strip())
    raise UserError(f"{list_file}: give PATHS (a mount) too when the list holds relative paths")
