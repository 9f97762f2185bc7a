"""The reliability campaign's scenarios: real mounts, real servers, faults injected, figures counted.

Each scenario takes a work directory and a size (``short`` for CI, ``long``
for the README's command), runs against a real tierfs mount, and returns a
:class:`Result`: how many times it ran, what it checked, and every failure
(wrong bytes, a failed read that should have worked, a lost write, a mount
that did not come back). Everything started is stopped, and everything
mounted unmounted, even when a scenario fails.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: helpers, also when run as a script
from helpers import Mount, RedisServer, drop_page_cache, force_cleanup, is_mounted, random_bytes, write_tree

MiB = 1 << 20


@dataclass
class Result:
    name: str
    runs: int = 0
    checks: int = 0  # reads verified, writes verified, values probed
    failures: list[str] = field(default_factory=list)
    figures: dict[str, str] = field(default_factory=dict)

    def fail(self, what: str) -> None:
        self.failures.append(what)

    @property
    def ok(self) -> bool:
        return not self.failures


def dataset(root: Path, files: int, size: int, seed: int = 0) -> dict[str, bytes]:
    """A lake directory of ``files`` files of about ``size`` bytes; returns what it holds."""
    data = {f"ds/c{i % 7}/{i:05d}.bin": random_bytes(size + (i * 997) % size, seed + i) for i in range(files)}
    write_tree(root, data)
    return data


# -- a mount started exactly as systemd starts it -----------------------------------------
@contextlib.contextmanager
def foreground(lake_url: str, mnt: Path, cache: Path, *extra: str) -> Iterator[subprocess.Popen[bytes]]:
    """`tierfs mount … --foreground` (systemd's ExecStart), ready when it answers its pid xattr."""
    mnt.mkdir(parents=True, exist_ok=True)
    log = open(cache.parent / f"{cache.name}.daemon.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "tierfs", "mount", lake_url, str(mnt), "--cache-dir", str(cache),
                             "--foreground", *extra], stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the daemon exited ({proc.returncode}) during start-up; see {log.name}")
            try:
                if int(os.getxattr(mnt, "user.tierfs.pid")) == proc.pid:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the mount was not ready within 60 s; see {log.name}")
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # systemctl stop
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        force_cleanup(mnt, None)


def _stats(mnt: Path) -> dict[str, Any]:
    import json

    out: dict[str, Any] = json.loads(os.getxattr(mnt, "user.tierfs.stats"))
    return out


# -- kill -9 at random points, restarted as systemd would --------------------------------------
def kill9(work: Path, size: str) -> Result:
    """Mixed reads, writes, fsyncs and renames; a kill -9 at a random moment; the same command again.

    Checked after each restart (and after one more start behind the last
    kill): every read during the run returned the right bytes or an error;
    every write that was closed before the kill is in the lake with exactly
    its bytes (under its new name once a rename returned); a file whose fsync
    returned and that was never closed is in the lake as its last fsync that
    returned left it (docs/semantics.md: "a file whose close or fsync
    returned | in the lake"), or as the close or fsync under way at the kill
    would leave it; the mount came back; and the disk cache is reused
    (re-reading the dataset costs fewer backend bytes than the dataset holds).
    Writers: checkpoints (written in two halves, an fsync between them in a
    third of them, then closed, some renamed) and a log (appended, fsync'd
    after about every other append, closed only when it passes 4 MiB).
    """
    res = Result("kill -9 under mixed I/O")
    rounds = 5 if size == "short" else 50
    lake, mnt, cache = work / "lake", work / "mnt", work / "cache"
    src = dataset(lake, 60, 200_000)
    total = sum(len(v) for v in src.values())
    rng = random.Random(9)
    acked: dict[str, bytes] = {}  # lake key -> bytes a close acknowledged (or an fsync, once checked)
    # Files an fsync acknowledged and nothing closed before the kill: key -> (the bytes the last fsync
    # that returned was for, and what the close or fsync under way at the kill would land, else None).
    synced: dict[str, tuple[bytes, bytes | None]] = {}
    synced_checked = landing = 0  # landing: found as the call under way at the kill left them
    for r in range(rounds + 1):  # the last start only checks what the last kill left
        with foreground(f"file://{lake}", mnt, cache, "--block-size", "256KiB") as proc:
            if r:
                drop_page_cache()
                before = _stats(mnt)["backend"]["bytes"]
                for rel, data in src.items():
                    if (mnt / rel).read_bytes() != data:
                        res.fail(f"round {r}: {rel} read wrong after restart")
                    res.checks += 1
                if _stats(mnt)["backend"]["bytes"] - before >= total:
                    res.fail(f"round {r}: the disk cache was not reused after the restart")
            _wait_uploads(mnt, res, r)
            for key, data in acked.items():
                try:
                    if (lake / key).read_bytes() != data:
                        res.fail(f"round {r}: {key} in the lake is not what was acknowledged")
                except FileNotFoundError:
                    res.fail(f"round {r}: acknowledged {key} is missing from the lake")
                res.checks += 1
            for key, (prefix, whole) in synced.items():
                try:
                    got = (lake / key).read_bytes()
                except FileNotFoundError:
                    got = None
                res.checks += 1
                synced_checked += 1
                if got == prefix or (whole is not None and got == whole):
                    landing += got != prefix
                    acked[key] = got  # and so it stays in every later round
                elif got is None:
                    res.fail(f"round {r}: {key}, fsync'd and never closed, is missing from the lake")
                else:
                    res.fail(f"round {r}: {key} in the lake ({len(got)} bytes) is not what its fsync acknowledged "
                             f"({len(prefix)} bytes{f', or {len(whole)} once closed' if whole is not None else ''})")
            synced.clear()
            if r == rounds:
                break
            res.runs += 1
            stop = threading.Event()
            pending: dict[str, tuple[bytes, str]] = {}  # renamed, not yet acknowledged (new key -> bytes, old key)
            lock = threading.Lock()

            def close_and_ack(fd: int, key: str, whole: bytes, lock: threading.Lock = lock) -> None:
                """close(2), the FUSE flush that uploads: ``whole`` is acknowledged once it returns."""
                with lock:
                    if key in synced:
                        synced[key] = (synced[key][0], whole)  # the close under way may land it whole
                os.close(fd)
                with lock:
                    acked[key] = whole
                    synced.pop(key, None)

            def reader(seed: int, stop: threading.Event = stop, r: int = r) -> None:
                local = random.Random(seed)
                names = sorted(src)
                while not stop.is_set():
                    rel = local.choice(names)
                    try:
                        got = (mnt / rel).read_bytes()
                    except OSError:
                        continue  # the daemon is gone: an error, never wrong bytes
                    res.checks += 1
                    if got != src[rel]:
                        res.fail(f"round {r}: wrong bytes read from {rel}")

            def writer(seed: int, stop: threading.Event = stop, pending: dict[str, tuple[bytes, str]] = pending,
                       lock: threading.Lock = lock, r: int = r) -> None:
                local = random.Random(seed)
                n = 0
                while not stop.is_set():
                    n += 1
                    key = f"ckpt/r{r}-w{seed}-{n}.pt"
                    data = random_bytes(local.randrange(1000, 3 * MiB), seed * 1000 + n + r * 100_000)
                    half = len(data) // 2
                    try:
                        (mnt / "ckpt").mkdir(exist_ok=True)
                        # Unbuffered: what each call returned for is exactly what the daemon was given.
                        fd = os.open(mnt / key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                        try:
                            _write_all(fd, data[:half])
                            if local.random() < 0.3:
                                os.fsync(fd)
                                with lock:
                                    synced[key] = (data[:half], None)
                            _write_all(fd, data[half:])
                        except OSError:
                            _abandon(fd)
                            raise
                        close_and_ack(fd, key, data)
                        if local.random() < 0.3:
                            new = key.replace(".pt", ".renamed.pt")
                            with lock:
                                pending[new] = (data, key)
                            os.rename(mnt / key, mnt / new)
                            with lock:
                                acked.pop(key, None)
                                acked[new] = data
                                pending.pop(new, None)
                    except OSError:
                        return  # the daemon is gone

            def log_writer(stop: threading.Event = stop, lock: threading.Lock = lock, r: int = r) -> None:
                local = random.Random(r + 7)
                n = 0
                while not stop.is_set():
                    n += 1
                    key = f"logs/r{r}-{n}.log"
                    written = b""
                    try:
                        (mnt / "logs").mkdir(exist_ok=True)
                        fd = os.open(mnt / key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                        try:
                            while not stop.is_set() and len(written) < 4 * MiB:
                                chunk = random_bytes(local.randrange(1, 100_000), local.randrange(1 << 30))
                                _write_all(fd, chunk)
                                written += chunk
                                if local.random() < 0.5:
                                    with lock:
                                        if key in synced:  # the fsync under way may land these bytes
                                            synced[key] = (synced[key][0], written)
                                    os.fsync(fd)
                                    with lock:
                                        synced[key] = (written, None)
                        except OSError:
                            _abandon(fd)
                            raise
                        if stop.is_set():
                            _abandon(fd)  # held open to the kill (this close comes after it)
                            return
                        close_and_ack(fd, key, written)
                    except OSError:
                        return  # the daemon is gone

            threads = [threading.Thread(target=reader, args=(i,)) for i in range(2)]
            threads += [threading.Thread(target=writer, args=(i,)) for i in range(2)]
            threads.append(threading.Thread(target=log_writer))
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.3, 2.0))
            os.kill(proc.pid, signal.SIGKILL)
            stop.set()
            for t in threads:
                t.join(60)
            proc.wait(30)
            # A rename in flight at the kill: the bytes are under one of the two names.
            for new, (data, old) in pending.items():
                if old and old in acked:
                    there = [k for k in (old, new) if (lake / k).exists() and (lake / k).read_bytes() == data]
                    if not there:
                        res.fail(f"round {r}: {old} was lost by a rename interrupted by the kill")
                    acked.pop(old, None)
                    if there:
                        acked[there[0]] = data
        if is_mounted(mnt):
            res.fail(f"round {r}: a dead mount was left after the daemon stopped")
    res.figures["acknowledged writes checked"] = str(len(acked))
    res.figures["fsync'd, never closed, checked"] = f"{synced_checked} ({landing} as the call under way landed them)"
    return res


def _abandon(fd: int) -> None:
    """Close ``fd`` of a file the daemon may be gone from: nothing it did is acknowledged."""
    with contextlib.suppress(OSError):
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _wait_uploads(mnt: Path, res: Result, r: int) -> None:
    """After a restart the daemon uploads what was closed but not acknowledged: wait for it (bounded)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        w = _stats(mnt).get("writes", {})
        if not w.get("pending_uploads"):
            return
        time.sleep(0.1)
    res.fail(f"round {r}: uploads left by the previous run did not finish within 60 s")


# -- Redis killed and stalled mid-epoch ------------------------------------------------------
def redis_faults(work: Path, size: str) -> Result:
    """An epoch over the dataset while Redis is killed, restarted, and stalled (SIGSTOP): 0 failed reads."""
    res = Result("Redis killed and stalled mid-epoch")
    lake = work / "lake"
    src = dataset(lake, 200 if size == "short" else 2000, 50_000, seed=5)
    server = RedisServer(work / "redis").start()
    try:
        with Mount(f"file://{lake}", work / "mnt", work / "cache", "--redis", server.url, "--ram-size", "0",
                   "--cache-size", "0") as m:
            names = sorted(src)
            for phase in ("kill", "stall"):
                res.runs += 1
                drop_page_cache()
                for i, rel in enumerate(names):
                    if i == len(names) // 3:
                        if phase == "kill":
                            server.kill()
                        else:
                            os.kill(server.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
                    if i == 2 * len(names) // 3:
                        if phase == "kill":
                            server.start()
                        else:
                            os.kill(server.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
                    try:
                        got = (m.mountpoint / rel).read_bytes()
                    except OSError as exc:
                        res.fail(f"{phase}: reading {rel} failed: {exc}")
                        continue
                    res.checks += 1
                    if got != src[rel]:
                        res.fail(f"{phase}: wrong bytes from {rel}")
            res.figures["redis errors counted"] = str(m.stats()["tiers"]["redis"]["errors"])
    finally:
        with contextlib.suppress(Exception):
            if server.proc is not None:
                os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()
    return res


# -- bit flips and truncations in disk blocks and Redis values -----------------------------------
def bit_flips(work: Path, size: str) -> Result:
    """Corrupt cached blocks on disk and values in Redis behind tierfs' back: every one detected, refetched.

    Each tier is tried on its own (a mount with only that tier), so every
    corrupted value is asked for and must be caught, whatever the chain order.
    """
    res = Result("bit flips and truncations")
    lake = work / "lake"
    src = dataset(lake, 40 if size == "short" else 400, 300_000, seed=7)
    server = RedisServer(work / "redis").start()
    rng = random.Random(3)

    def spoil(raw: bytes, i: int) -> bytes:
        if i % 2 and len(raw) > 1:
            return raw[: len(raw) // 2]  # truncated
        flipped = bytearray(raw)
        flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        return bytes(flipped)

    try:
        for tier in ("disk", "redis"):
            only = ("--cache-size", "0", "--redis", server.url) if tier == "redis" else ()
            # No passthrough: every spoiled block must be asked for (a whole-file copy would serve it
            # unasked); tests/mount/test_passthrough.py spoils the files passthrough serves from.
            args = (f"file://{lake}", work / f"mnt-{tier}", work / f"cache-{tier}", "--ram-size", "0",
                    "--block-size", "128KiB", "--no-passthrough", *only)
            with Mount(*args) as m:
                for rel in src:
                    (m.mountpoint / rel).read_bytes()
            if tier == "disk":
                blocks = sorted(p for p in (work / "cache-disk" / "blocks").rglob("*") if p.is_file())
                spoiled = rng.sample(blocks, max(1, len(blocks) // 4))
                for i, p in enumerate(spoiled):
                    p.write_bytes(spoil(p.read_bytes(), i))
                count = len(spoiled)
            else:
                client = server.client()
                keys = rng.sample(sorted(client.keys("tierfs:*")), max(1, len(client.keys("tierfs:*")) // 4))
                for i, k in enumerate(keys):
                    client.set(k, spoil(bytes(client.get(k)), i), keepttl=True)
                count = len(keys)
            drop_page_cache()
            res.runs += 1
            with Mount(*args) as m:
                for rel, data in src.items():
                    if (m.mountpoint / rel).read_bytes() != data:
                        res.fail(f"{tier}: corrupt bytes served from {rel}")
                    res.checks += 1
                detected = m.stats()["tiers"][tier]["errors"]
            res.figures[f"{tier} values spoiled / detected"] = f"{count} / {detected}"
            if detected != count:
                res.fail(f"{tier}: {detected} of {count} spoiled values detected")
    finally:
        server.stop()
    return res


# -- concurrency against a reference model ---------------------------------------------------------
def concurrency(work: Path, size: str) -> Result:
    """Threads and processes doing random operations on the live view and on a local directory alike.

    Each worker owns a subtree (so the model's outcome does not depend on the
    interleaving between workers), while all of them share the mount, its
    staging and its namespace. Open files are unlinked and renamed over too.
    At the end the mount, the lake and the model hold the same tree.
    """
    res = Result("concurrent operations vs a local model")
    lake, model = work / "lake", work / "model"
    lake.mkdir(parents=True)
    model.mkdir()
    ops = 150 if size == "short" else 1500
    with Mount(f"file://{lake}", work / "mnt", work / "cache") as m:
        errors: list[str] = []

        def worker(wid: int) -> None:
            try:
                _random_ops(m.mountpoint / f"w{wid}", model / f"w{wid}", random.Random(wid), ops, errors)
            except Exception as exc:  # reported as a failure below
                errors.append(f"worker {wid}: {type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        procs = [subprocess.Popen([sys.executable, __file__, "ops", str(m.mountpoint / f"p{i}"), str(model / f"p{i}"),
                                   str(100 + i), str(ops)], stderr=subprocess.PIPE, text=True) for i in range(2)]
        for t in threads:
            t.join(300)
        for p in procs:
            _, err = p.communicate(timeout=300)
            if p.returncode != 0:
                errors.append(f"process: {err.strip().splitlines()[-1:] or p.returncode}")
        res.runs = 6
        res.failures.extend(errors)
        for name, tree in (("mount", _tree(m.mountpoint)), ("lake", _tree(lake))):
            want = _tree(model)
            if tree != want:
                diff = sorted(k for k in set(tree) | set(want) if tree.get(k) != want.get(k))[:5]
                res.fail(f"the {name} differs from the model at {diff}")
            res.checks += len(want)
    return res


def _short(o: object) -> str:
    """An outcome in a few characters: bytes by their length and digest."""
    if isinstance(o, bytes):
        import hashlib

        return f"{len(o)} bytes {hashlib.blake2b(o, digest_size=4).hexdigest()}"
    return str(o)


def _random_ops(mnt: Path, ref: Path, rng: random.Random, n: int, errors: list[str],
                trace: list[str] | None = None) -> None:
    """The same random operations on a directory of the mount and of the model; outcomes compared as they go."""
    for d in (mnt, ref):
        d.mkdir()
    names = [f"f{i}" for i in range(8)]
    held: list[tuple[Any, Any]] = []  # the same file open on both sides (may be unlinked or renamed since)

    def both(fn: Callable[[Path], object]) -> list[object]:
        out: list[object] = []
        for root in (mnt, ref):
            try:
                got = fn(root)
                out.append("ok" if got is None else got)
            except OSError as exc:
                out.append(f"errno {exc.errno}")
        return out

    for step in range(n):
        op = rng.choice(["write", "write", "append", "read", "read", "rename", "unlink", "truncate",
                         "open", "write_held", "read_held", "close"])
        a, b = rng.choice(names), rng.choice(names)
        data = random_bytes(rng.randrange(0, 200_000), rng.randrange(1 << 30))
        try:
            if op == "write":
                outcome = both(lambda root, a=a, data=data: (root / a).write_bytes(data) and None)
            elif op == "append":
                def append(root: Path, a: str = a, data: bytes = data) -> None:
                    with open(root / a, "ab") as fh:
                        fh.write(data[:5000])
                outcome = both(append)
            elif op == "read":
                outcome = both(lambda root, a=a: (root / a).read_bytes())
            elif op == "rename":
                outcome = both(lambda root, a=a, b=b: os.rename(root / a, root / b))
            elif op == "unlink":
                outcome = both(lambda root, a=a: os.unlink(root / a))
            elif op == "truncate":
                cut = len(data) // 3
                outcome = both(lambda root, a=a, cut=cut: os.truncate(root / a, cut))
            elif op == "open":
                opened = both(lambda root, a=a: open(root / a, "r+b"))  # noqa: SIM115 - held across steps
                if all(not isinstance(o, str) for o in opened):
                    held.append((opened[0], opened[1]))
                for o in opened:
                    if not isinstance(o, str) and (opened[0], opened[1]) not in held:
                        o.close()  # opened on one side only: the outcomes differ, reported below
                outcome = [o if isinstance(o, str) else "ok" for o in opened]
            elif op in ("write_held", "read_held", "close") and held:
                pair = held.pop(0) if op == "close" else held[rng.randrange(len(held))]
                a = f"held:{Path(pair[1].name).name}"  # the name it was opened under
                at = rng.randrange(0, 4000)
                outcome = []
                for fh in pair:
                    try:
                        if op == "write_held":
                            fh.seek(at)
                            fh.write(data[:3000])
                            fh.flush()
                            outcome.append("ok")
                        elif op == "read_held":
                            fh.seek(0)
                            outcome.append(fh.read())
                        else:
                            fh.close()
                            outcome.append("ok")
                    except OSError as exc:
                        outcome.append(f"errno {exc.errno}")
            else:
                continue
            if trace is not None:
                trace.append(f"{step} {op} {a} {b} {len(data)}: {[_short(o) for o in outcome]}")
            if outcome[0] != outcome[1]:
                where = ""
                if isinstance(outcome[0], bytes) and isinstance(outcome[1], bytes):
                    x, y = outcome[0], outcome[1]
                    first = next((i for i in range(min(len(x), len(y))) if x[i] != y[i]), min(len(x), len(y)))
                    last = next((i for i in range(min(len(x), len(y)) - 1, -1, -1) if x[i] != y[i]), first)
                    where = f" (differ in [{first}, {last}])"
                errors.append(f"{mnt.name} step {step} {op} {a} {b}: mount {_short(outcome[0])}, "
                              f"model {_short(outcome[1])}{where}")
                break
        except Exception as exc:
            errors.append(f"{mnt.name} step {step} {op}: {type(exc).__name__}: {exc}")
            break
    for pair in held:
        for fh in pair:
            with contextlib.suppress(OSError):
                fh.close()


def _tree(root: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if d not in (".tierfs", ".snapshots")]
        for f in filenames:
            p = Path(dirpath, f)
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


# -- full disks ---------------------------------------------------------------------------------
@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def full_disks(work: Path, size: str) -> Result:
    """Cache and staging on a small tmpfs: reads keep working; a write that cannot fit is ENOSPC at the
    call (or at its close) and the lake keeps what it had."""
    res = Result("full cache and staging disks")
    lake = work / "lake"
    src = dataset(lake, 30 if size == "short" else 120, 1_000_000, seed=11)
    (lake / "ckpt").mkdir()
    good = random_bytes(2 * MiB, 1)
    (lake / "ckpt/model.pt").write_bytes(good)
    with tmpfs(work / "small", "48m") as small:
        cfg = work / "c.toml"
        cfg.write_text('[cache]\nsize = "500GiB"\nram_size = "0"\n')
        with Mount(f"file://{lake}", work / "mnt", small / "cache", config=cfg) as m:
            for _ in range(2):
                res.runs += 1
                drop_page_cache()
                for rel, data in src.items():
                    try:
                        ok = (m.mountpoint / rel).read_bytes() == data
                    except OSError as exc:
                        res.fail(f"read of {rel} failed with a full cache disk: {exc}")
                        continue
                    res.checks += 1
                    if not ok:
                        res.fail(f"wrong bytes from {rel}")
            # A checkpoint larger than the disk: ENOSPC, never a truncated object in the lake.
            big = random_bytes(80 * MiB, 2)
            try:
                with open(m.mountpoint / "ckpt/model.pt", "wb") as fh:
                    for off in range(0, len(big), 4 * MiB):
                        fh.write(big[off: off + 4 * MiB])
                res.fail("an 80 MiB write onto a 48 MiB staging disk succeeded")
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    res.fail(f"the write that cannot fit failed with {exc} instead of ENOSPC")
            res.checks += 1
            if (lake / "ckpt/model.pt").read_bytes() != good:
                res.fail("the lake's checkpoint was changed by a write that did not fit")
            small_ckpt = random_bytes(4 * MiB, 3)
            (m.mountpoint / "ckpt/small.pt").write_bytes(small_ckpt)
            res.checks += 1
            if (lake / "ckpt/small.pt").read_bytes() != small_ckpt:
                res.fail("a checkpoint that fits did not land after the full disk")
    return res


# -- store faults under a DataLoader epoch ----------------------------------------------------
STORE_DEADLINE = 3.0  # [store] read_deadline and metadata_deadline of the store-faults scenario
# What a call may take past its store deadline: the hand-offs between the kernel, the FUSE loop and the
# store's thread on a loaded 2-core machine, and the store's shortest last attempt (0.05 s).
STORE_SLACK = 0.5
HEALED_AFTER = 2.5  # tierfs/data/reader.py answers a block that failed slowly with that failure for 2 s


class _TimedFiles:
    """A map-style dataset: each item is (index, seconds the open took, seconds the read took, the bytes'
    digest or the errno); an open that failed has no read."""

    def __init__(self, paths: list[str]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, float, float, str]:
        import hashlib

        t0 = time.monotonic()
        opened = reading = 0.0
        try:
            with open(self.paths[i], "rb") as f:
                opened = time.monotonic()
                outcome = hashlib.sha256(f.read()).hexdigest()
        except OSError as exc:
            outcome = errno.errorcode.get(exc.errno or 0, str(exc))
        if opened:
            reading = time.monotonic() - opened
        else:
            opened = time.monotonic()
        return i, opened - t0, reading, outcome


def store_faults(work: Path, size: str) -> Result:
    """DataLoader epochs (4 workers) over an S3 lake whose store fails: 503s, resets, cut bodies, stalls, all mixed.

    SeaweedFS behind tests/faultproxy.py; no RAM or disk tier, page cache dropped, so every read is a
    store read. Every read must answer, right or EIO, within the read deadline (plus STORE_SLACK);
    every open within one metadata deadline per name it looks up (plus STORE_SLACK); never wrong bytes;
    afterwards (store healthy) a clean epoch reads everything right and the mount is alive.
    """
    import hashlib

    from faultproxy import FaultProxy
    from helpers import SeaweedS3, pid_alive
    from torch.utils.data import DataLoader

    res = Result("store faults under a DataLoader epoch")
    n = 150 if size == "short" else 1500
    files = {f"ds/c{i % 5}/{i:05d}.jpg": random_bytes(30_000 + (i * 997) % 40_000, seed=900 + i) for i in range(n)}
    digests = {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}
    # (mixed: half the requests fail, each in one of the four ways: reads that run out of their deadline)
    modes = [("http_503", 0.2), ("reset", 0.2), ("truncate", 0.2), ("stall", 0.03), ("mixed", 0.5)]
    server = SeaweedS3(work / "seaweed").start()
    try:
        fs = server.fs()
        fs.mkdir("campaign-faults")
        for key, data in files.items():
            fs.pipe(f"campaign-faults/{key}", data)
        with FaultProxy("127.0.0.1", server.s3_port, seed=13) as proxy:
            cfg = work / "s3.toml"
            cfg.write_text(
                f'[s3]\nendpoint_url = "{proxy.endpoint}"\nkey = "{server.ACCESS_KEY}"\n'
                f'secret = "{server.SECRET_KEY}"\n'
                f"[store]\nretries = 2\ntimeout = 1\nread_deadline = {STORE_DEADLINE:g}\n"
                f"metadata_deadline = {STORE_DEADLINE:g}\n"
            )
            cfg.chmod(0o600)
            with Mount("s3://campaign-faults", work / "mnt", work / "cache", "--ram-size", "0", "--cache-size", "0",
                       config=cfg) as m:
                keys = sorted(files)
                paths = [str(m.mountpoint / k) for k in keys]
                slowest_read = slowest_open = 0.0
                eio = 0
                for mode, p in [*modes, ("pass", 1.0)]:
                    res.runs += 1
                    if mode == "pass":
                        time.sleep(HEALED_AFTER)
                    drop_page_cache()
                    proxy.set_mode(mode, probability=p)
                    with warnings.catch_warnings():  # 4 workers on 2 cores, as the benchmarks run them
                        warnings.filterwarnings("ignore", "This DataLoader will create", UserWarning)
                        loader = iter(DataLoader(_TimedFiles(paths), num_workers=4, batch_size=None, shuffle=True))
                    for i, opening, reading, outcome in loader:
                        res.checks += 1
                        slowest_read, slowest_open = max(slowest_read, reading), max(slowest_open, opening)
                        names = keys[i].count("/") + 1
                        if reading > STORE_DEADLINE + STORE_SLACK:
                            res.fail(f"{mode}: reading {keys[i]} took {reading:.2f} s (deadline {STORE_DEADLINE:g} s)")
                        if opening > names * STORE_DEADLINE + STORE_SLACK:
                            res.fail(f"{mode}: opening {keys[i]} took {opening:.2f} s ({names} names looked up, "
                                     f"deadline {STORE_DEADLINE:g} s each)")
                        if outcome == digests[keys[i]]:
                            continue
                        if outcome == "EIO" and mode != "pass":
                            eio += 1
                            continue
                        res.fail(f"{mode}: {keys[i]}: {outcome if len(outcome) < 20 else 'wrong bytes'}")
                    if m.pid is None or not pid_alive(m.pid) or not is_mounted(m.mountpoint):
                        res.fail(f"{mode}: the mount died")
                        break
                faults = proxy.stats().faults
                res.figures["faults injected"] = str(sum(faults.values()))
                res.figures["EIO / reads under faults"] = f"{eio} / {n * len(modes)}"
                res.figures["slowest read, s"] = (f"{slowest_read:.2f} (deadline {STORE_DEADLINE:g}, "
                                                  f"bound {STORE_DEADLINE + STORE_SLACK:g})")
                res.figures["slowest open, s"] = f"{slowest_open:.2f} (3 names, bound {3 * STORE_DEADLINE + STORE_SLACK:g})"
    finally:
        server.stop()
    return res


SCENARIOS: dict[str, Callable[[Path, str], Result]] = {
    "kill9": kill9,
    "redis": redis_faults,
    "bitflips": bit_flips,
    "concurrency": concurrency,
    "fulldisk": full_disks,
    "storefaults": store_faults,
}


def _run_ops_process() -> None:
    """A worker process of the concurrency scenario: ``scenarios.py ops MNT_DIR MODEL_DIR SEED N``."""
    mnt, ref, seed, n = Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    errors: list[str] = []
    _random_ops(mnt, ref, random.Random(seed), n, errors)
    if errors:
        print(errors[0], file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "ops":
    _run_ops_process()


def _cluster_nodes(work: Path, size: str) -> Result:
    """Three nodes in their own network namespaces, one Redis Cluster: tests/campaign/cluster_nodes.py."""
    from cluster_nodes import cluster_nodes  # its own module (and it imports Result from this one)

    return cluster_nodes(work, size)


SCENARIOS["cluster"] = _cluster_nodes
