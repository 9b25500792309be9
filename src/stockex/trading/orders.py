"""Order use cases: place, cancel, get, list, and the caller's fills.

**One transaction per placement**, matching included (:meth:`stockex.db.Database.transaction`,
which retries deadlocks and lock wait timeouts):

1. ``SELECT ... FOR UPDATE`` on the market's row — every placement and cancel of a market
   queues here, so the book it reads cannot change under it, with any number of API
   processes on any number of machines sharing one MySQL — and read the opposite side of
   the book best-first (``book.py``; one round trip on MySQL); match it (``engine.match``);
2. lock the accounts of the taker, every maker touched and the fee account in one statement,
   in a fixed order (``accounts.lock_balances``), and check the taker's funds;
3. write the order, the makers, the trades, and the balances with their ledger rows, and
   commit (on MySQL the writes and the COMMIT are one round trip, ``batch.WriteBatch``).

Any rejection raises before the commit, so it changes nothing. After the commit the market's
depth/trades caches are invalidated (``stockex.cache.invalidate_book``).

**Idempotency**: a placement with a ``client_order_id`` the user already used returns the
original order (``created=False``, HTTP 200) when the request means the same thing, and
409 ``duplicate_client_order_id`` otherwise — also when two such requests race (the unique
key on (user_id, client_order_id) decides). Ids compare with letter case, as on Binance
("ABC" and "abc" are two orders; on MySQL the column has a binary collation, migration 0006).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from stockex.batch import Ref, WriteBatch
from stockex.cache import Cache, invalidate_book
from stockex.config import MarketSettings, Settings
from stockex.db import CommitOutcomeUnknown, Database
from stockex.errors import Conflict, InvalidInput, NotFound, UnknownMarket
from stockex.models import MAX_ID, Order, Trade
from stockex.numbers import exact, to_str
from stockex.trading import engine
from stockex.trading.accounts import InsufficientBalance, LockedBalances, lock_balances
from stockex.trading.book import lock_market, lock_market_and_read_book
from stockex.trading.order_request import OrderRequest

ZERO = Decimal(0)
ORDERS = Order.__table__
TRADES = Trade.__table__


@dataclass
class FillView:
    """One trade seen from one of its orders."""

    id: int
    order_id: int
    market: str
    side: str
    role: str  # maker | taker
    price: Decimal
    amount: Decimal
    total: Decimal
    fee: Decimal
    fee_asset: str
    created_at: int


@dataclass
class OrderView:
    id: int
    client_order_id: str | None
    market: str
    side: str
    type: str
    time_in_force: str
    price: Decimal | None
    amount: Decimal | None
    quote_amount: Decimal | None
    filled_amount: Decimal
    filled_quote: Decimal
    fee: Decimal
    fee_asset: str
    status: str
    created_at: int
    updated_at: int
    locked: Decimal = ZERO
    request_fingerprint: str | None = None
    fills: list[FillView] = field(default_factory=list)

    @property
    @exact
    def avg_price(self) -> Decimal | None:
        if not self.filled_amount:
            return None
        return (self.filled_quote / self.filled_amount).quantize(Decimal(1).scaleb(-18)).normalize()


@dataclass
class Placement:
    order: OrderView
    created: bool  # False: an earlier order with the same client_order_id and request


class FokNotFilled(Conflict):
    code = "fok_not_filled"


class InsufficientLiquidity(Conflict):
    code = "insufficient_liquidity"


class OrderNotOpen(Conflict):
    code = "order_not_open"


class DuplicateClientOrderId(Conflict):
    code = "duplicate_client_order_id"


# --------------------------------------------------------------------------- placing


def place_order(
    db: Database, cache: Cache | None, user_id: int, request: OrderRequest
) -> Placement:
    """Place (and match) one order; see the module docstring. Raises the CONTRACT §6
    rejections: InsufficientBalance, FokNotFilled, InsufficientLiquidity, UnknownMarket,
    DuplicateClientOrderId, and InvalidInput ``below_min_amount`` for a market buy whose
    ``quote_amount`` buys less than ``min_amount`` at the book's prices."""
    if request.client_order_id is not None:
        earlier = _repeat(db, user_id, request)
        if earlier is not None:
            return Placement(earlier, created=False)
    try:
        order = db.transaction(lambda session: _place(session, user_id, request))
    except CommitOutcomeUnknown:
        if cache is not None:  # it may have committed: its depth and trades must not stay
            invalidate_book(cache, request.market.id)
        raise
    except IntegrityError:
        earlier = _repeat(db, user_id, request) if request.client_order_id else None
        if earlier is None:
            raise
        return Placement(earlier, created=False)
    if cache is not None:
        invalidate_book(cache, request.market.id)
    return Placement(order, created=True)


