"""The Redis tier against a real redis-server on loopback (never a fake)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import RedisServer, free_port

from tierfs.errors import UserError
from tierfs.refs import ObjectRef
from tierfs.tiers.redis import RedisSettings, RedisTier


def key(n: int):
    return ObjectRef(f"obj{n}", 100, etag="e").block_key(0, 4096)


def tier_for(server: RedisServer, **kw: object) -> RedisTier:
    t = RedisTier(RedisSettings(server.url, **{"secret": b"unit", **kw}))  # type: ignore[arg-type]
    assert t.connect()
    return t


def test_corrupted_value_is_detected_and_dropped(redis_server: RedisServer) -> None:
    t = tier_for(redis_server)
    t.put(key(1), b"good bytes")
    raw = redis_server.client().get(b"tierfs:" + key(1).digest)
    redis_server.client().set(b"tierfs:" + key(1).digest, raw[:-1] + b"X")
    assert t.get(key(1)) is None
    assert t.stats.get("errors") == 1
    assert redis_server.client().exists(b"tierfs:" + key(1).digest) == 0
    redis_server.client().set(b"tierfs:" + key(2).digest, b"short")
    assert t.get(key(2)) is None  # too short to carry a checksum


def test_oversize_blocks_skip_redis(redis_server: RedisServer) -> None:
    t = tier_for(redis_server, max_block_size=1000)
    t.put(key(1), b"x" * 1001)
    t.put(key(2), b"x" * 1000)
    assert t.get(key(1)) is None and t.get(key(2)) == b"x" * 1000


def test_ttl_expiry(redis_server: RedisServer) -> None:
    t = tier_for(redis_server, ttl=1)
    t.put(key(1), b"short-lived")
    assert 0 < redis_server.client().ttl(b"tierfs:" + key(1).digest) <= 1
    time.sleep(2.1)
    assert t.get(key(1)) is None


def test_redis_tier_is_bounded_by_maxmemory(redis_server: RedisServer) -> None:
    c = redis_server.client()
    c.config_set("maxmemory", str(2 * 1024 * 1024))
    t = tier_for(redis_server)
    for n in range(200):
        t.put(key(n), os.urandom(50_000))  # 10 MB into a 2 MB Redis
    info = c.info()
    assert info["used_memory"] <= 3 * 1024 * 1024
    assert info["evicted_keys"] > 0
    t.refresh_gauges()
    assert 0 < t.entries() < 200


def test_down_and_back_up(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r").start()
    try:
        t = tier_for(server)
        t.put(key(1), b"before")
        server.kill()
        t0 = time.monotonic()
        assert t.get(key(1)) is None  # a miss, not an error
        assert time.monotonic() - t0 < 2
        assert not t.is_up()
        t.put(key(2), b"while down")  # skipped, never raises
        server = RedisServer(tmp_path / "r", port=server.port).start()
        deadline = time.monotonic() + 10
        while not t.is_up() and time.monotonic() < deadline:
            t.get(key(3))
            time.sleep(0.2)
        assert t.is_up()
        t.put(key(4), b"after")
        assert t.get(key(4)) == b"after"
    finally:
        server.stop()


def test_slow_redis_is_bounded_by_timeouts(redis_server: RedisServer) -> None:
    t = tier_for(redis_server, timeout=0.2)
    t.put(key(1), b"x")
    assert redis_server.proc is not None
    os.kill(redis_server.proc.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        assert t.get(key(1)) is None
        assert time.monotonic() - t0 < 1.0
        t0 = time.monotonic()
        for _ in range(20):
            t.get(key(1))  # marked down: skipped without waiting
        assert time.monotonic() - t0 < 0.5
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)


def test_absent_redis_starts_down(tmp_path: Path) -> None:
    t = RedisTier(RedisSettings(f"redis://127.0.0.1:{free_port()}/0", secret=b"unit"))
    assert t.connect() is False
    assert not t.is_up() and t.get(key(1)) is None


def test_wrong_password(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r", password="s3cret-pass").start()
    try:
        url = f"redis://:wrong@127.0.0.1:{server.port}/0"
        with pytest.raises(UserError, match="refused the password") as e:
            RedisTier(RedisSettings(url, secret=b"unit")).connect()
        assert "wrong" not in str(e.value)  # never print credentials
        with pytest.raises(UserError, match="wants a password"):
            RedisTier(RedisSettings(f"redis://127.0.0.1:{server.port}/0", secret=b"unit")).connect()
        assert RedisTier(RedisSettings(server.url, secret=b"unit")).connect()
    finally:
        server.stop()


def test_tls_client_against_plain_server(redis_server: RedisServer) -> None:
    with pytest.raises(UserError, match="TLS mismatch"):
        RedisTier(RedisSettings(f"rediss://127.0.0.1:{redis_server.port}/0", secret=b"unit")).connect()


def test_plain_client_against_tls_server(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the test's TLS certificate (apt-get install openssl)")
    key_file, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key_file),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    port = free_port()
    server = RedisServer(tmp_path / "r", port=port)  # TLS on `port`; the plain port is turned off
    server.start("--tls-port", str(port), "--port", "0", "--tls-cert-file", str(cert),
                 "--tls-key-file", str(key_file), "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no")
    try:
        with pytest.raises(UserError, match="rediss://"):
            RedisTier(RedisSettings(f"redis://127.0.0.1:{port}/0", secret=b"unit")).connect()
        ok = RedisTier(RedisSettings(f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=none", secret=b"unit"))
        assert ok.connect()
        ok.put(key(1), b"over tls")
        assert ok.get(key(1)) == b"over tls"
    finally:
        server.stop()


def test_a_planted_value_with_a_valid_unkeyed_checksum_is_never_served(redis_server: RedisServer) -> None:
    """What an attacker who reaches Redis can write: the right key, their bytes, any checksum they like."""
    import struct

    import xxhash

    t = tier_for(redis_server)
    evil = b"planted bytes"
    for forged in (struct.pack(">Q", xxhash.xxh3_64_intdigest(evil)) + evil,  # the old unkeyed format
                   b"M" + b"\0" * 32 + evil):  # the sealed layout, without the secret
        redis_server.client().set(b"tierfs:" + key(3).digest, forged)
        assert t.get(key(3)) is None
    t.put(key(4), b"good")
    raw = redis_server.client().get(b"tierfs:" + key(4).digest)
    redis_server.client().set(b"tierfs:" + key(5).digest, raw)  # a valid value moved to another key
    assert t.get(key(5)) is None and t.get(key(4)) == b"good"
    other = RedisTier(RedisSettings(redis_server.url, secret=b"another lake's secret"))
    assert other.connect() and other.get(key(4)) is None  # another secret: a miss, not an error


def test_encrypted_values_hold_no_plaintext(redis_server: RedisServer) -> None:
    t = tier_for(redis_server, data_key=b"k" * 32)
    t.put(key(6), b"secret training sample " * 10)
    raw = redis_server.client().get(b"tierfs:" + key(6).digest)
    assert b"training sample" not in raw and t.get(key(6)) == b"secret training sample " * 10
    assert tier_for(redis_server, data_key=b"j" * 32).get(key(6)) is None  # another key: a miss


def test_redis_without_a_secret_or_auth_is_refused() -> None:
    with pytest.raises(UserError, match="secret"):
        RedisTier(RedisSettings("redis://127.0.0.1:6379/0"))
    with pytest.raises(UserError, match="without a password"):
        RedisTier(RedisSettings("redis://cache-host.invalid:6379/0", secret=b"s"))
    RedisTier(RedisSettings("redis://cache-host.invalid:6379/0", secret=b"s", allow_no_auth=True)).close()
    RedisTier(RedisSettings("redis://:pw@cache-host.invalid:6379/0", secret=b"s")).close()
