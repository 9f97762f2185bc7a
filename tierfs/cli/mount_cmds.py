"""`tierfs mount`, `umount` and `stats`."""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from tierfs import background, daemon
from tierfs.cli import cli, mount_options
from tierfs.config import format_size, load
from tierfs.errors import UserError
from tierfs.secrecy import check_private, check_secret_files

log = logging.getLogger("tierfs")
STATS_XATTR = "user.tierfs.stats"
PID_XATTR = "user.tierfs.pid"


@cli.command()
@click.argument("lake_url", required=False)
@click.argument("mountpoint", type=click.Path(path_type=Path), required=False)
@click.option("--config", "config_file", type=click.Path(path_type=Path), metavar="FILE",
              help="TOML settings file; flags override it. Its [lake] url and [mount] mountpoint stand in for the arguments.")
@click.option("--endpoint", "s3_endpoint_url", metavar="URL",
              help="S3-compatible server, e.g. http://127.0.0.1:8333.  [config: [s3] endpoint_url]")
@click.option("--region", "s3_region", metavar="NAME", help="S3 region.  [config: [s3] region]")
@click.option("--profile", "s3_profile", metavar="NAME", help="AWS profile for the credentials.  [config: [s3] profile]")
@click.option("--cache-dir", metavar="DIR", help="Disk cache folder (default: a per-lake folder under ~/.cache/tierfs or "
              "/var/cache/tierfs).  [config: [cache] dir]")
@click.option("--cache-size", metavar="SIZE", help="Disk cache size, e.g. 50GiB; 0 turns the disk tier off.  "
              "[default: 10GiB; config: [cache] size]")
@click.option("--ram-size", metavar="SIZE", help="RAM tier size, e.g. 1GiB; 0 turns it off.  "
              "[default: 512MiB; config: [cache] ram_size]")
@click.option("--block-size", metavar="SIZE", help="Block size for reads and cache entries.  "
              "[default: 4MiB; config: [cache] block_size]")
@click.option("--random-read-unit", metavar="SIZE", help="A random read into a file of more than one block fetches "
              "what it asks rounded out to this, not the whole block; 0: whole blocks always.  "
              "[default: 64KiB; config: [cache] random_read_unit]")
@click.option("--metadata-ttl", metavar="SECONDS", help="Seconds listings and attributes are trusted before they are "
              "fetched again.  [default: 60; config: [metadata] ttl]")
@click.option("--redis", "redis_url", metavar="URL",
              help="Share blocks between nodes through Redis: redis://HOST:PORT/DB or rediss:// (TLS); the password "
                   "belongs in the config.  [config: [redis] url]")
@click.option("--redis-cluster", is_flag=True, default=None,
              help="The --redis URL names one node of a Redis Cluster: blocks spread over its shards, and a dead "
                   "shard costs misses, never errors.  [config: [redis] cluster]")
@click.option("--metrics", "metrics_listen", metavar="HOST:PORT", help="Serve Prometheus metrics there (off by default).  "
              "[config: [metrics] listen]")
@click.option("--log-file", metavar="FILE", help="Where the background daemon logs, rotated at [log] max_size "
              "(default: tierfs.log in the cache dir; none when stderr is systemd's journal).  [config: [log] file]")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), help="How much to log.  "
              "[default: info; config: [log] level]")
@click.option("--read-only", "read_only", is_flag=True, default=None,
              help="Refuse writes to the live view too (snapshots are always read-only).  [config: [mount] read_only]")
@click.option("--allow-other", "allow_other", is_flag=True, default=None,
              help="Let users other than the one mounting use the mount, as far as the modes below allow (the "
                   "kernel checks them).  [config: [fuse] allow_other]")
@click.option("--allow-root", "allow_root", is_flag=True, default=None,
              help="Let root use the mount too, besides the user mounting (not with --allow-other, which lets root "
                   "in already).  [config: [fuse] allow_root]")
@click.option("--uid", metavar="USER", help="Owner every file and directory shows (the lake keeps none): a user name "
              "or number.  [default: the user running tierfs; config: [fuse] uid]")
@click.option("--gid", metavar="GROUP", help="Group every file and directory shows: a group name or number (not "
              "implied by --uid).  [default: the group running tierfs; config: [fuse] gid]")
@click.option("--umask", metavar="OCTAL", help="Bits taken off every mode, as rclone's --umask: files 0666 and "
              "directories 0777 less it, e.g. 027 gives 0640 and 0750; also taken off --file-mode and --dir-mode "
              "when given with them.  [default: 022; config: [fuse] umask]")
