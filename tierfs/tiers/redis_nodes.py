"""The Redis servers behind the Redis tier: one server, or the shards of a Redis Cluster.

Where one Redis is outgrown, the shared tier is a Redis Cluster (redis-py's
``RedisCluster``), not a protocol of our own: each block key hashes to a slot,
each slot lives on one shard, so blocks spread over the shards.

Each server is healthy or down on its own (``Health``): a shard that fails a
command is marked down and skipped — its blocks are misses, the other shards
go on serving — and is asked again with a PING after a backoff (1 s, doubling
to 30 s). A single Redis is the cluster of one node named ``""``.

redis-py re-reads the cluster's slot map after every connection error, asking
each known node in turn with the connect timeout: with the network gone that
is seconds on a read that must not wait. Here that re-read is deferred
(``DeferredTopology``): the read path only notes it is due, and the tier's
background refresh, off the read path, does it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from tierfs.errors import UserError

ANY = "*"  # the health entry of a cluster whose client could not be built (no seed answered)


class Health:
    """Which servers are down, and when each may be asked again; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._down: dict[str, tuple[float, float]] = {}  # node -> (retry at, backoff)

    def all_up(self) -> bool:
        return not self._down

    def down_nodes(self) -> list[str]:
        with self._lock:
            return list(self._down)

    def is_down(self, node: str) -> bool:
        return node in self._down

    def claim_probe(self, node: str) -> bool:
        """True if ``node`` is down and its backoff has run out: this caller probes it, the others skip."""
        now = time.monotonic()
        with self._lock:
            entry = self._down.get(node)
            if entry is None or now < entry[0]:
                return False
            self._down[node] = (now + entry[1], entry[1])  # one prober at a time
            return True

    def mark_down(self, node: str) -> tuple[bool, float]:
        """Mark ``node`` down; returns (whether it was up, seconds until it is asked again)."""
        with self._lock:
            entry = self._down.get(node)
            backoff = entry[1] if entry else 1.0
            self._down[node] = (time.monotonic() + backoff, backoff)
            return entry is None, backoff

    def probe_failed(self, node: str) -> None:
        with self._lock:
            entry = self._down.get(node)
            backoff = min((entry[1] if entry else 1.0) * 2, 30.0)
            self._down[node] = (time.monotonic() + backoff, backoff)

    def keep_only(self, nodes: set[str]) -> None:
        """Forget the down servers not in ``nodes`` (they left the cluster's slot map)."""
        with self._lock:
            for node in [n for n in self._down if n not in nodes]:
                del self._down[node]

    def mark_up(self, node: str) -> bool:
        """``node`` answered; returns whether it had been down."""
        with self._lock:
            return self._down.pop(node, None) is not None


class DeferredTopology:
    """Stands in for redis-py's ``NodesManager.initialize`` once the client is built.

    Calls from the command path (after a connection error, a CLUSTERDOWN, many
    MOVED replies) only mark the slot map stale; ``refresh()``, called off the
    read path, re-reads it. MOVED replies still update the map at once (redis-py
    does that without a re-read), so a resharding is followed.
    """

    def __init__(self, real: Callable[..., Any]):
        self._real = real
        self._lock = threading.Lock()
        self.stale = False

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        self.stale = True

    def refresh(self) -> None:
        if not self._lock.acquire(blocking=False):
            return  # another thread is at it
        try:
            self.stale = False
            self._real()
        finally:
            self._lock.release()


def cluster_client(url: str, kwargs: dict[str, Any]) -> tuple[Any, DeferredTopology]:
    """A ``RedisCluster`` seeded from ``url`` (the other shards are found from its slot map).

    Raises redis' errors when no seed answers; ``UserError`` for a URL that is not one.
    """
    import redis
    from redis.backoff import NoBackoff
    from redis.cluster import RedisCluster
    from redis.retry import Retry

    kw = dict(kwargs)
    kw.pop("db", None)
    client = RedisCluster.from_url(
        url,
        # A dead shard's slots are misses while the others serve: never refuse the whole cluster.
        require_full_coverage=False,
        # One attempt per command: the tier's answer to a failure is a miss, never a retry loop.
        retry=Retry(NoBackoff(), 0),
        dynamic_startup_nodes=True,
        **kw,
    )
    if not isinstance(client, redis.RedisCluster):  # pragma: no cover - from_url always makes one
        raise UserError(f"redis {url}: not a cluster client")
    topology = DeferredTopology(client.nodes_manager.initialize)
    client.nodes_manager.initialize = topology  # type: ignore[method-assign]
    return client, topology


def check_cluster_url(url: str, db: int | None, path: str) -> None:
    """A Redis Cluster has only db 0: a URL or [redis] db asking for another is a mistake."""
    if db not in (None, 0) or path.strip("/") not in ("", "0"):
        raise UserError(f"redis {url}: a Redis Cluster has only db 0; drop the /DB from the URL and [redis] db")
