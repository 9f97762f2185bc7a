"""Bad input fuzzing: every place bad input enters tierfs either works or is refused in one line.

The inputs: TOML configs, lifecycle rule files, snapshot manifests (meta.json
and its parts), dataset and snapshot names, object keys, and the paths and
URLs given to ``tierfs cp``, ``tierfs warm --list`` and ``tierfs://``. The
property, for each: it works (and what it yields is sane), or it fails with a
tierfs UserError / ConfigError whose message is one line (the CLI: exactly one
line ``tierfs: error: …`` on stderr and exit 1); never another exception,
never a spin (a CPU deadline per example), never data changed or lost (a
manifest that fails is refused whole; gc removes nothing when a manifest
cannot be read).

Most of it runs in-process, at the function or the ``tierfs.cli.main`` level;
a handful of cases go through a subprocess for the real stderr. Profiles are
in this folder's conftest.py (``TIERFS_FUZZ_PROFILE=long`` for the campaign
run). Every crash found here is kept as an ``@example`` or a plain test.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import hashlib
import io
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from helpers import TIERFS, assert_one_line_error, mounted, run_tierfs, write_tree
from hypothesis import example, given, settings
from hypothesis import strategies as st

import tierfs.cli
from tierfs.config import _KEYS, Settings, load, parse_size
from tierfs.errors import ConfigError, NameTooLong, NotFound, TierfsError, UserError
from tierfs.sidecar.rules import CLASSES, evaluate, load_rules, parse_rules
from tierfs.store.objects import ObjectStore
from tierfs.versions.catalog import delete_snapshot, gc, open_snapshot
from tierfs.versions.create import create_snapshot
from tierfs.versions.index_dir import ManifestIndexes, manifest_id
from tierfs.versions.manifest import (
    ManifestEntry,
    ManifestError,
    ManifestReader,
    ManifestWriter,
    SnapshotMeta,
    snapshot_dir,
    validate_name,
)

INT64 = 2**63
# The tests that run the CLI for each example get a third of the profile's examples (the CI run stays under a minute).
HEAVY = settings(max_examples=max(10, settings.default.max_examples // 3))


# -- the property's pieces ---------------------------------------------------------------
class Spin(BaseException):
    """An example that kept the CPU busy past its deadline (a BaseException: no handler under test swallows it)."""


@contextlib.contextmanager
def cpu_deadline(seconds: float = 10.0) -> Iterator[None]:
    """Fail an example that spins. SIGVTALRM counts CPU time, so it never meets pytest-timeout's SIGALRM."""
    def fire(signum: int, frame: object) -> None:
        raise Spin(f"still busy after {seconds} s of CPU")

    old = signal.signal(signal.SIGVTALRM, fire)
    signal.setitimer(signal.ITIMER_VIRTUAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_VIRTUAL, 0)
        signal.signal(signal.SIGVTALRM, old)


def one_line(exc: BaseException) -> None:
    text = str(exc)
    assert text.strip(), f"{type(exc).__name__} without a message"
    assert len(text.splitlines()) == 1, f"a message of {len(text.splitlines())} lines: {text!r}"


def outcome(fn: Callable[[], Any], *allowed: type[BaseException], lines: bool = True) -> tuple[Any, BaseException | None]:
    """(result, None) or (None, the refusal); anything not ``allowed`` fails the example.

    ``lines``: the refusal's message must be one line (it is what the CLI prints).
    """
    with cpu_deadline():
        try:
            return fn(), None
        except allowed as exc:
            if lines:
                one_line(exc)
            return None, exc