@click.option("--file-mode", metavar="OCTAL", help="Mode of every file, e.g. 0640, as gcsfuse's --file-mode "
              "(a --umask given too is taken off it; snapshots show no write bits).  "
              "[default: 0644; config: [fuse] file_mode]")
@click.option("--dir-mode", metavar="OCTAL", help="Mode of every directory, e.g. 0750 (a --umask given too is "
              "taken off it).  [default: 0755; config: [fuse] dir_mode]")
@click.option("--nonempty", "allow_nonempty", is_flag=True, default=None,
              help="Mount over a directory that is not empty (its files are hidden meanwhile).  "
                   "[config: [fuse] nonempty]")
@click.option("--no-passthrough", "no_passthrough", is_flag=True, default=None,
              help="Serve every read through tierfs, never by FUSE passthrough from the disk tier's files.  "
                   "[config: [fuse] passthrough = false]")
@click.option("--fast-list", "fast_list", is_flag=True, default=None,
              help="List a folder with everything below it in one flat listing (rclone's --fast-list), up to "
                   "100,000 objects: a walk of a dataset's tree costs one listing, not one per folder; a larger "
                   "tree costs those pages more, then a level at a time.  [config: [metadata] fast_list]")
@click.option("--read-only-prefix", "read_only_prefixes", multiple=True, metavar="PREFIX",
              help="A part of the live view that refuses writes (repeat for more), e.g. datasets/.  "
                   "[config: [mount] read_only_prefixes]")
@click.option("--immutable-prefix", "immutable_prefixes", multiple=True, metavar="PREFIX",
              help="A part of the live view that never changes (repeat for more), e.g. datasets/imagenet/: its "
                   "listings and attributes are cached until remount, and it refuses writes.  "
                   "[config: [metadata] immutable_prefixes]")
@click.option("--shard-members", "shard_prefixes", multiple=True, metavar="PREFIX",
              help="Show each .tar object under PREFIX (a tar or WebDataset shard; repeat for more) as a read-only "
                   "directory of its members, e.g. datasets/wds/.  [config: [shards] prefixes]")
@click.option("--no-delete", "no_delete", is_flag=True, default=None,
              help="Refuse unlink, rmdir and rename over a file (EPERM), so rm -rf on one node cannot wipe the lake.  "
                   "[config: [mount] allow_delete = false]")
@click.option("--allow-readable-secrets", is_flag=True,
              help="Mount even though the --config file holds a secret and other users can read it.")
@click.option("-o", "options", multiple=True, metavar="OPT[,OPT...]",
              help="Mount options as fstab gives them: config=FILE, cache_dir=DIR, cache_size=SIZE, ro, allow_other, "
                   "uid=USER, file_mode=OCTAL, ...; fstab's own (_netdev, nofail, x-systemd.*) are ignored.")