def _repeat(db: Database, user_id: int, request: OrderRequest) -> OrderView | None:
    with db.read() as session:
        row = session.execute(
            select(ORDERS).where(
                ORDERS.c.user_id == user_id,
                ORDERS.c.client_order_id == request.client_order_id,
            )
        ).first()
        if row is None:
            return None
        if row.request_fingerprint != request.fingerprint:
            raise DuplicateClientOrderId(
                f"client_order_id {request.client_order_id!r} was used for a different order",
                details={"order_id": row.id},
            )
        return _with_fills(session, _view(row._mapping), user_id)


@exact  # every amount below is computed unrounded (a 28-digit context would round -amount)
def _place(session: Session, user_id: int, request: OrderRequest) -> OrderView:
    market = request.market
    taker = engine.Taker(
        user_id, request.side, request.type, request.time_in_force,
        request.price, request.amount, request.quote_amount,
    )
    fee_uid, resting = lock_market_and_read_book(session, market.id, taker)
    result = engine.match(taker, resting, market)
    # A market order that can trade nothing is insufficient_liquidity, FOK or IOC alike
    # (CONTRACT §6); fok_not_filled is for a FOK order that could fill only part.
    if taker.type == "market" and not result.fills:
        raise InsufficientLiquidity(
            "nothing to trade with: the book is empty, only your own orders rest at the best "
            "prices, or the order is smaller than one amount step there; nothing was done"
        )
    if taker.quote_amount is not None:  # an order by amount was held to it when parsed
        bought = engine.quote_buy_amount(taker, result, market)
        if bought < market.min_amount:
            raise InvalidInput(
                f"quote_amount buys {to_str(bought)} {market.base} at the book's prices, below "
                f"the market's minimum {to_str(market.min_amount)}; nothing was done",
                code="below_min_amount",
                details={"quote_amount": to_str(taker.quote_amount), "amount": to_str(bought),
                         "min_amount": to_str(market.min_amount)},
            )
    if taker.time_in_force == "FOK" and not result.complete:
        raise FokNotFilled(
            "the order cannot be filled entirely right now; nothing was done",
            details={"fillable_amount": to_str(result.filled_amount)},
        )

    users = {user_id, fee_uid, *(f.maker.user_id for f in result.fills)}
    balances = lock_balances(session, users, (market.base, market.quote))
    _check_funds(balances, taker, result, market)

    now = int(time.time())
    batch = WriteBatch(session)
    order = _taker_order(user_id, request, result, now)
    order_ref = batch.insert(ORDERS, _order_row(order, user_id, market.id))
    reserved = engine.reserved_asset(taker.side, market)
    if taker.type == "limit":
        amount = taker.reservation()
        balances.post(user_id, reserved, -amount, amount, "order_lock", "order", order_ref)
    for maker in result.self_cancelled:
        asset = engine.reserved_asset(maker.side, market)
        balances.post(maker.user_id, asset, maker.locked, -maker.locked, "order_cancel",
                      "order", maker.id)
        maker.locked = ZERO
    trade_refs = []
    for fill in result.fills:
        engine.apply_to_maker(fill)
        trade_ref = batch.insert(TRADES, _trade_row(fill, taker, order_ref, market.id, now))
        for posting in engine.fill_postings(taker, fill, market, fee_uid):
            balances.post(*posting, "trade", "trade", trade_ref)
        trade_refs.append(trade_ref)
    if taker.type == "limit" and order.status != "open":
        leftover = unfilled_reservation(request, result)  # zero when filled
        balances.post(user_id, reserved, leftover, -leftover, "order_cancel", "order",
                      order_ref)
    batch.update_rows(ORDERS, _maker_changes(result), {"updated_at": now})
    balances.write(batch, now)
    batch.flush(commit=True)  # the last work of this transaction: COMMIT in the same trip
    order.id = int(order_ref)
    order.fills = [_taker_fill(int(ref), fill, order, market)
                   for ref, fill in zip(trade_refs, result.fills, strict=True)]
    return order


