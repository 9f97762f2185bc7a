"""A real Redis Cluster for the tests, and network namespaces to put nodes in.

``RedisCluster``: N ``redis-server --cluster-enabled yes`` on free ports, joined
by ``redis-cli --cluster create``, stopped by PID, its files removed.
``Netns``: a hub namespace with a bridge and node namespaces each joined to it
by a veth pair, on addresses the test picks; everything it made is deleted in
``close()``, which the tests call in a ``finally``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from helpers import SeaweedS3, free_port, stop_process, wait_for


class RedisCluster:
    """A Redis Cluster of ``shards`` primaries and no replicas, on ``host`` (inside ``netns`` if given)."""

    def __init__(self, work: Path, shards: int = 3, host: str = "127.0.0.1", netns: str = "", password: str = ""):
        self.work = work
        self.password = password
        self.host = host
        self.netns = netns
        self.ports = [free_port(10000) for _ in range(shards)]  # each with its cluster bus port, +10000
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def _argv(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else list(argv)

    @property
    def url(self) -> str:
        """The seed node's URL (tierfs finds the other shards from it)."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.ports[0]}"

    def _auth(self) -> list[str]:
        return ["-a", self.password, "--no-auth-warning"] if self.password else []

    def start(self) -> RedisCluster:
        self.work.mkdir(parents=True, exist_ok=True)
        try:
            for port in self.ports:
                d = self.work / str(port)
                d.mkdir(exist_ok=True)
                log = open(d / "redis.log", "ab")  # noqa: SIM115 - lives as long as the server
                self.procs[port] = subprocess.Popen(self._argv(
                    "redis-server", "--port", str(port), "--bind", self.host, "--save", "", "--appendonly", "no",
                    "--dir", str(d), "--cluster-enabled", "yes", "--cluster-config-file", str(d / "nodes.conf"),
                    "--cluster-node-timeout", "2000", "--cluster-require-full-coverage", "no",
                    "--maxmemory", "256mb", "--maxmemory-policy", "allkeys-lru", "--protected-mode", "no",
                    *(["--requirepass", self.password, "--masterauth", self.password] if self.password else [])),
                    stdout=log, stderr=log)
                log.close()
            for port in self.ports:
                wait_for(lambda port=port: self.cli(port, "ping").stdout.strip() == "PONG", 20, f"redis on {port}")
            res = subprocess.run(self._argv("redis-cli", *self._auth(), "--cluster", "create",
                                            *(f"{self.host}:{p}" for p in self.ports),
                                            "--cluster-replicas", "0", "--cluster-yes"),
                                 capture_output=True, text=True, timeout=60)
            assert res.returncode == 0, res.stdout + res.stderr
            for port in self.ports:
                wait_for(lambda port=port: "cluster_state:ok" in self.cli(port, "cluster", "info").stdout,
                         30, f"cluster_state:ok on {port}")
        except BaseException:
            self.stop()
            raise
        return self

    def cli(self, port: int, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self._argv("redis-cli", *self._auth(), "-h", self.host, "-p", str(port), *args),
                              capture_output=True, text=True, timeout=20)

    def keys_per_shard(self) -> dict[int, int]:
        """DBSIZE of each live shard."""
        return {p: int(self.cli(p, "dbsize").stdout.strip() or 0) for p in self.procs}

    def kill(self, port: int) -> None:
        """SIGKILL one shard (its slots are then served by no one: a cluster without replicas)."""
        proc = self.procs.pop(port)
        proc.kill()
        proc.wait(timeout=10)

    def stop(self) -> None:
        for port in list(self.procs):
            stop_process(self.procs.pop(port))
        shutil.rmtree(self.work, ignore_errors=True)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and res.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)}: {res.stderr.strip()}")
    return res