@click.option("--foreground", "-f", is_flag=True, help="Stay in the foreground and log to stderr.")
@click.option("--ready-fd", type=int, hidden=True)
@click.option("--log-to-file", is_flag=True, hidden=True)  # (the background daemon: its log file, rotated)
def mount(lake_url: str | None, mountpoint: Path | None, config_file: Path | None, s3_endpoint_url: str | None,
          s3_region: str | None, s3_profile: str | None, cache_dir: str | None,
          cache_size: str | None, ram_size: str | None, block_size: str | None, random_read_unit: str | None,
          metadata_ttl: str | None, redis_url: str | None, redis_cluster: bool | None, metrics_listen: str | None,
          log_file: str | None, log_level: str | None, read_only: bool | None, allow_other: bool | None,
          allow_root: bool | None, uid: str | None, gid: str | None, umask: str | None, file_mode: str | None,
          dir_mode: str | None, allow_nonempty: bool | None, no_passthrough: bool | None, fast_list: bool | None,
          read_only_prefixes: tuple[str, ...], immutable_prefixes: tuple[str, ...],
          shard_prefixes: tuple[str, ...], no_delete: bool | None,
          allow_readable_secrets: bool, options: tuple[str, ...], foreground: bool, ready_fd: int | None,
          log_to_file: bool) -> None:
    """Mount LAKE_URL at MOUNTPOINT.

    LAKE_URL is an fsspec URL: file:///path, s3://bucket/prefix (endpoint and
    keys from the config's [s3] table or the usual AWS_* variables), gs://…,
    az://…, or memory:// for tests. Without --foreground the command returns
    once the mount is ready, or exits non-zero with the reason.

    The live view is writable: a file written there is staged on local disk
    and uploaded when it is closed or fsync'd, which return once the object
    store has it (docs/semantics.md).
    """
    try:
        opts = mount_options.parse(options)
        config_file = config_file or (Path(opts.config) if opts.config else None)
        allow_readable_secrets = allow_readable_secrets or opts.allow_readable_secrets
        foreground = foreground or opts.foreground
        settings = load(config_file, {**opts.overrides, **{k: v for k, v in {
            "lake_url": lake_url, "s3_endpoint_url": s3_endpoint_url, "s3_region": s3_region,
            "s3_profile": s3_profile, "allow_other": allow_other, "allow_nonempty": allow_nonempty,
            "allow_root": allow_root, "uid": uid, "gid": gid, "umask": umask, "file_mode": file_mode,
            "dir_mode": dir_mode, "passthrough": False if no_passthrough else None,
            "cache_dir": cache_dir, "cache_size": cache_size,
            "ram_size": ram_size, "block_size": block_size, "random_read_unit": random_read_unit,
            "metadata_ttl": metadata_ttl, "fast_list": fast_list,
            "log_file": log_file, "log_level": log_level, "redis_url": redis_url,
            "redis_cluster": redis_cluster or None,
            "metrics_listen": metrics_listen, "read_only": read_only or None,
            "read_only_prefixes": list(read_only_prefixes) or None, "allow_delete": False if no_delete else None,
            "immutable_prefixes": list(immutable_prefixes) or None,
            "shard_prefixes": list(shard_prefixes) or None,
        }.items() if v is not None}})
        settings = replace(settings, allow_readable_secrets=allow_readable_secrets)
        exposed = "; ".join(n for n in (
            check_private(config_file, settings, allow_readable_secrets) if config_file is not None else "",
            check_secret_files(settings, allow_readable_secrets)) if n)
        if mountpoint is None and settings.mountpoint:
            mountpoint = Path(settings.mountpoint)
        if not settings.lake_url or mountpoint is None:
            raise UserError("give LAKE_URL and MOUNTPOINT, or set [lake] url and [mount] mountpoint in --config")
        mountpoint = mountpoint.absolute()
        from tierfs.tiers.cache_dir import check_cache_dir, refuse_foreign

        # Before the daemon's log is written in there: someone else's dir is refused untouched.
        check_cache_dir(settings.resolved_cache_dir())
        refuse_foreign(settings.resolved_cache_dir())
        if not foreground:
            from tierfs.systemd import journal_stderr

            # Under systemd's journal the daemon keeps logging there (journald stores and rotates it).
            log_path = None if journal_stderr() else settings.resolved_log_file()
            argv, env, exposed_argv = background.daemon_argv(sys.argv[1:])
            if exposed_argv or os.environ.get("TIERFS_EXEC_DAEMON"):
                # A secret in argv stays out of the daemon's cmdline: a fresh interpreter, told it by env.
                pid, notes = background.spawn_daemon(argv, log_path, env=env)
            else:
                pid, notes = background.fork_daemon(functools.partial(daemon.serve, settings, mountpoint, exposed,
                                                                      log_path is not None), log_path)
            click.echo(f"mounted {settings.lake_url} at {mountpoint} (pid {pid}, log {log_path or 'to the journal'})")
            if exposed_argv:
                notes = "; ".join(n for n in (notes, f"{exposed_argv} was given on the command line, where any user "
                                              "can read it (ps): put it in a config file only root can read") if n)
            if exposed:
                notes = "; ".join(n for n in (notes, exposed) if n)
            if notes:
                click.echo(f"note: {notes}")
            return
        daemon.serve(settings, mountpoint, exposed, log_to_file, background.notify_ready(ready_fd))
    except UserError as exc:
        if foreground and ready_fd is not None:
            background.report_failure(ready_fd, f"{exc}")
        raise


@cli.command()
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.option("--lazy", is_flag=True, help="Detach now even if busy; finish when no longer in use.")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for the daemon to finish.")
def umount(mountpoint: Path, lazy: bool, timeout: float) -> None:
    """Unmount MOUNTPOINT and wait for its daemon to write its cache index and exit."""
    from tierfs.fuse.mountpoint import DEAD_MOUNT_ERRNOS, is_mounted, unmount, wait_for_exit

    mountpoint = mountpoint.absolute()
    pid = None
    if is_mounted(mountpoint):
        try:
            pid = int(os.getxattr(mountpoint, PID_XATTR))
        except OSError as exc:
            if exc.errno in DEAD_MOUNT_ERRNOS:
                lazy = True  # the daemon is gone; only the kernel's mount is left
    unmount(mountpoint, lazy=lazy)
    if pid is not None and not wait_for_exit(pid, timeout):
        raise UserError(f"unmounted {mountpoint}, but its daemon (pid {pid}) is still running after {timeout:.0f} s")
    click.echo(f"unmounted {mountpoint}")


