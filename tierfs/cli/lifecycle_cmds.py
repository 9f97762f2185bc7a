"""`tierfs lake init`, `tierfs cost` and `tierfs lifecycle plan`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from tierfs.cli import cli, open_store
from tierfs.cli.versions_cmds import open_lake
from tierfs.config import format_size, load
from tierfs.daemon import setup_logging
from tierfs.errors import UserError

if TYPE_CHECKING:
    from tierfs.sidecar.cost import CostReport
    from tierfs.sidecar.rules import RuleSet
    from tierfs.store.objects import ObjectStore

_CONFIG = click.option("--config", "config_file", type=click.Path(path_type=Path), metavar="FILE",
                       help="TOML settings file (endpoint, credentials, [prices]).")


@cli.group()
def lake() -> None:
    """Lay out a lake."""


@lake.command("init")
@click.argument("lake_url")
@click.option("--rules-file", type=click.Path(path_type=Path), default=Path("lifecycle.toml"), show_default=True,
              help="Where to write the starting rule file.")
@_CONFIG
def lake_init(lake_url: str, rules_file: Path, config_file: Path | None) -> None:
    """Create the usual zones (raw, processed, curated, models, experiments) and a rule file to edit."""
    from tierfs.sidecar.cost import provider_of
    from tierfs.sidecar.starter import ZONES, starter_rules

    store = open_store(load(config_file, {"lake_url": lake_url}))
    for zone in ZONES:
        if not store.exists(f"{zone}/README.txt"):
            store.put_bytes(f"{zone}/README.txt", f"The {zone} zone of this lake (made by tierfs lake init).\n".encode())
    if rules_file.exists():
        raise UserError(f"{rules_file} exists; not overwriting it (give --rules-file)")
    rules_file.write_text(starter_rules(provider_of(lake_url)))
    click.echo(f"zones {', '.join(ZONES)} ready in {lake_url}; starting rules in {rules_file}")


@cli.command()
@click.argument("lake_url")
@click.option("--rules", "rules_file", type=click.Path(path_type=Path),
              help="Rules to price (default: the starting rules of tierfs lake init).")
@_CONFIG
def cost(lake_url: str, rules_file: Path | None, config_file: Path | None) -> None:
    """Bytes and monthly storage cost per prefix and storage class, and what the rules would save."""
    rep, _ = _report(lake_url, rules_file, config_file)
    click.echo(f"{'prefix':<20}{'class':<22}{'objects':>9}{'bytes':>12}{'USD/month':>12}")
    for (top, cls), (n, b, usd) in sorted(rep.cells.items()):
        click.echo(f"{top:<20}{cls:<22}{int(n):>9}{format_size(b):>12}{usd:>12.4f}")
    click.echo(f"total: {rep.total:.4f} USD/month; with the {'given' if rules_file else 'default'} lifecycle: "
               f"{rep.after:.4f} (saves {rep.total - rep.after:.4f}, {len(rep.actions)} objects change)")


@cli.group()
def lifecycle() -> None:
    """Lifecycle rules: storage-class transitions and expiration, priced before they are applied."""


@lifecycle.command("plan")
@click.argument("lake_url")
@click.option("--rules", "rules_file", type=click.Path(path_type=Path), required=True)
@_CONFIG
def lifecycle_plan(lake_url: str, rules_file: Path, config_file: Path | None) -> None:
    """What the rules would change now, and the monthly cost before and after."""
    from tierfs.sidecar.retention import expired_snapshots

    store = open_lake(lake_url, config_file)
    rep, rules = _report(lake_url, rules_file, config_file, store)
    for meta, why in expired_snapshots(store, rules.retention, time.time()):
        click.echo(f"snapshot {meta.dataset}@{meta.name}	expire	(retention: {why})")
    for a in rep.actions:
        what = f"-> {a.to_class}" if a.kind == "transition" else "expire"
        click.echo(f"{a.key}\t{what}\t(rule {a.rule})")
    for key, why in rep.kept:
        click.echo(f"{key}\tkept: {why}")
    click.echo(f"{len(rep.actions)} changes, {len(rep.kept)} kept; monthly cost {rep.total:.4f} -> "
               f"{rep.after:.4f} USD ({rep.provider} prices)")


def _rules_only(lake_url: str, rules_file: Path) -> RuleSet:
    from tierfs.sidecar.cost import provider_of
    from tierfs.sidecar.rules import load_rules

    return load_rules(rules_file, provider_of(lake_url))


def _report(lake_url: str, rules_file: Path | None, config_file: Path | None,
            store: ObjectStore | None = None) -> tuple[CostReport, RuleSet]:
    import tomllib

    from tierfs.sidecar.cost import plan_lake, provider_of
    from tierfs.sidecar.rules import load_rules, parse_rules
    from tierfs.sidecar.starter import starter_rules

    provider = provider_of(lake_url)
    rules = (load_rules(rules_file, provider) if rules_file
             else parse_rules(tomllib.loads(starter_rules(provider)), provider, "default rules"))
    store = store or open_lake(lake_url, config_file)
    return plan_lake(store, load(config_file, {"lake_url": lake_url}), provider, rules, time.time()), rules


@lifecycle.command("apply")
@click.argument("lake_url")
@click.option("--rules", "rules_file", type=click.Path(path_type=Path), required=True)
@click.option("-j", "--jobs", type=click.IntRange(1, 256), default=16, show_default=True,
              help="Objects changed at a time.")
@click.option("--native", is_flag=True, help="Also install the rules as the bucket's own lifecycle configuration (S3, GCS), replacing it.")
@_CONFIG
def lifecycle_apply(lake_url: str, rules_file: Path, jobs: int, native: bool, config_file: Path | None) -> None:
    """Perform what `plan` lists (idempotent: a second run changes nothing)."""
    import sys

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from tierfs.sidecar.lifecycle import apply_actions, install_native
    from tierfs.sidecar.retention import expire_snapshots, expired_snapshots

    store = open_lake(lake_url, config_file)
    # Retention first: what a deleted snapshot pinned is no longer protected below.
    gone = expire_snapshots(store, expired_snapshots(store, _rules_only(lake_url, rules_file).retention, time.time()))
    if gone:
        click.echo(f"expired {gone} snapshots by retention; run tierfs gc to free their copies")
    rep, rules = _report(lake_url, rules_file, config_file, store)
    with Progress(TextColumn("[bold]apply"), BarColumn(), MofNCompleteColumn(), transient=True,
                  disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("apply", total=len(rep.actions))
        moved, expired = apply_actions(store, rep.actions, rep.pinned_versions, on_done=lambda _a: bar.advance(task),
                                       jobs=jobs)
    click.echo(f"applied {rules_file}: {moved} transitioned, {expired} expired, {len(rep.kept)} kept (plan says why); "
               f"monthly cost now about {rep.after:.4f} USD")
    if native:
        bucket = install_native(store, rules)
        click.echo(f"installed {len(rules.rules)} rules as the lifecycle configuration of bucket {bucket}")


@lifecycle.command("export")
@click.argument("lake_url")
@click.option("--rules", "rules_file", type=click.Path(path_type=Path), required=True)
def lifecycle_export(lake_url: str, rules_file: Path) -> None:
    """Print the rules as the provider's own lifecycle document (S3, GCS or Azure JSON).

    The provider then applies them itself, in place. How to install the document
    is printed on stderr, so `> FILE` keeps only the JSON.
    """
    import json

    from fsspec.core import split_protocol

    from tierfs.sidecar.cost import provider_of
    from tierfs.sidecar.native import INSTALL_HINT, document

    scheme, path = split_protocol(lake_url)
    bucket, _, prefix = (path or "").strip("/").partition("/")
    if scheme not in ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss") or not bucket:
        raise UserError(f"{lake_url} is not a bucket URL: export is for s3://…, gs://… and az://container/… lakes")
    provider = provider_of(lake_url)
    rules = _rules_only(lake_url, rules_file)
    click.echo(json.dumps(document(provider, rules, bucket, f"{prefix}/" if prefix else ""), indent=2))
    click.echo(f"install with: {INSTALL_HINT[provider].format(bucket=bucket)}", err=True)


@cli.command()
@click.argument("lake_url")
@click.argument("keys", nargs=-1, required=True)
@click.option("--days", type=click.IntRange(1, 3650), default=7, show_default=True,
              help="S3: how long the restored copy stays readable.")
@_CONFIG
def restore(lake_url: str, keys: tuple[str, ...], days: int, config_file: Path | None) -> None:
    """Make archived objects readable again (S3 Glacier restore, Azure rehydration, a local lake's class).

    KEYS are paths inside the lake, as a mount's read error names them.
    """
    from tierfs.store.classes import restore as restore_key

    store = open_lake(lake_url, config_file)
    for key in keys:
        click.echo(restore_key(store, key.strip("/"), days))


@cli.command()
@click.option("--config", "config_file", type=click.Path(path_type=Path), metavar="FILE", required=True,
              help="Sidecar TOML: [sidecar] options and [[job]] entries.")
def sidecar(config_file: Path) -> None:
    """Run the configured lifecycle and backup jobs on their schedules until SIGTERM."""
    import logging

    import trio

    from tierfs.sidecar.daemon import load_jobs, serve

    load_jobs(config_file)  # a bad file fails here, in one line, before anything starts
    setup_logging(logging.INFO)
    trio.run(serve, config_file)
