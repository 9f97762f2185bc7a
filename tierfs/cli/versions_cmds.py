"""`tierfs snapshot …` and `tierfs gc`: dataset versions, without a mount."""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from tierfs.cli import cli, open_store
from tierfs.config import MAX_FILE_BYTES, format_size, load
from tierfs.errors import UserError

if TYPE_CHECKING:
    from tierfs.store.objects import ObjectStore

_CONFIG = click.option("--config", "config_file", type=click.Path(path_type=Path),
                       help="TOML settings file (endpoint, credentials).")


def open_lake(lake_url: str, config_file: Path | None) -> ObjectStore:
    store = open_store(load(config_file, {"lake_url": served_lake(lake_url)}))
    store.check()
    return store


def served_lake(lake_url: str) -> str:
    """LAKE_URL as given, or the lake URL a tierfs mount serves when it names the mount's root.

    Through the mount the lake's ``.tierfs/`` is hidden (and read-only), so a
    mount taken for a local lake would list no snapshots and make none.
    """
    local = lake_url.removeprefix("file://") if lake_url.startswith("file://") or "://" not in lake_url else ""
    if not local:
        return lake_url
    from tierfs.cli.mount_cmds import read_stats
    from tierfs.fuse.mountpoint import mount_holding

    path = os.path.abspath(local)
    mount = mount_holding(path)
    if mount is None:
        return lake_url
    served: str = read_stats(Path(mount))["lake"]
    if path != mount:
        raise UserError(f"{lake_url} is inside the tierfs mount {mount}: give LAKE_URL as the mount's root "
                        f"({mount}) or as the lake URL it serves ({served})")
    return served


