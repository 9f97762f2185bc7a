"""delete_if and directory markers, on every backend: a local lake, memory, and each real server.

The servers and the second writer are the contract's (``test_backend_contract.lake``).
"""

from __future__ import annotations

import pytest
from test_backend_contract import Lake, lake

from tierfs.errors import NotFound

__all__ = ["lake"]  # the fixture, shared with the contract


def test_delete_if_deletes_only_the_version_it_names(lake: Lake) -> None:
    """An object rewritten after it was evaluated is not deleted; the one evaluated is, once."""
    store = lake.store
    evaluated = store.put_bytes("e/x.bin", b"the bytes a rule looked at")
    assert evaluated.ref is not None
    lake.upstream("e/x.bin", b"rewritten by another writer since")
    assert store.delete_if("e/x.bin", evaluated.ref) is False
    assert store.read_all("e/x.bin") == b"rewritten by another writer since"
    now = store.stat("e/x.bin").ref
    assert now is not None
    assert store.delete_if("e/x.bin", now) is True
    assert not store.exists("e/x.bin")
    assert store.delete_if("e/x.bin", now) is False  # gone already: nothing deleted
    with pytest.raises(NotFound):
        store.stat("e/x.bin")


def test_remove_dir_takes_a_directory_marker_with_it(lake: Lake) -> None:
    """A ``dir/`` marker left by another tool (a console, SeaweedFS' own) goes with the directory's rmdir."""
    store = lake.store
    if store.provider in ("local", "memory"):
        pytest.skip("real directories, no markers")
    lake.upstream("d/", b"")
    assert store.stat("d").is_dir
    assert store.list_dir("d") == []  # an empty directory, not a missing one
    store.remove_dir("d")
    with pytest.raises(NotFound):
        store.stat("d")
    store.remove_dir("d")  # no marker: nothing to do
