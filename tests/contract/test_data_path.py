"""The data path does not ride fsspec's one IO thread: on every backend, reads answer while it is busy.

S3, GCS and Azure read through obstore (``tierfs/store/obstore_data.py``);
S3 and Azure also list, stat and put through it. GCS keeps those on gcsfs
and a versioned S3 lake lists through s3fs (their modules say why), so for
them only the reads are checked. The servers and the second writer are the
contract's (``test_backend_contract.lake``).
"""

from __future__ import annotations

from helpers import fsspec_loop_stopped, random_bytes
from test_backend_contract import Lake, lake

__all__ = ["lake"]  # the fixture, shared with the contract


def test_reads_do_not_wait_for_fsspecs_io_thread(lake: Lake) -> None:
    store = lake.store
    data = random_bytes(300_000, seed=1)
    lake.upstream("d/x.bin", data)
    ref = store.stat("d/x.bin").ref
    assert ref is not None
    with fsspec_loop_stopped():
        assert store.read_range(ref, 1000, 200_000) == data[1000:200_000]
        assert store.read_all("d/x.bin") == data
        if store.provider == "gcs" or lake.versioned:
            return
        put = store.put_bytes("d/y.bin", b"y" * 5000)
        assert put.ref is not None
        assert store.stat("d/y.bin").ref == put.ref
        names = {e.name: e for e in store.list_dir("d")}
        assert set(names) == {"x.bin", "y.bin"} and names["y.bin"].ref == put.ref
        assert store.read_range(put.ref, 0, 5000) == b"y" * 5000