def cli(*args: str, cwd: Path | None = None) -> tuple[int, str, str]:
    """``tierfs ARGS`` in this process, through the same ``main`` that maps errors to exit codes."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(sys, "argv", ["tierfs", *args]))
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        if cwd is not None:
            stack.enter_context(contextlib.chdir(cwd))
        stack.enter_context(cpu_deadline(30))
        try:
            tierfs.cli.main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def assert_cli_outcome(code: int, err: str) -> None:
    """0; 2 (click's usage error); or 1 with exactly one line, ``tierfs: error: …``."""
    assert "Traceback" not in err and "internal error" not in err, err
    if code == 0:
        return
    if code == 2:
        assert "Error: " in err, err
        return
    assert code == 1, (code, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("tierfs: error: "), err


def tree_of(root: Path, skip: str = ".tierfs") -> dict[str, bytes]:
    """Every file below ``root`` (but ``skip``), with its bytes: what must not change."""
    out = {}
    for p in root.rglob("*"):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not rel.startswith(skip):
            out[rel] = p.read_bytes()
    return out


# -- TOML: a small writer, so that any document the strategies make can be fed as a file --------
def toml_string(s: str) -> str:
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    assert isinstance(v, dict)
    return "{ " + ", ".join(f"{toml_string(k)} = {toml_value(x)}" for k, x in v.items()) + " }"


def toml_doc(doc: dict[str, Any]) -> str:
    lines = [f"{toml_string(k)} = {toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for k, v in doc.items():
        if isinstance(v, dict):
            lines.append(f"[{toml_string(k)}]")
            lines += [f"{toml_string(n)} = {toml_value(x)}" for n, x in v.items()]
    return "\n".join(lines) + "\n"


# -- strategies: values a TOML file can hold, leaning on the ones parsers get wrong ----------------
NUMBERISH = st.one_of(
    st.integers(-5, 10**7).map(str),
    st.floats().map(repr),
    st.sampled_from(["9" * 400, "1e400", "1e309", "0x10", "1_000", "-0", ".5", "5.", "1.5.2", "nan", "inf", "-inf",
                     "١٢", "²", "1" * 5000]),
    st.text("0123456789.", min_size=1, max_size=30),
)
SIZES = st.builds(lambda n, sp, unit: f"{n}{sp}{unit}", NUMBERISH, st.sampled_from(["", " ", "\t"]),
                  st.sampled_from(["", "B", "k", "KiB", "MiB", "mb", "GiB", "TiB", "tib", "XB", "%", "iB"]))
WORDS = st.sampled_from(["true", "false", "yes", "no", "on", "off", "1", "0", "auto", "lru", "stable", "debug",
                         "INFO", ":9464", "127.0.0.1:9464", ":0", ":65536", ":²", ":٣", ":" + "9" * 5000, "[::1]:80",
                         "", " ", "\n", "5%", "100%", "nan%", "-1%", "s3://b/p", "memory://", "/tmp/a\0b"])
TOML_SCALARS = st.one_of(
    SIZES, NUMBERISH, WORDS, st.text(max_size=30),
    st.integers(-INT64, INT64 - 1), st.floats(), st.booleans(),
    st.datetimes(), st.dates(), st.times(),
)
def containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Lists and tables of ``inner`` (a def, not a lambda: hypothesis reads its source to see that it recurses)."""
    return st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)


TOML_VALUES = st.recursive(TOML_SCALARS, containers, max_leaves=6)
SECTIONS = sorted({k.section for k in _KEYS})
KEY_NAMES = sorted({k.name for k in _KEYS})

# Documents of known sections and keys (so that every value parser is reached) and of anything at all.
KNOWN_DOCS = st.lists(st.tuples(st.sampled_from(_KEYS), TOML_VALUES), max_size=6).map(
    lambda pairs: {s: {k.name: v for k, v in pairs if k.section == s} for s in {k.section for k, _ in pairs}})
ANY_DOCS = st.dictionaries(
    st.one_of(st.sampled_from(SECTIONS), st.text(max_size=10)),
    st.one_of(st.dictionaries(st.one_of(st.sampled_from(KEY_NAMES), st.text(max_size=10)), TOML_VALUES, max_size=4),
              TOML_VALUES),
    max_size=4)


def assert_sane(s: Settings) -> None:
    """What a config that loads may hold: no NaN, no infinity, no number past 64 bits, no NUL in a path."""
    for f in fields(s):
        v = getattr(s, f.name)
        if isinstance(v, float):
            assert math.isfinite(v) and v >= 0, (f.name, v)
        elif isinstance(v, int) and not isinstance(v, bool):
            assert 0 <= v < INT64, (f.name, v)
        elif f.name.startswith("prices_"):
            assert all(math.isfinite(x) and x >= 0 for x in v.values()), (f.name, v)
    for name in ("cache_dir", "mountpoint", "log_file", "redis_secret_file", "redis_ca_file", "redis_cert_file",
                 "redis_key_file", "cache_key_file"):
        assert "\0" not in getattr(s, name), name


def write(path: Path, data: str | bytes) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


# ===================================================================== TOML configs
@given(doc=st.one_of(KNOWN_DOCS, ANY_DOCS))
@example(doc={"cache": {"size": "9" * 400 + "GiB"}})  # float overflow: OverflowError
@example(doc={"fuse": {"workers": math.inf}})  # int(inf): OverflowError
@example(doc={"metadata": {"ttl": math.nan}})  # NaN was taken as a TTL
@example(doc={"store": {"timeout": math.inf}})
@example(doc={"cache": {"high_watermark": True}})  # a boolean was taken as 1.0
@example(doc={"fuse": {"workers": 1.5}})  # silently 1
@example(doc={"metrics": {"listen": ":²"}})  # isdigit() but not int(): "invalid literal for int()"
@example(doc={"prices": {"s3": {"STANDARD": math.inf}}})
@example(doc={"a\nb": {}})  # a section name that is two lines
@example(doc={"cache": {"dir\u2028": 1}})  # a line separator in a key name
@example(doc={"cache": {"dir": "/tmp/a\0b"}})  # NUL in a path
@example(doc={"cache": {"size": 2**63 - 1, "block_size": "4MiB"}})
@example(doc={"cache": {"size": "9" * 30}})  # a size past 64 bits
def test_config_documents(tmp_path: Path, doc: dict[str, Any]) -> None:
    text = toml_doc(doc)
    tomllib.loads(text)  # (the writer above makes valid TOML, so the parsers behind it are reached)
    cfg = write(tmp_path / "fuzz.toml", text)
    settings, _ = outcome(lambda: load(cfg), ConfigError)
    if settings is not None:
        assert_sane(settings)


STORE_DOCS = st.fixed_dictionaries({}, optional={
    "store": st.fixed_dictionaries({}, optional={
        "options": st.dictionaries(st.one_of(st.sampled_from(["auto_mkdir", "skip_instance_cache", "use_listings_cache",
                                                              "asynchronous", "loop", "key", "anon"]),
                                             st.text(max_size=8)), TOML_VALUES, max_size=3),
        "retries": st.integers(-1, 3), "timeout": st.one_of(st.just(0), st.floats(0, 2)),
        "read_deadline": st.one_of(st.just(0), st.floats(0, 2)), "metadata_deadline": st.one_of(st.just(0), st.floats(0, 2)),
        "versions": st.one_of(st.sampled_from(["auto", "on", "off"]), TOML_VALUES)}),
    "s3": st.dictionaries(st.sampled_from(["endpoint_url", "region", "key", "secret", "anon", "profile"]), TOML_VALUES,
                          max_size=3),
})


@HEAVY
@given(doc=STORE_DOCS, memory=st.booleans())
def test_config_opens_a_lake(tmp_path: Path, doc: dict[str, Any], memory: bool) -> None:
    """A config that loads either opens the lake or is refused in one line, for any [store] options."""
    (tmp_path / "lake").mkdir(exist_ok=True)
    cfg = write(tmp_path / "fuzz.toml", toml_doc(doc))
    url = "memory://fuzz-open" if memory else f"file://{tmp_path}/lake"
    code, _, err = cli("snapshot", "list", url, "--config", str(cfg))
    assert_cli_outcome(code, err)


OPTION_NAMES = st.sampled_from(["config", "cache_dir", "cache_size", "ram_size", "block_size", "metadata_ttl",
                                 "log_file", "log_level", "metrics", "read_only_prefixes", "immutable_prefixes", "ro",
                                 "rw", "allow_other", "nonempty", "no_delete", "allow_readable_secrets", "foreground", "f", "_netdev",
                                 "x-systemd.automount", "comment=x", "defaults", "nope", "cache-size", ""])
MOUNT_OPTIONS = st.lists(st.builds(lambda n, eq, v: f"{n}{eq}{v}", st.one_of(OPTION_NAMES, st.text(max_size=6)),
                                   st.sampled_from(["", "=", "=="]), st.one_of(SIZES, WORDS, st.text(max_size=8))),
                         max_size=4).map(",".join)


@given(groups=st.lists(MOUNT_OPTIONS, max_size=3))
@example(groups=["cache_size=" + "9" * 400])
@example(groups=["metadata_ttl=nan,read_only_prefixes=a:b::c"])
def test_mount_options(groups: list[str]) -> None:
    """-o options as fstab gives them: parsed and loaded, or one line saying which one is wrong."""
    from tierfs.cli import mount_options

    opts, _ = outcome(lambda: mount_options.parse(tuple(groups)), ConfigError)
    if opts is not None:
        settings, _ = outcome(lambda: load(None, {**opts.overrides, "lake_url": "memory://x"}), ConfigError)
        if settings is not None:
            assert_sane(settings)


VALID_CONFIG = (b'[lake]\nurl = "memory://x"\n[cache]\nsize = "2GiB"\nblock_size = "1MiB"\nmin_free = "5%"\n'
                b'[store]\nretries = 3\ntimeout = 2.5\noptions = { a = 1 }\n[metrics]\nlisten = ":9464"\n'
                b'[prices]\ns3 = { STANDARD = 0.023 }\n[fuse]\nallow_other = true\n')


@st.composite
def mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """``valid`` with a few bytes replaced, dropped or inserted, or cut short."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["replace", "delete", "insert", "truncate"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "replace" and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "delete" and data:
            del data[pos:pos + draw(st.integers(1, 8))]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[pos:]
    return bytes(data)


@given(raw=st.one_of(st.binary(max_size=200), mutated(VALID_CONFIG)))
@example(raw=b'[log]\nlevel = "\xff"\n')  # not UTF-8: UnicodeDecodeError
@example(raw=b"\xef\xbb\xbf[cache]\n")  # a byte order mark
def test_config_bytes(tmp_path: Path, raw: bytes) -> None:
    cfg = write(tmp_path / "fuzz.toml", raw)
    settings, _ = outcome(lambda: load(cfg), ConfigError)
    if settings is not None:
        assert_sane(settings)


@given(attr=st.sampled_from([k.attr for k in _KEYS]), raw=st.one_of(SIZES, NUMBERISH, WORDS, st.text(max_size=30)))
@example(attr="cache_size", raw="9" * 400)
@example(attr="fuse_workers", raw="inf")
@example(attr="metadata_ttl", raw="nan")
def test_config_flags(attr: str, raw: str) -> None:
    """Command-line flags go through the same parsers as the file."""
    settings, _ = outcome(lambda: load(None, {attr: raw}), ConfigError)
    if settings is not None:
        assert_sane(settings)


def test_config_paths(tmp_path: Path) -> None:
    """Where the config file is not a readable TOML file: one line each, and quickly."""
    (tmp_path / "file").write_text("[cache]\n")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    bad = [tmp_path / "missing.toml", tmp_path, tmp_path / "file" / "below-a-file", tmp_path / ("x" * 300),
           tmp_path / "loop", Path("/tmp/nul\0byte"), Path("/dev/zero"), Path("/proc/self/mem")]
    for path in bad:
        _, exc = outcome(lambda path=path: load(path), ConfigError)
        assert exc is not None, path


def test_config_not_utf8_names_the_file(tmp_path: Path) -> None:
    cfg = write(tmp_path / "latin1.toml", '[log]\nfile = "/var/log/tierfs-é.log"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.toml is not UTF-8"):
        load(cfg)


# ===================================================================== lifecycle rules
ALL_CLASSES = sorted({c for cs in CLASSES.values() for c in cs})
DAYS = st.one_of(st.integers(-3, 400), st.integers(-INT64, INT64 - 1), st.booleans(), st.floats(), st.text(max_size=3))
TRANSITION = st.one_of(
    st.fixed_dictionaries({"days": DAYS, "class": st.one_of(st.sampled_from(ALL_CLASSES), TOML_VALUES)}),
    st.dictionaries(st.sampled_from(["days", "class", "storage_class"]), TOML_VALUES, max_size=3),
    TOML_VALUES,
)
RULE = st.fixed_dictionaries({}, optional={
    "id": st.one_of(st.text(max_size=10), TOML_VALUES),
    "prefix": st.one_of(st.text(max_size=10), st.sampled_from(["/abs", "../up", ""]), TOML_VALUES),
    "enabled": st.one_of(st.booleans(), TOML_VALUES),
    "transitions": st.one_of(st.lists(TRANSITION, max_size=3), TOML_VALUES),
    "noncurrent_transitions": st.one_of(st.lists(TRANSITION, max_size=2), TOML_VALUES),
    "expiration_days": DAYS,
    "noncurrent_expiration_days": DAYS,
    "filter": TOML_VALUES,
})
RETENTION = st.fixed_dictionaries({}, optional={
    "dataset": st.one_of(st.sampled_from(["*", "imagenet", "img*"]), TOML_VALUES),
    "keep_last": DAYS, "keep_tagged": st.one_of(st.booleans(), TOML_VALUES),
    "expire_untagged_after_days": DAYS, "keep": TOML_VALUES,
})
RULE_DOCS = st.one_of(
    st.fixed_dictionaries({}, optional={"rule": st.one_of(st.lists(st.one_of(RULE, TOML_VALUES), max_size=3), TOML_VALUES),
                                        "retention": st.one_of(st.lists(st.one_of(RETENTION, TOML_VALUES), max_size=2),
                                                               TOML_VALUES)}),
    st.dictionaries(st.text(max_size=8), TOML_VALUES, max_size=3),
)


def check_rules(load_them: Callable[[], Any], provider: str) -> None:
    rules, _ = outcome(load_them, ConfigError)
    if rules is None:
        return
    for r in rules.rules:
        assert isinstance(r.id, str) and r.id and isinstance(r.prefix, str) and isinstance(r.enabled, bool)
        for t in (*r.transitions, *r.noncurrent_transitions):
            assert isinstance(t.days, int) and t.days >= 0 and t.storage_class in CLASSES[provider]
        # A rule that loads evaluates for any object without failing.
        for key, cls in (("datasets/a", "STANDARD"), ("", ""), ("x/y", CLASSES[provider][-1])):
            with cpu_deadline():
                evaluate(r, key, cls, 0.0, 1e9)
                evaluate(r, key, cls, 0.0, 1e9, noncurrent_since=5e8, version="v")
    for p in rules.retention:
        assert isinstance(p.dataset, str) and isinstance(p.keep_tagged, bool)
        assert p.keep_last is None or (isinstance(p.keep_last, int) and p.keep_last >= 0)


@given(doc=RULE_DOCS, provider=st.sampled_from(sorted(CLASSES)))
@example(doc={"rule": 5}, provider="s3")  # not a list: TypeError
@example(doc={"rule": "abc"}, provider="s3")  # a string: AttributeError on its characters
@example(doc={"rule": {"id": "x", "expiration_days": 1}}, provider="s3")  # [rule] instead of [[rule]]
@example(doc={"retention": [5]}, provider="s3")
@example(doc={"retention": [{"dataset": 5}]}, provider="s3")  # a number taken as a dataset pattern
@example(doc={"retention": [{"keep_tagged": "false"}]}, provider="s3")  # "false" was taken as true
@example(doc={"rule": [{"id": "x", "transitions": [{"days": 1, "class": ["STANDARD_IA"]}]}]}, provider="s3")
def test_rule_documents(tmp_path: Path, doc: dict[str, Any], provider: str) -> None:
    check_rules(lambda: parse_rules(doc, provider), provider)
    text = toml_doc(doc)
    tomllib.loads(text)
    path = write(tmp_path / "rules.toml", text)
    check_rules(lambda: load_rules(path, provider), provider)


VALID_RULES = (b'[[rule]]\nid = "cool"\nprefix = "datasets/"\ntransitions = [{ days = 30, class = "STANDARD_IA" }]\n'
               b'noncurrent_expiration_days = 730\n[[retention]]\ndataset = "img*"\nkeep_last = 3\n')


@given(raw=st.one_of(st.binary(max_size=120), mutated(VALID_RULES)))
@example(raw=b'[[rule]]\nid = "\xff"\n')
def test_rule_bytes(tmp_path: Path, raw: bytes) -> None:
    path = write(tmp_path / "rules.toml", raw)
    check_rules(lambda: load_rules(path, "s3"), "s3")


# ===================================================================== sidecar configs
JOB = st.fixed_dictionaries({}, optional={
    "name": st.one_of(st.text(max_size=8), TOML_VALUES), "kind": st.one_of(st.sampled_from(["lifecycle", "backup"]),
                                                                             TOML_VALUES),
    "lake": st.one_of(st.just("file:///lake"), TOML_VALUES), "rules": st.one_of(st.just("/r.toml"), TOML_VALUES),
    "source": st.one_of(st.just("/src"), TOML_VALUES), "target": st.one_of(st.just("file:///t"), TOML_VALUES),
    "every": st.one_of(st.sampled_from(["24h", "0s", "0.1s", "1s", "1e3s", "9" * 40 + "d"]), SIZES, TOML_VALUES),
    "jobs": st.one_of(st.integers(-1, 300), TOML_VALUES), "keep": st.one_of(st.integers(-1, 9), TOML_VALUES),
    "apply": st.one_of(st.booleans(), TOML_VALUES), "native": TOML_VALUES,
})
SIDECAR_DOCS = st.fixed_dictionaries({}, optional={
    "job": st.one_of(st.lists(st.one_of(JOB, TOML_VALUES), max_size=3), TOML_VALUES),
    "sidecar": st.one_of(st.dictionaries(st.sampled_from(["metrics", "store_config", "other"]), TOML_VALUES,
                                         max_size=2), TOML_VALUES),
})


@given(doc=SIDECAR_DOCS)
@example(doc={"job": 5})  # not a list: TypeError
@example(doc={"job": {"kind": "backup"}})  # [job] instead of [[job]]: AttributeError on its keys
@example(doc={"job": [{"kind": ["backup"]}]})  # unhashable: TypeError
@example(doc={"job": [{"kind": "backup", "source": "/s", "target": "file:///t", "every": "0s"}]})  # back to back
@example(doc={"job": [{"kind": "backup", "source": "/s", "target": "file:///t", "keep": "7"}]})
@example(doc={"sidecar": {"metrics": 9465}, "job": [{"kind": "backup", "source": "/s", "target": "file:///t"}]})
def test_sidecar_configs(tmp_path: Path, doc: dict[str, Any]) -> None:
    from tierfs.sidecar.daemon import load_jobs

    path = write(tmp_path / "sidecar.toml", toml_doc(doc))
    got, _ = outcome(lambda: load_jobs(path), ConfigError)
    if got is not None:
        options, jobs = got
        assert all(isinstance(v, str) for v in options.values())
        for job in jobs:
            assert job.kind in ("lifecycle", "backup") and isinstance(job.name, str) and job.every >= 1
            keep = job.args.get("keep")
            assert keep is None or (isinstance(keep, int) and keep >= 1)


# ===================================================================== snapshot manifests
JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-(10**30), 10**30), st.floats(),
              st.text(max_size=10), st.binary(max_size=6).map(os.fsdecode), st.sampled_from(["\ud800", "../x", ""])),
    containers, max_leaves=5)
COMPONENT = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_characters="/\0"), min_size=1, max_size=12),
    st.binary(min_size=1, max_size=12).map(os.fsdecode),  # a local lake's names that are not UTF-8
).filter(lambda s: "/" not in s and "\0" not in s and s not in (".", ".."))


