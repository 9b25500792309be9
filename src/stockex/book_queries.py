"""Public views of the internal order book: depth and recent trades (CONTRACT §5).

* :func:`read_depth`: open limit orders summed per price level (remaining = amount -
  filled_amount), asks ascending and bids descending, at most ``limit`` levels a side. It
  reads the book in the order of ``ix_orders_book`` (market, side, status, price, id).
* :func:`read_trades`: the market's trades, newest first, optionally within
  ``[time_from, time_to]`` (inclusive, on ``created_at``) and after the trade ``before_id``.
  It reads them in the order of ``ix_trades_market_id_created_at`` (market, created_at and,
  in InnoDB, the primary key id).

Arithmetic is exact: MySQL sums DECIMALs in SQL, on SQLite (amounts stored as text) the sums
are done in Python with Decimal.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, localcontext
from typing import Any

from sqlalchemy import func, literal, or_, select, union_all
from sqlalchemy.orm import Session

from stockex.models import Order, Trade
from stockex.numbers import EXACT

Level = tuple[Decimal, Decimal]  # price, amount


@dataclass(frozen=True)
class Depth:
    asks: list[Level]
    bids: list[Level]


def read_depth(session: Session, market_id: str, limit: int) -> Depth:
    """Both sides as of one moment: a placement committing meanwhile is wholly in or out.

    On MySQL, whose READ COMMITTED gives every statement the state at its start, the two
    sides are one statement; on SQLite the session's read transaction holds one snapshot.
    """
    if session.get_bind().dialect.name == "mysql":
        return _mysql_depth(session, market_id, limit)
    return Depth(
        asks=_side(session, market_id, "sell", limit),
        bids=_side(session, market_id, "buy", limit),
    )


def _resting(market_id: str, side: str) -> tuple[Any, ...]:
    return (
        Order.market_id == market_id,
        Order.side == side,
        Order.status == "open",
        Order.type == "limit",
        Order.price.is_not(None),
    )


def _best_first(side: str) -> Any:
    return Order.price.asc() if side == "sell" else Order.price.desc()


def _mysql_depth(session: Session, market_id: str, limit: int) -> Depth:
    remaining = func.sum(Order.amount - Order.filled_amount)
    sides = [
        select(literal(side).label("side"), Order.price, remaining.label("remaining"))
        .where(*_resting(market_id, side), Order.amount > Order.filled_amount)
        .group_by(Order.price)
        .order_by(_best_first(side))
        .limit(limit)
        for side in ("sell", "buy")
    ]
    depth = Depth(asks=[], bids=[])
    for side, price, amount in session.execute(union_all(*sides)):
        (depth.asks if side == "sell" else depth.bids).append((price, Decimal(amount)))
    depth.asks.sort()  # a UNION keeps no order
    depth.bids.sort(reverse=True)
    return depth


def _side(session: Session, market_id: str, side: str, limit: int) -> list[Level]:
    levels: list[Level] = []
    stmt = select(Order.price, Order.amount, Order.filled_amount).where(
        *_resting(market_id, side)
    )
    best_first = _best_first(side)
    with localcontext(EXACT):
        for price, amount, filled in session.execute(stmt.order_by(best_first)):
            left = amount - filled
            if left <= 0:
                continue
            if levels and levels[-1][0] == price:
                levels[-1] = (price, levels[-1][1] + left)
            elif len(levels) == limit:
                break
            else:
                levels.append((price, left))
    return levels


BY_TIME = "ix_trades_market_id_created_at"  # models.Trade's (market_id, created_at)


@dataclass(frozen=True)
class PublicTrade:
    id: int
    price: Decimal
    amount: Decimal
    total: Decimal
    taker_side: str
    created_at: int


def read_trades(
    session: Session,
    market_id: str,
    limit: int,
    time_from: int | None = None,
    time_to: int | None = None,
    before_id: int | None = None,
) -> list[PublicTrade]:
    """At most ``limit`` trades, newest first: by ``created_at``, then by id, both descending.

    ``before_id`` pages: only the trades listed after trade ``before_id`` (the last one of the
    previous page), so that paging gives every trade once however many share a second. While
    the API machines' clocks agree these are the trades with lower ids. A trade placed
    through a machine whose clock is behind can have a higher id than one placed just before
    it and an earlier ``created_at``: it is listed, and paged, by its ``created_at``. For an
    id that is not a trade of this market, the page starts at the market's trade with the
    highest id below it (still: its trades with lower ids, while clocks agree).

    Ordering by id instead would make ``time_from``/``time_to`` filters over a scan of the
    market's trades in id order: a window with fewer than ``limit`` trades, or a ``time_to``
    far back, would read the whole history (no index has both created_at and id order).
    """
    where = [Trade.market_id == market_id]
    if time_from is not None:
        where.append(Trade.created_at >= time_from)
    if time_to is not None:
        where.append(Trade.created_at <= time_to)
    if before_id is not None:
        # MAX(id), which MariaDB answers from the (market_id, id) index in one read; ORDER BY
        # id DESC LIMIT 1 was sometimes read from the market's newest trade down to before_id
        # (an equality lookup on market_id): 1,500 rows for a page in the middle of 3,000.
        newest_below = (select(func.max(Trade.id))
                        .where(Trade.market_id == market_id, Trade.id <= before_id)
                        .scalar_subquery())
        anchor_time = session.execute(
            select(Trade.created_at).where(Trade.id == newest_below)
        ).scalar()
        if anchor_time is None:
            return []
        # (created_at, id) < (anchor_time, before_id); created_at <= anchor_time alone is the
        # range of BY_TIME that MariaDB reads, the rest filters the anchor's own second
        where += [Trade.created_at <= anchor_time,
                  or_(Trade.created_at < anchor_time, Trade.id < before_id)]
    stmt = (
        select(Trade.id, Trade.price, Trade.amount, Trade.total, Trade.taker_side,
               Trade.created_at)
        .where(*where)
        .order_by(Trade.created_at.desc(), Trade.id.desc())
        .limit(limit)
        # MariaDB otherwise reads this index from the market's newest trade down to time_to
        # (an equality lookup on market_id where a range on created_at is available): a
        # time_to in the middle of the history read every trade after it, not ``limit``.
        .with_hint(Trade, f"FORCE INDEX ({BY_TIME})", "mysql")
    )
    return [PublicTrade(*row) for row in session.execute(stmt)]
