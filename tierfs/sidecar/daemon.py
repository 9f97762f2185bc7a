"""The sidecar daemon: runs lifecycle and backup jobs on their schedules, beside the mounts.

    [sidecar]
    metrics = "127.0.0.1:9465"           # optional Prometheus endpoint
    store_config = "/etc/tierfs/train.toml"  # optional: endpoint and credentials for the lakes

    [[job]]
    name = "nightly-lifecycle"
    kind = "lifecycle"                   # plan, and apply if apply = true
    lake = "s3://ml-lake"
    rules = "/etc/tierfs/lifecycle.toml"
    apply = true
    jobs = 16                            # objects changed at a time
    native = false                       # true: also install the rules on the bucket (S3, GCS)
    every = "24h"

    [[job]]
    name = "checkpoints"
    kind = "backup"
    source = "/nvme/checkpoints"
    target = "s3://ml-lake/backups/node-17"
    keep = 7
    grace = "1h"                         # blobs younger than this are never expired (default 1h)
    every = "6h"

Each job runs in a worker thread, one run at a time, first at start-up and
then every `every`; each run is logged in one line (what it did, or why it
failed) and counted. SIGTERM lets a running job finish, then exits 0.
"""

from __future__ import annotations

import logging
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from prometheus_client import Counter, Gauge

from tierfs.config import as_written, load, read_toml_file, shown
from tierfs.errors import ConfigError, TierfsError
from tierfs.metrics import registry
from tierfs.metrics import serve as serve_metrics
from tierfs.systemd import sd_notify

log = logging.getLogger("tierfs.sidecar")
RUNS = Counter("tierfs_sidecar_job_runs", "Sidecar job runs", ["job", "outcome"], registry=registry())
LAST_SECONDS = Gauge("tierfs_sidecar_job_last_seconds", "Duration of the job's last run", ["job"], registry=registry())
LAST_SUCCESS = Gauge("tierfs_sidecar_job_last_success_timestamp", "When the job last succeeded", ["job"],
                     registry=registry())
LIFECYCLE_OBJECTS = Counter("tierfs_lifecycle_objects", "Objects a lifecycle job changed",
                            ["job", "action"], registry=registry())
MONTHLY_COST = Gauge("tierfs_lake_monthly_cost_usd", "The lake's storage cost a month at its last run: now, "
                     "and once every rule has acted", ["job", "when"], registry=registry())
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_FIELDS = {"lifecycle": {"name", "kind", "every", "lake", "rules", "apply", "jobs", "native"},
           "backup": {"name", "kind", "every", "source", "target", "keep", "grace"}}


@dataclass
class Job:
    name: str
    kind: str
    every: float
    args: dict[str, Any]


def parse_duration(text: Any, where: str) -> float:
    m = re.fullmatch(r"\s*([0-9]{1,9}(?:\.[0-9]{1,9})?)\s*([smhd])\s*", str(text))
    if not m or float(m.group(1)) * _UNITS[m.group(2)] < 1:  # (0s would run the job back to back, for ever)
        raise ConfigError(f"{where} = {shown(text)}: expected a duration of 1s or more, such as 30s, 15m, 6h or 1d")
    return float(m.group(1)) * _UNITS[m.group(2)]


def load_jobs(path: Path) -> tuple[dict[str, Any], list[Job]]:
    doc = read_toml_file(path, "sidecar config")
    path_shown = as_written(str(path))
    extra = set(doc) - {"sidecar", "job"}
    if extra:
        raise ConfigError(f"{path_shown}: unknown table {sorted(extra)[0]!r}; expected [sidecar] and [[job]]")
    options, job_tables = doc.get("sidecar", {}), doc.get("job", [])
    if not isinstance(job_tables, list) or not all(isinstance(t, dict) for t in job_tables):
        raise ConfigError(f"{path_shown}: 'job' must be tables, each written [[job]]")
    if not isinstance(options, dict) or set(options) - {"metrics", "store_config"} or not all(
            isinstance(v, str) for v in options.values()):
        raise ConfigError(f"{path_shown}: [sidecar] takes metrics = \"HOST:PORT\" and store_config = \"FILE\"")
    jobs = []
    for i, raw in enumerate(job_tables):
        name = raw.get("name") or f"#{i + 1}"
        where = f"{path_shown}: job {shown(name)}"
        if not isinstance(name, str):
            raise ConfigError(f"{where}: field 'name' must be a string")
        kind = raw.get("kind")
        if not isinstance(kind, str) or kind not in _FIELDS:
            raise ConfigError(f"{where}: field 'kind' must be lifecycle or backup (got {shown(kind)})")
        bad = set(raw) - _FIELDS[kind]
        if bad:
            raise ConfigError(f"{where}: unknown field {sorted(bad)[0]!r} for a {kind} job")
        need = {"lifecycle": ("lake", "rules"), "backup": ("source", "target")}[kind]
        for key in need:
            if not isinstance(raw.get(key), str) or not raw[key]:
                raise ConfigError(f"{where}: field {key!r} is required")
        if kind == "lifecycle":
            jobs_at_once = raw.get("jobs", 16)
            if isinstance(jobs_at_once, bool) or not isinstance(jobs_at_once, int) or not 1 <= jobs_at_once <= 256:
                raise ConfigError(f"{where}: field 'jobs' must be a whole number from 1 to 256 (got {shown(jobs_at_once)})")
            for flag in ("apply", "native"):
                if not isinstance(raw.get(flag, False), bool):
                    raise ConfigError(f"{where}: field {flag!r} must be true or false")
        keep = raw.get("keep")
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
            raise ConfigError(f"{where}: field 'keep' must be a whole number of backups, 1 or more")
        every = parse_duration(raw.get("every", "24h"), f"{where}: field 'every'")
        args = {k: v for k, v in raw.items() if k not in ("name", "kind", "every")}
        if kind == "backup":
            args["grace"] = parse_duration(raw.get("grace", "1h"), f"{where}: field 'grace'")
        # Files a job needs must be there now: a job that would fail every run is refused at start.
        if kind == "lifecycle" and not Path(raw["rules"]).is_file():
            raise ConfigError(f"{where}: rules file {raw['rules']} does not exist: write the rules there "
                              "(see `tierfs lifecycle plan --help`) or point 'rules' at them")
        if kind == "backup" and not Path(raw["source"]).is_dir():
            raise ConfigError(f"{where}: source {raw['source']} is not a directory: create it or fix 'source'")
        jobs.append(Job(str(name), kind, every, args))
    if not jobs:
        raise ConfigError(f"{path_shown}: no [[job]] to run")
    return options, jobs