def entries_of(files: dict[tuple[str, ...], int]) -> list[ManifestEntry]:
    """The sorted manifest entries of a tree: a file for each path (unless another path is below it), dirs above."""
    paths = set(files)
    dirs = {p[:i] for p in paths for i in range(1, len(p))}
    out = {}
    for d in dirs:
        out[d] = ManifestEntry("/".join(d[:-1]), d[-1], True)
    for p, size in files.items():
        if p not in dirs:
            key = "/".join(("datasets/ds", *p))
            out[p] = ManifestEntry("/".join(p[:-1]), p[-1], False, size, 0o644, 1_700_000_000 * 10**9, key,
                                   "", "etag", "", f"e:{key}")
    return sorted(out.values(), key=lambda e: e.sort_key)


# (sizes up to 2**56: twelve of them still sum to less than what a lake can hold, 2**63)
TREES = st.dictionaries(st.lists(COMPONENT, min_size=1, max_size=3).map(tuple), st.integers(0, 2**56), max_size=12)


def write_manifest(entries: list[ManifestEntry], part_entries: int, prefix: str = "datasets/ds",
                   message: str = "", metadata: dict[str, Any] | None = None) -> dict[str, bytes]:
    """A committed snapshot ds@v1 in a dict (key -> bytes): its parts, then its meta.json."""
    objects: dict[str, bytes] = {}
    base = snapshot_dir("ds", "v1")
    w = ManifestWriter(objects.__setitem__, base, part_entries)
    for e in entries:
        w.add(e)
    meta = SnapshotMeta("ds", "v1", prefix, "copy", message, "2024-05-01T10:00:00.000000+00:00", "fuzz@host",
                        metadata or {}, sum(not e.is_dir for e in entries), sum(e.is_dir for e in entries),
                        sum(e.size for e in entries), w.finish())
    objects[f"{base}/meta.json"] = meta.to_json()
    return objects


