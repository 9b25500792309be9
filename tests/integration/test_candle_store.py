"""store_minutes: idempotent upserts of crawled minutes on both backends."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import select

from stockex.candles import store_minutes
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
