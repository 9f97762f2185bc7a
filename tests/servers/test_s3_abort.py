"""A closed file whose multipart upload failed midway, unlinked, then the daemon killed: it stays gone.

The unlink aborts the unfinished upload in the store (a network call, made
off the loop) and takes the file out of the staging journal before it
returns, so a kill -9 right after it never brings the file back.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from helpers import Mount, SeaweedS3, random_bytes, wait_for

pytestmark = [pytest.mark.servers, pytest.mark.mount]
MiB = 1 << 20


def _parts_saved(staging: Path) -> int:
    for p in staging.glob("*.upload.json"):
        try:
            return len(json.loads(p.read_text())["parts"])
        except (OSError, ValueError, KeyError):
            return 0
    return 0


def test_unlink_of_a_half_uploaded_file_then_kill9(tmp_path: Path) -> None:
    server = SeaweedS3(tmp_path / "weed").start()
    m: Mount | None = None
    try:
        fs = server.fs()
        fs.mkdir("abort-lake")
        fs.pipe("abort-lake/keep.txt", b"k")
        cfg = server.s3_config(tmp_path / "s3.toml")
        cfg.write_text(cfg.read_text() + '[write]\npart_size = "5MiB"\nupload_concurrency = 1\n')
        cache = tmp_path / "cache"
        staging = cache / "staging"
        m = Mount("s3://abort-lake", tmp_path / "mnt", cache, config=cfg).start()
        mnt = m.mountpoint
        assert "keep.txt" in os.listdir(mnt)
        errors: list[OSError] = []
        w = os.open(mnt / "ckpt.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        # A second handle on the staged file, open through the outage: the
        # retry loop leaves a file alone while it is open.
        reader = os.open(mnt / "ckpt.bin", os.O_RDONLY)

        def write() -> None:
            try:
                os.write(w, random_bytes(60 * MiB, seed=5))
            finally:
                try:
                    os.close(w)  # the upload, failing midway
                except OSError as exc:
                    errors.append(exc)

        writer = threading.Thread(target=write)
        writer.start()
        wait_for(lambda: _parts_saved(staging) >= 2, 120, "two parts of the upload to be acknowledged")
        port = server.s3_port
        server.stop()  # the upload fails midway: close is EIO, the multipart upload stays open
        writer.join(180)
        assert errors, "close succeeded although the store went away during the upload"
        assert m.stats()["writes"]["pending_uploads"] == 1
        upload_id = next(json.loads(p.read_text())["upload_id"] for p in staging.glob("*.upload.json"))
        assert upload_id

        server.start(s3_port=port)

        def open_uploads() -> list[str]:
            uploads = fs.call_s3("list_multipart_uploads", Bucket="abort-lake").get("Uploads", [])
            return [u["UploadId"] for u in uploads if u["Key"] == "ckpt.bin"]

        assert open_uploads() == [upload_id]
        os.close(reader)
        os.unlink(mnt / "ckpt.bin")  # (before the retry loop's next round: it sleeps for seconds)
        assert open_uploads() == []  # aborted by the unlink: its parts are freed
        m.kill9()  # right after the unlink returned
        m = None
        assert not [p.name for p in staging.glob("*.json")]  # no record, no upload state
        assert not list(staging.glob("*.data"))

        m = Mount("s3://abort-lake", tmp_path / "mnt", cache, config=cfg).start()
        assert "uploading" not in m.output
        time.sleep(1)
        assert "ckpt.bin" not in os.listdir(m.mountpoint)
        assert not fs.exists("abort-lake/ckpt.bin")
        log = (cache / "tierfs.log").read_text()
        assert f"uploaded ckpt.bin: {60 * MiB} bytes" not in log  # gone by the abort, not by a retry and a delete
    finally:
        try:
            if m is not None:
                m.umount()
        finally:
            server.stop()