def fetcher(objects: dict[str, bytes]) -> Callable[[str], bytes]:
    def fetch(key: str) -> bytes:
        try:
            return objects[key]
        except KeyError:
            raise FileNotFoundError(key) from None
    return fetch


def read_everything(objects: dict[str, bytes], probes: list[tuple[str, str]]) -> tuple[SnapshotMeta, list[ManifestEntry]]:
    """Open ds@v1 and read every way the mount and the CLI do: all entries, lookups, listings."""
    reader = ManifestReader.open("ds", "v1", fetcher(objects))
    entries = list(reader)
    for parent, name in probes:
        reader.lookup(parent, name)
        list(reader.list_dir(parent))
    for e in entries:
        assert reader.lookup(e.parent, e.name) == e
        if e.is_dir:
            list(reader.list_dir(e.path))
    index_agrees(objects, reader, entries, probes)
    return reader.meta, entries


def index_agrees(objects: dict[str, bytes], reader: ManifestReader, entries: list[ManifestEntry],
                 probes: list[tuple[str, str]]) -> None:
    """The manifest's local index, built from the same objects, answers every lookup and listing as the reader."""
    with tempfile.TemporaryDirectory() as tmp:
        indexes = ManifestIndexes(Path(tmp))
        raw_meta = objects[f"{snapshot_dir('ds', 'v1')}/meta.json"]
        builder = indexes.builder(reader, manifest_id(raw_meta))
        for i in range(reader.part_count):
            builder.add_from(i, fetcher(objects))
        index = indexes.commit(builder)
        try:
            for e in entries:
                assert index.lookup(e.parent, e.name) == e
            for parent in {"", *(e.path for e in entries if e.is_dir), *(p for p, _ in probes)}:
                assert index.children(parent) == list(reader.list_dir(parent))
            for parent, name in probes:
                assert index.lookup(parent, name) == reader.lookup(parent, name)
        finally:
            indexes.close()


def assert_sane_entries(entries: list[ManifestEntry]) -> None:
    keys = [e.sort_key for e in entries]
    assert keys == sorted(set(keys)), "entries out of order or repeated"
    for e in entries:
        assert isinstance(e.parent, str) and isinstance(e.name, str) and isinstance(e.is_dir, bool)
        assert e.name and "/" not in e.name and "\0" not in e.name and e.name not in (".", "..")
        assert e.parent == "" or all(c and c not in (".", "..") for c in e.parent.split("/"))
        for s in (e.parent, e.name, e.key):
            s.encode("utf-8", "surrogateescape")  # bytes a filesystem can be given
        if not e.is_dir:
            for n in (e.size, e.mode, e.mtime_ns):
                assert isinstance(n, int) and not isinstance(n, bool)
            assert 0 <= e.size < INT64 and 0 <= e.mode <= 0o7777 and -INT64 <= e.mtime_ns < INT64
            assert e.key and not e.key.startswith("/") and ".." not in e.key.split("/") and "" not in e.key.split("/")
            assert all(isinstance(x, str) for x in (e.key, e.version, e.etag, e.sha256, e.cache_id))


@given(files=TREES, part_entries=st.integers(1, 5), prefix=st.one_of(st.just("datasets/ds"), COMPONENT),
       message=st.one_of(st.text(max_size=10), st.binary(max_size=6).map(os.fsdecode)), metadata=st.dictionaries(
           st.text(max_size=5), JSON.filter(lambda v: "\ud800" not in json.dumps(v)), max_size=3))
@example(files={("\udcff",): 1}, part_entries=1, prefix="datasets/ds", message="", metadata={})  # a name not UTF-8
@example(files={("a",): 1}, part_entries=1, prefix="datasets/\udcff", message="\udcfe", metadata={"\udcfd": 1})
def test_manifest_round_trip(files: dict[tuple[str, ...], int], part_entries: int, prefix: str, message: str,
                             metadata: dict[str, Any]) -> None:
    """Whatever names a lake holds (not UTF-8 included) come back from the manifest exactly."""
    entries = entries_of(files)
    with cpu_deadline():
        objects = write_manifest(entries, part_entries, prefix, message, metadata)
        meta, back = read_everything(objects, [])
    assert back == entries
    assert (meta.prefix, meta.message) == (prefix, message)
    assert json.dumps(meta.metadata, sort_keys=True) == json.dumps(metadata, sort_keys=True)


def checksummed(body: dict[str, Any]) -> bytes:
    """meta.json for ``body`` with a checksum that matches it: what a buggy writer could commit."""
    body = {k: v for k, v in body.items() if k != "checksum"}
    canon = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    body["checksum"] = hashlib.sha256(canon.encode("utf-8", "surrogatepass")).hexdigest()
    return json.dumps(body, sort_keys=True).encode()


META_FIELDS = ["format", "dataset", "name", "prefix", "mode", "message", "created_at", "creator", "metadata",
               "file_count", "dir_count", "total_size", "parts", "checksum"]
