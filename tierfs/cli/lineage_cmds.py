"""`tierfs lineage …`: record which files (which bytes) a job read, list and compare read-sets, pin one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from tierfs.cli import cli
from tierfs.cli.versions_cmds import _CONFIG, open_lake
from tierfs.config import format_size
from tierfs.errors import UserError


@cli.group()
def lineage() -> None:
    """Record the read-set of a job: every file it opened, and which bytes.

    A mount records, for a running job, the first open of each file: the view
    (live, or a snapshot), the path and the object's identity (key, version id
    or ETag, size). The read-set is kept in the lake under .tierfs/lineage/NAME/;
    `pin` turns it into a snapshot, so the run can be repeated on the same
    bytes even if it read the live view.

    \b
    Examples:
      tierfs lineage start run-42 /mnt/lake --pid $TRAINER_PID
      tierfs lineage stop run-42 /mnt/lake
      tierfs lineage show s3://ml-lake run-42
      tierfs lineage diff s3://ml-lake run-41 run-42
      tierfs lineage pin s3://ml-lake run-42 imagenet run-42
    """


def _mount_root(path: Path) -> Path:
    from tierfs.fuse.mountpoint import mount_holding

    root = mount_holding(os.path.abspath(path))
    if root is None:
        raise UserError(f"{path} is not a tierfs mount")
    return Path(root)


@lineage.command("start")
@click.argument("name")
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.option("--pid", type=int, help="Record only opens by this process and its descendants (DataLoader "
              "workers included).  [default: every process's opens on the mount]")
@click.option("--flush-seconds", type=click.FloatRange(0.05, 3600), default=5.0, show_default=True,
              help="How often the reads are written to the lake: what a crash of the daemon may lose.")
def lineage_start(name: str, mountpoint: Path, pid: int | None, flush_seconds: float) -> None:
    """Start recording job NAME's reads on the mount at MOUNTPOINT.

    Each file is recorded once per job, at its first open (and again if it is
    opened as other bytes later). The reads are written to the lake in
    batches; `stop` writes the last one.
    """
    from tierfs import control
    from tierfs.versions.manifest import validate_name

    validate_name("job", name)
    root = _mount_root(mountpoint)
    req: dict[str, object] = {"op": "lineage_start", "name": name, "flush_seconds": flush_seconds}
    if pid is not None:
        req["pid"] = pid
    control.request(root, req, f"start lineage job {name!r}")
    who = f"process {pid} and its descendants" if pid is not None else "every process"
    click.echo(f"recording the reads of {who} on {root} as job {name}; stop with: tierfs lineage stop {name} {root}")


@lineage.command("stop")
@click.argument("name")
@click.argument("mountpoint", type=click.Path(path_type=Path))
def lineage_stop(name: str, mountpoint: Path) -> None:
    """Stop job NAME: its last reads are written to the lake, then its stop record."""
    from tierfs import control

    root = _mount_root(mountpoint)
    reply = control.request(root, {"op": "lineage_stop", "name": name}, f"stop lineage job {name!r}", timeout=120)
    lost = f"; {reply['lost']} not recorded (the lake could not be written)" if reply.get("lost") else ""
    click.echo(f"stopped {name}: {reply.get('count', 0)} files read{lost}")


@lineage.command("list")
@click.argument("lake_url")
@_CONFIG
def lineage_list(lake_url: str, config_file: Path | None) -> None:
    """The jobs whose read-sets the lake holds, one a line."""
    from tierfs.lineage.readset import list_jobs

    for name in list_jobs(open_lake(lake_url, config_file)):
        click.echo(name)


@lineage.command("show")
@click.argument("lake_url")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file read (view, path, key, "
              "size, etag, version, identity …).")
@_CONFIG
def lineage_show(lake_url: str, name: str, as_json: bool, config_file: Path | None) -> None:
    """The files job NAME read: view, path, size and identity, one a line."""
    from tierfs.lineage.readset import load, rows

    rs = load(open_lake(lake_url, config_file), name)
    if as_json:
        for row in rows(rs):
            click.echo(json.dumps(row, ensure_ascii=False))
        return
    total = 0
    for row in rows(rs):
        total += row["size"]
        ident = row.get("version") or row.get("sha256") or row.get("etag") or ""
        click.echo(f"{row['view']}\t{row['path']}\t{format_size(row['size'])}\t{ident}")
    stop = rs.stop or {}
    click.echo(f"{name}: {len(rs.reads)} files, {format_size(total)}; started {rs.start.get('started_at')} on "
               f"{rs.start.get('host')}; {rs.state}" + (f" {stop.get('stopped_at')}" if stop else ""), err=True)


@lineage.command("diff")
@click.argument("lake_url")
@click.argument("a")
@click.argument("b")
@click.option("--json", "as_json", is_flag=True, help="A JSON document: added, removed, changed.")
@_CONFIG
def lineage_diff(lake_url: str, a: str, b: str, as_json: bool, config_file: Path | None) -> None:
    """What job B read that job A did not (+), the reverse (-), and the same file read as other bytes (M)."""
    from tierfs.lineage.readset import diff, load, to_row

    store = open_lake(lake_url, config_file)
    d = diff(load(store, a), load(store, b))
    if as_json:
        click.echo(json.dumps({"from": a, "to": b, "added": [to_row(r) for r in d.added],
                               "removed": [to_row(r) for r in d.removed],
                               "changed": [{"old": to_row(x), "new": to_row(y)} for x, y in d.changed]},
                              indent=2, ensure_ascii=False))
        return
    for r in d.added:
        click.echo(f"+ {r.view}\t{r.path}")
    for r in d.removed:
        click.echo(f"- {r.view}\t{r.path}")
    for x, y in d.changed:
        click.echo(f"M {y.view}\t{y.path}\t{format_size(x.ref.size)} -> {format_size(y.ref.size)}")
    click.echo(f"{a} -> {b}: {len(d.added)} added, {len(d.removed)} removed, {len(d.changed)} changed")


@lineage.command("pin")
@click.argument("lake_url")
@click.argument("name")
@click.argument("dataset")
@click.argument("version")
@click.option("--prefix", help="The snapshot's root in the lake  [default: the deepest directory holding every "
              "file read]")
@click.option("-m", "--message", default="", help="What this version is.")
@_CONFIG
def lineage_pin(lake_url: str, name: str, dataset: str, version: str, prefix: str | None, message: str,
                config_file: Path | None) -> None:
    """Make snapshot DATASET@VERSION of exactly the bytes job NAME read.

    On a store that keeps versions the recorded version ids are pinned. On one
    that does not, each file is copied if it is unchanged since it was read;
    if any changed, no snapshot is made and the changed paths are named.
    """
    from tierfs.lineage.readset import pin

    meta = pin(open_lake(lake_url, config_file), name, dataset, version, prefix, message)
    click.echo(f"created {meta.dataset}@{meta.name} ({meta.mode}): {meta.file_count} files, "
               f"{format_size(meta.total_size)}, the read-set of {name}")
