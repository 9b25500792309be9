"""The second ranges stockex.candles reads: interval subtraction."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stockex.candles import _subtract


def merged(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(intervals):
        if hi <= lo:
            continue
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def points(intervals: list[tuple[int, int]]) -> set[int]:
    return {x for lo, hi in intervals for x in range(lo, hi)}


intervals = st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60)), max_size=6).map(merged)


@given(intervals, intervals)
def test_subtract_keeps_exactly_the_points_outside_the_holes(ranges, holes) -> None:  # type: ignore[no-untyped-def]
    result = _subtract(ranges, holes)
    assert points(result) == points(ranges) - points(holes)
    assert all(lo < hi for lo, hi in result)
    assert result == sorted(result)


def test_subtract_examples() -> None:
    assert _subtract([(0, 100)], [(10, 20), (30, 40)]) == [(0, 10), (20, 30), (40, 100)]
    assert _subtract([(0, 10), (20, 30)], [(0, 30)]) == []
    assert _subtract([(0, 10)], []) == [(0, 10)]