def _place(url: str) -> tuple[str, str]:
    """(scheme, bucket/prefix or absolute path without slashes at the ends): where a lake URL points."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "file", url
    scheme = _SCHEME_ALIASES.get(scheme.lower(), scheme.lower())
    return scheme, (os.path.normpath("/" + rest) if scheme == "file" else rest).strip("/")


_SCHEME_ALIASES = {"local": "file", "s3a": "s3", "gcs": "gs", "abfs": "az", "abfss": "az"}


def _within(path: str, root: str) -> bool:
    return not root or path == root or path.startswith(root + "/")


def _mounts_of_other_lakes(store: ObjectStore) -> Iterator[tuple[str, str, str]]:
    """(mountpoint, lake URL, its place) of each tierfs mount on this host of another lake URL of the store's
    provider that holds this lake or lies in it: what it shows under .snapshots/ are other snapshots."""
    from tierfs.cli.mount_cmds import read_stats
    from tierfs.fuse.mountpoint import tierfs_mounts

    scheme, here = _place(store.url)
    if scheme == "memory":
        return  # a memory:// lake is its process's own
    for mnt in tierfs_mounts():
        try:
            served: str = read_stats(Path(mnt))["lake"]
        except UserError:
            continue  # dead, or gone meanwhile
        other, there = _place(served)
        if other == scheme and there != here and (_within(here, there) or _within(there, here)):
            yield mnt, served, there


def _note_mounts_not_showing(store: ObjectStore, meta: Any) -> None:
    """Name the mounts here that hold the snapshot's files but will not show it, and the command that makes
    one they do show: a snapshot belongs to the lake URL it was made with (its .tierfs/)."""
    files = f"{_place(store.url)[1]}/{meta.prefix}".strip("/")
    for mnt, served, there in _mounts_of_other_lakes(store):
        if not _within(files, there):
            continue  # a mount of another part of the lake: it has none of these files
        prefix = files[len(there):].strip("/")
        argv = ["tierfs", "snapshot", "create", mnt, prefix, meta.name]
        if meta.dataset != prefix.rsplit("/", 1)[-1]:
            argv += ["--dataset", meta.dataset]
        click.echo(f"note: the mount at {mnt} serves {served} and will not show {meta.dataset}@{meta.name}: a mount "
                   f"shows the snapshots made with its own lake URL; {shlex.join(argv)} makes one it shows", err=True)


@cli.group()
def snapshot() -> None:
    """Freeze, list, compare and delete dataset versions.

    A snapshot freezes every object under a prefix of the lake. On a store that
    keeps object versions it pins their version ids and copies nothing;
    otherwise each object is copied once, server side, into an area of the
    lake. Mounted, snapshots appear read-only under MOUNT/.snapshots/DATASET/NAME/.

    A snapshot belongs to the LAKE_URL it is made with: a mount shows those made
    with the URL it mounted (a prefix's URL is a lake of its own). LAKE_URL may
    be a mount's root too, which stands for the URL it mounted.
    """


@snapshot.command("create")
@click.argument("lake_url")
@click.argument("dataset_prefix")
@click.argument("name")
@click.option("--dataset", help="Dataset name (default: the last component of DATASET_PREFIX).")
@click.option("-m", "--message", default="", help="What this version is.")
@click.option("--meta", "metas", multiple=True, metavar="KEY=VALUE",
              help="User metadata (sample counts, preprocessing, license…); repeatable. JSON values are parsed.")
@click.option("--meta-file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="A JSON object of user metadata.")
@click.option("--mode", type=click.Choice(["auto", "pinned", "copy"]), default="auto", show_default=True,
              help="pinned: record version ids (versioned stores); copy: server-side copies.")
@click.option("--jobs", default=32, show_default=True, type=click.IntRange(min=1),
              help="Objects copied in parallel (server-side copies: each waits on the store, not on this machine).")
@_CONFIG
def snapshot_create(lake_url: str, dataset_prefix: str, name: str, dataset: str | None, message: str,
                    metas: tuple[str, ...], meta_file: Path | None, mode: str, jobs: int,
                    config_file: Path | None) -> None:
    """Freeze DATASET_PREFIX of the lake as snapshot NAME."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from tierfs.versions.create import Progress as Done
    from tierfs.versions.create import create_snapshot

    metadata = _metadata(metas, meta_file)
    store = open_lake(lake_url, config_file)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(bar_width=None),
                  TextColumn("{task.fields[files]} files, {task.fields[size]}"), TimeElapsedColumn(),
                  transient=True, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task(f"snapshot {name}", total=None, files=0, size="0 B")

        def progress(p: Done) -> None:
            bar.update(task, files=p.files, size=format_size(p.bytes))

        meta = create_snapshot(store, dataset_prefix, name, dataset=dataset, message=message,
                               metadata=metadata, mode=mode, jobs=jobs, on_progress=progress)
    click.echo(f"created {meta.dataset}@{meta.name} ({meta.mode}): {meta.file_count} files, "
               f"{format_size(meta.total_size)}, from {store.url}/{meta.prefix}")
    _note_mounts_not_showing(store, meta)


@snapshot.command("list")
@click.argument("lake_url")
@click.argument("dataset", required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per snapshot.")
@_CONFIG
def snapshot_list(lake_url: str, dataset: str | None, as_json: bool, config_file: Path | None) -> None:
    """List datasets and their snapshots (one snapshot a line, oldest first)."""
    from tierfs.versions.catalog import list_datasets, list_snapshots
    from tierfs.versions.manifest import validate_name

    if dataset:
        validate_name("dataset", dataset)  # (a '..' in it would list somewhere else)
    store = open_lake(lake_url, config_file)
    for mnt, served, _ in _mounts_of_other_lakes(store):
        click.echo(f"note: the mount at {mnt} serves {served}: its .snapshots/ shows the snapshots made with that "
                   f"URL (tierfs snapshot list {mnt}), not those of {store.url}", err=True)
    for ds in [dataset] if dataset else list_datasets(store):
        for m in list_snapshots(store, ds):
            if as_json:
                click.echo(json.dumps(_summary(m)))
            else:
                click.echo(f"{m.dataset}@{m.name}\t{m.created_at[:19]}Z\t{m.file_count} files\t"
                           f"{format_size(m.total_size)}\t{m.mode}\t{m.message}")


@snapshot.command("show")
@click.argument("lake_url")
@click.argument("dataset")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@_CONFIG
def snapshot_show(lake_url: str, dataset: str, name: str, as_json: bool, config_file: Path | None) -> None:
    """Metadata, file count and total size of one snapshot."""
    from tierfs.versions.catalog import open_snapshot

    m = open_snapshot(open_lake(lake_url, config_file), dataset, name).meta
    if as_json:
        click.echo(json.dumps(_summary(m), indent=2))
        return
    click.echo(f"snapshot   {m.dataset}@{m.name}\nprefix     {m.prefix or '/'}\nmode       {m.mode}\n"
               f"created    {m.created_at} by {m.creator}\nmessage    {m.message}\n"
               f"files      {m.file_count} in {m.dir_count} directories\nsize       {format_size(m.total_size)} ({m.total_size} bytes)")
    for k, v in sorted(m.metadata.items()):
        click.echo(f"meta       {k} = {json.dumps(v)}")


@snapshot.command("diff")
@click.argument("lake_url")
@click.argument("dataset")
@click.argument("a")
@click.argument("b")
@click.option("--json", "as_json", is_flag=True, help="A JSON document: added, removed, changed, totals.")
@_CONFIG
def snapshot_diff(lake_url: str, dataset: str, a: str, b: str, as_json: bool, config_file: Path | None) -> None:
    """What changed from snapshot A to snapshot B: added, removed and changed files."""
    from tierfs.versions.catalog import diff, open_snapshot

    store = open_lake(lake_url, config_file)
    ra, rb = open_snapshot(store, dataset, a), open_snapshot(store, dataset, b)
    changes = list(diff(ra, rb))
    if as_json:
        doc: dict[str, Any] = {"dataset": dataset, "from": a, "to": b, "added": [], "removed": [], "changed": []}
        for c in changes:
            doc[c.kind].append({"path": c.path, "old_size": c.old_size, "new_size": c.new_size})
        doc["totals"] = {k: len(doc[k]) for k in ("added", "removed", "changed")}
        click.echo(json.dumps(doc, indent=2))
        return
    mark = {"added": "+", "removed": "-", "changed": "M"}
    for c in changes:
        sizes = {"added": format_size(c.new_size or 0), "removed": format_size(c.old_size or 0),
                 "changed": f"{format_size(c.old_size or 0)} -> {format_size(c.new_size or 0)}"}[c.kind]
        click.echo(f"{mark[c.kind]} {c.path}\t{sizes}")
    counts = {k: sum(1 for c in changes if c.kind == k) for k in ("added", "removed", "changed")}
    click.echo(f"{dataset}: {a} -> {b}: {counts['added']} added, {counts['removed']} removed, {counts['changed']} changed")


@snapshot.command("delete")
@click.argument("lake_url")
@click.argument("dataset")
@click.argument("name")
@_CONFIG
def snapshot_delete(lake_url: str, dataset: str, name: str, config_file: Path | None) -> None:
    """Delete a snapshot's manifest. Its copies stay until `tierfs gc`."""
    from tierfs.versions.catalog import delete_snapshot

    m = delete_snapshot(open_lake(lake_url, config_file), dataset, name)
    click.echo(f"deleted {m.dataset}@{m.name} ({m.file_count} files); run tierfs gc to free unreferenced copies")


@cli.command()
@click.argument("lake_url")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.option("--grace", default=3600.0, show_default=True,
              help="Keep copies younger than this many seconds (a snapshot may be being created).")
@_CONFIG
def gc(lake_url: str, dry_run: bool, grace: float, config_file: Path | None) -> None:
    """Remove snapshots' copies that no snapshot references.

    While a snapshot is being created (copy mode) gc removes nothing and says
    so: that snapshot may reuse any copy. A snapshot started during gc waits
    for it to finish.
    """
    from rich.progress import Progress, SpinnerColumn, TextColumn

    from tierfs.versions.catalog import gc as run_gc

    if not grace >= 0:  # (written so: NaN compares false with every age, and would keep no copy at all)
        raise click.BadParameter(f"{grace} is not a number of seconds, 0 or more", param_hint="'--grace'")

    store = open_lake(lake_url, config_file)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), transient=True,
                  disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("gc")
        report = run_gc(store, dry_run=dry_run, grace_seconds=grace,
                        on_progress=lambda what: bar.update(task, description=what))
    if report.deferred:
        click.echo(f"gc: nothing removed: {report.deferred}; run gc again when it is done")
        return
    for key, size in report.removed:
        click.echo(f"{'would remove' if dry_run else 'removed'} {key}\t{format_size(size)}")
    verb = "would free" if dry_run else "freed"
    click.echo(f"gc: {len(report.removed)} unreferenced copies, {verb} {format_size(report.removed_bytes)}; "
               f"{report.kept} kept, {report.referenced} referenced by snapshots")


def _metadata(metas: tuple[str, ...], meta_file: Path | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if meta_file is not None:
        try:
            with meta_file.open("rb") as fh:
                raw = fh.read(MAX_FILE_BYTES + 1)  # (a device such as /dev/zero never ends)
            if len(raw) > MAX_FILE_BYTES:
                raise UserError(f"--meta-file {meta_file} is larger than {MAX_FILE_BYTES >> 20} MiB")
            loaded = json.loads(raw)
        except OSError as exc:
            raise UserError(f"--meta-file {meta_file} cannot be read: {exc.strerror}") from None
        except (ValueError, RecursionError) as exc:  # (not UTF-8 is a ValueError too; RecursionError: [[[[…)
            raise UserError(f"--meta-file {meta_file} is not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise UserError(f"--meta-file {meta_file} must hold a JSON object")
        out.update(loaded)
    for item in metas:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--meta {item!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except (ValueError, RecursionError):  # not JSON: the text itself
            out[key] = value
    return out


def _summary(m: Any) -> dict[str, Any]:
    return {"dataset": m.dataset, "name": m.name, "prefix": m.prefix, "mode": m.mode, "message": m.message,
            "created_at": m.created_at, "creator": m.creator, "file_count": m.file_count,
            "dir_count": m.dir_count, "total_size": m.total_size, "metadata": m.metadata}


@cli.command()
@click.argument("lake_url")
@click.option("--small-count", default=200, show_default=True, help="How many small objects.")
@click.option("--small-size", default="100KiB", show_default=True, help="Size of a small object.")
@click.option("--large-count", default=4, show_default=True, help="How many large objects.")
@click.option("--large-size", default="64MiB", show_default=True, help="Size of a large object.")
@click.option("--jobs", default=8, show_default=True, help="Requests in parallel.")
@_CONFIG
def bench(lake_url: str, small_count: int, small_size: str, large_count: int, large_size: str, jobs: int,
          config_file: Path | None) -> None:
    """Measure the object store itself, without the mount.

    Upload and download throughput and p50/p95 latency for small and large
    objects, written under LAKE_URL/.tierfs/bench/ and removed afterwards:
    what the backend can give, before blaming the mount.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from tierfs.config import parse_size
    from tierfs.store.bench import run_bench

    try:
        ssize, lsize = parse_size(small_size), parse_size(large_size)
    except ValueError as exc:
        raise UserError(f"--small-size/--large-size: expected {exc}") from None
    store = open_lake(lake_url, config_file)
    total = 2 * (small_count + large_count)
    with Progress(TextColumn("[bold]bench"), BarColumn(), MofNCompleteColumn(), transient=True,
                  disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("bench", total=total)
        rows = run_bench(store, small_count, ssize, large_count, lsize, jobs,
                         on_step=lambda _op, n: bar.advance(task, n))
    click.echo(f"{'operation':<16}{'objects':>8}{'size':>12}{'MB/s':>10}{'obj/s':>10}{'p50 ms':>10}{'p95 ms':>10}")
    for r in rows:
        click.echo(f"{r.op:<16}{r.count:>8}{format_size(r.size):>12}{r.mb_per_s:>10.1f}"
                   f"{r.count / r.seconds:>10.1f}{r.p50_ms:>10.1f}{r.p95_ms:>10.1f}")
    click.echo(f"{store.url}: {jobs} requests in parallel; scratch objects removed")
