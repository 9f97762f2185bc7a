from __future__ import annotations

from tierfs.data.readahead import ReadAhead

BS = 100


def test_window_grows_while_sequential_and_resets_on_seek() -> None:
    ra = ReadAhead(BS, max_blocks=4)
    size = 10_000
    assert list(ra.advise(0, 50, size)) == [1]  # first read counts as sequential from 0
    assert list(ra.advise(50, 50, size)) == [2]  # window 2: blocks 1-2 ahead, 1 already asked for
    assert list(ra.advise(100, 100, size)) == [3, 4, 5]  # window 4: blocks 2-5
    assert list(ra.advise(200, 100, size)) == [6]  # window 4 (the maximum): blocks 3-6
    assert list(ra.advise(5000, 10, size)) == []  # a seek: no read-ahead
    assert list(ra.advise(5010, 10, size)) == [51]
    assert list(ra.advise(5020, 10, size)) == [52]


def test_stops_at_end_of_object() -> None:
    ra = ReadAhead(BS, max_blocks=8)
    assert list(ra.advise(0, 100, 250)) == [1]
    assert list(ra.advise(100, 100, 250)) == [2]
    assert list(ra.advise(200, 50, 250)) == []