PART_FIELDS = ["first", "count", "sha256", "bytes"]
ENTRY_FIELDS = ["p", "n", "d", "s", "m", "t", "k", "v", "e", "h", "c"]
DROP = object()


@st.composite
def corruption(draw: st.DrawFn, objects: dict[str, bytes]) -> tuple[str, dict[str, bytes]]:
    """(kind, the objects with one thing broken). "raw" kinds are accidents (no checksum updated)."""
    out = dict(objects)
    meta_key = f"{snapshot_dir('ds', 'v1')}/meta.json"
    parts = sorted(k for k in objects if "/part-" in k)
    body = json.loads(objects[meta_key])
    kind = draw(st.sampled_from(["raw_meta", "meta_field", "part_field", "part_bytes", "part_lines", "no_part"]
                                if parts else ["raw_meta", "meta_field"]))
    if kind == "raw_meta":
        out[meta_key] = draw(st.one_of(mutated(objects[meta_key]), st.binary(max_size=40),
                                       JSON.map(lambda v: json.dumps(v).encode())))
    elif kind == "meta_field":
        name = draw(st.one_of(st.sampled_from(META_FIELDS), st.text(max_size=5)))
        value = draw(st.one_of(st.just(DROP), JSON))
        body.pop(name, None) if value is DROP else body.__setitem__(name, value)
        out[meta_key] = checksummed(body)
    elif kind == "part_field":
        i = draw(st.integers(0, len(body["parts"]) - 1))
        part = body["parts"][i]
        name = draw(st.one_of(st.sampled_from(PART_FIELDS), st.text(max_size=5)))
        value = draw(st.one_of(st.just(DROP), JSON, st.lists(st.text(max_size=3), min_size=2, max_size=2)))
        part.pop(name, None) if value is DROP else part.__setitem__(name, value)
        out[meta_key] = checksummed(body)
    elif kind in ("part_bytes", "part_lines"):
        i = draw(st.integers(0, len(parts) - 1))
        if kind == "part_bytes":
            raw = draw(st.one_of(mutated(objects[parts[i]]), st.binary(max_size=60),
                                 mutated(gzip.decompress(objects[parts[i]])).map(gzip.compress)))
        else:
            lines = gzip.decompress(objects[parts[i]]).decode().rstrip("\n").split("\n")
            j = draw(st.integers(0, len(lines) - 1))
            entry = json.loads(lines[j])
            how = draw(st.sampled_from(["field", "json", "text"]))
            if how == "field":
                name = draw(st.one_of(st.sampled_from(ENTRY_FIELDS), st.text(max_size=3)))
                value = draw(st.one_of(st.just(DROP), JSON))
                entry.pop(name, None) if value is DROP else entry.__setitem__(name, value)
                lines[j] = json.dumps(entry)
            elif how == "json":
                lines[j] = json.dumps(draw(JSON))
            else:
                lines[j] = draw(st.text(max_size=20))
            raw = gzip.compress(("\n".join(lines) + "\n").encode("utf-8", "surrogatepass"))
        out[parts[i]] = raw
        body["parts"][i]["sha256"] = hashlib.sha256(raw).hexdigest()
        body["parts"][i]["bytes"] = len(raw)
        out[meta_key] = checksummed(body)
    else:
        del out[draw(st.sampled_from(parts))]
    return kind, out


SMALL_TREE = {("train", "cat", "1.jpg"): 3000, ("train", "cat", "2.jpg"): 3000, ("train", "dog", "1.jpg"): 5000,
              ("labels.csv",): 12, ("é\udcff",): 0}


@given(data=st.data(), part_entries=st.integers(1, 4))
def test_manifest_corruption(data: st.DataObject, part_entries: int) -> None:
    """A manifest with anything broken is refused (ManifestError, one line) or reads as it was written."""
    entries = entries_of(SMALL_TREE)
    objects = write_manifest(entries, part_entries)
    kind, broken = data.draw(corruption(objects))
    probes = data.draw(st.lists(st.tuples(st.one_of(st.sampled_from(["", "train", "train/cat"]), st.text(max_size=5)),
                                          st.text(max_size=5)), max_size=3))
    got, exc = outcome(lambda: read_everything(broken, probes), ManifestError, UserError)
    if got is None:
        return
    meta, back = got
    assert_sane_entries(back)
    if kind in ("raw_meta", "no_part"):
        # An accident never reads as something else: what reads is what was written, whole.
        assert back == entries and meta.parts == json.loads(objects[f"{snapshot_dir('ds', 'v1')}/meta.json"])["parts"]


def meta_case(**change: Any) -> dict[str, bytes]:
    objects = write_manifest(entries_of(SMALL_TREE), 2)
    key = f"{snapshot_dir('ds', 'v1')}/meta.json"
    body = json.loads(objects[key])
    for name, value in change.items():
        if value is DROP:
            body.pop(name)
        else:
            body[name] = value
    return {**objects, key: checksummed(body)}


def part_line_case(line: str, index: int = 0) -> dict[str, bytes]:
    """ds@v1 (one part) with entry ``index`` replaced by ``line``, checksums made to match."""
    objects = write_manifest(entries_of(SMALL_TREE), 100)
    key = f"{snapshot_dir('ds', 'v1')}/part-00000.jsonl.gz"
    lines = gzip.decompress(objects[key]).decode().rstrip("\n").split("\n")
    lines[index] = line
    raw = gzip.compress(("\n".join(lines) + "\n").encode("utf-8", "surrogatepass"))
    meta_key = f"{snapshot_dir('ds', 'v1')}/meta.json"
    body = json.loads(objects[meta_key])
    body["parts"][0].update(sha256=hashlib.sha256(raw).hexdigest(), bytes=len(raw))
    return {**objects, key: raw, meta_key: checksummed(body)}


@pytest.mark.parametrize("make", [
    pytest.param(lambda: {f"{snapshot_dir('ds', 'v1')}/meta.json": b"[" * 100_000}, id="deep-nesting"),  # RecursionError
    pytest.param(lambda: {f"{snapshot_dir('ds', 'v1')}/meta.json": b'{"checksum": "x", "a": "\\ud800"}'}, id="lone-surrogate"),
    pytest.param(lambda: meta_case(extra=1), id="unknown-field"),  # TypeError from SnapshotMeta(**body)
    pytest.param(lambda: meta_case(message=DROP), id="missing-field"),
    pytest.param(lambda: meta_case(parts=5), id="parts-not-a-list"),
    pytest.param(lambda: meta_case(parts=[{"first": 1}]), id="part-without-fields"),
    pytest.param(lambda: meta_case(total_size="many"), id="size-not-a-number"),  # format_size crashed in snapshot show
    pytest.param(lambda: meta_case(created_at="yesterday"), id="created-at-not-a-date"),  # retention's fromisoformat
    pytest.param(lambda: meta_case(name="v2"), id="meta-of-another-snapshot"),
    pytest.param(lambda: meta_case(dataset="../../x"), id="dataset-escapes"),  # its parts were read from elsewhere
    pytest.param(lambda: part_line_case("[1]"), id="entry-not-an-object"),  # AttributeError
    pytest.param(lambda: part_line_case('{"p": 5, "n": "a", "d": 1}'), id="parent-not-a-string"),  # TypeError in bisect
    pytest.param(lambda: part_line_case('{"p": "", "n": "a/b", "d": 1}'), id="name-with-slash"),
    pytest.param(lambda: part_line_case('{"p": "", "n": "..", "d": 1}'), id="name-dot-dot"),
    pytest.param(lambda: part_line_case('{"p":"","n":"a","s":1e400,"m":420,"t":0,"k":"x","c":""}'), id="size-infinite"),
    pytest.param(lambda: part_line_case('{"p":"","n":"a","s":' + "9" * 30 + ',"m":420,"t":0,"k":"x","c":""}'), id="size-huge"),
    pytest.param(lambda: part_line_case('{"p":"","n":"a","s":1,"m":420,"t":0,"k":"../../etc/passwd","c":""}'),
                 id="key-escapes"),
    pytest.param(lambda: part_line_case('{"p":"","n":"a","s":1,"m":420,"t":0,"k":"/etc/passwd","c":""}'), id="key-absolute"),
    pytest.param(lambda: part_line_case('{"p":"","n":"\\ud800","s":1,"m":420,"t":0,"k":"x","c":""}'), id="name-lone-surrogate"),
    pytest.param(lambda: part_line_case('{"p":"","n":"zz","s":1,"m":420,"t":0,"k":"x","c":""}'), id="entries-out-of-order"),
    pytest.param(lambda: part_line_case("[" * 100_000), id="entry-deep-nesting"),
    # (found by the long run: a mode past the permission bits)
    pytest.param(lambda: part_line_case('{"p":"","n":"a","s":1,"m":4096,"t":0,"k":"x","c":""}'), id="mode-not-permissions"),
])
def test_manifest_refused(make: Callable[[], dict[str, bytes]]) -> None:
    """The crashes and the silent misreadings the fuzzing found: each is now a ManifestError, one line."""
    objects = make()
    _, exc = outcome(lambda: read_everything(objects, [("", "a")]), ManifestError)
    assert isinstance(exc, ManifestError)


