from __future__ import annotations

from typing import Any

import pytest

from tierfs.config import load
from tierfs.errors import BadKey, NotFound, StoreError, UserError
from tierfs.store.objects import ObjectStore
from tierfs.store.retry import is_credentials_error, is_temp_failure


def test_list_and_stat(flaky: Any) -> None:
    f, store, fs = flaky
    fs.pipe(f"{store.root}/d/a b#%?+é.txt", b"12345")
    fs.pipe(f"{store.root}/top.bin", b"x")
    names = {e.name: e for e in store.list_dir("")}
    assert names["d"].is_dir and not names["top.bin"].is_dir
    [e] = store.list_dir("d")
    assert e.name == "a b#%?+é.txt" and e.size == 5 and e.ref is not None and e.ref.key == "d/a b#%?+é.txt"
    assert store.stat("d/a b#%?+é.txt").ref == e.ref
    assert store.read_range(e.ref, 1, 4) == b"234"
    with pytest.raises(NotFound):
        store.stat("nope")


def test_temporary_failures_are_retried_and_counted(flaky: Any) -> None:
    f, store, fs = flaky
    fs.pipe(f"{store.root}/x", b"abc")
    ref = store.stat("x").ref
    f.failures["cat_file"] = 2
    assert store.read_range(ref, 0, 3) == b"abc"
    s = store.stats.snapshot()
    assert s["retries"] == 2 and s["errors"] == 0


def test_exhausted_retries_raise_store_error(flaky: Any) -> None:
    f, store, fs = flaky
    fs.pipe(f"{store.root}/x", b"abc")
    ref = store.stat("x").ref
    f.failures["cat_file"] = 10
    with pytest.raises(StoreError, match="injected"):
        store.read_range(ref, 0, 3)
    assert store.stats.get("errors") == 1
    f.failures["cat_file"] = 0
    assert store.read_range(ref, 0, 3) == b"abc"  # the next read works once the backend does


def test_changed_object_is_not_served_under_old_ref(flaky: Any) -> None:
    f, store, fs = flaky
    fs.pipe(f"{store.root}/x", b"abcdef")
    ref = store.stat("x").ref
    fs.pipe(f"{store.root}/x", b"ab")
    with pytest.raises(StoreError, match="changed upstream"):
        store.read_range(ref, 0, 6)


def test_etag_stand_in_changes_with_content(flaky: Any) -> None:
    f, store, fs = flaky
    fs.pipe(f"{store.root}/x", b"abc")
    a = store.stat("x").ref
    fs.pipe(f"{store.root}/x", b"abcd")
    assert store.stat("x").ref != a


def test_is_temp_failure() -> None:
    assert is_temp_failure(ConnectionError()) and is_temp_failure(TimeoutError()) and is_temp_failure(OSError(5, "x"))
    assert not is_temp_failure(FileNotFoundError()) and not is_temp_failure(PermissionError())


def test_azure_errors_by_code_and_status() -> None:
    from azure.core.exceptions import HttpResponseError, ServiceRequestError

    def azure_error(status: int, code: str) -> HttpResponseError:
        exc = HttpResponseError(message=code)
        exc.status_code, exc.error_code = status, code
        return exc

    assert is_temp_failure(azure_error(503, "ServerBusy")) and is_temp_failure(azure_error(429, "TooManyRequests"))
    assert is_temp_failure(ServiceRequestError("connection refused"))
    assert not is_temp_failure(azure_error(409, "BlobArchived"))
    assert not is_temp_failure(azure_error(400, "OutOfRangeInput"))
    assert is_credentials_error(azure_error(403, "AuthenticationFailed"))


