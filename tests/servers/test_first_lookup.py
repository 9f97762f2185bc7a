"""A first lookup in a folder asks for a small file's bytes with its stat: one GET, not a HEAD and a GET.

On SeaweedFS through a loopback proxy that records every request line, on a
real mount: the time to a cold file's first byte was a HEAD (the lookup), then
a GET (the open), each a round trip to the store.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from faultproxy import FaultProxy
from helpers import SeaweedS3, mounted, random_bytes

pytestmark = [pytest.mark.servers, pytest.mark.mount]


def _requests_for(lines: list[str], key: str) -> list[str]:
    """``METHOD`` of each request line naming ``key`` exactly (no listing, no other key)."""
    return [ln.split(" ", 1)[0] for ln in lines if ln.split(" ")[1].split("?")[0].endswith("/" + key)]


@pytest.mark.parametrize("lookup_bytes", ["256KiB", "0"])
def test_a_cold_small_file_costs_one_request(s3_server: SeaweedS3, tmp_path: Path, lookup_bytes: str) -> None:
    bucket = f"first-lookup-{lookup_bytes.lower()}"
    fs = s3_server.fs()
    fs.mkdir(bucket)
    small, large = random_bytes(100_000, seed=11), random_bytes(600_000, seed=12)
    fs.pipe(f"{bucket}/a/small.bin", small)
    fs.pipe(f"{bucket}/a/second.bin", small[::-1])
    fs.pipe(f"{bucket}/a/third.bin", small[:5000])
    fs.pipe(f"{bucket}/b/large.bin", large)
    fs.pipe(f"{bucket}/c/empty.bin", b"")
    fs.pipe(f"{bucket}/d/sub/x.bin", b"x")
    with FaultProxy("127.0.0.1", s3_server.s3_port, seed=2) as proxy:
        cfg = s3_server.s3_config(tmp_path / "proxied.toml", endpoint=proxy.endpoint)
        cfg.write_text(cfg.read_text() + f'[metadata]\nlookup_bytes = "{lookup_bytes}"\n')
        with mounted(f"s3://{bucket}", tmp_path / "mnt", tmp_path / "cache", "--read-only", config=cfg) as m:
            mnt = m.mountpoint
            assert (mnt / "a/small.bin").read_bytes() == small
            assert (mnt / "b/large.bin").read_bytes() == large
            assert (mnt / "c/empty.bin").read_bytes() == b""
            assert os.stat(mnt / "c/empty.bin").st_size == 0
            assert os.path.isdir(mnt / "d/sub") and (mnt / "d/sub/x.bin").read_bytes() == b"x"
            # The second name in the folder starts its listing and does not wait for it: its own GET
            # answers it (and brings its bytes); the third comes from the listing, and its open GETs it.
            assert (mnt / "a/second.bin").read_bytes() == small[::-1]
            assert (mnt / "a/third.bin").read_bytes() == small[:5000]
            lines = proxy.request_lines()
            if lookup_bytes != "0":
                assert _requests_for(lines, "a/second.bin") == ["GET"]
                assert _requests_for(lines, "a/third.bin") == ["GET"]
                assert [ln for ln in lines if "list-type=2" in ln and "prefix=a%2F" in ln and "delimiter" in ln]
            small_reqs = _requests_for(lines, "a/small.bin")
            if lookup_bytes == "0":
                assert small_reqs == ["HEAD", "GET"], small_reqs
            else:
                assert small_reqs == ["GET"], small_reqs  # the lookup's GET brought the bytes the read needed
                # Larger than the limit: the lookup's first bytes are not a block, the read fetches it.
                assert _requests_for(lines, "b/large.bin") == ["GET", "GET"]
                # An empty object refuses a range: a HEAD says what it is.
                assert _requests_for(lines, "c/empty.bin") == ["GET", "HEAD"]
            # And the bytes the lookup brought are the cache's: the next open after a drop of the
            # kernel's pages reads them from the tiers, not the store.
            m.fills_settled()
            before = len(proxy.request_lines())
            fd = os.open(mnt / "a/small.bin", os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
            assert (mnt / "a/small.bin").read_bytes() == small
            assert _requests_for(proxy.request_lines()[before:], "a/small.bin") == []
