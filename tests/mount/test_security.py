"""The shared tier and the daemon under an attacker's eyes: planted values, TLS, secrets that must not leak.

Real mounts, a real redis-server (plain and TLS with a CA made here).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from helpers import (
    REDIS_SECRET,
    Mount,
    RedisServer,
    SeaweedS3,
    assert_one_line_error,
    drop_page_cache,
    force_cleanup,
    free_port,
    mounted,
    random_bytes,
    run_tierfs,
    write_tree,
)

pytestmark = pytest.mark.mount
KiB = 1024


@pytest.fixture
def lake(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path / "lake"
    files = {f"ds/{i:03d}.bin": random_bytes(100_000 + i, seed=i) for i in range(20)}
    write_tree(root, files)
    return root, files


def test_values_planted_in_redis_are_never_served(lake: tuple[Path, dict[str, bytes]], tmp_path: Path,
                                                  redis_server: RedisServer) -> None:
    """Right key, wrong bytes, a valid (unkeyed) checksum: a miss and a refetch, on every node."""
    import struct

    import xxhash

    root, files = lake
    only_redis = ("--redis", redis_server.url, "--ram-size", "0", "--cache-size", "0", "--block-size", "64KiB")
    with mounted(f"file://{root}", tmp_path / "a", tmp_path / "cache-a", *only_redis) as a:
        for rel, data in files.items():
            assert (a.mountpoint / rel).read_bytes() == data
    # With the secret, node B is served what node A put there.
    with mounted(f"file://{root}", tmp_path / "b", tmp_path / "cache-b", *only_redis) as b:
        for rel, data in files.items():
            assert (b.mountpoint / rel).read_bytes() == data
        assert b.stats()["backend"]["bytes"] == 0
    client = redis_server.client()
    keys = client.keys("tierfs:*")
    assert keys
    evil = b"\xee" * (64 * KiB)
    for k in keys:
        client.set(k, struct.pack(">Q", xxhash.xxh3_64_intdigest(evil)) + evil)
    drop_page_cache()
    with mounted(f"file://{root}", tmp_path / "c", tmp_path / "cache-c", *only_redis) as c:
        for rel, data in files.items():
            assert (c.mountpoint / rel).read_bytes() == data
        stats = c.stats()
        # Every planted value refused (the bytes above are the lake's); the kernel's second READ of a block may
        # come before this node's refetched value is back in Redis, as timing has it, and be refused and
        # refetched once more, so the counts are bounds, not exact.
        total = sum(len(d) for d in files.values())
        assert len(keys) <= stats["tiers"]["redis"]["errors"] <= 2 * len(keys)
        assert total <= stats["backend"]["bytes"] <= 2 * total


def _make_tls(work: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made with `cryptography`."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    work.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def cert(name: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: ec.EllipticCurvePrivateKey,
             ca: bool, san: x509.GeneralName | None = None) -> x509.Certificate:
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
             .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san is not None:
            b = b.add_extension(x509.SubjectAlternativeName([san]), critical=False)
        return b.sign(signer, hashes.SHA256())

    out: dict[str, Path] = {}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tierfs test CA")])
    ca = cert("tierfs test CA", ca_key, ca_name, ca_key, True)
    for name, san in (("server", x509.IPAddress(ipaddress.ip_address("127.0.0.1"))), ("client", None)):
        key = ec.generate_private_key(ec.SECP256R1())
        c = cert(name, key, ca_name, ca_key, False, san)
        out[f"{name}.crt"] = work / f"{name}.crt"
        out[f"{name}.key"] = work / f"{name}.key"
        out[f"{name}.crt"].write_bytes(c.public_bytes(serialization.Encoding.PEM))
        out[f"{name}.key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
        out[f"{name}.key"].chmod(0o600)
    out["ca.crt"] = work / "ca.crt"
    out["ca.crt"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return out


def test_tls_redis_with_a_client_certificate(lake: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    root, files = lake
    tls = _make_tls(tmp_path / "tls")
    port = free_port()
    # Started here rather than by RedisServer, which waits on a plain port this server does not open.
    args = ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(tmp_path), "--tls-cert-file", str(tls["server.crt"]),
            "--tls-key-file", str(tls["server.key"]), "--tls-ca-cert-file", str(tls["ca.crt"]),
            "--tls-auth-clients", "yes"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        from helpers import wait_port

        wait_port(port, 20)
        cfg = tmp_path / "tls.toml"
        cfg.write_text(f'[redis]\nurl = "rediss://127.0.0.1:{port}/0"\nca_file = "{tls["ca.crt"]}"\n'
                       f'cert_file = "{tls["client.crt"]}"\nkey_file = "{tls["client.key"]}"\n'
                       '[cache]\nram_size = "0"\nsize = "0"\nblock_size = "64KiB"\n')
        with mounted(f"file://{root}", tmp_path / "a", tmp_path / "cache-a", config=cfg) as a:
            assert "redis tier off" not in a.output
            for rel, data in files.items():
                assert (a.mountpoint / rel).read_bytes() == data
        with mounted(f"file://{root}", tmp_path / "b", tmp_path / "cache-b", config=cfg) as b:
            for rel, data in files.items():
                assert (b.mountpoint / rel).read_bytes() == data
            assert b.stats()["backend"]["bytes"] == 0 and b.stats()["tiers"]["redis"]["hits"] > 0
        # Without the client certificate the server refuses the handshake: the tier is not used.
        no_cert = tmp_path / "nocert.toml"
        no_cert.write_text(f'[redis]\nurl = "rediss://127.0.0.1:{port}/0"\nca_file = "{tls["ca.crt"]}"\n'
                           '[cache]\nram_size = "0"\nsize = "0"\n')
        m = Mount(f"file://{root}", tmp_path / "c", tmp_path / "cache-c", config=no_cert)
        try:
            m.start()
        except AssertionError as exc:
            assert "redis" in str(exc)
        else:
            try:
                (m.mountpoint / "ds/000.bin").read_bytes()
                assert m.stats()["tiers"]["redis"]["hits"] == 0
            finally:
                m.umount()
    finally:
        proc.terminate()
        proc.wait(20)


def test_no_secret_in_argv_logs_stats_metrics_or_xattrs(lake: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    root, files = lake
    password = "redis-password-0b5c"  # known values, looked for everywhere afterwards
    server = RedisServer(tmp_path / "redis", password=password).start()
    metrics = free_port()
    try:
        with mounted(f"file://{root}", tmp_path / "mnt", tmp_path / "cache", "--redis", server.url,
                     "--metrics", f"127.0.0.1:{metrics}") as m:
            assert m.pid is not None
            assert "command line" in m.output  # the user is told the password was exposed by their own argv
            for rel, data in files.items():
                assert (m.mountpoint / rel).read_bytes() == data
            assert m.stats()["tiers"]["redis"]["up"]
            cmdline = Path(f"/proc/{m.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            stats = os.getxattr(m.mountpoint, "user.tierfs.stats").decode()
            xattrs = " ".join(os.getxattr(m.mountpoint / "ds/000.bin", n).decode(errors="replace")
                              for n in os.listxattr(m.mountpoint / "ds/000.bin"))
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10) as resp:
                scraped = resp.read().decode()
            shown = subprocess.run([sys.executable, "-m", "tierfs", "stats", str(m.mountpoint), "--json"],
                                   capture_output=True, text=True, timeout=60).stdout
        bad = subprocess.run([sys.executable, "-m", "tierfs", "mount", f"file://{root}", str(tmp_path / "mnt"),
                              "--redis", f"redis://:{password}@127.0.0.1:notaport/0", "--cache-dir",
                              str(tmp_path / "cache2")], capture_output=True, text=True, timeout=60)
        log = (tmp_path / "cache" / "tierfs.log").read_text()
        for where, text in (("argv", cmdline), ("stats", stats), ("xattrs", xattrs), ("metrics", scraped),
                            ("tierfs stats", shown), ("log", log), ("a failed mount", bad.stdout + bad.stderr)):
            for secret in (password, REDIS_SECRET):
                assert secret not in text, f"{where} shows a secret"
    finally:
        server.stop()


@pytest.mark.servers
def test_no_secret_of_an_s3_lake_shows_anywhere(lake: tuple[Path, dict[str, bytes]], tmp_path: Path,
                                                s3_server: SeaweedS3) -> None:
    """An S3 lake on SeaweedFS with its secret, a Redis password, the MAC secret and a cache key, in a 0600
    config: none in the daemon's argv, its log, stats, metrics or xattrs; nor in the one line of a mount whose
    config fails (a config error once echoed the value: `[redis] password = ['…'] is not allowed`)."""
    _root, files = lake
    s3_server.upload("secrets-lake", files)
    password, mac, cache_key = "redis-password-7c1e", "mac-secret-value-5d2a", "cache-key-value-9f3b-0123456789ab"
    key_file = tmp_path / "cache.key"
    key_file.write_text(cache_key)
    key_file.chmod(0o600)
    secrets = (SeaweedS3.SECRET_KEY, password, mac, cache_key)
    server = RedisServer(tmp_path / "redis", password=password).start()
    metrics = free_port()
    body = (f'[s3]\nendpoint_url = "{s3_server.endpoint}"\nkey = "{SeaweedS3.ACCESS_KEY}"\n'
            f'secret = "{SeaweedS3.SECRET_KEY}"\n'
            f'[redis]\nurl = "redis://127.0.0.1:{server.port}/0"\npassword = "{password}"\nsecret = "{mac}"\n'
            f'[cache]\nencryption_key_file = "{key_file}"\n[metrics]\nlisten = "127.0.0.1:{metrics}"\n')
    cfg = tmp_path / "train.toml"
    cfg.write_text(body)
    cfg.chmod(0o600)
    seen: dict[str, str] = {}
    try:
        with mounted("s3://secrets-lake", tmp_path / "mnt", tmp_path / "cache", config=cfg) as m:
            assert m.pid is not None
            for rel, data in files.items():
                assert (m.mountpoint / rel).read_bytes() == data
            assert m.stats()["tiers"]["redis"]["up"]
            seen["mount's output"] = m.output
            seen["argv"] = Path(f"/proc/{m.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            seen["stats xattr"] = os.getxattr(m.mountpoint, "user.tierfs.stats").decode()
            seen["xattrs"] = " ".join(os.getxattr(m.mountpoint / "ds/000.bin", n).decode(errors="replace")
                                      for n in os.listxattr(m.mountpoint / "ds/000.bin"))
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10) as resp:
                seen["metrics"] = resp.read().decode()
            for cmd in (("stats", str(m.mountpoint), "--json"), ("status", "--json")):
                res = run_tierfs(*cmd)
                seen[f"tierfs {cmd[0]}"] = res.stdout + res.stderr
        seen["log"] = (tmp_path / "cache" / "tierfs.log").read_text()
        # Configs that fail, each holding the secrets: a bad value beside them, and each secret mistyped.
        failing = [body + "[fuse]\nworkers = 0\n",
                   body.replace(f'password = "{password}"', f'password = ["{password}"]'),
                   body.replace(f'secret = "{mac}"', f'secret = ["{mac}"]'),
                   body.replace(f'secret = "{SeaweedS3.SECRET_KEY}"', f'secret = ["{SeaweedS3.SECRET_KEY}"]'),
                   f'[redis]\nurl = ["redis://:{password}@127.0.0.1:{server.port}/0"]\n',
                   f'[store]\noptions = "account_key={mac}"\n',
                   f'[lake]\nurl = "s3://{SeaweedS3.ACCESS_KEY}:{SeaweedS3.SECRET_KEY}@secrets-lake"\n',
                   # the servers refuse a wrong password and a wrong secret: their one line names neither
                   body.replace(f'password = "{password}"', f'password = "{mac}"'),
                   body.replace(f'secret = "{SeaweedS3.SECRET_KEY}"', f'secret = "{mac}"')]
        for i, text in enumerate(failing):
            bad = tmp_path / f"bad{i}.toml"
            bad.write_text(text)
            bad.chmod(0o600)
            res = run_tierfs("mount", "s3://secrets-lake", str(tmp_path / "mnt"), "--cache-dir",
                             str(tmp_path / f"cache-bad{i}"), "--config", str(bad))
            assert_one_line_error(res)
            seen[f"failed mount {i}"] = res.stdout + res.stderr
    finally:
        server.stop()
    for where, text in seen.items():
        for secret in secrets:
            assert secret not in text, f"{where} shows a secret: {text}"


def _modes_of(root: Path) -> dict[str, str]:
    """Every entry under ``root`` whose mode is not private (dirs 0700, files 0600), with its mode."""
    wrong = {}
    for p in [root, *root.rglob("*")]:
        try:
            st = p.lstat()
        except FileNotFoundError:
            continue  # (a staged file uploaded and dropped meanwhile)
        want = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
        if stat.S_IMODE(st.st_mode) != want or stat.S_ISLNK(st.st_mode):
            wrong[str(p.relative_to(root))] = f"{stat.S_IMODE(st.st_mode):04o}"
    return wrong


def test_a_used_cache_dir_is_private(lake: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    """After reads, a write and a crash with a file open for writing (set aside at the next start): every
    directory of the cache dir 0700 and every file 0600; with a disk tier and without one (staging only).
    LAYOUT was 0644, blocks/xx/ and staging/unclosed/ 0755, a staging-only cache dir 0755."""
    root, files = lake
    for cache, extra in ((tmp_path / "cache", ()), (tmp_path / "staging-only", ("--cache-size", "0"))):
        mnt = tmp_path / "mnt"
        with mounted(f"file://{root}", mnt, cache, "--ram-size", "0", *extra) as m:
            for rel, data in files.items():
                assert (m.mountpoint / rel).read_bytes() == data
            m.fills_settled()
            (m.mountpoint / "out").mkdir(exist_ok=True)
            (m.mountpoint / "out/ckpt.bin").write_bytes(b"c" * 100_000)
            assert _modes_of(cache) == {}
        m = Mount(f"file://{root}", mnt, cache, "--ram-size", "0", *extra).start()
        try:
            fh = open(m.mountpoint / "out/open.bin", "wb")  # noqa: SIM115 - left open across the kill
            fh.write(b"o" * 10_000)
            fh.flush()
            m.kill9()
        finally:
            with contextlib.suppress(OSError):
                fh.close()
            force_cleanup(mnt, m.pid)
        with mounted(f"file://{root}", mnt, cache, "--ram-size", "0", *extra):
            assert any((cache / "staging" / "unclosed").iterdir())
            assert _modes_of(cache) == {}
        assert _modes_of(cache) == {}


def test_an_encrypted_disk_cache_holds_no_plaintext(lake: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    root, files = lake
    key_file = tmp_path / "cache.key"
    key_file.write_bytes(os.urandom(32).hex().encode())
    key_file.chmod(0o600)
    cfg = tmp_path / "tierfs.toml"
    cfg.write_text(f'[cache]\nencryption_key_file = "{key_file}"\n')
    cache = tmp_path / "cache"
    with mounted(f"file://{root}", tmp_path / "mnt", cache, "--ram-size", "0", config=cfg) as m:
        for rel, data in files.items():
            assert (m.mountpoint / rel).read_bytes() == data
        m.fills_settled()
        drop_page_cache()
        for rel, data in files.items():  # from the disk tier, decrypted
            assert (m.mountpoint / rel).read_bytes() == data
        assert m.stats()["tiers"]["disk"]["hits"] >= len(files)
    blocks = [p.read_bytes() for p in (cache / "blocks").rglob("*") if p.is_file()]
    assert len(blocks) >= len(files)
    probes = [data[1000:1032] for data in files.values()]
    assert not any(probe in block for block in blocks for probe in probes), "a block file holds plaintext"

    key_file.write_bytes(os.urandom(32).hex().encode())  # another key: the old cache is unreadable, not an error
    with mounted(f"file://{root}", tmp_path / "mnt", cache, "--ram-size", "0", config=cfg) as m:
        for rel, data in files.items():
            assert (m.mountpoint / rel).read_bytes() == data
        # Every byte from the lake: none of the old cache served. (Not "no disk hits": the kernel's second
        # READ of a block this mount just filled may find it landed, or still queued, as timing has it.)
        assert m.stats()["backend"]["bytes"] >= sum(len(d) for d in files.values())
    assert "another [cache] encryption key" in (cache / "tierfs.log").read_text()

    inside = cache / "cache.key"  # a key kept beside the cache protects nothing: refused
    inside.write_bytes(b"k" * 32)
    inside.chmod(0o600)
    cfg.write_text(f'[cache]\nencryption_key_file = "{inside}"\n')
    res = Mount(f"file://{root}", tmp_path / "mnt", cache, config=cfg)
    with pytest.raises(AssertionError, match="inside the cache dir"):
        res.start()


def test_a_sidecar_run_shows_no_secret(tmp_path: Path) -> None:
    """A backup job of the sidecar with known secrets in its store config: none in its argv, output or metrics."""
    s3_secret, backup_secret = "s3-secret-value-77aa", "backup-secret-value-88bb"
    (tmp_path / "backup.secret").write_text(backup_secret)
    (tmp_path / "backup.secret").chmod(0o600)
    store_cfg = tmp_path / "store.toml"
    store_cfg.write_text(f'[s3]\nkey = "AKIDEXAMPLE"\nsecret = "{s3_secret}"\n'
                         f'[backup]\nsecret_file = "{tmp_path / "backup.secret"}"\n')
    store_cfg.chmod(0o600)
    write_tree(tmp_path / "scratch", {"ckpt.pt": random_bytes(10_000, seed=3)})
    metrics = free_port()
    cfg = tmp_path / "sidecar.toml"
    cfg.write_text(f'[sidecar]\nmetrics = "127.0.0.1:{metrics}"\nstore_config = "{store_cfg}"\n'
                   f'[[job]]\nname = "ckpt"\nkind = "backup"\nsource = "{tmp_path / "scratch"}"\n'
                   f'target = "file://{tmp_path / "lake"}/backups/n1"\nevery = "1h"\n')
    proc = subprocess.Popen([sys.executable, "-m", "tierfs", "sidecar", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        import time

        deadline = time.monotonic() + 60
        scraped = ""
        while time.monotonic() < deadline and 'tierfs_sidecar_job_runs_total{job="ckpt",outcome="ok"}' not in scraped:
            time.sleep(0.3)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as resp:
                    scraped = resp.read().decode()
            except OSError:
                continue
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
    assert 'outcome="ok"' in scraped, out
    assert (tmp_path / "lake/backups/n1").exists()
    for where, text in (("argv", cmdline), ("output", out), ("metrics", scraped)):
        for secret in (s3_secret, backup_secret):
            assert secret not in text, f"the sidecar's {where} shows a secret"
