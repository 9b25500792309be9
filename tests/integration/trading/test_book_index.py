"""The book is read in index order on both sides: no sort of the resting orders inside the
market's lock, however deep the book is."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from stockex.db import Database
from stockex.trading.book import _BOOK_SQL, FIRST_PAGE

DEPTH = 3000  # resting orders per side: enough for the optimizer to prefer an index


def _fill_book(db: Database) -> None:
    """DEPTH bids (900..950) and DEPTH asks (1100..1150) on asaxu, none crossing."""
    rows: list[dict[str, Any]] = []
    for i in range(2 * DEPTH):
        side = "buy" if i % 2 else "sell"
        price = 900 + i % 51 if side == "buy" else 1100 + i % 51
        rows.append({
            "user_id": 1, "market_id": "asaxu", "side": side, "price": price,
            "locked": price if side == "buy" else 1, "fee_asset": "XU" if side == "sell" else "ASA",
        })
    with db.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO users (id, username, password_hash, role, created_at) "
            "VALUES (1, 'deep', '!', 'user', 0)"
        ))
        conn.execute(text(
            "INSERT INTO orders (user_id, market_id, side, type, time_in_force, price, amount, "
            "filled_amount, filled_quote, fee, fee_asset, locked, status, created_at, "
            "updated_at) VALUES (:user_id, :market_id, :side, 'limit', 'GTC', :price, 1, 0, 0, "
            "0, :fee_asset, :locked, 'open', 0, 0)"
        ), rows)
        conn.execute(text("ANALYZE TABLE orders"))


def test_both_sides_of_a_deep_book_are_read_without_a_sort(mysql_database: Database) -> None:
    _fill_book(mysql_database)
    plans = {}
    with mysql_database.engine.connect() as conn:
        raw = conn.connection.driver_connection
        with raw.cursor() as cursor:  # the exact statement a placement sends
            for maker_side, price, direction in (("buy", "AND price >= %s", "DESC"),
                                                 ("sell", "AND price <= %s", "ASC")):
                sql = cursor.mogrify(_BOOK_SQL.format(price=price, direction=direction),
                                     ("asaxu", maker_side, 0 if maker_side == "buy" else 10**6,
                                      FIRST_PAGE))
                cursor.execute("EXPLAIN " + sql)
                columns = [d[0] for d in cursor.description]
                plans[maker_side] = [dict(zip(columns, row, strict=True))
                                     for row in cursor.fetchall()]
        bids_index = list(conn.execute(text(
            "SELECT CONCAT(COLUMN_NAME, ' ', COALESCE(COLLATION, '')) FROM "
            "information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = "
            "'orders' AND INDEX_NAME = 'ix_orders_bids' ORDER BY SEQ_IN_INDEX"
        )).scalars())
    for side, plan in plans.items():
        (step,) = plan
        assert "filesort" not in (step["Extra"] or ""), (side, step)
        assert step["key"] == ("ix_orders_bids" if side == "buy" else "ix_orders_book")
    assert bids_index == ["market_id A", "side A", "status A", "price D", "id A"]