def _check_funds(
    balances: LockedBalances, taker: engine.Taker, result: engine.Match, market: MarketSettings
) -> None:
    if taker.type == "limit":
        needed = taker.reservation()
    elif taker.side == "sell":
        needed = taker.base_amount
    elif taker.quote_amount is not None:
        needed = taker.quote_amount
    else:
        needed = result.filled_quote
    asset = engine.reserved_asset(taker.side, market)
    available = balances.available(taker.user_id, asset)
    if available < needed:
        shown = {"needed": to_str(needed), "available": to_str(available)}
        raise InsufficientBalance(
            f"this order needs {shown['needed']} {asset} but {shown['available']} is available",
            details={"asset": asset, **shown},
        )


def _taker_order(
    user_id: int, request: OrderRequest, result: engine.Match, now: int
) -> OrderView:
    """The taker's order as it ends this placement; ``locked`` is what it keeps reserved."""
    locked = ZERO
    if request.type == "market":
        status = "filled" if result.complete else "cancelled"
    elif result.complete:
        status = "filled"
    elif request.time_in_force == "GTC":
        status, locked = "open", unfilled_reservation(request, result)
    else:
        status = "cancelled"
    market = request.market
    return OrderView(
        id=0, client_order_id=request.client_order_id, market=market.id, side=request.side,
        type=request.type, time_in_force=request.time_in_force, price=request.price,
        amount=request.amount, quote_amount=request.quote_amount,
        filled_amount=result.filled_amount, filled_quote=result.filled_quote,
        fee=result.taker_fee, fee_asset=market.base if request.side == "buy" else market.quote,
        status=status, created_at=now, updated_at=now, locked=locked,
        request_fingerprint=request.fingerprint,
    )


@exact
def unfilled_reservation(request: OrderRequest, result: engine.Match) -> Decimal:
    """What a limit order reserves for its unfilled part: price x unfilled quote for a buy,
    the unfilled base for a sell."""
    price, amount = request.price or ZERO, request.amount or ZERO  # both set on limits
    unfilled = amount - result.filled_amount
    return price * unfilled if request.side == "buy" else unfilled


def _order_row(order: OrderView, user_id: int, market_id: str) -> dict[str, Any]:
    return {
        "user_id": user_id, "market_id": market_id, "client_order_id": order.client_order_id,
        "request_fingerprint": order.request_fingerprint, "side": order.side,
        "type": order.type, "time_in_force": order.time_in_force, "price": order.price,
        "amount": order.amount, "quote_amount": order.quote_amount,
        "filled_amount": order.filled_amount, "filled_quote": order.filled_quote,
        "fee": order.fee, "fee_asset": order.fee_asset, "locked": order.locked,
        "status": order.status, "created_at": order.created_at, "updated_at": order.updated_at,
    }


def _trade_row(fill: engine.Fill, taker: engine.Taker, order_ref: Ref, market_id: str,
               now: int) -> dict[str, Any]:
    return {
        "market_id": market_id, "price": fill.price, "amount": fill.amount,
        "total": fill.total, "maker_order_id": fill.maker.id, "taker_order_id": order_ref,
        "maker_user_id": fill.maker.user_id, "taker_user_id": taker.user_id,
        "taker_side": taker.side, "maker_fee": fill.maker_fee, "taker_fee": fill.taker_fee,
        "created_at": now,
    }


