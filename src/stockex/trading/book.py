"""The market lock and the order book as the matcher reads it.

``lock_market`` takes ``SELECT ... FOR UPDATE`` on the market's row: every placement and
cancel of a market queues there, so the book cannot change while one of them reads and
changes it — with any number of API processes on any number of machines sharing one MySQL.
Cross-market work never waits for it.

``book`` yields the resting orders a taker may trade with, best price first and oldest
(lowest id) first within a price, in pages as the matcher asks for more. On MySQL
``lock_market_and_read_book`` sends the lock and the first page as one query of two
statements (run in order, so the page is read under the lock): one round trip fewer inside
the market's critical section.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from stockex.batch import is_mysql, mysql_cursor
from stockex.errors import UnknownMarket
from stockex.models import Market, Order, User
from stockex.trading import engine
from stockex.trading.accounts import FEE_USERNAME, fee_user_id

ORDERS = Order.__table__
MARKETS = Market.__table__
USERS = User.__table__
FIRST_PAGE = 8
NEXT_PAGE = 100

_BOOK_COLUMNS = (
    ORDERS.c.id, ORDERS.c.user_id, ORDERS.c.side, ORDERS.c.price, ORDERS.c.amount,
    ORDERS.c.filled_amount, ORDERS.c.filled_quote, ORDERS.c.fee, ORDERS.c.locked,
)

# MySQL hot path, one column per result: PyMySQL (pure Python) spends more CPU parsing each
# result's column definitions than anything else in a placement, so the lock answers only
# the fee account's id (a row, maybe NULL, when the market exists) and each book row comes as
# one text "id,user_id,price,amount,filled_amount,filled_quote,fee,locked" (CONCAT is NULL if
# any part were NULL: refused below, never misread).
_LOCK_MARKET_SQL = (
    "SELECT (SELECT id FROM users WHERE username = 'fees' AND role = 'system') "
    "FROM markets WHERE id = %s FOR UPDATE"
)
_BOOK_SQL = (  # noqa: S608 - fixed text; values are bound by the driver
    "SELECT CONCAT(id, ',', user_id, ',', price, ',', amount, ',', filled_amount, ',', "
    "filled_quote, ',', fee, ',', locked) "
    "FROM orders WHERE market_id = %s AND side = %s AND status = 'open' {price} "
    "ORDER BY price {direction}, id LIMIT %s"
)


def _resting(text: str | None, side: str) -> engine.Resting:
    if text is None:
        raise RuntimeError("a resting order with a NULL column")  # pragma: no cover
    id_, user_id, price, amount, filled_amount, filled_quote, fee, locked = text.split(",")
    return engine.Resting(
        int(id_), int(user_id), side, Decimal(price), Decimal(amount), Decimal(filled_amount),
        Decimal(filled_quote), Decimal(fee), Decimal(locked),
    )


def lock_market(session: Session, market_id: str) -> int:
    """Lock the market's row (serializing its book) and return the fee account's user id."""
    fee_subquery = (
        select(USERS.c.id)
        .where(USERS.c.username == FEE_USERNAME, USERS.c.role == "system")
        .scalar_subquery()
    )
    row = session.execute(
        select(MARKETS.c.id, fee_subquery).where(MARKETS.c.id == market_id).with_for_update()
    ).first()
    if row is None:
        raise UnknownMarket(market_id)
    return int(row[1]) if row[1] is not None else fee_user_id(session)


def lock_market_and_read_book(
    session: Session, market_id: str, taker: engine.Taker
) -> tuple[int, Iterator[engine.Resting]]:
    """Lock the market and start reading the book the taker may trade with.

    On MySQL the lock and the first page of the book are one round trip (two statements
    in one query, run in order, so the book is read under the lock).
    """
    if not is_mysql(session):
        return lock_market(session, market_id), book(session, market_id, taker)
    maker_side = "sell" if taker.side == "buy" else "buy"
    params: list[Any] = [market_id, maker_side]
    price = ""
    if taker.price is not None:
        price = "AND price <= %s" if taker.side == "buy" else "AND price >= %s"
        params.append(taker.price)
    params.append(FIRST_PAGE)
    book_sql = _BOOK_SQL.format(price=price,
                                direction="ASC" if maker_side == "sell" else "DESC")
    with mysql_cursor(session) as cursor:
        cursor.execute(
            cursor.mogrify(_LOCK_MARKET_SQL, (market_id,)) + ";\n"
            + cursor.mogrify(book_sql, params)
        )
        market = cursor.fetchone()
        cursor.nextset()
        first_page = [_resting(row[0], maker_side) for row in cursor.fetchall()]
    if market is None:
        raise UnknownMarket(market_id)
    fee_uid = int(market[0]) if market[0] is not None else fee_user_id(session)
    return fee_uid, book(session, market_id, taker, first_page)


def book(session: Session, market_id: str, taker: engine.Taker,
         first_page: list[engine.Resting] | None = None) -> Iterator[engine.Resting]:
    """The resting orders a taker may trade with, best price first, oldest first within a
    price, fetched in pages as the matcher asks for more (``first_page`` if already read)."""
    maker_side = "sell" if taker.side == "buy" else "buy"
    page, after = FIRST_PAGE, None
    if first_page is not None:
        yield from first_page
        if len(first_page) < FIRST_PAGE:
            return  # the common case: no statement to build at all
        after, page = (first_page[-1].price, first_page[-1].id), NEXT_PAGE
    query = select(*_BOOK_COLUMNS).where(
        ORDERS.c.market_id == market_id, ORDERS.c.side == maker_side, ORDERS.c.status == "open"
    )
    if taker.price is not None:
        query = query.where(
            ORDERS.c.price <= taker.price if taker.side == "buy" else ORDERS.c.price >= taker.price
        )
    best_first = ORDERS.c.price.asc() if maker_side == "sell" else ORDERS.c.price.desc()
    while True:
        paged = query
        if after is not None:
            price, last_id = after
            worse = ORDERS.c.price > price if maker_side == "sell" else ORDERS.c.price < price
            paged = query.where(or_(worse, and_(ORDERS.c.price == price, ORDERS.c.id > last_id)))
        rows = session.execute(paged.order_by(best_first, ORDERS.c.id.asc()).limit(page)).all()
        for row in rows:
            yield engine.Resting(*row)
        if len(rows) < page:
            return
        after, page = (rows[-1].price, rows[-1].id), NEXT_PAGE
