"""db.upsert_rows: the bulk upsert under store_minutes, on MySQL (literal VALUES) and SQLite.

The MySQL path writes values as literals for speed, so these tests pin that it stores exactly
what the bound path would, refuses what Amount refuses (writing nothing), and quotes strings
(quotes, backslashes, percent signs) correctly.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.exc import StatementError

from stockex import db as db_module
from stockex.batch import WriteBatch
from stockex.db import AmountOutOfRange, Database, upsert_rows
from stockex.models import Candle, Market

UPDATES = ("open", "high", "low", "close", "volume", "updated_at")
COLUMNS = ("market_id", "time", *UPDATES)


def row(ts: int, price: Any = Decimal(25000), volume: Any = Decimal("1.5"),
        market: str = "asaxu") -> tuple[Any, ...]:
    return (market, ts, price, price, price, price, volume, 1)


def upsert(database: Database, rows: list[tuple[Any, ...]]) -> None:
    database.transaction(
        lambda s: upsert_rows(s, Candle.__table__, COLUMNS, rows, ("market_id", "time"), UPDATES)
    )


def stored(database: Database, market: str = "asaxu") -> dict[int, tuple[Decimal, Decimal]]:
    with database.read() as session:
        return {r.time: (r.close, r.volume) for r in session.scalars(
            select(Candle).where(Candle.market_id == market))}


def test_edge_amounts_round_trip_exactly(database: Database) -> None:
    values = {
        60: Decimal("0.000000000000000001"),
        120: Decimal("999999999999999999.999999999999999999"),
        180: Decimal("1E+5"),
        240: 7,  # an int, as the bind path accepts
        300: "12.50",  # a string, likewise
        360: Decimal("-0"),
        420: Decimal("25012.000000000000000000"),
        480: Decimal("1.5E+5"),  # exponent notation in str(): the checked slow path
        540: Decimal("1E-7"),
    }
    upsert(database, [row(ts, price=v, volume=v) for ts, v in values.items()])
    data = stored(database)
    for ts, value in values.items():
        assert data[ts] == (Decimal(value), Decimal(value)), ts


@pytest.mark.parametrize(
    "bad",
    [Decimal("0.0000000000000000001"), Decimal(10) ** 18, Decimal("-0.5"), -3, Decimal("NaN")],
    ids=["19-decimals", "too-large", "negative", "negative-int", "nan"],
)
def test_amounts_the_column_refuses_write_nothing(database: Database, bad: Any) -> None:
    with pytest.raises((AmountOutOfRange, StatementError)) as refused:
        upsert(database, [row(60), row(120, volume=bad)])
    cause = getattr(refused.value, "orig", refused.value)  # SQLite: wrapped by SQLAlchemy
    assert isinstance(cause, AmountOutOfRange)
    assert stored(database) == {}


def test_duplicates_overwrite_the_update_columns(database: Database) -> None:
    upsert(database, [row(60), row(120)])
    upsert(database, [row(120, price=Decimal("25001.5"), volume=Decimal(3)), row(180)])
    assert stored(database) == {
        60: (Decimal(25000), Decimal("1.5")),
        120: (Decimal("25001.5"), Decimal(3)),
        180: (Decimal(25000), Decimal("1.5")),
    }


def test_strings_are_quoted_by_the_driver(database: Database) -> None:
    odd = "o'k\\%s%"

    def add_market(session: Any) -> None:
        session.add(Market(id=odd, base="OK", quote="XU", price_precision=0,
                           amount_precision=3, min_amount=Decimal("0.001"),
                           maker_fee=Decimal(0), taker_fee=Decimal(0)))

    database.transaction(add_market)
    upsert(database, [row(60, market=odd), row(120, market=odd)])
    assert sorted(stored(database, odd)) == [60, 120]
    assert stored(database, "asaxu") == {}
    # the same statements in a WriteBatch (on MySQL sent unformatted, in one round trip)
    def batched(session: Any) -> None:
        batch = WriteBatch(session)
        upsert_rows(session, Candle.__table__, COLUMNS, [row(180, market=odd)],
                    ("market_id", "time"), UPDATES, batch=batch)
        batch.flush(commit=True)

    database.transaction(batched)
    assert sorted(stored(database, odd)) == [60, 120, 180]


def test_many_rows_are_split_into_several_statements(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_module, "UPSERT_ROWS_PER_STATEMENT", 3)
    inserts: list[tuple[str, bool]] = []

    def seen(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("INSERT INTO"):
            inserts.append((statement, executemany))

    event.listen(database.engine, "before_cursor_execute", seen)
    try:
        upsert(database, [row(60 * i) for i in range(1, 11)])
    finally:
        event.remove(database.engine, "before_cursor_execute", seen)
    assert sorted(stored(database)) == [60 * i for i in range(1, 11)]
    if database.dialect == "mysql":  # literal VALUES: 3 + 3 + 3 + 1 rows
        assert [text.count("),(") + 1 for text, _ in inserts] == [3, 3, 3, 1]
    else:  # SQLite: one executemany of every row, the limit does not apply
        assert [many for _, many in inserts] == [True]