def _taker_fill(trade_id: int, fill: engine.Fill, order: OrderView,
                market: MarketSettings) -> FillView:
    return FillView(
        id=trade_id, order_id=order.id, market=market.id, side=order.side, role="taker",
        price=fill.price, amount=fill.amount, total=fill.total, fee=fill.taker_fee,
        fee_asset=order.fee_asset, created_at=order.created_at,
    )


def _maker_changes(result: engine.Match) -> dict[int, dict[str, Any]]:
    """The new state of every resting order this placement touched."""
    changes: dict[int, dict[str, Any]] = {}
    makers = [(m, True) for m in result.self_cancelled] + [(f.maker, False) for f in result.fills]
    for maker, cancelled in makers:
        status = "cancelled" if cancelled else ("filled" if maker.remaining == 0 else "open")
        changes[maker.id] = {
            "filled_amount": maker.filled_amount, "filled_quote": maker.filled_quote,
            "fee": maker.fee, "locked": ZERO if status != "open" else maker.locked,
            "status": status,
        }
    return changes


# --------------------------------------------------------------------------- cancelling


def cancel_order(db: Database, cache: Cache | None, settings: Settings, user_id: int,
                 order_id: int) -> OrderView:
    """Cancel one of the caller's open orders, releasing what it still reserves.

    404 ``order_not_found`` for someone else's or no order; 409 ``order_not_open``. Its fills
    are read once the cancel has committed, outside the market's lock.
    """

    _known_id(order_id)
    markets: list[str] = []  # the order's market, once the transaction has read it

    @exact
    def work(session: Session) -> OrderView:
        market_id = session.scalar(
            select(ORDERS.c.market_id).where(ORDERS.c.id == order_id, ORDERS.c.user_id == user_id)
        )
        if market_id is None:
            raise NotFound(f"no order {order_id}", code="order_not_found")
        markets[:] = [market_id]
        lock_market(session, market_id)
        row = session.execute(select(ORDERS).where(ORDERS.c.id == order_id)).one()
        if row.status != "open":
            raise OrderNotOpen(f"order {order_id} is {row.status}",
                               details={"status": row.status})
        market = settings.market(market_id)
        if market is None:
            raise UnknownMarket(market_id)
        asset = engine.reserved_asset(row.side, market)
        balances = lock_balances(session, [user_id], [asset])
        now = int(time.time())
        balances.post(user_id, asset, row.locked, -row.locked, "order_cancel", "order", row.id)
        session.execute(
            update(ORDERS).where(ORDERS.c.id == order_id)
            .values(status="cancelled", locked=ZERO, updated_at=now)
        )
        balances.write(session, now)
        view = _view(row._mapping)
        view.status, view.locked, view.updated_at = "cancelled", ZERO, now
        return view

    try:
        order = db.transaction(work)
    except CommitOutcomeUnknown:
        if cache is not None and markets:  # it may have committed: retire the book's answers
            invalidate_book(cache, markets[0])
        raise
    if cache is not None:
        invalidate_book(cache, order.market)
    # The fills are read after the commit, not under the market's lock: an order has no limit
    # on them (a resting one collects a fill per taker), and reading 100,000 took 3.5 s, for
    # which every placement and cancel in the market waited. A cancelled order gets no more.
    with db.read() as session:
        return _with_fills(session, order, user_id)


# --------------------------------------------------------------------------- reading


def _known_id(order_id: int) -> None:
    """404 for an id no order can have (beyond BIGINT: SQLite's driver cannot even bind it)."""
    if not 0 < order_id <= MAX_ID:
        raise NotFound(f"no order {order_id}", code="order_not_found")


def get_order(db: Database, user_id: int, order_id: int) -> OrderView:
    _known_id(order_id)
    with db.read() as session:
        row = session.execute(
            select(ORDERS).where(ORDERS.c.id == order_id, ORDERS.c.user_id == user_id)
        ).first()
        if row is None:
            raise NotFound(f"no order {order_id}", code="order_not_found")
        return _with_fills(session, _view(row._mapping), user_id)