@cli.command()
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the raw counters as JSON.")
@click.option("--watch", type=click.FloatRange(min=0.1), metavar="SECONDS",
              help="Print what happened in each interval of SECONDS (rates per second) until Ctrl-C.")
def stats(mountpoint: Path, as_json: bool, watch: float | None) -> None:
    """Hits, misses and bytes per tier, and backend traffic, of a running mount."""
    if watch is not None and not watch < 1e9:  # FloatRange lets NaN and infinity by; time.sleep() takes neither
        raise click.BadParameter(f"{watch} is not a number of seconds", param_hint="'--watch'")
    data = read_stats(mountpoint)
    if watch:
        try:
            while True:
                time.sleep(watch)
                later = read_stats(mountpoint)
                click.echo(render_rates(data, later, later["uptime_seconds"] - data["uptime_seconds"] or watch))
                data = later
        except KeyboardInterrupt:
            return
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    click.echo(render_stats(data))


def read_stats(mountpoint: Path) -> dict[str, Any]:
    from tierfs.fuse.mountpoint import DEAD_MOUNT_ERRNOS

    try:
        raw = os.getxattr(mountpoint, STATS_XATTR)
    except FileNotFoundError:
        raise UserError(f"{mountpoint} does not exist") from None
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP):
            raise UserError(f"{mountpoint} is not a tierfs mount") from None
        if exc.errno in DEAD_MOUNT_ERRNOS:
            raise UserError(f"{mountpoint} is a dead mount (its daemon is gone): run tierfs umount {mountpoint}") from None
        raise UserError(f"cannot read stats of {mountpoint}: {exc.strerror}") from None
    out: dict[str, Any] = json.loads(raw)
    return out