@pytest.mark.parametrize(("url", "message"), [
    ("foo://bucket", "Protocol not known: foo"),
    ("", "no lake URL given"),
    ("ml-lake/datasets", r"not a lake URL: give a scheme, e\.g\. s3://BUCKET/PREFIX"),
    ("http://127.0.0.1:8333/ml-lake/datasets",
     r"web address.*s3://ml-lake/datasets and the server as \[s3\] endpoint_url = \"http://127\.0\.0\.1:8333\""),
])
def test_open_bad_urls(url: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        ObjectStore.open(load(None, {"lake_url": url}))


def test_check_missing_local_lake(tmp_path: Any) -> None:
    store = ObjectStore.open(load(None, {"lake_url": f"file://{tmp_path}/nope"}))
    with pytest.raises(UserError, match="does not exist"):
        store.check()


def test_check_lake_that_is_a_file(tmp_path: Any) -> None:
    (tmp_path / "f").write_text("x")
    store = ObjectStore.open(load(None, {"lake_url": f"file://{tmp_path}/f"}))
    with pytest.raises(UserError, match="is a file"):
        store.check()


@pytest.mark.parametrize("key", ["../outside", "/etc/passwd", "a/../../b", "a//b", "./a", "a/.", "a\0b"])
def test_one_key_check_at_the_store_boundary(tmp_path: Any, key: str) -> None:
    """No key with a leading '/', an empty, '.' or '..' name, or a NUL reaches a backend (a local lake's files)."""
    (tmp_path / "lake").mkdir()
    (tmp_path / "secret").write_text("outside the lake")
    store = ObjectStore.open(load(None, {"lake_url": f"file://{tmp_path / 'lake'}", "store_retries": "0"}))
    for op in (lambda: store.read_all(key), lambda: store.stat(key), lambda: store.put_bytes(key, b"x"),
               lambda: store.delete(key), lambda: store.list_dir(key)):
        with pytest.raises(BadKey, match="is not a key of the lake"):
            op()
    assert (tmp_path / "secret").read_text() == "outside the lake" and sorted(p.name for p in tmp_path.iterdir()) == [
        "lake", "secret"]


def test_names_a_key_check_refuses_are_left_out_of_listings(tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """An object store lists what another tool wrote, 'a/../b' or 'a//b' included: those names are left out."""
    from tierfs.store.objects import Entry

    (tmp_path / "lake").mkdir()
    store = ObjectStore.open(load(None, {"lake_url": f"file://{tmp_path / 'lake'}"}))
    listed = [Entry("ok.txt", False, 1, 0), Entry("..", True), Entry("", True), Entry(".", True), Entry("x/y", False)]
    monkeypatch.setattr(store.backend, "list_dir", lambda rel: listed)
    assert [e.name for e in store.list_dir("a")] == ["ok.txt"]
    assert "left out of the listing" in caplog.text


@pytest.mark.parametrize("url", ["http://127.0.0.1:8333/bench-lake?versioning",
                                 "https://my-bucket.s3.eu-west-1.amazonaws.com/?versioning",
                                 "https://s3.us-east-1.amazonaws.com/dotted.bucket.name?versioning"])
@pytest.mark.parametrize("token", [None, "session-token/with+odd=chars"])
def test_the_versioning_query_is_signed_as_botocore_signs_it(url: str, token: str | None) -> None:
    """tierfs signs its one GET itself (botocore's imports were on the first listing's path); byte for byte the
    headers botocore's S3 signer makes, at the same instant."""
    import datetime as dt
    from unittest import mock

    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from tierfs.store.s3_versioning import sigv4_headers

    now = dt.datetime(2026, 12, 3, 16, 45, 7, tzinfo=dt.UTC)
    theirs = AWSRequest(method="GET", url=url)
    with mock.patch("botocore.auth.get_current_datetime", return_value=now.replace(tzinfo=None)):
        S3SigV4Auth(Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token), "s3",
                    "eu-west-1").add_auth(theirs)
    ours = sigv4_headers(url, "eu-west-1", "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token, now=now)
    assert {k.lower(): v for k, v in ours.items()} == {k.lower(): str(v) for k, v in theirs.headers.items()}
