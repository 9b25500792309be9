"""Reading the first page of a deep order book, with and without the bids index, in one run.

A placement reads the opposite side of the book best first, inside its market's lock
(``stockex.trading.book``). Asks come in ``ix_orders_book`` order (price ascending, id
ascending); bids need price descending with id still ascending, which that index read
backwards does not give, so without ``ix_orders_bids`` (migration 0005) MySQL sorted every
crossing bid on every sell placement. This script fills one market with N resting bids and
N resting asks on a private MariaDB, times the exact first-page statement a placement sends
for a market order on each side (every resting order crosses it, the worst case), then drops
``ix_orders_bids`` and times the bid side again. Prints one JSON document with the
milliseconds per read, the plans and the ratio.

    PYTHONPATH=src python benchmarks/book_depth.py [--depth 10000] [--reads 200]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from typing import Any

from orders import MARKET  # benchmarks/orders.py: the same market

from stockex.config import settings_from_mapping
from stockex.db import Database
from stockex.markets import sync_markets
from stockex.migrate import upgrade
from stockex.testing import end_on_termination_signals, start_mysql
from stockex.trading.book import _BOOK_SQL, FIRST_PAGE


def fill(cursor: Any, depth: int) -> None:
    rng = random.Random(7)
    cursor.execute("INSERT INTO users (id, username, password_hash, role, created_at) "
                   "VALUES (1, 'deep', '!', 'user', 0)")
    rows = []
    for i in range(2 * depth):
        side = "buy" if i % 2 else "sell"
        price = 900 - rng.randint(0, 100) if side == "buy" else 1100 + rng.randint(0, 100)
        # fee_asset, then locked: a bid reserves price x 1 XU, an ask 1 ASA
        rows.append((side, price, "ASA", price) if side == "buy" else (side, price, "XU", 1))
    cursor.executemany(
        "INSERT INTO orders (user_id, market_id, side, type, time_in_force, price, amount, "
        "filled_amount, filled_quote, fee, fee_asset, locked, status, created_at, updated_at) "
        "VALUES (1, 'asaxu', %s, 'limit', 'GTC', %s, 1, 0, 0, 0, %s, %s, 'open', 0, 0)",
        rows,
    )
    cursor.execute("ANALYZE TABLE orders")
    cursor.fetchall()


def time_page(cursor: Any, maker_side: str, reads: int) -> dict[str, Any]:
    """The first page a market order reads (no price limit: every resting order crosses)."""
    direction = "DESC" if maker_side == "buy" else "ASC"
    sql = cursor.mogrify(_BOOK_SQL.format(price="", direction=direction),
                         ("asaxu", maker_side, FIRST_PAGE))
    cursor.execute("EXPLAIN " + sql)
    columns = [d[0] for d in cursor.description]
    plan = [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
    times = []
    for _ in range(reads):
        began = time.perf_counter()
        cursor.execute(sql)
        cursor.fetchall()
        times.append(time.perf_counter() - began)
    return {
        "p50_ms": round(statistics.median(times) * 1000, 3),
        "mean_ms": round(statistics.fmean(times) * 1000, 3),
        "index": plan[0]["key"], "extra": plan[0]["Extra"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=10_000, help="resting orders per side")
    parser.add_argument("--reads", type=int, default=200)
    args = parser.parse_args()
    end_on_termination_signals()  # a kill stops the servers too
    server = start_mysql()
    try:
        url = server.create_database("stockex_depth")
        db = Database(url)
        upgrade(db)
        sync_markets(db, settings_from_mapping({
            "secret_key": "x" * 40, "database": {"url": url}, "markets": [MARKET],
        }))
        with db.engine.connect() as conn:
            raw = conn.connection.driver_connection
            with raw.cursor() as cursor:
                fill(cursor, args.depth)
                raw.commit()
                asks = time_page(cursor, "sell", args.reads)
                bids = time_page(cursor, "buy", args.reads)
                cursor.execute("DROP INDEX ix_orders_bids ON orders")
                cursor.execute("ANALYZE TABLE orders")
                cursor.fetchall()
                bids_without = time_page(cursor, "buy", args.reads)
        db.dispose()
        print(json.dumps({
            "benchmark": "book_depth",
            "resting_orders_per_side": args.depth,
            "first_page_read": {
                "asks": asks, "bids": bids, "bids_without_ix_orders_bids": bids_without,
            },
            "bids_slowdown_without_index": round(bids_without["p50_ms"] / bids["p50_ms"], 1),
        }, indent=2))
    finally:
        server.close()


if __name__ == "__main__":
    main()
