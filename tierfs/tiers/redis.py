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
a connection error or timeout the tier is marked down and skipped — reads go
on through the tiers below — and is tried again after a backoff (1 s, doubling
to 30 s) by a PING, and used again once Redis answers.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import redis

from tierfs.errors import UserError
from tierfs.refs import BlockKey
from tierfs.tiers.base import Tier
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
            pool = redis.BlockingConnectionPool.from_url(settings.url, timeout=settings.timeout, **kwargs)
        except ValueError as exc:
            raise UserError(f"redis URL {_safe(settings.url)} is not valid: {_first(str(exc))}") from None
        if not (settings.password or parts.password) and not settings.allow_no_auth and not _loopback(parts.hostname):
            raise UserError(f"redis {_safe(settings.url)} is reached over the network without a password: set "
                            "[redis] password (Redis AUTH), or allow_no_auth = true if the network is yours alone")
        self.client = redis.Redis(connection_pool=pool)
        self._lock = threading.Lock()
        self._up = True
        self._retry_at = 0.0
        self._backoff = 1.0
        self._held = 0
        self._entries = 0
        self._last_bad_log = 0.0
        super().__init__()

    # -- start-up -----------------------------------------------------------
    def connect(self) -> bool:
        """Check Redis at mount time.

        Returns False (and the tier starts down) when Redis is simply not
        there; raises UserError for what the user must fix: a wrong password,
        or TLS on one side only.
        """
        where = _safe(self.settings.url)
        has_password = bool(self.settings.password or self.client.connection_pool.connection_kwargs.get("password"))
        try:
            self.client.ping()
        except redis.AuthenticationError as exc:
            if not has_password:
                raise UserError(f"redis {where} wants a password: set [redis] password or put it in the URL "
                                "(redis://:PASSWORD@host:port/db)") from None
            raise UserError(f"redis {where} refused the password ({_first(str(exc))}): check [redis] password or the URL") from None
        except redis.ResponseError as exc:
            if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
                raise UserError(f"redis {where} wants a password ({exc}): set [redis] password or put it in the URL") from None
            raise UserError(f"redis {where}: {exc}") from None
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            text = str(exc)
            refused = "refused" in text.lower() or isinstance(exc, ConnectionRefusedError)
            if self.settings.url.startswith("rediss://") and not refused:
                # A TLS client facing a plain server waits for a handshake that never comes.
                raise UserError(f"redis {where}: TLS mismatch, no TLS handshake ({_first(text)}); "
                                "if the server does not use TLS, use redis://") from None
            if not refused and not isinstance(exc, redis.TimeoutError) and (
                    "closed" in text.lower() or "reset" in text.lower()):
                raise UserError(f"redis {where} closed the connection ({_first(text)}); "
                                "if it expects TLS, use rediss://") from None
            self._mark_down(exc, at_start=True)
            return False
        self.refresh_gauges()
        log.info("redis tier up: %s", where)
        return True

    # -- Tier ---------------------------------------------------------------
    def get(self, key: BlockKey) -> bytes | None:
        if not self._usable():
            self._miss()
            return None
        try:
            raw = self.client.get(self._key(key))
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            self._mark_down(exc)
            self._miss()
            return None
        if raw is None:
            self._miss()
            return None
        data = self.sealer.open(key.digest, bytes(raw))  # type: ignore[arg-type]
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
        if len(data) > self.settings.max_block_size or not self._usable():
            return
        value = self.sealer.seal(key.digest, data)
        ttl = int(self.settings.ttl) if self.settings.ttl >= 1 else None
        try:
            self.client.set(self._key(key), value, ex=ttl)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            self._mark_down(exc)
        except redis.ResponseError as exc:  # OOM without an eviction policy, say
            self.stats.add("errors")
            log.warning("redis tier: SET refused: %s", exc)

    def evict(self, key: BlockKey) -> None:
        if not self._usable():
            return
        try:
            self.client.delete(self._key(key))
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            self._mark_down(exc)

    def bytes_held(self) -> int:
        return self._held

    def entries(self) -> int:
        return self._entries

    def is_up(self) -> bool:
        return self._up

    def close(self) -> None:
        try:
            self.client.close()
            self.client.connection_pool.disconnect()
        except Exception:
            pass

    # -- health ---------------------------------------------------------------
    def refresh_gauges(self) -> None:
        """Size of what Redis holds (its db, shared with the other nodes); called off the loop."""
        if not self._usable():
            return
        try:
            info = self.client.info("memory")
            self._held = int(info.get("used_memory", 0))
            self._entries = int(self.client.dbsize())
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            self._mark_down(exc)
        except redis.RedisError:
            pass

    def _usable(self) -> bool:
        if self._up:
            return True
        now = time.monotonic()
        with self._lock:
            if now < self._retry_at:
                return False
            self._retry_at = now + self._backoff  # one prober at a time
        try:
            self.client.ping()
        except (redis.RedisError, OSError) as exc:
            with self._lock:
                self._backoff = min(self._backoff * 2, 30.0)
                self._retry_at = time.monotonic() + self._backoff
            log.debug("redis tier still down: %s", exc)
            return False
        with self._lock:
            self._up = True
            self._backoff = 1.0
        log.info("redis tier up again: %s", _safe(self.settings.url))
        return True

    def _mark_down(self, exc: BaseException, at_start: bool = False) -> None:
        with self._lock:
            was_up = self._up
            self._up = False
            self._retry_at = time.monotonic() + self._backoff
        self.stats.add("errors")
        if at_start:
            log.warning("redis tier off: cannot reach %s (%s); reads go on without it, retrying in the background",
                        _safe(self.settings.url), _first(str(exc)))
        elif was_up:
            log.warning("redis tier down: %s (%s); reads go on without it, retrying in %.0f s",
                        _safe(self.settings.url), _first(str(exc)), self._backoff)

    def _key(self, key: BlockKey) -> bytes:
        return self.settings.key_prefix.encode() + key.digest


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
