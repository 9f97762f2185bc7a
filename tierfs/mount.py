"""Composition root of a mount: store -> tiers -> namespace -> fuse, one nursery.

``run_foreground`` mounts and serves until unmounted or signalled; started in
the background, it is the daemon ``tierfs/background.py`` spawns.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pyfuse3
import trio

from tierfs import __version__, control
from tierfs.config import Settings
from tierfs.data.reader import BlockReader
from tierfs.data.warm import Warmer
from tierfs.errors import UserError
from tierfs.fuse.attrs import AttrMaker
from tierfs.fuse.mountpoint import check_fuse, check_mountpoint, is_mounted, unescape_mountinfo
from tierfs.fuse.operations import TierfsOperations
from tierfs.fuse.passthrough import Passthrough
from tierfs.limits import StoreLimiters
from tierfs.lineage.recorder import LineageRecorder
from tierfs.metrics import BACKEND_SECONDS, FUSE_SECONDS, TIER_SECONDS, export_stats, latency_summary
from tierfs.metrics import serve as serve_metrics
from tierfs.namespace.live import Namespace
from tierfs.namespace.shard_index import ShardIndexes
from tierfs.namespace.shards import ShardView
from tierfs.secrecy import read_secret
from tierfs.store.objects import ObjectStore
from tierfs.store.upload import Uploader
from tierfs.systemd import sd_notify
from tierfs.tasks import log_tasks_on_signal
from tierfs.tiers.base import Tier
from tierfs.tiers.chain import TierChain
from tierfs.tiers.disk import DiskTier
from tierfs.tiers.fills import FillQueue
from tierfs.tiers.ram import RamTier
from tierfs.tiers.seal import cache_key
from tierfs.versions.index_dir import ManifestIndexes
from tierfs.write.staging import Staging
from tierfs.write.writer import Writer

if TYPE_CHECKING:  # redis-py is imported only by a mount that has a Redis tier
    from tierfs.tiers.redis import RedisSettings, RedisTier

log = logging.getLogger("tierfs")

@dataclass
class Components:
    """Everything a mount is made of, wired; also what core tests drive directly."""

    settings: Settings
    store: ObjectStore
    chain: TierChain
    namespace: Namespace
    reader: BlockReader
    operations: TierfsOperations
    started: float
    writer: Writer | None = None

    def stats(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "lake": self.store.url,
            "pid": os.getpid(),
            "uptime_seconds": round(time.monotonic() - self.started, 1),
            "block_size": self.settings.block_size,
            "tiers": self.chain.stats(),
            "backend": self.store.stats.snapshot(),
            "fuse": self.operations.ops.snapshot(),
            "fast_paths": self.operations.passthrough.snapshot(),
            "latency_ms": {"tiers": latency_summary(TIER_SECONDS), "backend": latency_summary(BACKEND_SECONDS),
                           "fuse": latency_summary(FUSE_SECONDS)},
            "inodes": len(self.namespace.inodes),
            "open_files": self.operations.open_files(),
            "in_flight_fetches": self.reader.in_flight(),
            "prefetched_blocks": self.reader.prefetched,
            "read_ahead_peak_bytes": self.reader.window_peak,
            "ranged_reads": self.reader.ranged.stats.snapshot(),
            "listing_entries_cached": len(self.namespace.listings),
            "listing_bytes_cached": self.namespace.listings.bytes_held,
            "manifests": self.namespace.snapshots.stats(),
            "shards": self.namespace.shards.indexes.stats.snapshot() if self.namespace.shards is not None else {},
            "stale_to_refresh": self.namespace.outage.pending(),
            "fills": self.chain.fills.stats.snapshot(),
            "writes": self.writer.stats.snapshot() if self.writer is not None else {},
            "cache_dir": str(self.settings.resolved_cache_dir()),
            "recent_errors": list(self.operations.recent_errors),
        }

    def redis(self) -> RedisTier | None:
        # By name, so that a mount without one never imports the Redis client.
        return cast("RedisTier | None", next((t for t in self.chain.tiers if t.name == "redis"), None))

    def disk(self) -> DiskTier | None:
        return next((t for t in self.chain.tiers if isinstance(t, DiskTier)), None)

    def close(self) -> None:
        self.namespace.snapshots.close()
        self.chain.close()
        if self.writer is not None:
            self.writer.staging.close()


def build(settings: Settings, store: ObjectStore | None = None) -> Components:
    """Wire the layers. Opens (and locks) the disk cache; checks nothing about FUSE."""
    store = store or ObjectStore.open(settings)
    # The tier chain, nearest first: RAM, this node's disk, then the Redis the
    # nodes share (a network hop, and other nodes' load on it).
    tiers: list[Tier] = []
    if settings.ram_size > 0:
        tiers.append(RamTier(settings.ram_size))
    if settings.cache_size > 0:
        tiers.append(DiskTier(settings.resolved_cache_dir(), settings.cache_size, settings.high_watermark,
                              settings.low_watermark, settings.cache_policy, settings.cache_min_free,
                              data_key=cache_key(settings, settings.resolved_cache_dir())))
    if settings.redis_url:
        from tierfs.tiers.redis import RedisTier

        tiers.append(RedisTier(redis_settings(settings)))
    # Worker threads: one pool for the tiers' disk I/O, and one per kind of
    # store work, so a slow store never starves cache hits, nor read-ahead the reads.
    # The fills behind the replies run one at a time per slow tier: fill threads
    # of their own only fight the reads for the GIL (4 against 1: 0.8x the cold
    # files/s, benchmarks/RESULTS.md), and one keeps up with the reads.
    slow = sum(1 for t in tiers if not t.in_loop)
    chain = TierChain(tiers, trio.CapacityLimiter(16), FillQueue(settings.fill_memory, workers=max(1, slow)))
    limiters = StoreLimiters.from_settings(settings)
    reader = BlockReader(store, chain, settings.block_size, limiters.read, limiters.prefetch,
                         settings.prefetch_memory, settings.random_read_unit)
    disk = next((t for t in tiers if isinstance(t, DiskTier)), None)
    shards = ShardView(settings.shard_prefixes, shard_indexes(disk, limiters.manifest), reader) \
        if settings.shard_prefixes else None
    namespace = Namespace(store, settings.metadata_ttl, settings.listing_entries, limiters.metadata,
                          fetch=lambda key: fetch_through_tiers(store, reader, limiters.manifest, key),
                          manifest_limiter=limiters.manifest, negative_ttl=settings.negative_ttl,
                          immutable_prefixes=settings.immutable_prefixes,
                          manifest_indexes=manifest_indexes(settings, disk), listing_memory=settings.listing_memory,
                          shards=shards, first_bytes=reader.keep_first_bytes,
                          # (not with a shared Redis tier: the bytes of files other nodes read are there, and
                          # a lookup's GET would take them from the store)
                          first_bytes_max=0 if settings.redis_url else min(settings.lookup_bytes, settings.block_size),
                          fast_list=settings.fast_list)
    file_mode, dir_mode = settings.modes()
    attrs = AttrMaker(settings.metadata_ttl, settings.block_size, uid=settings.uid, gid=settings.gid,
                      file_mode=file_mode, dir_mode=dir_mode)
    holder: list[Components] = []
    writer = None
    if not settings.read_only:
        writer = Writer(store, Uploader(store, settings.part_size, settings.upload_concurrency), reader, namespace,
                        # A leftover under a key the lake refuses is set aside at recovery, not retried forever.
                        Staging(settings.resolved_cache_dir() / "staging", key_check=store.check_key), limiters.write,
                        settings.rename_concurrency)
    warmer = Warmer(reader, namespace.resolve_ref,
                    settings.resolved_cache_dir() if settings.cache_size > 0 else None)
    ops = TierfsOperations(namespace, reader, attrs, stats=lambda: holder[0].stats(),
                           read_ahead_blocks=max(1, settings.read_ahead // settings.block_size), warmer=warmer,
                           writer=writer,
                           passthrough=Passthrough(disk, settings.block_size, chain.limiter, settings.passthrough,
                                                   ram=next((t for t in tiers if isinstance(t, RamTier)), None)))
    # What never changes is not changed through the mount either: immutable prefixes refuse writes too.
    ops.read_only_prefixes = settings.read_only_prefixes + settings.immutable_prefixes
    ops.max_background = settings.fuse_max_background
    ops.allow_delete = settings.allow_delete
    ops.lineage = LineageRecorder(store, limiters.write)
    comps = Components(settings, store, chain, namespace, reader, ops, time.monotonic(), writer)
    holder.append(comps)
    return comps


def manifest_indexes(settings: Settings, disk: DiskTier | None) -> ManifestIndexes:
    """Snapshots' manifests indexed beside the disk tier, kept across mounts; without one (or with a cache
    key: an index holds the manifest's names in plaintext), in a private temp dir removed at unmount."""
    if disk is None or disk.sealer is not None:
        return ManifestIndexes(None)
    return ManifestIndexes(disk.root / "manifests", max_bytes=max(1 << 30, settings.cache_size // 8))


def shard_indexes(disk: DiskTier | None, limiter: trio.CapacityLimiter) -> ShardIndexes:
    """Shards' member indexes beside the disk tier, kept across mounts; without one (or with a cache key: an
    index holds member names in plaintext), in memory only."""
    root = disk.root / "shards" if disk is not None and disk.sealer is None else None
    return ShardIndexes(root, limiter)


def redis_settings(settings: Settings) -> RedisSettings:
    """The Redis tier's settings, its secrets read from where the config says (never from argv)."""
    from tierfs.tiers.redis import RedisSettings

    return RedisSettings(
        settings.redis_url, settings.redis_password or os.environ.get("TIERFS_REDIS_PASSWORD", ""),
        settings.redis_db, settings.redis_key_prefix, settings.redis_ttl, settings.redis_max_block_size,
        settings.redis_pool_size, settings.redis_timeout,
        secret=read_secret(settings.redis_secret, settings.redis_secret_file, "TIERFS_REDIS_SECRET",
                           "[redis] secret_file", settings.allow_readable_secrets),
        data_key=cache_key(settings, settings.resolved_cache_dir()),
        username=settings.redis_username, ca_file=settings.redis_ca_file, cert_file=settings.redis_cert_file,
        key_file=settings.redis_key_file, allow_no_auth=settings.redis_allow_no_auth,
        cluster=settings.redis_cluster,
    )


async def fetch_through_tiers(store: ObjectStore, reader: BlockReader, limiter: trio.CapacityLimiter,
                              key: str) -> bytes:
    """A whole lake object (a snapshot manifest's meta.json or part) via the tier chain.

    The stat and each block read are awaits of their own, each store call in
    its own worker thread under ``limiter`` (the manifest limiter): nothing
    here holds a token while it waits for another.
    """
    entry = await trio.to_thread.run_sync(store.stat, key, limiter=limiter)
    if entry.ref is None:
        raise IsADirectoryError(key)
    data, _ = await reader.read(entry.ref, 0, entry.size, limiter=limiter)
    return data


def run_foreground(settings: Settings, mountpoint: Path, on_ready: Callable[[str], None] | None = None) -> None:
    """Check, mount, serve until unmounted or SIGTERM/SIGINT, then clean up."""
    check_fuse()
    cleared = check_mountpoint(mountpoint, settings.allow_nonempty)
    store = ObjectStore.open(settings)
    store.check()
    comps = build(settings, store)
    metrics_server = None
    try:
        notes = [cleared] if cleared else []
        redis_tier = comps.redis()
        if redis_tier is not None and not redis_tier.connect():
            notes.append("redis tier off: Redis cannot be reached; reads go on without it and it is retried")
        if comps.writer is not None:
            recovered = comps.writer.recover()
            if recovered:
                notes.append(recovered)
        disk_tier = comps.disk()
        if disk_tier is not None and (too_big := disk_tier.fit_note()):
            notes.append(too_big)
        if settings.metrics_listen:
            export_stats(comps.stats)
            try:
                metrics_server = serve_metrics(settings.metrics_listen)
            except OSError as exc:
                raise UserError(f"cannot serve metrics on {settings.metrics_listen}: {exc.strerror}") from None
        options = set(pyfuse3.default_options)
        # default_permissions (pyfuse3's default, named so it stays): the kernel checks the modes and owners
        # the mount shows, so allow_other lets in only the users they allow.
        options |= {"fsname=tierfs", "subtype=tierfs", "default_permissions"}
        if settings.allow_other:
            options.add("allow_other")
        if settings.read_only:
            # The kernel refuses writes itself, and keeps atime as it is: a
            # passthrough read then does not make the next stat a request.
            options.add("ro")
        if settings.allow_root:
            options.add("allow_root")
        if (note := owner_note(settings)):
            notes.append(note)
        try:
            pyfuse3.init(comps.operations, str(mountpoint), options)
        except RuntimeError as exc:
            raise UserError(f"cannot mount at {mountpoint}: {exc}") from None
        log.info("mounted %s at %s (cache %s, pid %d)", settings.lake_url, mountpoint,
                 settings.resolved_cache_dir(), os.getpid())
        unmounted = False
        try:
            trio.run(_serve, comps, mountpoint, "; ".join(notes), on_ready)
            unmounted = True
        finally:
            pyfuse3.close(unmount=not unmounted or is_mounted(mountpoint))
        log.info("unmounted %s", mountpoint)
        if comps.writer is not None:
            comps.writer.stop()
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
        comps.close()


def owner_note(settings: Settings) -> str:
    """A note when the owner given cannot enter the mount: without allow_other only the mounting user may."""
    if settings.allow_other or (settings.uid in (None, os.getuid()) and settings.gid in (None, os.getgid())):
        return ""
    who = "the mounting user and root" if settings.allow_root else "the mounting user"
    return (f"files show the owner given ([fuse] uid, gid), but only {who} may enter the mount: "
            "add --allow-other ([fuse] allow_other) to let other users in, as far as the modes allow")


async def _serve(comps: Components, mountpoint: Path, notes: str, on_ready: Callable[[str], None] | None) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
        nursery.start_soon(log_tasks_on_signal)
        comps.reader.start(nursery)
        comps.namespace.start(nursery)
        if comps.operations.warmer is not None:
            comps.operations.warmer.attach(nursery)
        redis_tier = comps.redis()
        if redis_tier is not None:
            nursery.start_soon(_refresh_gauges, redis_tier)
        if comps.writer is not None:
            comps.writer.start(nursery)
        if comps.operations.lineage is not None:
            nursery.start_soon(comps.operations.lineage.run)
        await nursery.start(control.serve, comps.operations.control)

        async def fuse_main() -> None:
            await pyfuse3.main(min_tasks=4, max_tasks=comps.settings.fuse_workers)
            nursery.cancel_scope.cancel()  # unmounted from outside: stop the rest

        nursery.start_soon(fuse_main)
        # The kernel sets the mount's read-ahead from FUSE INIT, the first
        # request served: raise it once that is done.
        with trio.move_on_after(10):
            await comps.operations.initialized.wait()
        await trio.to_thread.run_sync(tune_kernel, mountpoint, comps.settings)
        log.info("fast paths: passthrough %s; read-only opens without a flush round trip",
                 comps.operations.passthrough.start(comps.settings.resolved_cache_dir() / "LAYOUT", nursery))
        if on_ready is not None:
            on_ready(notes)
        comps.store.ready()
    # Unmounted: lineage jobs still running are flushed and stopped; blocks still
    # queued for the disk (and Redis) go in now, so a remount finds them there.
    if comps.operations.lineage is not None:
        await comps.operations.lineage.close()
    await comps.reader.finish()


def tune_kernel(mountpoint: Path, settings: Settings) -> None:
    """Raise the mount's read-ahead so the kernel sends large reads (128 KiB by default), and, where pyfuse3
    could not ask for them at INIT (without tierfs' patch), its background slots through fusectl.

    The mount's device is found from /proc/self/mountinfo (a stat of the mountpoint would wait on this very
    daemon, which is not serving yet).
    """
    # realpath of the parent only: resolving the mountpoint itself would ask this daemon.
    target = os.path.join(os.path.realpath(mountpoint.parent), mountpoint.name)
    try:
        with open("/proc/self/mountinfo") as fh:
            dev = next(f[2] for f in (line.split() for line in fh) if unescape_mountinfo(f[4]) == target)
    except (OSError, StopIteration) as exc:
        log.info("kernel read-ahead and background slots left at their defaults (%s)", exc)
        return
    if settings.kernel_read_ahead_kb:
        try:
            Path(f"/sys/class/bdi/{dev}/read_ahead_kb").write_text(f"{settings.kernel_read_ahead_kb}\n")
            log.info("kernel read-ahead of %s set to %d KiB", mountpoint, settings.kernel_read_ahead_kb)
        except OSError as exc:
            log.info("kernel read-ahead left at its default (%s)", exc)
    if hasattr(pyfuse3, "passthrough_open"):  # (our pyfuse3 asked for them at INIT)
        log.info("kernel background slots of %s: %d, asked for at INIT", mountpoint, settings.fuse_max_background)
        return
    slots = settings.fuse_max_background
    conn = Path("/sys/fs/fuse/connections") / dev.split(":")[1]
    try:
        (conn / "max_background").write_text(f"{slots}\n")
        (conn / "congestion_threshold").write_text(f"{max(1, slots * 3 // 4)}\n")
        log.info("kernel background slots of %s set to %d", mountpoint, slots)
    except OSError as exc:
        log.warning("the kernel's background slots stay at 12 (pyfuse3 without tierfs' patch, and %s: %s); "
                    "a flood of closes can hold up reads", conn, exc.strerror or exc)


async def _refresh_gauges(tier: RedisTier) -> None:
    """Redis' size and health, read off the loop every few seconds (stats never wait on Redis)."""
    last = ""
    while True:
        try:
            await trio.to_thread.run_sync(tier.refresh_gauges)
            last = ""
        except Exception as exc:  # (a task of the mount's nursery: a gauge must not stop the mount)
            if f"{exc}" != last:
                last = f"{exc}"
                log.warning("refreshing the %s tier's gauges failed: %s: %s", tier.name, type(exc).__name__, exc)
        await trio.sleep(5)


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("received %s; unmounting", signal.Signals(signum).name)
            sd_notify("STOPPING=1\nSTATUS=unmounting")
            pyfuse3.terminate()
            return
