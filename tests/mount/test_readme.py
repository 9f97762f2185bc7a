"""README.md's snippets, run as written, in order, against real servers (issue 15).

The blocks that a ``<!-- readme-test -->`` comment precedes in README.md run in
one bash session, in the order they stand, block by block, with the two paths
of the substitution table (``session_env``) rewritten and nothing else; a ``<!-- readme-test skip: why
-->`` comment marks a block that cannot run here, and a shell or Python block
with neither fails the test. After each section's blocks the test checks what
they did (output, mount, bucket), not only that they exited 0: the session
stops at the first command that fails.

The session runs where a training node's would:

- SeaweedFS serves the bucket ``ml-lake``, seeded with a tiny dataset at the
  paths the README uses (``datasets/imagenet/...``), reached through the usual
  AWS_* variables, as on a node with credentials in its environment (the
  README's commands name no endpoint and no keys); /etc/tierfs/train.toml is
  a config of the test's that keeps the caches in a temp dir, and the temp
  mountpoint exists, as the systemd section's ``mkdir -p`` would make it;
- ``tierfs`` and ``python`` first on PATH are wrappers that exec this
  interpreter (``sys.executable``: the checkout's venv) with PYTHONPATH
  inherited, so every snippet runs this checkout's tierfs;
- the working dir holds the user's own files the README names: ``train.py``,
  a stand-in that prints the sha256 of every file under ``--data`` and writes
  a checkpoint into ``--ckpt-dir``, and ``preprocessing.json``;
- a Python block runs as a notebook cell would: each statement's value is
  printed.

Whatever happens, the session is killed, the mounts it made are unmounted
(their daemons, by the pids ``tierfs mount`` printed, killed if need be) and
the server is stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

import pytest
from helpers import SeaweedS3, force_cleanup, is_mounted, random_bytes, run_tierfs

README = Path(__file__).resolve().parents[2] / "README.md"
MARK = re.compile(r"^\s*<!-- readme-test(?: skip: (?P<why>.+?))? -->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>\S*)\s*$")
#: A path of the host still in a block after the substitutions: that block would reach outside the test.
HOST_PATH = re.compile(r"(?<![\w./-])/(etc|mnt|nvme|var|usr|srv|opt|home|root)/")
BLOCK_SECONDS = 60

TRAIN = "datasets/imagenet/train"
DUP = "n01440764/n01440764_dup.JPEG"  # the snippet's "dedup" removes it
FILES = {f"{TRAIN}/{c}/{c}_{i}.JPEG": random_bytes(20_000 + 997 * i + n, seed=10 * n + i)
         for n, c in enumerate(("n01440764", "n01443537")) for i in range(3)}
FILES[f"{TRAIN}/n01440764/x.JPEG"] = random_bytes(5_000, seed=99)  # the notebook's file
FILES[f"{TRAIN}/{DUP}"] = FILES[f"{TRAIN}/n01440764/n01440764_0.JPEG"]
FILES["datasets/imagenet/labels.csv"] = b"n01440764,tench\nn01443537,goldfish\n"
CHECKPOINT = random_bytes(300_000, seed=7)

TRAIN_PY = f'''"""Stand-in for the user's train.py: reads every file under --data; --ckpt-dir: saves a checkpoint there."""
import argparse, hashlib, os, random
ap = argparse.ArgumentParser()
ap.add_argument("--data", required=True)
ap.add_argument("--ckpt-dir")
args = ap.parse_args()
for folder, _, names in os.walk(args.data):
    for name in sorted(names):
        path = os.path.join(folder, name)
        with open(path, "rb") as fh:
            print("sha256", hashlib.sha256(fh.read()).hexdigest(), os.path.relpath(path, args.data))
if args.ckpt_dir:
    os.makedirs(args.ckpt_dir, exist_ok=True)
    with open(os.path.join(args.ckpt_dir, "epoch0.pt"), "wb") as fh:
        fh.write(random.Random(7).randbytes({len(CHECKPOINT)}))