def list_orders(db: Database, user_id: int, *, market: str | None = None,
                status: str | None = None, limit: int = 100,
                before_id: int | None = None) -> list[OrderView]:
    """The caller's orders, highest id first, each with its fills."""
    query = select(ORDERS).where(ORDERS.c.user_id == user_id)
    if market is not None:
        query = query.where(ORDERS.c.market_id == market)
    if status is not None:
        query = query.where(ORDERS.c.status == status)
    if before_id is not None:
        query = query.where(ORDERS.c.id < before_id)
    with db.read() as session:
        views = [_view(r._mapping) for r in session.execute(
            query.order_by(ORDERS.c.id.desc()).limit(limit)
        )]
        fills = _fills(session, user_id, order_ids=[v.id for v in views])
    # Grouped in one pass: a page is up to 500 orders and their fills are unbounded (one
    # resting order can have thousands), so looking them up per order went through every
    # fill 500 times (3.5 s of CPU for 100,000 fills, in a request any client may send).
    by_order: dict[int, list[FillView]] = {view.id: [] for view in views}
    for fill in fills:
        by_order[fill.order_id].append(fill)
    for view in views:
        view.fills = by_order[view.id]
    return views


def list_fills(db: Database, user_id: int, *, market: str | None = None, limit: int = 100,
               before_id: int | None = None) -> list[FillView]:
    """The caller's trades (as maker or taker), highest trade id first."""
    with db.read() as session:
        return _fills(session, user_id, market=market, limit=limit, before_id=before_id)


def _view(row: Any) -> OrderView:
    return OrderView(
        id=row["id"], client_order_id=row["client_order_id"], market=row["market_id"],
        side=row["side"], type=row["type"], time_in_force=row["time_in_force"],
        price=row["price"], amount=row["amount"], quote_amount=row["quote_amount"],
        filled_amount=row["filled_amount"], filled_quote=row["filled_quote"], fee=row["fee"],
        fee_asset=row["fee_asset"], status=row["status"], created_at=row["created_at"],
        updated_at=row["updated_at"], locked=row["locked"],
        request_fingerprint=row["request_fingerprint"],
    )


def _with_fills(session: Session, view: OrderView, user_id: int) -> OrderView:
    view.fills = _fills(session, user_id, order_ids=[view.id])
    return view


def _fills(session: Session, user_id: int, *, order_ids: list[int] | None = None,
           market: str | None = None, limit: int | None = None,
           before_id: int | None = None) -> list[FillView]:
    """The user's fills; as maker and as taker are two index-friendly queries, merged."""
    if order_ids is not None and not order_ids:
        return []
    found: list[FillView] = []
    for role in ("maker", "taker"):
        user_col = TRADES.c[f"{role}_user_id"]
        order_col = TRADES.c[f"{role}_order_id"]
        query = (
            select(TRADES, ORDERS.c.side, ORDERS.c.fee_asset)
            .join(ORDERS, ORDERS.c.id == order_col)
            .where(user_col == user_id)
        )
        if order_ids is not None:
            query = query.where(order_col.in_(order_ids))
        if market is not None:
            query = query.where(TRADES.c.market_id == market)
        if before_id is not None:
            query = query.where(TRADES.c.id < before_id)
        query = query.order_by(TRADES.c.id.desc())
        if limit is not None:
            query = query.limit(limit)
        for row in session.execute(query):
            found.append(FillView(
                id=row.id, order_id=getattr(row, f"{role}_order_id"),
                market=row.market_id, side=row.side, role=role, price=row.price,
                amount=row.amount, total=row.total, fee=getattr(row, f"{role}_fee"),
                fee_asset=row.fee_asset, created_at=row.created_at,
            ))
    found.sort(key=lambda f: f.id, reverse=True)
    return found[:limit] if limit is not None else found
