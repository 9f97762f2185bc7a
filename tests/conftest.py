from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest

sys.path.insert(0, str(Path(__file__).parent))
# gcsfs probes GCS's hierarchical namespaces over gRPC unless told not to, at import
# time; the emulator does not speak it. Set before anything imports gcsfs.
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"

from helpers import Azurite, Emulator, FakeGcs, GcsRulesEmulator, MotoS3, RedisServer, SeaweedS3, write_tree


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    """A small file:// lake: class folders, a multi-block file, an empty file, odd names."""
    root = tmp_path / "lake"
    write_tree(root, {
        "datasets/toy/train/cat/0001.jpg": b"c" * 1000,
        "datasets/toy/train/dog/0001.jpg": b"d" * 2000,
        "datasets/toy/empty.bin": b"",
        "datasets/toy/odd names/a b #1 %2 ?3 +4 é.txt": b"odd\n",
    })
    return root


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


E = TypeVar("E", bound=Emulator)


def _running(server: E) -> Iterator[E]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def gcs(tmp_path: Path) -> Iterator[FakeGcs]:
    """fake-gcs-server on loopback, in memory."""
    yield from _running(FakeGcs(tmp_path / "gcs"))


@pytest.fixture
def gcs_rules(tmp_path: Path) -> Iterator[GcsRulesEmulator]:
    """gcp-storage-emulator on loopback, in memory (keeps bucket lifecycle rules)."""
    yield from _running(GcsRulesEmulator(tmp_path / "gcs-rules"))


@pytest.fixture
def azure(tmp_path: Path) -> Iterator[Azurite]:
    """Azurite's blob service on loopback, in memory."""
    yield from _running(Azurite(tmp_path / "azurite"))


@pytest.fixture
def moto(tmp_path: Path) -> Iterator[MotoS3]:
    """moto's S3 server on loopback (archive classes, RestoreObject)."""
    yield from _running(MotoS3(tmp_path / "moto"))