class Netns:
    """A hub namespace (bridge, ``hub_ip``) and node namespaces on veth pairs into it, all on ``prefix``.0/24.

    Names carry this process' PID, so two runs (or anything else on the host) never collide.
    """

    def __init__(self, nodes: list[str], prefix: str = "10.77.0"):
        tag = f"{os.getpid() % 100000}"
        self.prefix = prefix
        self.hub = f"tfhub{tag}"
        self.hub_ip = f"{prefix}.1"
        self.nodes = {name: f"tf{name}{tag}" for name in nodes}
        self.ips = {name: f"{prefix}.{10 + i}" for i, name in enumerate(nodes)}
        self.veths = {name: f"tfv{name}{tag}"[:15] for name in nodes}  # the node's end; the hub's ends: ...h
        self.made: list[str] = []

    def create(self) -> Netns:
        try:
            self._make_ns(self.hub)
            _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.hub, "addr", "add", f"{self.hub_ip}/24", "dev", "br0")
            _ip("-n", self.hub, "link", "set", "br0", "up")
            for name, ns in self.nodes.items():
                self._make_ns(ns)
                node_end, hub_end = self.veths[name], self.veths[name][:14] + "h"
                _ip("link", "add", node_end, "netns", ns, "type", "veth", "peer", "name", hub_end, "netns", self.hub)
                _ip("-n", self.hub, "link", "set", hub_end, "master", "br0")
                _ip("-n", self.hub, "link", "set", hub_end, "up")
                _ip("-n", ns, "addr", "add", f"{self.ips[name]}/24", "dev", node_end)
                _ip("-n", ns, "link", "set", node_end, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
            # Each node's namespace is an empty network: only the addresses made here can be reached from it.
            for name in self.nodes:
                wait_for(lambda name=name: self.reaches(name), 20, f"node {name} to reach the hub")
        except BaseException:
            self.close()
            raise
        return self

    def _make_ns(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self.made.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")

    def reaches(self, name: str) -> bool:
        """Whether node ``name`` reaches the hub: a connection to a closed port there is refused, not lost."""
        probe = (f"import socket; s = socket.socket(); s.settimeout(1); "
                 f"raise SystemExit(s.connect_ex(('{self.hub_ip}', 9)) != 111)")
        return subprocess.run(self.exec_argv(name, sys.executable, "-c", probe), capture_output=True).returncode == 0

    def exec_argv(self, name: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.nodes[name], *argv]

    def link(self, name: str, up: bool) -> None:
        """Cut (or restore) node ``name``'s link: its veth end down (or up)."""
        _ip("-n", self.nodes[name], "link", "set", self.veths[name], "up" if up else "down")

    def close(self) -> None:
        # Deleting a namespace deletes the veth ends in it (and so their peers).
        for ns in reversed(self.made):
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:  # only what ran inside the namespaces this test made
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            deadline = time.monotonic() + 10
            while subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split() \
                    and time.monotonic() < deadline:
                time.sleep(0.05)
            _ip("netns", "del", ns, check=False)
        self.made.clear()


_CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def in_netns(ns: str) -> Iterator[None]:
    """Run this thread (and the processes it starts) in network namespace ``ns``, then come back.

    What is started inside stays there: a ``tierfs mount`` daemon, a server. Only the
    network changes; the mounts (and so a FUSE mount made inside) are the host's.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(target, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {ns}")
        try:
            yield
        finally:
            if libc.setns(home, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back home")
    finally:
        os.close(home)
        os.close(target)


@contextlib.contextmanager
def netns(nodes: list[str], prefix: str = "10.77.0") -> Iterator[Netns]:
    n = Netns(nodes, prefix).create()
    try:
        yield n
    finally:
        n.close()


def ns_pid(pid: int) -> Any:
    """The network namespace a process runs in (the inode of /proc/PID/ns/net)."""
    return os.stat(f"/proc/{pid}/ns/net").st_ino


class HubSeaweed(SeaweedS3):
    """SeaweedFS started inside the hub namespace (call ``start`` within ``in_netns(hub)``), on all its addresses.

    The hub is a network of this test's own: listening on every address there
    means its loopback (for the checks) and the bridge's address (for the nodes).
    """

    def __init__(self, data_dir: Path, hub: str, hub_ip: str):
        super().__init__(data_dir)
        self.hub = hub
        self.hub_ip = hub_ip

    @property
    def node_endpoint(self) -> str:
        return f"http://{self.hub_ip}:{self.s3_port}"

    def start(self, s3_port: int | None = None, ip: str = "", bind: str = "0.0.0.0") -> HubSeaweed:
        super().start(s3_port, ip=ip or self.hub_ip, bind=bind)
        return self

    def _wait_ready(self) -> None:
        # From this thread (in the hub), not through fsspec's IO thread (which lives in the host's network).
        def answers() -> bool:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.s3_port}/", timeout=2)
            except urllib.error.HTTPError:
                return True  # 403 to an anonymous caller: it is up
            except OSError:
                return False
            return True

        wait_for(answers, 60, "SeaweedFS S3 in the hub namespace")

    def upload_dir(self, bucket: str, local: Path) -> None:
        """Put every file under ``local`` into ``bucket`` (made here), from a process inside the hub."""
        script = (
            "import sys, s3fs\n"
            "fs = s3fs.S3FileSystem(key=sys.argv[1], secret=sys.argv[2], skip_instance_cache=True,"
            " client_kwargs={'endpoint_url': sys.argv[3]})\n"
            "fs.mkdir(sys.argv[4])\n"
            "fs.put(sys.argv[5].rstrip('/') + '/', sys.argv[4] + '/', recursive=True)\n"
        )
        res = subprocess.run(["ip", "netns", "exec", self.hub, sys.executable, "-c", script, self.ACCESS_KEY,
                              self.SECRET_KEY, f"http://127.0.0.1:{self.s3_port}", bucket, str(local)],
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
