"""GCS's and Azure's obstore clients against their emulators: credentials, names and folders as fsspec had them.

Where a test stops fsspec's IO thread (``helpers.fsspec_loop_stopped``), what
answers meanwhile went through obstore. The contract (``tests/contract/``)
checks the data path itself on every backend.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from helpers import AZURITE_ACCOUNT, AZURITE_KEY, Azurite, FakeGcs, fsspec_loop_stopped, random_bytes

from tierfs.config import load
from tierfs.store.objects import ObjectStore
from tierfs.store.upload import Uploader

pytestmark = [pytest.mark.servers]
MiB = 1 << 20


def _open(url: str, config: Path) -> ObjectStore:
    store = ObjectStore.open(load(config, {"lake_url": url}))
    store.check()  # as the mount does: the obstore client is made here, after any fork
    return store


def test_gcs_token_credentials_reach_obstore(gcs: FakeGcs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials gcsfs holds (here a static access token) are what obstore's requests carry, refreshed by gcsfs."""
    import gcsfs
    import gcsfs.credentials
    from google.oauth2.credentials import Credentials

    monkeypatch.setattr(gcsfs.credentials, "tfile", str(tmp_path / "gcs_tokens"))  # gcsfs caches tokens there
    fs = gcs.fs()
    fs.mkdir("obs-token")
    fs.pipe("obs-token/a.bin", b"a" * 3000)
    token = Credentials("ya29.test-token", expiry=dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(hours=1))
    authed = gcsfs.GCSFileSystem(endpoint_url=gcs.endpoint, token=token, skip_instance_cache=True)
    store = ObjectStore(authed, "obs-token", "gs://obs-token", retries=1)
    store.check()
    ref = store.stat("a.bin").ref
    assert ref is not None and ref.version
    with fsspec_loop_stopped():
        assert store.read_range(ref, 10, 20) == b"a" * 10


def test_azure_sas_connection_string(azure: Azurite, tmp_path: Path) -> None:
    """A shared access signature (here in the connection string) is what obstore signs with, not the account key."""
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    fs = azure.fs()
    fs.mkdir("obs-sas")
    fs.pipe("obs-sas/a.bin", b"a" * 3000)
    sas = generate_container_sas(AZURITE_ACCOUNT, "obs-sas", account_key=AZURITE_KEY,
                                 permission=ContainerSasPermissions(read=True, list=True, write=True),
                                 expiry=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    cfg = tmp_path / "az.toml"
    cfg.write_text(f'[store]\noptions = {{ connection_string = "BlobEndpoint=http://127.0.0.1:{azure.port}/'
                   f'{AZURITE_ACCOUNT};SharedAccessSignature={sas}" }}\n')
    store = ObjectStore.open(load(cfg, {"lake_url": "az://obs-sas"}))
    ref = store.stat("a.bin").ref
    assert ref is not None
    with fsspec_loop_stopped():
        assert store.read_range(ref, 10, 20) == b"a" * 10
        assert store.put_bytes("b.bin", b"b").ref is not None


def test_a_gcs_key_obstore_cannot_name_is_read_through_gcsfs(gcs: FakeGcs, tmp_path: Path) -> None:
    """obstore refuses keys with control characters (GCS allows a tab): such a key is read the fsspec way."""
    fs = gcs.fs()
    fs.mkdir("obs-names")
    fs.pipe("obs-names/tab\there.bin", b"t" * 100)
    store = _open("gs://obs-names", gcs.config(tmp_path / "gcs.toml"))
    (entry,) = store.list_dir("")
    assert entry.name == "tab\there.bin" and entry.ref is not None
    assert store.read_range(entry.ref, 0, 100) == b"t" * 100
    assert store.read_all("tab\there.bin") == b"t" * 100


def test_azure_folder_blobs_are_directories(azure: Azurite, tmp_path: Path) -> None:
    """Blobs flagged as folders (ADLS Gen2, adlfs, Azure tools) list and stat as directories, not empty files."""
    from azure.storage.blob import BlobServiceClient

    fs = azure.fs()
    fs.mkdir("obs-folders")
    with BlobServiceClient.from_connection_string(azure.connection_string) as client:
        container = client.get_container_client("obs-folders")
        for name in ("full", "empty", "full/inner"):
            container.upload_blob(name, b"", metadata={"hdi_isfolder": "true"})
        container.upload_blob("full/a.bin", b"a")
        container.upload_blob("full/inner/b.bin", b"b")
        container.upload_blob("zero.bin", b"")  # an empty file is a file
    store = _open("az://obs-folders", azure.config(tmp_path / "az.toml"))
    with fsspec_loop_stopped():
        full = {e.name: e.is_dir for e in store.list_dir("full")}  # a folder blob beside its own prefix
        assert full == {"a.bin": False, "inner": True}
    top = {e.name: e.is_dir for e in store.list_dir("")}
    assert top == {"full": True, "empty": True, "zero.bin": False}
    assert store.stat("empty").is_dir and store.stat("full").is_dir and not store.stat("zero.bin").is_dir
    assert store.list_dir("empty") == []


def test_an_azure_upload_in_blocks_answers_its_identity(azure: Azurite, tmp_path: Path) -> None:
    """Above one block, an upload goes up as blocks committed at the end; the entry is the blob the lake holds."""
    azure.fs().mkdir("obs-blocks")
    store = _open("az://obs-blocks", azure.config(tmp_path / "az.toml"))
    big = tmp_path / "big.bin"
    data = random_bytes(40 * MiB + 5, seed=3)
    big.write_bytes(data)
    entry = Uploader(store).upload(big, "ckpt/big.bin")
    stat = store.stat("ckpt/big.bin")
    assert entry.ref is not None and stat.ref is not None
    assert (entry.ref.etag, entry.ref.size) == (stat.ref.etag, stat.ref.size) and stat.ref.size == len(data)
    assert store.read_range(entry.ref, 16 * MiB - 10, 16 * MiB + 10) == data[16 * MiB - 10:16 * MiB + 10]
    assert store.read_all("ckpt/big.bin") == data
    from azure.storage.blob import BlobServiceClient

    with BlobServiceClient.from_connection_string(azure.connection_string) as client:
        committed, _ = client.get_blob_client("obs-blocks", "ckpt/big.bin").get_block_list("committed")
    assert len(committed) == 3  # 16 + 16 + 8 MiB