'''
#: How a Python block runs: as a notebook cell, each top-level statement's value printed.
NOTEBOOK = ("import ast, sys\nns = {'__name__': '__main__'}\n"
            "for node in ast.parse(sys.stdin.read()).body:\n"
            "    exec(compile(ast.Interactive([node]), 'README.md', 'single'), ns)\n")


@dataclass(frozen=True)
class Snippet:
    section: str  # the heading it stands under
    lang: str  # sh or python
    line: int
    text: str
    skip: str | None  # why it cannot run here; None: it runs


def snippets(readme: Path = README) -> list[Snippet]:
    """Every sh and Python block of the README, in order; a block that carries no mark fails."""
    lines = readme.read_text().splitlines()
    out, section, i = [], "", 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence is None:
            if lines[i].startswith("#"):
                section = lines[i].lstrip("#").strip()
            i += 1
            continue
        start, indent, lang = i, fence["indent"], fence["lang"]
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            i += 1
        body = "\n".join(line.removeprefix(indent) for line in lines[start + 1 : i])
        i += 1
        if lang not in ("sh", "python"):
            continue  # TOML, a fstab line, a folder tree: nothing to run
        mark = MARK.match(lines[start - 1]) if start else None
        assert mark, (f"README.md:{start + 1}: a {lang} block with no <!-- readme-test --> or "
                      "<!-- readme-test skip: why --> comment on the line before it")
        out.append(Snippet(section, lang, start + 1, body, mark["why"]))
    return out


class Shell:
    """One bash session fed block by block: what each block printed, stdout and stderr as they came."""

    DONE = "@@readme-block-done@@"
    # Stop at the first command that fails, saying which; but `tierfs status` answers 1 when any tierfs mount
    # on the host is dead, which another test's may be: its output is checked instead.
    PRELUDE = ("trap 'rc=$?; [[ $BASH_COMMAND == \"tierfs status\" ]] || "
               "{ echo \"@@readme-failed ($rc): $BASH_COMMAND\"; exit $rc; }' ERR")

    def __init__(self, cwd: Path, env: dict[str, str]):
        self.proc = subprocess.Popen(["bash", "--noprofile", "--norc"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd,
                                     env=env, start_new_session=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.transcript: list[str] = []
        self.pump = threading.Thread(target=self._pump, daemon=True)
        self.pump.start()
        self.run(self.PRELUDE)

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def run(self, text: str) -> str:
        assert self.proc.stdin is not None
        out: list[str] = []
        try:
            self.proc.stdin.write(f"{text}\necho {self.DONE}\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # the shell has stopped: said below
        deadline = time.monotonic() + BLOCK_SECONDS
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no end after {BLOCK_SECONDS} s of:\n{text}\n--- it printed:\n{''.join(out)}") from None
            if line is None or line.rstrip("\n") == self.DONE:
                break
            out.append(line)
        self.transcript += out
        if line is None:
            raise AssertionError(f"the shell stopped (exit {self.proc.wait(10)}) in:\n{text}\n--- it printed:\n{''.join(out)}")
        return "".join(out)

    def mounted_pids(self) -> list[int]:
        """The daemons `tierfs mount` said it started."""
        return [int(p) for p in re.findall(r"^mounted .* \(pid (\d+),", "".join(self.transcript), re.M)]

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # the session and what it runs in the foreground
        self.proc.wait(10)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.close()
        self.pump.join(10)  # (until EOF: a daemon the session started holds no end of the pipe)
        self.proc.stdout.close()


@dataclass
class Node:
    """What the session's snippets run against, and what the checks compare with."""

    s3: SeaweedS3
    mnt: Path
    cache: Path

    def bucket(self, key: str) -> bytes:
        data: bytes = self.s3.fs().cat_file(f"ml-lake/{key}")
        return data

    def keys(self, prefix: str) -> list[str]:
        return sorted(k.removeprefix("ml-lake/") for k in self.s3.fs().find(f"ml-lake/{prefix}"))


def digests(out: str) -> dict[str, str]:
    """What the stand-in train.py read: path under --data -> sha256."""
    return {m[2]: m[1] for m in re.finditer(r"^sha256 ([0-9a-f]{64}) (\S+)$", out, re.M)}


def expected(prefix: str, without: tuple[str, ...] = ()) -> dict[str, str]:
    return {k.removeprefix(prefix + "/"): hashlib.sha256(v).hexdigest() for k, v in FILES.items()
            if k.startswith(prefix + "/") and k.removeprefix(prefix + "/") not in without}


def check_using_it(node: Node, outs: list[str]) -> None:
    (out,) = outs
    mnt = node.mnt
    assert f"mounted s3://ml-lake at {mnt} (pid " in out
    assert "n01440764\nn01443537\n" in out  # ls | head
    assert digests(out) == expected(TRAIN), out  # train.py read every file, byte for byte
    assert "s3://ml-lake (pid " in out and "backend: " in out  # tierfs stats
    doc = re.search(r"^\{\n.*?^\}$", out, re.S | re.M)  # tierfs stats --json
    assert doc is not None, out
    stats = json.loads(doc[0])
    assert stats["lake"] == "s3://ml-lake"
    assert stats["backend"]["bytes"] >= sum(len(v) for k, v in FILES.items() if k.startswith(TRAIN + "/"))
    assert re.search(rf"^{re.escape(str(mnt))}: alive, s3://ml-lake \(pid", out, re.M), out  # tierfs status
    assert f"unmounted {mnt}" in out and not is_mounted(mnt)
    assert f"cache dir   {node.cache}\n" in out and re.search(r"^blocks\s+[1-9]", out, re.M), out  # cache du


def check_dataset_versions(node: Node, outs: list[str]) -> None:
    sh, notebook = outs
    n = sum(k.startswith("datasets/imagenet/") for k in FILES)
    assert f"created imagenet@v1.0 (copy): {n} files" in sh and f"created imagenet@v2.0 (copy): {n - 1} files" in sh
    assert "note:" not in sh  # no mount here serves another URL of this lake
    assert re.search(r"^imagenet@v1\.0\t.*\n^imagenet@v2\.0\t", sh, re.M), sh  # list, oldest first
    assert "meta       samples = 1281167" in sh and 'meta       license = "custom"' in sh  # show
    assert 'meta       resize = 256' in sh  # (from preprocessing.json)
    assert f"- train/{DUP}\t" in sh and "imagenet: v1.0 -> v2.0: 0 added, 1 removed, 0 changed" in sh  # diff
    assert "v1.0\nv2.0\n" in sh  # ls .snapshots/imagenet/: both, in the mount made before them
    assert digests(sh) == expected(TRAIN, without=(DUP,))  # train.py over .snapshots/imagenet/v2.0/train
    assert "deleted imagenet@v1.0" in sh and "gc: " in sh
    assert node.keys(".tierfs/snapshots/imagenet/") == node.keys(".tierfs/snapshots/imagenet/v2.0/")  # v1.0's gone
    snap = node.mnt / ".snapshots/imagenet/v2.0"
    for key, data in FILES.items():
        rel = key.removeprefix("datasets/imagenet/")
        assert (snap / rel).exists() == (rel != f"train/{DUP}"), rel
        if rel != f"train/{DUP}":
            assert (snap / rel).read_bytes() == data, rel
    listed = re.findall(r"'name': '([^']*)'", notebook)  # fs.ls: the snapshot's class folders
    assert listed == ["imagenet@v2.0/train/n01440764", "imagenet@v2.0/train/n01443537"], notebook
    assert repr(FILES["datasets/imagenet/labels.csv"]) in notebook, notebook


def check_feeding_the_gpus(node: Node, outs: list[str]) -> None:
    (out,) = outs
    live = sum(k.startswith(TRAIN + "/") for k in FILES) - 1  # the duplicate was removed
    assert re.search(rf"^warmed {live} files, .* \(done\)$", out, re.M), out


def check_writing_checkpoints(node: Node, outs: list[str]) -> None:
    (out,) = outs
    assert digests(out) == expected(TRAIN, without=(DUP,))
    assert node.keys("models/") == ["models/run7-final/epoch0.pt"]
    assert node.bucket("models/run7-final/epoch0.pt") == CHECKPOINT
    assert (node.mnt / "models/run7-final/epoch0.pt").read_bytes() == CHECKPOINT


#: The sections whose snippets run, and what each must have done: every one that runs has a check.
CHECKS: dict[str, Callable[[Node, list[str]], None]] = {
    "Using it": check_using_it,
    "Dataset versions": check_dataset_versions,
    "Feeding the GPUs": check_feeding_the_gpus,
    "Writing checkpoints, logs and models": check_writing_checkpoints,
}


def render(snippet: Snippet, paths: dict[str, str]) -> str:
    text, rest = snippet.text, snippet.text
    for old, new in paths.items():
        text, rest = text.replace(old, new), rest.replace(old, "")
    outside = HOST_PATH.search(rest)
    assert outside is None, f"README.md:{snippet.line} reaches {outside[0]}… on the host: mark it skip"
    if snippet.lang == "python":
        return f"python -c {shlex.quote(NOTEBOOK)} <<'README_PY'\n{text}\nREADME_PY"
    return text


def test_every_snippet_is_marked_and_every_run_checked() -> None:
    found = snippets()
    assert {s.section for s in found if s.skip is None} == set(CHECKS)
    assert all(s.skip.strip() for s in found if s.skip is not None)


@pytest.fixture
def seaweed(tmp_path: Path) -> Iterator[SeaweedS3]:
    s3 = SeaweedS3(tmp_path / "weed").start()
    try:
        s3.upload("ml-lake", FILES)
        yield s3
    finally:
        s3.stop()


def session_env(node: Node, tmp: Path) -> tuple[Path, dict[str, str], dict[str, str]]:
    """The working dir, the environment and the substitution table of the session."""
    bindir, work, config = tmp / "bin", tmp / "work", tmp / "etc/train.toml"
    for d in (bindir, work, config.parent, node.mnt):
        d.mkdir(parents=True)
    for name, argv in (("tierfs", f"{shlex.quote(sys.executable)} -m tierfs"), ("python", shlex.quote(sys.executable))):
        (bindir / name).write_text(f'#!/bin/sh\nexec {argv} "$@"\n')
        (bindir / name).chmod(0o755)
    (work / "train.py").write_text(TRAIN_PY)
    (work / "preprocessing.json").write_text('{"resize": 256, "crop": 224}\n')
    config.write_text(f'[cache]\ndir = "{node.cache}"\nsize = "256MiB"\nram_size = "64MiB"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(PATH=f"{bindir}:{env['PATH']}", HOME=str(tmp / "home"), XDG_CACHE_HOME=str(tmp / "xdg"),
               AWS_ENDPOINT_URL=node.s3.endpoint, AWS_ACCESS_KEY_ID=node.s3.ACCESS_KEY,
               AWS_SECRET_ACCESS_KEY=node.s3.SECRET_KEY, AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    # The whole substitution table: paths on a node that the session may not touch, and where they go instead.
    return work, env, {"/mnt/lake": str(node.mnt), "/etc/tierfs/train.toml": str(config)}


@pytest.mark.servers
@pytest.mark.mount
def test_readme_snippets_run_as_written(seaweed: SeaweedS3, tmp_path: Path) -> None:
    node = Node(seaweed, tmp_path / "mnt", tmp_path / "cache")
    work, env, paths = session_env(node, tmp_path)
    runs = [s for s in snippets() if s.skip is None]
    shell = Shell(work, env)
    try:
        for section, group in groupby(runs, key=lambda s: s.section):
            CHECKS[section](node, [shell.run(render(s, paths)) for s in group])
    finally:
        try:
            shell.close()
            if is_mounted(node.mnt):
                run_tierfs("umount", str(node.mnt), timeout=90)
        finally:
            for pid in shell.mounted_pids() or [None]:
                force_cleanup(node.mnt, pid)