# ===================================================================== names
NAMES = st.one_of(
    st.text(max_size=30),
    st.text(st.characters(codec="utf-8"), max_size=30),
    st.binary(max_size=30).map(os.fsdecode),
    st.sampled_from(["", ".", "..", "../x", "a/b", "/abs", "v1", ".hidden", "a\\b", "x" * 201, "é" * 101, "a\nb",
                     "a\u2028b", "-rf", "--help", "v1\0", "\ud800", "con", "a b", "@", "x@y", "*", "?"]),
)


@given(kind=st.sampled_from(["dataset", "snapshot"]), name=NAMES)
@example(kind="snapshot", name="a\udcff")  # not UTF-8: UnicodeEncodeError in the length check
@example(kind="snapshot", name="\ud800")
def test_names(kind: str, name: str) -> None:
    ok, _ = outcome(lambda: validate_name(kind, name), UserError)
    if ok is not None:
        assert ok == name and name not in (".", "..") and "/" not in name and "\0" not in name
        assert len(name.encode()) <= 200
        assert snapshot_dir(name, name).split("/")[-2:] == [name, name]


@pytest.fixture
def lake_with_snapshot(tmp_path: Path) -> tuple[Path, ObjectStore]:
    root = tmp_path / "lake"
    write_tree(root, {"datasets/toy/a.txt": b"a" * 100, "datasets/toy/sub/b.bin": b"b" * 5000,
                      "datasets/other/c": b"c"})
    store = ObjectStore.open(load(None, {"lake_url": f"file://{root}"}))
    create_snapshot(store, "datasets/toy", "v1")
    return root, store


@HEAVY
@given(dataset=st.one_of(st.just("toy"), NAMES), name=st.one_of(st.just("v1"), NAMES))
@example(dataset="toy", name="a\udcff")
@example(dataset="../..", name="x")
def test_snapshot_commands(lake_with_snapshot: tuple[Path, ObjectStore], dataset: str, name: str) -> None:
    """show, diff, list, delete and create with any names: one line each; nothing else in the lake changes."""
    root, store = lake_with_snapshot
    url = f"file://{root}"
    before, v1 = tree_of(root), open_snapshot(store, "toy", "v1")
    runs = [("snapshot", "show", url, "--", dataset, name), ("snapshot", "diff", url, "--", dataset, "v1", name),
            ("snapshot", "list", url, "--", dataset), ("snapshot", "show", "--json", url, "--", dataset, name)]
    if (dataset, name) != ("toy", "v1"):
        runs.append(("snapshot", "delete", url, "--", dataset, name))
    runs.append(("snapshot", "create", url, "--dataset", dataset, "-m", name, "--", "datasets/toy", name))
    for args in runs:
        code, _, err = cli(*args)
        assert_cli_outcome(code, err)
    assert tree_of(root) == before
    assert list(open_snapshot(store, "toy", "v1")) == list(v1)
    if name != "v1" and (root / snapshot_dir(dataset, name) / "meta.json").is_file():
        delete_snapshot(store, dataset, name)  # (created above: the next example starts from the same lake)


@HEAVY
@given(message=st.one_of(st.text(max_size=20), st.binary(max_size=10).map(os.fsdecode)),
       meta=st.lists(st.one_of(st.text(max_size=15), st.sampled_from(["k=" + "[" * 100_000, "=v", "k", "k=NaN",
                                                                        "k=" + "9" * 5000])), max_size=3))
@example(message="\udcff", meta=[])  # not UTF-8 in the message: UnicodeEncodeError writing meta.json
@example(message="", meta=["k=" + "[" * 100_000])  # RecursionError in json.loads
def test_snapshot_create_metadata(lake_with_snapshot: tuple[Path, ObjectStore], message: str, meta: list[str]) -> None:
    root, store = lake_with_snapshot
    before = tree_of(root)
    args = ["snapshot", "create", f"file://{root}", "-m", message]
    for m in meta:
        args += ["--meta", m]
    code, _, err = cli(*args, "datasets/toy", "v2")
    assert_cli_outcome(code, err)
    assert tree_of(root) == before
    if code == 0:
        assert open_snapshot(store, "toy", "v2").meta.message == message
        delete_snapshot(store, "toy", "v2")


@pytest.mark.parametrize("jobs", ["0", "-3"])
def test_snapshot_create_jobs(lake_with_snapshot: tuple[Path, ObjectStore], jobs: str) -> None:
    root, _ = lake_with_snapshot
    code, _, err = cli("snapshot", "create", f"file://{root}", "--jobs", jobs, "datasets/toy", "v2")
    assert_cli_outcome(code, err)


@pytest.mark.parametrize("grace", ["nan", "-1"])
def test_gc_grace_is_a_number_of_seconds(lake_with_snapshot: tuple[Path, ObjectStore], grace: str) -> None:
    """--grace nan compared false with every age and removed copies a snapshot being created still needs."""
    root, _ = lake_with_snapshot
    young = root / ".tierfs/cas/tmp/young-copy"
    young.parent.mkdir(parents=True, exist_ok=True)
    young.write_bytes(b"a snapshot being created owns this")
    code, _, err = cli("gc", f"file://{root}", "--grace", grace)
    assert code == 2 and "Error: " in err, (code, err)
    assert young.exists()


# ===================================================================== gc and delete over corrupt manifests
@HEAVY
@given(data=st.data())
def test_gc_with_a_corrupt_manifest_removes_nothing_referenced(lake_with_snapshot: tuple[Path, ObjectStore],
                                                                data: st.DataObject) -> None:
    """gc stops (one line) when a manifest cannot be read; it never removes a copy a snapshot still names."""
    root, store = lake_with_snapshot
    snap = root / snapshot_dir("toy", "v1")
    files = {p.name: p.read_bytes() for p in snap.iterdir()}
    target = data.draw(st.sampled_from(sorted(files)))
    broken = data.draw(st.one_of(mutated(files[target]), st.binary(max_size=30)))
    cas_before = tree_of(root / ".tierfs/cas", skip="tmp")
    try:
        (snap / target).write_bytes(broken)
        _, exc = outcome(lambda: gc(store, grace_seconds=0), UserError)
        if exc is not None:
            assert tree_of(root / ".tierfs/cas", skip="tmp") == cas_before
        _, exc = outcome(lambda: open_snapshot(store, "toy", "v1") and list(open_snapshot(store, "toy", "v1")),
                         ManifestError, UserError)
        if exc is None:  # still readable: every copy it names is still there
            for e in open_snapshot(store, "toy", "v1"):
                assert e.is_dir or (root / e.key).is_file()
    finally:
        for name, raw in files.items():
            (snap / name).write_bytes(raw)


