"""store_minutes: idempotent upserts of crawled minutes on both backends."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import select

from stockex.candles import (
    SeriesTimezoneChanged,
    plan_minutes,
    rebuild_rollups,
    series_timezone,
    store_minutes,
    write_plan,
)
from stockex.models import Candle
from stockex.tiki import Kline


def k(ts: int, close: str = "25000", volume: str = "1.5") -> Kline:
    c = Decimal(close)
    return Kline(ts=ts, open=c, high=c + 10, low=c - 10, close=c, volume=Decimal(volume))


def stored(db) -> dict[int, tuple[Decimal, Decimal]]:  # type: ignore[no-untyped-def]
    with db.read() as s:
        return {r.time: (r.close, r.volume) for r in s.scalars(select(Candle))}


def test_insert_then_noop_then_update(database) -> None:  # type: ignore[no-untyped-def]
    rows = [k(60 * i) for i in range(1, 6)]
    first = database.transaction(lambda s: store_minutes(s, "asaxu", rows))
    assert (first.inserted, first.updated) == (5, 0)
    again = database.transaction(lambda s: store_minutes(s, "asaxu", rows))
    assert (again.inserted, again.updated, again.first_changed) == (0, 0, None)
    changed = [k(180, close="25100"), k(360)]
    third = database.transaction(lambda s: store_minutes(s, "asaxu", changed))
    assert (third.inserted, third.updated) == (1, 1)
    assert (third.first_changed, third.last_changed) == (180, 360)
    data = stored(database)
    assert len(data) == 6
    assert data[180] == (Decimal("25100"), Decimal("1.5"))


def test_a_plan_made_before_the_pending_one_committed_counts_its_rows(database) -> None:  # type: ignore[no-untyped-def]
    """plan_minutes(pending=...) takes the pending plan's rows as stored: a minute it holds
    counts as an update, not an insert, and the buckets come out whole."""
    tz = database.transaction(lambda s: series_timezone(s, "asaxu", "UTC"))
    with database.read() as s:
        first = plan_minutes(s, "asaxu", [k(60 * i) for i in range(1, 4)], rollup_timezone=tz)
        second = plan_minutes(s, "asaxu", [k(180, close="25100"), k(240)], rollup_timezone=tz,
                              pending=first)
    assert (second.inserted, second.updated) == (1, 1)
    five = {(p, t): v for p, t, v in second.rollups if p == 5}
    # the five-minute bucket at 0 holds minutes 60..240: three from `first`, one updated
    assert five[(5, 0)][0] == Decimal("25000") and five[(5, 0)][3] == Decimal("25000")
    assert five[(5, 0)][4] == Decimal("6.0")  # 4 minutes x 1.5
    database.transaction(lambda s: write_plan(s, first))
    database.transaction(lambda s: write_plan(s, second))
    assert stored(database)[180] == (Decimal("25100"), Decimal("1.5"))


def test_a_plan_is_not_written_after_the_rollup_timezone_changed(database) -> None:  # type: ignore[no-untyped-def]
    database.transaction(lambda s: store_minutes(s, "asaxu", [k(60)], timezone="UTC"))
    with database.read() as s:
        plan = plan_minutes(s, "asaxu", [k(120)], rollup_timezone="UTC")
    database.transaction(lambda s: rebuild_rollups(s, "asaxu", "Asia/Ho_Chi_Minh"))
    with pytest.raises(SeriesTimezoneChanged, match="Asia/Ho_Chi_Minh"):
        database.transaction(lambda s: write_plan(s, plan))
    assert sorted(stored(database)) == [60]  # nothing of the plan was written
