"""Redis tier: the cache that training nodes share, between RAM and disk.

One node's miss warms the rack: blocks a node fetched are put into Redis, and
another node's first read of them is a Redis hit. Anyone who can reach Redis
could read or plant values, so each value is sealed (``seal.py``): a MAC under
the secret the nodes share, over the block key and the block (or AES-GCM with
the cache key); a value that fails is deleted and treated as a miss, never
served. AUTH (user and password) and TLS (``rediss://``, a CA, a client
certificate) guard the connection; a Redis off this host without a password
is refused unless the config says so. Redis bounds itself (``maxmemory``
with ``allkeys-lru``); each value also carries a TTL.

Never a liability (docs/design.md, invariant 3): every call has a short timeout; on
a connection error or timeout the server is marked down and skipped — reads go
on through the tiers below — and is tried again after a backoff (1 s, doubling
to 30 s) by a PING, and used again once Redis answers.

With ``[redis] cluster = true`` the URL names one node of a Redis Cluster
(``redis_nodes.py``): blocks spread over its shards, and each shard is marked
down on its own, so a dead shard costs its blocks' misses and nothing else.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import redis

from tierfs.errors import UserError
from tierfs.refs import BlockKey
from tierfs.tiers.base import Tier
from tierfs.tiers.redis_nodes import ANY, DeferredTopology, Health, check_cluster_url, cluster_client
from tierfs.tiers.seal import Sealer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RedisSettings:
    url: str = field(repr=False)
    password: str = field(default="", repr=False)
    db: int | None = None
    key_prefix: str = "tierfs:"
    ttl: float = 7 * 24 * 3600.0  # seconds a block lives in Redis; 0 = no TTL
    max_block_size: int = 8 << 20  # larger blocks skip Redis
    pool_size: int = 32
    timeout: float = 0.25  # seconds per command: a sick Redis must never be slower than the store
    connect_timeout: float = 0.5
    secret: bytes = field(default=b"", repr=False)  # the nodes' shared secret: values carry a MAC under it
    data_key: bytes = field(default=b"", repr=False)  # AES-GCM instead, where the caches are encrypted
    username: str = ""
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    allow_no_auth: bool = False
    cluster: bool = False  # the URL names one node of a Redis Cluster; the other shards are found from it


class RedisTier(Tier):
    name = "redis"

    def __init__(self, settings: RedisSettings):
        self.settings = settings
        if not settings.secret and not settings.data_key:
            raise UserError("the Redis tier needs the secret every node shares (values carry a MAC under it): "
                            "set [redis] secret_file (the same file on every node; make one with "
                            "head -c 32 /dev/urandom | base64) or TIERFS_REDIS_SECRET")
        self.sealer = Sealer(settings.secret, settings.data_key)
        kwargs: dict[str, object] = {
            "socket_timeout": settings.timeout,
            "socket_connect_timeout": settings.connect_timeout,
            "max_connections": settings.pool_size,
            "health_check_interval": 0,
            "retry_on_timeout": False,
        }
        if settings.password:
            kwargs["password"] = settings.password
        if settings.username:
            kwargs["username"] = settings.username
        if settings.db is not None:
            kwargs["db"] = settings.db
        if settings.url.startswith("rediss://"):
            kwargs["ssl_cert_reqs"] = "required"
            if settings.ca_file:
                kwargs["ssl_ca_certs"] = settings.ca_file
            if settings.cert_file:
                kwargs["ssl_certfile"] = settings.cert_file
                kwargs["ssl_keyfile"] = settings.key_file or None
        elif settings.ca_file or settings.cert_file:
            raise UserError(f"[redis] ca_file and cert_file are for TLS: use a rediss:// URL, not {_safe(settings.url)}")
        try:
            parts = urlsplit(settings.url)
            if settings.cluster:
                check_cluster_url(_safe(settings.url), settings.db, parts.path)
                parts.port  # noqa: B018 - raises ValueError for a port that is not one
            else:
                pool = redis.BlockingConnectionPool.from_url(settings.url, timeout=settings.timeout, **kwargs)
        except ValueError as exc:
            raise UserError(f"redis URL {_safe(settings.url)} is not valid: {_first(str(exc))}") from None
        if not (settings.password or parts.password) and not settings.allow_no_auth and not _loopback(parts.hostname):
            raise UserError(f"redis {_safe(settings.url)} is reached over the network without a password: set "
                            "[redis] password (Redis AUTH), or allow_no_auth = true if the network is yours alone")
        self._kwargs = kwargs
        self._topology: DeferredTopology | None = None
        # A cluster's client is built by connect() (building it asks the cluster for its slot map).
        self.client: Any = None if settings.cluster else redis.Redis(connection_pool=pool)
        self.health = Health()
        self._held = 0
        self._entries = 0
        self._last_bad_log = 0.0
        super().__init__()
        if settings.cluster:  # `tierfs stats` shows a cluster with a dead shard as "2/3 up"
            self.stats.add_gauge("shards", lambda: len(self._shards()))
            self.stats.add_gauge("shards_down", lambda: len(self.health.down_nodes()))

    # -- start-up -----------------------------------------------------------
    def connect(self) -> bool:
        """Check Redis at mount time.

        Returns False (and the tier starts down) when Redis is simply not
        there; raises UserError for what the user must fix: a wrong password,
        or TLS on one side only.
        """
        where = _safe(self.settings.url)
        has_password = bool(self.settings.password or urlsplit(self.settings.url).password)
        try:
            if self.settings.cluster:
                self._build_cluster()
            else:
                self.client.ping()
        except redis.AuthenticationError as exc:
            if not has_password:
                raise UserError(f"redis {where} wants a password: set [redis] password or put it in the URL "
                                "(redis://:PASSWORD@host:port/db)") from None
            raise UserError(f"redis {where} refused the password ({_first(str(exc))}): check [redis] password or the URL") from None
        except redis.ResponseError as exc:
            if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
                raise UserError(f"redis {where} wants a password ({exc}): set [redis] password or put it in the URL") from None
            if "cluster support disabled" in str(exc).lower():
                raise UserError(f"redis {where} is not a Redis Cluster (cluster support disabled): "
                                "drop [redis] cluster, or start it with cluster-enabled yes") from None
            raise UserError(f"redis {where}: {exc}") from None
        except (redis.ConnectionError, redis.TimeoutError, redis.RedisClusterException, OSError) as exc:
            text = str(exc)
            low = text.lower()
            if "cluster mode is not enabled" in low:
                raise UserError(f"redis {where} is not a Redis Cluster (cluster mode is not enabled on it): "
                                "drop [redis] cluster, or start it with cluster-enabled yes") from None
            # redis-py's cluster client wraps AUTH failures in "cannot be connected": tell them apart by text.
            if "invalid username-password" in low or "wrongpass" in low:
                raise UserError(f"redis {where} refused the password: check [redis] password or the URL") from None
            if "noauth" in low or "already authenticated" in low or "authentication required" in low:
                raise UserError(f"redis {where} wants a password: set [redis] password or put it in the URL "
                                "(redis://:PASSWORD@host:port)") from None
            refused = "refused" in text.lower() or isinstance(exc, ConnectionRefusedError)
            if self.settings.url.startswith("rediss://") and not refused and not self.settings.cluster:
                # A TLS client facing a plain server waits for a handshake that never comes.
                raise UserError(f"redis {where}: TLS mismatch, no TLS handshake ({_first(text)}); "
                                "if the server does not use TLS, use redis://") from None
            if not refused and not isinstance(exc, redis.TimeoutError) and not self.settings.cluster and (
                    "closed" in text.lower() or "reset" in text.lower()):
                raise UserError(f"redis {where} closed the connection ({_first(text)}); "
                                "if it expects TLS, use rediss://") from None
            self._mark_down(ANY if self.settings.cluster else "", exc, at_start=True)
            return False
        self.refresh_gauges()
        log.info("redis tier up: %s%s", where, f" (a cluster of {len(self._shards())} shards)"
                 if self.settings.cluster else "")
        return True

    def _build_cluster(self) -> None:
        if self.client is not None:
            return
        kwargs = {**self._kwargs, "connection_pool_class": redis.BlockingConnectionPool,
                  "timeout": self.settings.timeout}
        client, topology = cluster_client(self.settings.url, kwargs)
        self.client, self._topology = client, topology

    # -- Tier ---------------------------------------------------------------
    def get(self, key: BlockKey) -> bytes | None:
        k = self._key(key)
        node = self._node(k)
        if node is None:
            self._miss()
            return None
        try:
            raw = self.client.get(k)
        except _DOWN as exc:
            self._mark_down(node, exc)
            self._miss()
            return None
        except redis.RedisError as exc:  # a cluster answering CLUSTERDOWN, a slot no shard serves
            self._refused("GET", exc)
            self._miss()
            return None
        if raw is None:
            self._miss()
            return None
        data = self.sealer.open(key.digest, bytes(raw))
        if data is None:
            self.stats.add("errors")
            now = time.monotonic()
            if now - self._last_bad_log > 60:  # once a minute: planted or corrupt values may come in floods
                self._last_bad_log = now
                log.warning("redis tier: block %s is not sealed by this lake's secret (planted, corrupt, or "
                            "written under another secret); dropped, refetching", key.hex)
            self.evict(key)
            self._miss()
            return None
        return self._hit(data)

    def put(self, key: BlockKey, data: bytes) -> None:
        if len(data) > self.settings.max_block_size:
            return
        k = self._key(key)
        node = self._node(k)
        if node is None:
            return
        value = self.sealer.seal(key.digest, data)
        ttl = int(self.settings.ttl) if self.settings.ttl >= 1 else None
        try:
            self.client.set(k, value, ex=ttl)
        except _DOWN as exc:
            self._mark_down(node, exc)
        except redis.RedisError as exc:  # OOM without an eviction policy, say
            self._refused("SET", exc)

    def evict(self, key: BlockKey) -> None:
        k = self._key(key)
        node = self._node(k)
        if node is None:
            return
        try:
            self.client.delete(k)
        except _DOWN as exc:
            self._mark_down(node, exc)
        except redis.RedisError as exc:
            self._refused("DEL", exc)

    def bytes_held(self) -> int:
        return self._held

    def entries(self) -> int:
        return self._entries

    def is_up(self) -> bool:
        """Serving: the Redis answers, or, for a cluster, at least one of its shards (the rest are misses)."""
        if not self.settings.cluster:
            return self.health.all_up()
        return self.client is not None and len(self.health.down_nodes()) < len(self._shards())

    def close(self) -> None:
        if self.client is None:
            return
        try:
            self.client.close()
            if not self.settings.cluster:
                self.client.connection_pool.disconnect()
        except Exception:
            pass

    # -- health ---------------------------------------------------------------
    def refresh_gauges(self) -> None:
        """Size of what Redis holds (its db, shared with the other nodes); called off the loop.

        For a cluster, the sum over the shards that answer; a slot map a
        failure left stale is re-read here, off the read path.
        """
        if self.settings.cluster:
            if self.client is None and not self._probe(ANY):
                return
            if self._topology is not None and self._topology.stale:
                try:
                    self._topology.refresh()
                except (redis.RedisError, OSError) as exc:
                    log.debug("redis cluster: slot map not re-read: %s", exc)
                else:
                    self.health.keep_only({name for name, _ in self._shards()})
        held = entries = 0
        for node, target in self._shards():
            if self._probe(node) is False:
                continue
            try:
                info = self.client.info("memory", **target)
                held += int(info.get("used_memory", 0))
                entries += int(self.client.dbsize(**target))
            except _DOWN as exc:
                self._mark_down(node, exc)
            except redis.RedisError:
                pass
        self._held, self._entries = held, entries

    def _shards(self) -> list[tuple[str, dict[str, Any]]]:
        """(health name, command kwargs) of each server: the one Redis, or each primary of the cluster."""
        if not self.settings.cluster:
            return [("", {})]
        if self.client is None:
            return []
        return [(n.name, {"target_nodes": n}) for n in self.client.get_primaries()]

    def _node(self, k: bytes) -> str | None:
        """The health name of the server holding key ``k``, or None if it is down (a miss, no call)."""
        if not self.settings.cluster:
            node = ""
        else:
            if self.client is None and (not self._probe(ANY) or self.client is None):
                return None
            try:
                node = self.client.get_node_from_key(k).name
            except (redis.RedisClusterException, redis.RedisError, AttributeError):
                return None  # no shard serves its slot (yet)
        return node if self._probe(node) else None

    def _probe(self, node: str) -> bool:
        """Whether ``node`` may be used: up, or down with its backoff run out and answering a PING now."""
        if not self.health.is_down(node):
            return True
        if not self.health.claim_probe(node):
            return False
        try:
            if node == ANY:
                self._build_cluster()
            elif self.settings.cluster:
                target = self.client.get_node(node_name=node)
                if target is None:
                    raise redis.ConnectionError(f"{node} left the cluster")
                self.client.ping(target_nodes=target)
            else:
                self.client.ping()
        except (redis.RedisError, redis.RedisClusterException, OSError) as exc:
            self.health.probe_failed(node)
            log.debug("redis tier: %s still down: %s", node or _safe(self.settings.url), exc)
            return False
        if self._topology is not None:
            self._topology.stale = True  # it came back: where its slots are now is read off the read path
        if self.health.mark_up(node):
            log.info("redis tier up again: %s", node if self.settings.cluster and node != ANY
                     else _safe(self.settings.url))
        return True

    def _refused(self, command: str, exc: BaseException) -> None:
        self.stats.add("errors")
        now = time.monotonic()
        if now - self._last_bad_log > 60:
            self._last_bad_log = now
            log.warning("redis tier: %s refused: %s", command, _first(str(exc)))

    def _mark_down(self, node: str, exc: BaseException, at_start: bool = False) -> None:
        was_up, backoff = self.health.mark_down(node)
        self.stats.add("errors")
        what = f"shard {node} of {_safe(self.settings.url)}" if self.settings.cluster and node != ANY \
            else _safe(self.settings.url)
        if at_start:
            log.warning("redis tier off: cannot reach %s (%s); reads go on without it, retrying in the background",
                        what, _first(str(exc)))
        elif was_up:
            log.warning("redis tier down: %s (%s); reads go on without it, retrying in %.0f s",
                        what, _first(str(exc)), backoff)

    def _key(self, key: BlockKey) -> bytes:
        return self.settings.key_prefix.encode() + key.digest


# Errors that say a server is unreachable: it is marked down (a miss), not just one refused command.
_DOWN = (redis.ConnectionError, redis.TimeoutError, OSError)


def _loopback(host: str | None) -> bool:
    if not host or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: somewhere on the network


def _safe(url: str) -> str:
    """The URL without credentials, for messages and logs."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


def _first(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else "no detail"