# ===================================================================== object keys
KEY_PARTS = st.one_of(COMPONENT, st.sampled_from(["..", ".", "", "x" * 300, "a\0b", "\ud800"]),
                      st.binary(min_size=1, max_size=8).map(os.fsdecode))
KEYS = st.one_of(st.lists(KEY_PARTS, min_size=1, max_size=4).map("/".join),
                 st.lists(KEY_PARTS, min_size=1, max_size=3).map(lambda p: "/" + "/".join(p)))
STORE_REFUSALS = (TierfsError, OSError, ValueError)


def too_long(store: ObjectStore, key: str) -> bool:
    """Whether the mount would refuse ``key`` before it reaches the store (ENAMETOOLONG at the call)."""
    try:
        store.check_key(key)
    except NameTooLong:
        return True
    except STORE_REFUSALS:
        pass
    return False


def store_ops(store: ObjectStore, key: str) -> None:
    """What the mount and the CLI do with a key, each either working or refused."""
    if too_long(store, key):
        return
    for op in (lambda: store.put_bytes(key, b"fuzz"), lambda: store.read_all(key), lambda: store.stat(key),
               lambda: store.list_dir(key), lambda: store.exists(key), lambda: store.delete(key)):
        with contextlib.suppress(*STORE_REFUSALS):
            op()


@given(key=KEYS)
@example(key="../outside")
def test_local_store_keys_stay_in_the_lake(tmp_path: Path, key: str) -> None:
    top = tmp_path / uuid.uuid4().hex
    root = top / "deep/er/lake"
    root.mkdir(parents=True)
    # No retries: the store retries some refusals that no retry mends (EBUSY, ENAMETOOLONG), which only costs time here.
    store = ObjectStore.open(load(None, {"lake_url": f"file://{root}", "store_retries": "0"}))

    def outside() -> set[str]:
        return {p.relative_to(top).as_posix() for p in top.rglob("*") if not str(p).startswith(str(root) + "/")}

    with cpu_deadline(30):
        if too_long(store, key):
            return
        with contextlib.suppress(*STORE_REFUSALS):
            store.put_bytes(key, b"fuzz")
        reached = outside()  # (before the delete below, which would remove what the put left outside)
        store_ops(store, key)
    assert reached <= {"deep", "deep/er", "deep/er/lake"}, f"{key!r} reached {sorted(reached)}"


@given(key=st.lists(COMPONENT, min_size=1, max_size=4).map("/".join))
@example(key="\udcff\udcfe")
@example(key="x" * 300)
def test_store_keys_the_mount_can_make(tmp_path: Path, key: str) -> None:
    """Keys made of names a mount passes on (any bytes but '/' and NUL): put, read back, list, delete."""
    fresh = uuid.uuid4().hex  # (each example its own lake: a deleted key leaves its parents behind)
    (tmp_path / fresh).mkdir()
    for url in (f"file://{tmp_path}/{fresh}", f"memory://fuzz-{fresh}"):
        store = ObjectStore.open(load(None, {"lake_url": url, "store_retries": "0"}))
        with cpu_deadline(30):
            try:
                store.check_key(key)
            except NameTooLong as exc:
                one_line(exc)
                continue
            assert store.put_bytes(key, b"fuzz").size == 4
            assert store.read_all(key) == b"fuzz"
            parent, _, name = key.rpartition("/")
            assert name in {e.name for e in store.list_dir(parent)}
            store.delete(key)
            with pytest.raises(NotFound):
                store.stat(key)
        if url.startswith("memory"):
            store.delete_tree("")
    shutil.rmtree(tmp_path / fresh)


# ===================================================================== cp, warm --list, tierfs://
LOCAL_NAMES = st.one_of(COMPONENT, st.sampled_from(["x" * 300, "with\nnewline", "\udcff", "-", "sub/", "a b"]))


def argv_can_hold(text: str) -> bool:
    """Whether a command line can carry ``text``: no NUL, and surrogates only as os.fsdecode makes them."""
    try:
        os.fsencode(text)
    except UnicodeEncodeError:
        return False
    return "\0" not in text


@HEAVY
@given(key=st.lists(KEY_PARTS.filter(argv_can_hold), min_size=0, max_size=3).map("/".join),
       local=LOCAL_NAMES, scheme=st.sampled_from(["file://", "file://", "memory://", "nope://", "s3:/", "://"]),
       upload=st.booleans(), part_size=st.one_of(st.none(), SIZES))
@example(key="ok.bin", local="\udcff", scheme="file://", upload=False, part_size=None)
@example(key="", local="src.bin", scheme="file://", upload=True, part_size=None)
@example(key="ok.bin", local="src.bin", scheme="file://", upload=True, part_size="9" * 400)
def test_cp_paths(tmp_path: Path, key: str, local: str, scheme: str, upload: bool, part_size: str | None) -> None:
    """tierfs cp with odd keys and local paths: it copies, or says why in one line."""
    base = tmp_path / "l1/l2/l3/lake"  # deep enough that '..' in a key stays inside tmp_path
    base.mkdir(parents=True, exist_ok=True)
    (base / "ok.bin").write_bytes(b"lake bytes")
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    (work / "src.bin").write_bytes(b"local bytes")
    cfg = write(tmp_path / "cp.toml", toml_doc({"cache": {"dir": str(tmp_path / "cache")}}))
    url = f"{scheme}{base}/{key}" if scheme.startswith("file") else f"{scheme}fuzz/{key}"
    args = [url, local] if not upload else [local, url]
    extra = ["--part-size", part_size] if part_size is not None else []
    code, _, err = cli("cp", "--config", str(cfg), *extra, "--", *args, cwd=work)
    assert_cli_outcome(code, err)


@given(content=st.one_of(st.binary(max_size=80), st.lists(st.one_of(LOCAL_NAMES, st.just("/mnt/x" + "/y" * 3000)),
                                                          max_size=4).map(lambda ls: "\n".join(ls).encode(
                                                              "utf-8", "surrogateescape"))))
@example(content=b"/mnt/lake/\xff\n")  # not UTF-8: UnicodeDecodeError
def test_warm_list_files(tmp_path: Path, content: bytes) -> None:
    listing = write(tmp_path / "list.txt", content)
    code, _, err = cli("warm", "--list", str(listing), "--no-wait", cwd=tmp_path)
    assert_cli_outcome(code, err)
    assert code != 0  # (no mount here)


@pytest.fixture
def tierfs_fs(lake_with_snapshot: tuple[Path, ObjectStore]) -> Iterator[Any]:
    from tierfs.fsspec_tierfs import TierfsFileSystem

    root, _ = lake_with_snapshot
    fs = TierfsFileSystem(f"file://{root}", cache_size="0", ram_size="1MiB", skip_instance_cache=True)
    try:
        yield fs
    finally:
        fs.close()


FSSPEC_REFUSALS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, ManifestError)


@given(head=st.one_of(st.just("toy@v1"), st.builds(lambda d, n: f"{d}@{n}", NAMES, NAMES), NAMES),
       inner=st.lists(st.one_of(st.sampled_from(["a.txt", "sub", "b.bin", "..", ".", ""]), COMPONENT), max_size=3),
       protocol=st.booleans())
