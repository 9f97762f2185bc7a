from __future__ import annotations

from tierfs.data.readahead import ReadAhead

BS = 100


def test_window_grows_while_sequential_and_resets_on_seek() -> None:
    ra = ReadAhead(BS, max_blocks=4, forward=200, backward=100)
    size = 10_000
    assert list(ra.advise(0, 50, size)) == [1]  # first read counts as sequential from 0
    assert list(ra.advise(50, 50, size)) == [2]  # window 2: blocks 1-2 ahead, 1 already asked for
    assert list(ra.advise(100, 100, size)) == [3, 4, 5]  # window 4: blocks 2-5
    assert list(ra.advise(200, 100, size)) == [6]  # window 4 (the maximum): blocks 3-6
    assert list(ra.advise(5000, 10, size)) == []  # a seek: no read-ahead
    assert list(ra.advise(5010, 10, size)) == [51]
    assert list(ra.advise(5020, 10, size)) == [52]


def test_stops_at_end_of_object() -> None:
    ra = ReadAhead(BS, max_blocks=8, forward=200, backward=100)
    assert list(ra.advise(0, 100, 250)) == [1]
    assert list(ra.advise(100, 100, 250)) == [2]
    assert list(ra.advise(200, 50, 250)) == []


def test_reads_that_arrive_out_of_order_or_skip_a_little_keep_the_window() -> None:
    """The kernel's read-ahead sends several reads at once; small skips forward or back are still sequential."""
    ra = ReadAhead(BS, max_blocks=8, forward=1000, backward=250)
    size = 100_000
    for off in (0, 100, 300, 200, 400, 500):  # 300 overtook 200
        ra.advise(off, 100, size)
    assert ra.window == 8 and ra.peak == 8
    ra.advise(1200, 100, size)  # skipped a header of 600 bytes: still sequential
    assert ra.window == 8
    ra.advise(1100, 50, size)  # 200 bytes back: a read that two others overtook
    assert ra.window == 8
    assert list(ra.advise(50_000, 100, size)) == [] and ra.window == 0  # a real seek
    assert ra.peak == 8  # the largest window reached is kept for the stats


def test_says_whether_the_last_read_was_sequential() -> None:
    ra = ReadAhead(BS, max_blocks=4, forward=200, backward=100)
    ra.advise(0, 50, 10_000)
    assert ra.sequential
    ra.advise(5000, 10, 10_000)
    assert not ra.sequential  # a seek: the block reader reads it by range
    ra.advise(5010, 10, 10_000)
    assert ra.sequential