def run_job(job: Job, store_config: Path | None) -> str:
    """One run of a job (blocking); returns a one-line summary."""
    from tierfs.store.objects import ObjectStore

    if job.kind == "backup":
        from tierfs.sidecar.backup import run_backup

        store = ObjectStore.open(load(store_config, {"lake_url": job.args["target"]}))
        rep = run_backup(Path(job.args["source"]), store, job.args.get("keep"), grace_seconds=job.args["grace"])
        return (f"backup {rep.info.id}: {rep.info.files} files, {rep.uploaded} uploaded, {rep.reused} unchanged"
                + (f", expired {len(rep.expired)}" if rep.expired else ""))
    from tierfs.sidecar.cost import plan_lake, provider_of
    from tierfs.sidecar.lifecycle import apply_actions
    from tierfs.sidecar.retention import expire_snapshots, expired_snapshots
    from tierfs.sidecar.rules import load_rules

    lake = job.args["lake"]
    settings = load(store_config, {"lake_url": lake})
    provider = provider_of(lake)
    store = ObjectStore.open(settings)
    store.check()
    rules = load_rules(Path(job.args["rules"]), provider)
    doomed = expired_snapshots(store, rules.retention, time.time())
    # Retention first: what a deleted snapshot pinned is no longer protected below.
    gone = expire_snapshots(store, doomed) if job.args.get("apply", False) else 0
    plan = plan_lake(store, settings, provider, rules, time.time())
    MONTHLY_COST.labels(job.name, "now").set(plan.total)
    MONTHLY_COST.labels(job.name, "after_rules").set(plan.after)
    if not job.args.get("apply", False):
        return (f"plan: {len(plan.actions)} changes, {len(plan.kept)} kept, {len(doomed)} snapshots to expire; "
                f"{plan.total:.4f} -> {plan.after:.4f} USD/month")
    moved, expired = apply_actions(store, plan.actions, plan.pinned_versions, jobs=int(job.args.get("jobs", 16)))
    LIFECYCLE_OBJECTS.labels(job.name, "transitioned").inc(moved)
    LIFECYCLE_OBJECTS.labels(job.name, "expired").inc(expired)
    native = ""
    if job.args.get("native", False):
        from tierfs.sidecar.lifecycle import install_native

        native = f"; rules installed on bucket {install_native(store, rules)}"
    return (f"applied: {moved} transitioned, {expired} expired, {len(plan.kept)} kept, "
            f"{gone} snapshots expired by retention{native}")


async def _loop(job: Job, store_config: Path | None) -> None:
    while True:
        t0 = time.monotonic()
        try:
            summary = await trio.to_thread.run_sync(run_job, job, store_config)
        except (TierfsError, OSError) as exc:
            RUNS.labels(job.name, "failed").inc()
            log.error("job %s failed: %s", job.name, exc)
        except Exception as exc:  # a bug: log it, keep the daemon and the other jobs alive
            RUNS.labels(job.name, "failed").inc()
            log.exception("job %s failed unexpectedly: %s", job.name, exc)
        else:
            RUNS.labels(job.name, "ok").inc()
            LAST_SUCCESS.labels(job.name).set(time.time())
            log.info("job %s: %s (%.1f s)", job.name, summary, time.monotonic() - t0)
        LAST_SECONDS.labels(job.name).set(time.monotonic() - t0)
        await trio.sleep(max(0.0, job.every - (time.monotonic() - t0)))


async def serve(config: Path) -> None:
    options, jobs = load_jobs(config)
    store_config = Path(options["store_config"]) if options.get("store_config") else None
    server = serve_metrics(str(options["metrics"])) if options.get("metrics") else None
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                for job in jobs:
                    nursery.start_soon(_loop, job, store_config)
                log.info("sidecar started: %s", ", ".join(f"{j.name} ({j.kind}, every {j.every:.0f} s)" for j in jobs))
                sd_notify(f"READY=1\nSTATUS={len(jobs)} jobs scheduled")
                async for signum in signals:
                    log.info("received %s; stopping once running jobs finish", signal.Signals(signum).name)
                    sd_notify("STOPPING=1")
                    nursery.cancel_scope.cancel()
                    break
    finally:
        if server is not None:
            server.shutdown()
    log.info("sidecar stopped")