@example(head="..@..", inner=["..", "..", "meta.json"], protocol=True)  # names reached the store unchecked
@example(head="toy@v1", inner=["sub", "b.bin"], protocol=False)
@example(head="\ud800", inner=[], protocol=False)  # a live-view name that is no bytes: UnicodeEncodeError escaped
def test_tierfs_urls(tierfs_fs: Any, head: str, inner: list[str], protocol: bool) -> None:
    """tierfs://DATASET@NAME/path: the bytes of a snapshot's file, or an OSError fsspec's callers expect."""
    path = ("tierfs://" if protocol else "") + "/".join([head, *inner])
    expected = {"toy@v1/a.txt": b"a" * 100, "toy@v1/sub/b.bin": b"b" * 5000}.get(path.removeprefix("tierfs://"))
    for op in (tierfs_fs.ls, tierfs_fs.info, tierfs_fs.cat_file,
               lambda p: tierfs_fs.open(p).read(7), lambda p: tierfs_fs.ls(p, detail=False)):
        # (fsspec's errors name the path as given, line breaks and all: a Python caller's own string)
        got, _ = outcome(lambda op=op: op(path), *FSSPEC_REFUSALS, lines=False)
        if got is not None and expected is not None and isinstance(got, bytes):
            assert expected.startswith(got)


# ===================================================================== through the real CLI (subprocess)
def tierfs_bytes_arg(*args: str | bytes, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run tierfs with argv given as bytes where needed (a name that is not UTF-8), memory and time bounded."""
    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # a reader that never stops fails, not the host

    return subprocess.run([*TIERFS, *args], capture_output=True, text=True, errors="replace", timeout=timeout,
                          preexec_fn=limits, **kw)


def test_cli_one_line_errors(lake_with_snapshot: tuple[Path, ObjectStore], tmp_path: Path) -> None:
    """The shapes the in-process runs check, on a real stderr: one line, exit 1, within the timeout."""
    root, _ = lake_with_snapshot
    url = f"file://{root}"
    bad_utf8 = write(tmp_path / "latin1.toml", b'[log]\nlevel = "d\xe9bug"\n')
    huge = write(tmp_path / "huge.toml", toml_doc({"cache": {"size": "9" * 400 + "GiB"}}))
    two_lines = write(tmp_path / "nl.toml", toml_doc({"a\nb": {"c": 1}}))
    rules = write(tmp_path / "rules.toml", "rule = 5\n")
    listing = write(tmp_path / "list.txt", b"/mnt/\xff\n")
    cases: list[tuple[list[str | bytes], str]] = [
        (["snapshot", "list", url, "--config", str(bad_utf8)], "is not UTF-8"),
        (["snapshot", "list", url, "--config", str(huge)], "[cache] size"),
        (["snapshot", "list", url, "--config", str(two_lines)], "unknown section"),
        (["snapshot", "list", url, "--config", "/dev/zero"], "/dev/zero"),
        (["snapshot", "show", url, "toy", os.fsencode("v\udcff")], "not valid UTF-8"),
        (["lifecycle", "plan", url, "--rules", str(rules)], "rule"),
        (["warm", "--list", str(listing)], "list.txt"),
    ]
    for args, needle in cases:
        assert_one_line_error(tierfs_bytes_arg(*args), needle)


def test_cli_corrupt_manifest_is_one_line(lake_with_snapshot: tuple[Path, ObjectStore]) -> None:
    """A ManifestError is no UserError: the CLI said 'internal error' for a corrupt snapshot."""
    root, _ = lake_with_snapshot
    meta = root / snapshot_dir("toy", "v1") / "meta.json"
    meta.write_bytes(meta.read_bytes()[:-40])
    for cmd in ("show", "delete"):
        assert_one_line_error(run_tierfs("snapshot", cmd, f"file://{root}", "toy", "v1", timeout=60), "toy@v1")
    assert_one_line_error(run_tierfs("gc", f"file://{root}", timeout=60), "gc stopped, nothing removed")
    assert meta.exists()


def test_cli_name_not_utf8_creates_nothing(lake_with_snapshot: tuple[Path, ObjectStore]) -> None:
    root, _ = lake_with_snapshot
    before = sorted(p.name for p in (root / snapshot_dir("toy", "v1")).parent.iterdir())
    res = tierfs_bytes_arg("snapshot", "create", f"file://{root}", "datasets/toy", b"v\xff")
    assert_one_line_error(res, "not valid UTF-8")
    assert sorted(p.name for p in (root / snapshot_dir("toy", "v1")).parent.iterdir()) == before


@pytest.mark.mount
def test_odd_arguments_on_a_mount(lake: Path, tmp_path: Path) -> None:
    """Warm lists of odd lines and odd --watch intervals on a real mount: one line or done; the mount keeps serving.

    (--watch nan or inf passed click's FloatRange, and time.sleep() raised: 'internal error'.)
    """
    lists = {
        "not-utf8": b"datasets/toy/train/cat/0001.jpg\n/\xff\xfe\n",
        "odd": "\n".join(["datasets/toy/train/dog/0001.jpg", "../../etc/passwd", "/" * 50, "x" * 5000, "a\tb",
                          "datasets/toy/odd names/a b #1 %2 ?3 +4 é.txt", "datasets", ""]).encode(),
    }
    with mounted(f"file://{lake}", tmp_path / "mnt", tmp_path / "cache") as m:
        for name, content in lists.items():
            listing = write(tmp_path / f"{name}.txt", content.replace(b"/mnt/", f"{m.mountpoint}/".encode()))
            res = run_tierfs("warm", str(m.mountpoint), "--list", str(listing), timeout=60)
            if res.returncode != 0:
                assert_one_line_error(res)
            else:
                assert "warmed" in res.stdout
            assert (m.mountpoint / "datasets/toy/train/cat/0001.jpg").read_bytes() == b"c" * 1000
        for watch in ("nan", "inf"):
            res = run_tierfs("stats", str(m.mountpoint), "--watch", watch, timeout=30)
            assert res.returncode == 2 and "Error: " in res.stderr and "Traceback" not in res.stderr, res.stderr
        assert run_tierfs("stats", str(m.mountpoint), timeout=30).returncode == 0
    assert (lake / "datasets/toy/train/dog/0001.jpg").read_bytes() == b"d" * 2000


@pytest.mark.mount
def test_snapshot_of_names_not_utf8_reads_on_a_mount(tmp_path: Path) -> None:
    """A local lake's file whose name is not UTF-8: tierfs snapshot create crashed writing its manifest entry."""
    lake = tmp_path / "lake"
    write_tree(lake, {"datasets/toy/ok.txt": b"ok"})
    odd = os.fsencode(lake / "datasets/toy") + b"/caf\xe9-\xff.bin"
    with open(odd, "wb") as fh:
        fh.write(b"latin-1 named")
    res = run_tierfs("snapshot", "create", f"file://{lake}", "datasets/toy", "v1", timeout=60)
    assert res.returncode == 0, res.stderr
    with mounted(f"file://{lake}", tmp_path / "mnt", tmp_path / "cache") as m:
        snap = os.fsencode(m.mountpoint / ".snapshots/toy/v1")
        assert sorted(os.listdir(snap)) == [b"caf\xe9-\xff.bin", b"ok.txt"]
        with open(snap + b"/caf\xe9-\xff.bin", "rb") as fh:
            assert fh.read() == b"latin-1 named"


def test_parse_size_is_exact_for_whole_numbers() -> None:
    """float() rounded a size of more than 15 digits; whole numbers are now counted exactly."""
    assert parse_size("123456789012345678") == 123456789012345678
    assert parse_size("1.5 KiB") == 1536

