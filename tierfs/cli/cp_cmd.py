"""`tierfs cp SRC DST`: large files into or out of the lake without a mount."""

from __future__ import annotations

import hashlib
import posixpath
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from tierfs.cli import cli, open_store
from tierfs.config import Settings, format_size, load, parse_size, shown
from tierfs.errors import NotFound, UserError

if TYPE_CHECKING:
    from tierfs.store.objects import ObjectStore


def _is_url(arg: str) -> bool:
    return "://" in arg


def _open(url: str, config_file: Path | None) -> tuple[ObjectStore, str, Settings]:
    """The store holding ``url``'s parent, and the object's key in it."""
    scheme, rest = url.split("://", 1)
    parent, key = posixpath.split(rest.rstrip("/"))
    if not key:
        raise UserError(f"{url} names no object: give s3://bucket/path/to/file")
    settings = load(config_file, {"lake_url": f"{scheme}://{parent}"})
    return open_store(settings), key, settings


def _bar(label: str, total: int) -> object:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    return Progress(TextColumn(f"[bold]{label}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), transient=True, disable=not sys.stderr.isatty())


@cli.command()
@click.argument("src")
@click.argument("dst")
@click.option("--config", "config_file", type=click.Path(path_type=Path), metavar="FILE",
              help="TOML settings file (endpoint, credentials, [write] part_size and upload_concurrency).")
@click.option("--part-size", metavar="SIZE", help="Size of one part (upload) or ranged read (download).  [default: 32MiB]")
@click.option("--jobs", "-j", type=click.IntRange(min=1), help="Parts in flight at once.  [default: 4]")
def cp(src: str, dst: str, config_file: Path | None, part_size: str | None, jobs: int | None) -> None:
    """Copy a large file into the lake or out of it, without a mount.

    One of SRC and DST is a lake URL (s3://bucket/key, gs://…, az://…,
    file:///…), the other a local path. Uploads to S3 are multipart with
    parts in parallel; downloads are ranged reads in parallel. Either way,
    running the same command again after an interruption goes on from where
    it stopped, and the target appears only once it is complete.

    \b
    Examples:
      tierfs cp ckpt/epoch9.pt s3://ml-lake/models/run7/epoch9.pt --config s3.toml
      tierfs cp s3://ml-lake/models/run7/epoch9.pt /nvme/epoch9.pt --config s3.toml
    """
    if _is_url(src) == _is_url(dst):
        raise UserError("one of SRC and DST must be a lake URL (s3://…, gs://…, az://…, file:///…) "
                        "and the other a local path")
    url = dst if _is_url(dst) else src
    try:
        if _is_url(dst):
            _upload(Path(src), dst, config_file, part_size, jobs)
        else:
            _download(src, Path(dst), config_file, part_size, jobs)
    except PermissionError as exc:
        raise UserError(f"access to {url} was refused ({exc}): check the credentials") from None
    except (NotFound, FileNotFoundError):
        raise UserError(f"{url}: the bucket or prefix does not exist") from None
    except OSError as exc:  # the local side: a name too long, a directory where a file goes, a full disk
        raise UserError(f"cannot copy {src} to {dst}: {exc.strerror or exc}") from None


def _sizes(settings: Settings, part_size: str | None, jobs: int | None) -> tuple[int, int]:
    try:
        size = parse_size(part_size) if part_size else settings.part_size
    except ValueError as exc:
        raise UserError(f"--part-size {shown(part_size)}: expected {exc}") from None
    if size < 5 * 1024**2:
        raise UserError(f"--part-size {part_size}: must be 5MiB at least (S3's smallest part)")
    return size, jobs or settings.upload_concurrency


def _upload(src: Path, dst: str, config_file: Path | None, part_size: str | None, jobs: int | None) -> None:
    from tierfs.store.upload import Uploader, UploadState

    if not src.is_file():
        raise UserError(f"{src} is not a file")
    if dst.endswith("/"):
        dst += src.name
    store, key, settings = _open(dst, config_file)
    size, concurrency = _sizes(settings, part_size, jobs)
    uploader = Uploader(store, size, concurrency)
    # The resume state is named by what is copied where: the same command resumes.
    # (surrogateescape: a local name that is not UTF-8 has its bytes all the same)
    tag = hashlib.sha256(f"{src.resolve()}\0{dst}".encode("utf-8", "surrogateescape")).hexdigest()[:16]
    state_dir = settings.resolved_cache_dir().parent / "cp"
    state_dir.mkdir(parents=True, exist_ok=True)
    state_path = state_dir / f"{tag}.json"
    st = src.stat()
    state = UploadState.load(state_path)
    if state is not None and state.matches(key, st.st_size, st.st_mtime_ns, size) and state.parts:
        click.echo(f"resuming: {len(state.parts)} part(s) already in the store")
    with _bar("upload", st.st_size) as bar:  # type: ignore[attr-defined]
        task = bar.add_task("upload", total=st.st_size)
        entry = uploader.upload(src, key, state_path if uploader.multipart else None,
                                progress=lambda n: bar.advance(task, n))
    click.echo(f"{src} -> {dst}: {format_size(entry.size)}")


def _download(src: str, dst: Path, config_file: Path | None, part_size: str | None, jobs: int | None) -> None:
    from tierfs.store.download import download

    store, key, settings = _open(src, config_file)
    size, concurrency = _sizes(settings, part_size, jobs)
    try:
        entry = store.stat(key)
    except NotFound:
        raise UserError(f"{src} does not exist") from None
    if entry.ref is None:
        raise UserError(f"{src} is a directory; tierfs cp copies one file")
    if dst.is_dir():
        dst = dst / posixpath.basename(key)
    with _bar("download", entry.size) as bar:  # type: ignore[attr-defined]
        task = bar.add_task("download", total=entry.size)
        already = download(store, entry.ref, dst, size, concurrency, progress=lambda n: bar.advance(task, n))
    if already:
        click.echo(f"resumed: {format_size(already)} had been fetched before")
    click.echo(f"{src} -> {dst}: {format_size(entry.size)}")
