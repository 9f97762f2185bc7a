from __future__ import annotations

from tierfs.refs import ObjectRef, block_span, blocks_for_range


def test_block_keys_follow_content_identity() -> None:
    a = ObjectRef("k", 10, etag="e1")
    assert a.block_key(0, 4096) == ObjectRef("k", 10, etag="e1").block_key(0, 4096)
    assert a.block_key(0, 4096) != ObjectRef("k", 10, etag="e2").block_key(0, 4096)  # changed upstream
    assert a.block_key(0, 4096) != ObjectRef("k", 11, etag="e1").block_key(0, 4096)
    assert a.block_key(0, 4096) != ObjectRef("other", 10, etag="e1").block_key(0, 4096)
    assert a.block_key(0, 4096) != a.block_key(1, 4096)
    assert a.block_key(0, 4096) != a.block_key(0, 8192)


def test_version_id_wins_over_etag() -> None:
    assert ObjectRef("k", 1, etag="x", version="v1").block_key(0, 4096) == ObjectRef("k", 1, etag="y", version="v1").block_key(0, 4096)


def test_content_hash_shares_blocks_across_keys() -> None:
    assert ObjectRef("a", 1, content_hash="h").block_key(0, 4096) == ObjectRef("b", 1, content_hash="h").block_key(0, 4096)


def test_block_math() -> None:
    assert list(blocks_for_range(0, 10, 4, 10)) == [0, 1, 2]
    assert list(blocks_for_range(3, 2, 4, 10)) == [0, 1]
    assert list(blocks_for_range(8, 100, 4, 10)) == [2]
    assert list(blocks_for_range(10, 5, 4, 10)) == []
    assert list(blocks_for_range(0, 5, 4, 0)) == []
    assert block_span(2, 4, 10) == (8, 10)
