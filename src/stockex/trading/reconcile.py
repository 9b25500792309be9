"""``stockex reconcile``: check every ledger and balance invariant.

All checks read one consistent snapshot (REPEATABLE READ on MySQL, one read transaction on
SQLite), so they may run while trading goes on. Each returns the problems it found (empty
when the invariant holds):

* ``ledger_matches_balances``: every account's available and locked equal the sums of its
  ledger rows;
* ``assets_conserved``: per asset, Σ(available + locked) over all accounts (users and the fee
  account) equals deposits − withdrawals;
* ``no_negative_balances``;
* ``locked_matches_open_orders``: every user's locked balance equals what their open orders
  reserve, and every order reserves exactly what it should (an open buy: price × unfilled
  amount of quote; an open sell: its unfilled amount of base; any other order: nothing);
* ``fills_match_trades``: every order's filled amount, filled quote and fee equal the sums
  over its trades, and its status agrees with them;
* ``trades_consistent``: every trade's total is price × amount (amount and price positive);
  it agrees with its orders (maker and taker users, market, sides; at the maker's price,
  within the taker's limit; not a self-trade); each side's fee is at least 0 and below what
  that side received; and the fee account was credited, per asset, exactly the trades' fees.
  The fees are not checked against the market's current rates: those may have changed in
  the configuration since a trade, while every rate ever accepted lies in [0, 1).

Sums run in SQL on MySQL (exact DECIMAL) and in Python on SQLite (where SQL would use floats).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from stockex.config import Settings
from stockex.db import Database
from stockex.models import Account, LedgerEntry, Market, Order, Trade
from stockex.numbers import exact, to_str
from stockex.trading.accounts import FEE_USER_QUERY

ZERO = Decimal(0)
MAX_PROBLEMS = 20  # per check, so that a broken database does not print a novel


@dataclass
class Check:
    name: str
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, problem: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)
        elif len(self.problems) == MAX_PROBLEMS:
            self.problems.append("... (more problems not shown)")


@contextmanager
def _snapshot(db: Database) -> Iterator[Session]:
    with db.engine.connect() as conn:
        if db.dialect == "mysql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            conn.exec_driver_sql("START TRANSACTION WITH CONSISTENT SNAPSHOT")
        with Session(bind=conn) as session:
            yield session
            session.rollback()


def _sums(session: Session, keys: Sequence[Any], values: Sequence[Any], *where: Any,
          mysql: bool, select_from: Any = None) -> dict[tuple[Any, ...], list[Decimal]]:
    """{key tuple: [sum of each value column]} — in SQL on MySQL, in Python otherwise."""
    if mysql:
        query = select(*keys, *(func.sum(v) for v in values)).where(*where).group_by(*keys)
        if select_from is not None:
            query = query.select_from(select_from)
        return {
            tuple(row[: len(keys)]): [v or ZERO for v in row[len(keys):]]
            for row in session.execute(query)
        }
    query = select(*keys, *values).where(*where)
    if select_from is not None:
        query = query.select_from(select_from)
    totals: dict[tuple[Any, ...], list[Decimal]] = defaultdict(lambda: [ZERO] * len(values))
    for row in session.execute(query):
        key, sums = tuple(row[: len(keys)]), totals[tuple(row[: len(keys)])]
        for i, value in enumerate(row[len(keys):]):
            sums[i] += value or ZERO
        totals[key] = sums
    return dict(totals)


@exact  # sums of 36-digit amounts, unrounded
def reconcile(db: Database, settings: Settings) -> list[Check]:
    """Run every check (see the module docstring) and return them in order."""
    mysql = db.dialect == "mysql"
    with _snapshot(db) as session:
        accounts = session.execute(
            select(Account.id, Account.user_id, Account.asset, Account.available, Account.locked)
        ).all()
        checks: list[Callable[..., Check]] = [
            _ledger_matches_balances, _assets_conserved, _no_negative_balances,
            _locked_matches_open_orders, _fills_match_trades, _trades_consistent,
        ]
        return [check(session, accounts, settings, mysql) for check in checks]


def _ledger_matches_balances(session: Session, accounts: list[Any], settings: Settings,
                             mysql: bool) -> Check:
    check = Check("ledger_matches_balances")
    ledger = _sums(session, [LedgerEntry.account_id],
                   [LedgerEntry.delta_available, LedgerEntry.delta_locked], mysql=mysql)
    known = set()
    for acc in accounts:
        known.add(acc.id)
        available, locked = ledger.get((acc.id,), [ZERO, ZERO])
        if (available, locked) != (acc.available, acc.locked):
            check.add(
                f"account {acc.id} (user {acc.user_id} {acc.asset}): balance "
                f"{to_str(acc.available)}/{to_str(acc.locked)} but ledger sums to "
                f"{to_str(available)}/{to_str(locked)}"
            )
    for (account_id,) in ledger:
        if account_id not in known:
            check.add(f"ledger rows for missing account {account_id}")
    return check


def _assets_conserved(session: Session, accounts: list[Any], settings: Settings,
                      mysql: bool) -> Check:
    check = Check("assets_conserved")
    held: dict[str, Decimal] = defaultdict(lambda: ZERO)
    for acc in accounts:
        held[acc.asset] += acc.available + acc.locked
    flows = _sums(
        session, [LedgerEntry.asset, LedgerEntry.reason], [LedgerEntry.delta_available],
        LedgerEntry.reason.in_(("deposit", "withdrawal")), mysql=mysql,
    )
    external: dict[str, Decimal] = defaultdict(lambda: ZERO)
    for (asset, _reason), (delta,) in flows.items():
        external[asset] += delta
    for asset in sorted(set(held) | set(external)):
        if held[asset] != external[asset]:
            check.add(
                f"{asset}: accounts hold {to_str(held[asset])} but deposits - withdrawals = "
                f"{to_str(external[asset])}"
            )
    return check


def _no_negative_balances(session: Session, accounts: list[Any], settings: Settings,
                          mysql: bool) -> Check:
    check = Check("no_negative_balances")
    for acc in accounts:
        if acc.available < 0 or acc.locked < 0:
            check.add(f"account {acc.id} is negative: {to_str(acc.available)}/{to_str(acc.locked)}")
    return check


def _locked_matches_open_orders(session: Session, accounts: list[Any], settings: Settings,
                                mysql: bool) -> Check:
    check = Check("locked_matches_open_orders")
    markets = {m.id: m for m in settings.markets}
    reserved: dict[tuple[int, str], Decimal] = defaultdict(lambda: ZERO)
    rows = session.execute(
        select(Order.id, Order.user_id, Order.market_id, Order.side, Order.type,
               Order.price, Order.amount, Order.filled_amount, Order.locked, Order.status)
        .where((Order.status == "open") | (Order.locked != ZERO))
    )
    for order in rows:
        market = markets.get(order.market_id)
        if market is None:
            check.add(f"order {order.id} is in unconfigured market {order.market_id}")
            continue
        if order.status != "open":
            check.add(f"{order.status} order {order.id} still reserves {to_str(order.locked)}")
            continue
        if order.type != "limit" or order.price is None or order.amount is None:
            check.add(f"order {order.id} is open but is not a limit order")
            continue
        unfilled = order.amount - order.filled_amount
        expected = order.price * unfilled if order.side == "buy" else unfilled
        if order.locked != expected or unfilled <= 0:
            check.add(f"open order {order.id} reserves {to_str(order.locked)}, "
                      f"expected {to_str(expected)}")
        asset = market.quote if order.side == "buy" else market.base
        reserved[(order.user_id, asset)] += order.locked
    seen = set()
    for acc in accounts:
        seen.add((acc.user_id, acc.asset))
        if acc.locked != reserved[(acc.user_id, acc.asset)]:
            check.add(
                f"user {acc.user_id} {acc.asset}: locked {to_str(acc.locked)} but open orders "
                f"reserve {to_str(reserved[(acc.user_id, acc.asset)])}"
            )
    for key, amount in reserved.items():
        if key not in seen and amount:
            check.add(f"user {key[0]} {key[1]}: open orders reserve {to_str(amount)} "
                      "without an account")
    return check


def _fills_match_trades(session: Session, accounts: list[Any], settings: Settings,
                        mysql: bool) -> Check:
    check = Check("fills_match_trades")
    by_order: dict[int, list[Decimal]] = defaultdict(lambda: [ZERO, ZERO, ZERO])
    for role in ("maker", "taker"):
        order_col = getattr(Trade, f"{role}_order_id")
        sums = _sums(session, [order_col],
                     [Trade.amount, Trade.total, getattr(Trade, f"{role}_fee")], mysql=mysql)
        for (order_id,), values in sums.items():
            totals = by_order[order_id]
            for i, value in enumerate(values):
                totals[i] += value
    rows = session.execute(
        select(Order.id, Order.type, Order.amount, Order.filled_amount, Order.filled_quote,
               Order.fee, Order.status)
    )
    for order in rows:
        amount, quote, fee = by_order.pop(order.id, [ZERO, ZERO, ZERO])
        if (order.filled_amount, order.filled_quote, order.fee) != (amount, quote, fee):
            check.add(
                f"order {order.id}: filled {to_str(order.filled_amount)}/"
                f"{to_str(order.filled_quote)} fee {to_str(order.fee)} but its trades sum to "
                f"{to_str(amount)}/{to_str(quote)} fee {to_str(fee)}"
            )
        if order.amount is not None:
            full = order.filled_amount == order.amount
            if (order.status == "filled") != full or order.filled_amount > order.amount:
                check.add(
                    f"order {order.id} is {order.status} with {to_str(order.filled_amount)} of "
                    f"{to_str(order.amount)} filled"
                )
        elif order.status == "open":
            check.add(f"order {order.id} by quote amount is open")
    for order_id in by_order:
        check.add(f"trades refer to missing order {order_id}")
    return check


def _trades_consistent(session: Session, accounts: list[Any], settings: Settings,
                       mysql: bool) -> Check:
    check = Check("trades_consistent")
    markets = {m.id: (m.base, m.quote) for m in session.execute(
        select(Market.id, Market.base, Market.quote))}
    maker, taker = aliased(Order), aliased(Order)
    rows = session.execute(
        select(*Trade.__table__.columns,
               maker.user_id.label("maker_owner"), maker.market_id.label("maker_market"),
               maker.side.label("maker_side"), maker.price.label("maker_price"),
               taker.user_id.label("taker_owner"), taker.market_id.label("taker_market"),
               taker.side.label("taker_order_side"), taker.price.label("taker_price"))
        .join(maker, maker.id == Trade.maker_order_id, isouter=True)
        .join(taker, taker.id == Trade.taker_order_id, isouter=True)
    )
    fees: dict[str, Decimal] = defaultdict(lambda: ZERO)
    for trade in rows:  # columns only: an ORM object per trade costs several times as much
        name = f"trade {trade.id}"
        if trade.amount <= 0 or trade.price <= 0:
            check.add(f"{name}: amount {to_str(trade.amount)} at price {to_str(trade.price)}")
        if trade.total != trade.price * trade.amount:
            check.add(f"{name}: total {to_str(trade.total)} but price x amount = "
                      f"{to_str(trade.price * trade.amount)}")
        base, quote = markets.get(trade.market_id, ("?", "?"))
        bought, sold = (trade.amount, base), (trade.total, quote)  # what buyer, seller receive
        received = {"taker": bought if trade.taker_side == "buy" else sold,
                    "maker": sold if trade.taker_side == "buy" else bought}
        for role, fee in (("maker", trade.maker_fee), ("taker", trade.taker_fee)):
            amount, asset = received[role]
            if fee < 0 or (fee and fee >= amount):
                check.add(f"{name}: {role} fee {to_str(fee)} {asset} is not below the "
                          f"{to_str(amount)} {asset} the {role} received")
            fees[asset] += fee
        if trade.maker_user_id == trade.taker_user_id:
            check.add(f"{name}: user {trade.maker_user_id} traded with itself")
        if trade.maker_owner is not None:
            _compare(check, name, f"maker order {trade.maker_order_id}", {
                "user": (trade.maker_user_id, trade.maker_owner),
                "market": (trade.market_id, trade.maker_market),
                "side": ("sell" if trade.taker_side == "buy" else "buy", trade.maker_side),
                "price": (trade.price, trade.maker_price),
            })
        if trade.taker_owner is not None:
            _compare(check, name, f"taker order {trade.taker_order_id}", {
                "user": (trade.taker_user_id, trade.taker_owner),
                "market": (trade.market_id, trade.taker_market),
                "side": (trade.taker_side, trade.taker_order_side),
            })
            limit = trade.taker_price
            if limit is not None and (trade.price > limit if trade.taker_side == "buy"
                                      else trade.price < limit):
                check.add(f"{name}: price {to_str(trade.price)} is beyond the limit "
                          f"{to_str(limit)} of taker order {trade.taker_order_id}")
    fee_user = session.scalar(FEE_USER_QUERY)
    credited = _sums(session, [LedgerEntry.asset], [LedgerEntry.delta_available],
                     LedgerEntry.user_id == fee_user, LedgerEntry.reason == "trade", mysql=mysql)
    for asset in sorted(set(fees) | {key[0] for key in credited}):
        got = credited.get((asset,), [ZERO])[0]
        if got != fees[asset]:
            check.add(f"{asset}: the fee account was credited {to_str(got)} by trades but "
                      f"the trades' fees sum to {to_str(fees[asset])}")
    return check


def _compare(check: Check, name: str, order: str,
             fields: dict[str, tuple[Any, Any]]) -> None:
    differ = [f"{key} {to_str(a) if isinstance(a, Decimal) else a} vs "
              f"{to_str(b) if isinstance(b, Decimal) else b}"
              for key, (a, b) in fields.items() if a != b]
    if differ:
        check.add(f"{name} disagrees with its {order}: {', '.join(differ)}")