def render_stats(data: dict[str, Any]) -> str:
    """The counters as a table for an 80-column terminal."""
    from rich.console import Console
    from rich.table import Table

    lat = data.get("latency_ms", {})
    table = Table(box=None, pad_edge=False, padding=(0, 1, 0, 0), show_edge=False)
    for col in ("tier", "state", "hits", "misses", "hit%", "served", "held", "evicted", "errors", "ms/get"):
        table.add_column(col, justify="left" if col in ("tier", "state") else "right", no_wrap=True)
    for name, t in data["tiers"].items():
        total = t["hits"] + t["misses"]
        ratio = f"{t['hits'] / total:.0%}" if total else "-"
        mean = lat.get("tiers", {}).get(name, {}).get("mean_ms")
        table.add_row(name, _state(t), str(t["hits"]), str(t["misses"]), ratio,
                      format_size(t["bytes_served"]), format_size(t["bytes_held"]),
                      str(t["evictions"]), str(t["errors"]), "-" if mean is None else f"{mean:.2f}")
    b = data["backend"]
    reads = lat.get("backend", {}).get("read", {}).get("mean_ms")
    table.add_row("backend", "", "", "", "", format_size(b["bytes"]), "", "", str(b["errors"]),
                  "-" if reads is None else f"{reads:.2f}")
    console = Console(width=80, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(f"{data['lake']} (pid {data['pid']}, up {data['uptime_seconds']:.0f} s)", overflow="fold")
    console.print(table)
    console.print(f"backend: {b['requests']} requests, {format_size(b['bytes'])} read, {b['retries']} retries, "
                  f"{b['errors']} errors")
    console.print(f"inodes {data['inodes']}, open files {data['open_files']}, "
                  f"in-flight fetches {data['in_flight_fetches']}")
    w = data.get("writes", {})
    if w:
        console.print(
            f"writes: {w['uploads']} uploads, {format_size(w['bytes_written'])} written, {w['upload_errors']} failed; "
            f"{w['staged_files']} staged now, {w['pending_uploads']} waiting for a retry"
            + (f"; {w['recovered']} recovered after a crash" if w.get("recovered") else "")
        )
    fuse = data.get("fuse", {})
    if fuse:
        console.print("fuse requests: " + ", ".join(f"{op} {n}" for op, n in fuse.items() if n))
    return console.export_text().rstrip()


def render_rates(before: dict[str, Any], after: dict[str, Any], seconds: float) -> str:
    """One line of what happened in an interval: reads per tier, backend traffic, uploads (per second)."""
    def rate(a: float, b: float) -> float:
        return (b - a) / seconds if seconds > 0 else 0.0

    tiers = []
    for name, t in after["tiers"].items():
        old = before["tiers"].get(name, t)
        tiers.append(f"{name} {rate(old['hits'], t['hits']):.0f}/{rate(old['misses'], t['misses']):.0f}")
    parts = ["hit/miss per s: " + " ".join(tiers)]
    b0, b1 = before["backend"], after["backend"]
    parts.append(f"backend {format_size(int(rate(b0['bytes'], b1['bytes'])))}/s {rate(b0['requests'], b1['requests']):.0f} req/s")
    w0, w1 = before.get("writes", {}), after.get("writes", {})
    written = rate(w0.get("bytes_written", 0), w1.get("bytes_written", 0))
    if written:
        parts.append(f"writes {format_size(int(written))}/s")
    return time.strftime("%H:%M:%S ") + " | ".join(parts)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print every mount's state as JSON.")
def status(as_json: bool) -> None:
    """Every tierfs mount on this host: daemon alive or dead, tiers up or down, uploads pending, last errors.

    A dead mount (its daemon was killed) is listed with what to do about it.
    Exit code 0 when every mount is alive, 1 otherwise.
    """
    from tierfs.fuse.mountpoint import DEAD_MOUNT_ERRNOS, tierfs_mounts

    out: list[dict[str, Any]] = []
    for path in tierfs_mounts():
        entry: dict[str, Any] = {"mountpoint": path}
        try:
            data = json.loads(os.getxattr(path, STATS_XATTR))
        except OSError as exc:
            entry["state"] = "dead" if exc.errno in DEAD_MOUNT_ERRNOS else f"unreadable ({exc.strerror})"
            out.append(entry)
            continue
        writes = data.get("writes", {})
        unclosed = Path(data.get("cache_dir", "")) / "staging" / "unclosed"
        entry.update({
            "state": "alive", "lake": data["lake"], "pid": data["pid"], "uptime_seconds": data["uptime_seconds"],
            "tiers": {name: ("up" if t.get("up", 1) else "down") for name, t in data["tiers"].items()},
            "pending_uploads": writes.get("pending_uploads", 0), "staged_files": writes.get("staged_files", 0),
            "unclosed_leftovers": len(list(unclosed.iterdir())) if unclosed.is_dir() else 0,
            "passthrough": data.get("fast_paths", {}).get("passthrough", "unknown"),
            "recent_errors": [{"time": t, "op": op, "error": msg} for t, op, msg in data.get("recent_errors", [])],
        })
        out.append(entry)
    if as_json:
        click.echo(json.dumps(out, indent=2))
    elif not out:
        click.echo("no tierfs mounts on this host")
    for m in out if not as_json else []:
        if m["state"] != "alive":
            click.echo(f"{m['mountpoint']}: {m['state'].upper()}: its daemon is gone; a new `tierfs mount` (or its "
                       f"service's restart) clears it, or tierfs umount {m['mountpoint']}")
            continue
        tiers = ", ".join(f"{n} {s}" for n, s in m["tiers"].items()) or "none"
        click.echo(f"{m['mountpoint']}: alive, {m['lake']} (pid {m['pid']}, up {format_duration(m['uptime_seconds'])})")
        click.echo(f"  tiers: {tiers}")
        click.echo(f"  passthrough: {m['passthrough']}")
        click.echo(f"  writes: {m['pending_uploads']} waiting for a retry, {m['staged_files']} staged, "
                   f"{m['unclosed_leftovers']} unclosed leftover(s) from earlier runs")
        for e in m["recent_errors"][-3:]:
            when = time.strftime("%H:%M:%S", time.localtime(e["time"]))
            click.echo(f"  error at {when}: {e['op']}: {e['error'][:120]}")
    if any(m["state"] != "alive" for m in out):
        sys.exit(1)


def format_duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


@cli.command("log-level")
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.argument("level", type=click.Choice(["debug", "info", "warning", "error"]))
def log_level_cmd(mountpoint: Path, level: str) -> None:
    """Set how much a running mount logs, without a remount (root only)."""
    from tierfs import control

    control.request(mountpoint, {"op": "log_level", "level": level}, "set the log level")
    click.echo(f"{mountpoint}: logging at {level}")


def _state(t: dict[str, Any]) -> str:
    """A tier's state for `tierfs stats`: up, DOWN, or for a Redis Cluster with dead shards "2/3 up"."""
    if not t.get("up", 1):
        return "DOWN"
    shards, down = t.get("shards", 0), t.get("shards_down", 0)
    return f"{shards - down}/{shards} up" if shards and down else "up"
