"""Three tierfs nodes in their own network namespaces sharing one Redis Cluster (issue 18).

The network is the test's own: a hub namespace with a bridge (10.77.0.1) holds
the S3 server (SeaweedFS) and a 3-shard Redis Cluster; nodes A, B and C each
live in a namespace of their own on a veth pair into the bridge, each with its
own cache directory, each daemon started inside its namespace. Nothing else can
be reached from there, and nothing else is sent to.

1. A's cold epoch fills the cluster (A then reads the other two file sets too);
2. B's and C's first epochs: figures are their speed against A's and their
   backend bytes against A's (at most 5 % — a count, not a timing);
3. a Redis shard killed mid-epoch on B: 0 failed reads, every byte checked;
4. C's link cut (its veth down) mid-epoch while A and B read: each of C's reads
   answers, right or EIO, within the read deadline plus STORE_SLACK; A and B:
   0 failures; once the link is back, C reads every file right.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cluster_helpers import HubSeaweed, Netns, RedisCluster, in_netns
from helpers import Mount, force_cleanup, random_bytes, wait_for
from scenarios import STORE_DEADLINE, STORE_SLACK, Result

KiB = 1024
SIZES = {"short": (40, 48 * KiB), "long": (400, 96 * KiB)}  # files per set, their typical size
WORKERS = 4  # readers, as a DataLoader's workers


def _dataset(root: Path, files: int, size: int) -> dict[str, bytes]:
    data: dict[str, bytes] = {}
    for s in range(3):
        for i in range(files):
            data[f"s{s}/{i:05d}.bin"] = random_bytes(size // 2 + (i * 7919) % size, seed=s * 100_000 + i)
    for rel, blob in data.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(blob)
    return data


class Node:
    def __init__(self, name: str, net: Netns, work: Path, lake: str, config: Path, redis_url: str):
        self.name, self.net = name, net
        self.lock = threading.Lock()
        self.eio, self.slowest = 0, 0.0  # under a fault with a bound: reads that failed, the slowest read
        self.mount = Mount(lake, work / f"mnt-{name}", work / f"cache-{name}", "--block-size", "64KiB",
                           "--redis", redis_url, "--redis-cluster", config=config)

    def start(self) -> Node:
        with in_netns(self.net.nodes[self.name]):
            self.mount.start()
        return self

    def stop(self) -> None:
        with in_netns(self.net.nodes[self.name]):  # `tierfs umount` speaks to the daemon on its network
            try:
                self.mount.umount()
            finally:
                force_cleanup(self.mount.mountpoint, self.mount.pid)

    def in_its_namespace(self) -> bool:
        assert self.mount.pid is not None
        return os.stat(f"/proc/{self.mount.pid}/ns/net").st_ino == \
            os.stat(f"/run/netns/{self.net.nodes[self.name]}").st_ino

    def epoch(self, data: dict[str, bytes], fileset: str, res: Result, fault: object = None,
              bound: float | None = None) -> tuple[float, int, list[str]]:
        """Read every file of ``fileset`` on WORKERS threads (listing it first, as a DataLoader's dataset
        does); ``fault()`` is called once a third is read. Returns seconds, backend bytes and the failures."""
        mnt = self.mount.mountpoint
        before = self.mount.backend_bytes()
        t0 = time.monotonic()
        paths = sorted(f"{fileset}/{n}" for n in os.listdir(mnt / fileset))
        failures: list[str] = []

        def read(rel: str) -> None:
            t = time.monotonic()
            try:
                ok = (mnt / rel).read_bytes() == data[rel]
                outcome = "" if ok else "wrong bytes"
            except OSError as exc:
                outcome = errno.errorcode.get(exc.errno or 0, str(exc))
            took = time.monotonic() - t
            res.checks += 1
            if outcome == "wrong bytes" or (outcome and bound is None):
                failures.append(f"node {self.name}: {rel}: {outcome}")
            if bound is not None and took > bound:
                failures.append(f"node {self.name}: {rel} took {took:.2f} s (bound {bound:.2f} s)")
            if bound is not None:
                with self.lock:
                    self.eio += bool(outcome)
                    self.slowest = max(self.slowest, took)

        third = len(paths) // 3
        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(read, paths[:third]))
            if callable(fault):
                fault()
            list(pool.map(read, paths[third:]))
        return time.monotonic() - t0, self.mount.backend_bytes() - before, failures


def cluster_nodes(work: Path, size: str) -> Result:
    res = Result("three nodes, one Redis Cluster, own namespaces")
    files, typical = SIZES[size]
    src = work / "src"
    data = _dataset(src, files, typical)
    with contextlib.ExitStack() as stack:
        net = Netns(["a", "b", "c"]).create()
        stack.callback(net.close)
        s3 = HubSeaweed(work / "seaweed", net.hub, net.hub_ip)
        with in_netns(net.hub):
            s3.start()
        stack.callback(s3.stop)
        s3.upload_dir("lake", src)
        shutil.rmtree(src)
        cluster = RedisCluster(work / "cluster", host=net.hub_ip, netns=net.hub).start()
        stack.callback(cluster.stop)
        config = work / "node.toml"
        config.write_text(
            f'[s3]\nendpoint_url = "{s3.node_endpoint}"\nkey = "{s3.ACCESS_KEY}"\nsecret = "{s3.SECRET_KEY}"\n'
            f"[store]\nretries = 2\ntimeout = 1\nread_deadline = {STORE_DEADLINE:g}\n"
            f"metadata_deadline = {STORE_DEADLINE:g}\n"
            "[redis]\nallow_no_auth = true  # the hub's network is this test's alone\n")
        config.chmod(0o600)
        nodes = {}
        for name in ("a", "b", "c"):
            nodes[name] = Node(name, net, work, "s3://lake", config, cluster.url).start()
            stack.callback(nodes[name].stop)
            if not nodes[name].in_its_namespace():
                res.fail(f"node {name}'s daemon is not in its network namespace")
        a, b, c = nodes["a"], nodes["b"], nodes["c"]

        # 1. A's cold epoch fills the cluster.
        t_a, bytes_a, failed = a.epoch(data, "s0", res)
        res.failures += failed
        for other in ("s1", "s2"):
            res.failures += a.epoch(data, other, res)[2]
        a.mount.fills_settled()
        res.runs += 1
        shards = cluster.keys_per_shard()
        res.figures["blocks per shard"] = "/".join(str(n) for n in shards.values())
        if not all(shards.values()):
            res.fail(f"blocks did not spread over the shards: {shards}")
        n0 = sum(1 for k in data if k.startswith("s0/"))
        res.figures["A cold epoch, files/s"] = f"{n0 / t_a:.0f} ({bytes_a} backend bytes)"

        # 2. B's and C's first epochs come from the cluster.
        for node in (b, c):
            t, got, failed = node.epoch(data, "s0", res)
            res.failures += failed
            res.runs += 1
            res.figures[f"{node.name.upper()} first epoch, files/s"] = (
                f"{n0 / t:.0f} ({t_a / t:.1f}x A; backend bytes {got}, {100 * got / max(bytes_a, 1):.1f} % of A's)")
            if got > 0.05 * bytes_a:
                res.fail(f"node {node.name}'s first epoch cost {got} backend bytes, over 5 % of A's {bytes_a}")

        # 3. A shard killed mid-epoch on B: misses, never errors.
        victim = cluster.ports[1]
        t, got, failed = b.epoch(data, "s1", res, fault=lambda: cluster.kill(victim))
        res.failures += failed
        res.runs += 1
        res.figures["B epoch, a shard killed"] = f"{len(failed)} failed; backend bytes {got}"

        # 4. C's link cut mid-epoch; A and B read on, unaffected.
        bound = STORE_DEADLINE + STORE_SLACK
        with ThreadPoolExecutor(2) as others:
            on_a = others.submit(a.epoch, data, "s2", res)
            on_b = others.submit(b.epoch, data, "s2", res)
            _, _, failed_c = c.epoch(data, "s2", res, fault=lambda: net.link("c", False), bound=bound)
            res.failures += on_a.result()[2] + on_b.result()[2] + failed_c
        res.runs += 1
        res.figures["C epoch, its link cut"] = (f"EIO / reads: {c.eio} / {files}; slowest read "
                                                f"{c.slowest:.2f} s (bound {bound:g} s)")
        net.link("c", True)
        wait_for(lambda: net.reaches("c"), 20, "node c's link back")

        def c_reads_all() -> bool:
            try:
                return all((c.mount.mountpoint / rel).read_bytes() == data[rel] for rel in data if rel[:3] == "s2/")
            except OSError:
                return False

        try:
            wait_for(c_reads_all, 60, "node c to read every file once its link is back")
        except AssertionError as exc:
            res.fail(str(exc))
    return res
