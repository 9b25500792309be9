"""Acceptance 1: random sequences of orders and cancels through the real engine and database
give the same outcomes, fills, remaining amounts and balances as a small in-memory model.

The model below is written from CONTRACT §6 alone, as plainly as possible: a list of orders,
sorted on every placement; no paging, no ledger, no SQL. Runs many examples on SQLite and a
few on MySQL.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select

from stockex import auth
from stockex.config import Settings
from stockex.db import Database
from stockex.errors import DomainError
from stockex.markets import sync_markets
from stockex.models import Account, Base, Order, Trade, User
from stockex.trading import accounts, orders
from stockex.trading.order_request import parse_order_request
from stockex.trading.reconcile import reconcile

D = Decimal
USERS = ("user0", "user1", "user2")
START = {"user0": {"ASA": D(50), "XU": D(5000)}, "user1": {"ASA": D(50), "XU": D(5000)},
         "user2": {"ASA": D(2), "XU": D(150)}}  # user2 runs out of money now and then
MAKER_FEE, TAKER_FEE = D("0.001"), D("0.002")  # asaxu in tests/conftest.py
STEP = D("0.001")
ZERO = D(0)


# --------------------------------------------------------------------------- the model


@dataclass
class ModelOrder:
    ref: int
    user: str
    side: str
    price: D | None
    amount: D | None
    filled: D = D(0)
    status: str = "open"
    locked: D = D(0)


@dataclass
class Model:
    balances: dict[tuple[str, str], list[D]] = field(default_factory=dict)
    orders: list[ModelOrder] = field(default_factory=list)

    def __post_init__(self) -> None:
        for user, assets in START.items():
            for asset, amount in assets.items():
                self.balances[(user, asset)] = [amount, D(0)]
        for asset in ("ASA", "XU"):
            self.balances[("fees", asset)] = [D(0), D(0)]

    def move(self, user: str, asset: str, available: D, locked: D = ZERO) -> None:
        balance = self.balances[(user, asset)]
        balance[0] += available
        balance[1] += locked
        assert balance[0] >= 0 and balance[1] >= 0

    def place(self, user: str, side: str, kind: str, tif: str, price: D | None,
              amount: D | None, quote: D | None) -> tuple[str, list[tuple[int, D, D]]]:
        """Returns (status or error code, [(maker ref, price, amount)])."""
        book = [o for o in self.orders if o.status == "open" and o.side != side]
        if side == "buy":
            book.sort(key=lambda o: (o.price, o.ref))
        else:
            book.sort(key=lambda o: (-o.price, o.ref))  # type: ignore[operator]
        fills: list[tuple[ModelOrder, D]] = []
        own: list[ModelOrder] = []
        left, left_quote, complete = amount, quote, False
        for maker in book:
            assert maker.price is not None and maker.amount is not None
            if price is not None and (maker.price > price if side == "buy"
                                      else maker.price < price):
                break
            if left is not None:
                want = left
            else:
                assert left_quote is not None
                want = (left_quote / maker.price).quantize(STEP, rounding=ROUND_DOWN)
                if want == 0:  # also before an own order: one it cannot reach stays
                    complete = True
                    break
            if maker.user == user:
                own.append(maker)
                continue
            qty = min(want, maker.amount - maker.filled)
            fills.append((maker, qty))
            if left is not None:
                left -= qty
                if left == 0:
                    complete = True
                    break
            else:
                assert left_quote is not None
                left_quote -= qty * maker.price
                if qty == want:  # the rest buys no step here, nor at a worse price
                    complete = True
                    break
        if kind == "market" and not fills:  # nothing to match, FOK or IOC (CONTRACT §6)
            return "insufficient_liquidity", []
        if tif == "FOK" and not complete:
            return "fok_not_filled", []
        pay_asset = "XU" if side == "buy" else "ASA"
        if kind == "limit":
            assert price is not None and amount is not None
            need = price * amount if side == "buy" else amount
        elif side == "sell":
            assert amount is not None
            need = amount
        elif quote is not None:
            need = quote
        else:
            need = sum((q * m.price for m, q in fills), D(0))  # type: ignore[misc]
        if self.balances[(user, pay_asset)][0] < need:
            return "insufficient_balance", []

        order = ModelOrder(len(self.orders), user, side, price, amount)
        self.orders.append(order)
        if kind == "limit":
            self.move(user, pay_asset, -need, need)
        for mine in own:
            self.move(user, "XU" if mine.side == "buy" else "ASA", mine.locked, -mine.locked)
            mine.status, mine.locked = "cancelled", D(0)
        for maker, qty in fills:
            total = qty * maker.price  # type: ignore[operator]
            if side == "buy":
                if kind == "limit":
                    self.move(user, "XU", price * qty - total, -price * qty)  # type: ignore[operator]
                else:
                    self.move(user, "XU", -total)
                self.move(user, "ASA", qty - qty * TAKER_FEE)
                self.move(maker.user, "ASA", D(0), -qty)
                self.move(maker.user, "XU", total - total * MAKER_FEE)
                self.move("fees", "ASA", qty * TAKER_FEE)
                self.move("fees", "XU", total * MAKER_FEE)
                maker.locked -= qty
            else:
                if kind == "limit":
                    self.move(user, "ASA", D(0), -qty)
                else:
                    self.move(user, "ASA", -qty)
                self.move(user, "XU", total - total * TAKER_FEE)
                self.move(maker.user, "XU", D(0), -total)
                self.move(maker.user, "ASA", qty - qty * MAKER_FEE)
                self.move("fees", "XU", total * TAKER_FEE)
                self.move("fees", "ASA", qty * MAKER_FEE)
                maker.locked -= total
            maker.filled += qty
            order.filled += qty
            if maker.filled == maker.amount:
                maker.status = "filled"
        if kind == "market":
            order.status = "filled" if complete else "cancelled"
        else:
            assert price is not None and amount is not None
            rest = amount - order.filled
            reserve = price * rest if side == "buy" else rest
            if rest == 0:
                order.status = "filled"
            elif tif == "GTC":
                order.locked = reserve
            else:
                order.status = "cancelled"
                self.move(user, pay_asset, reserve, -reserve)
        return order.status, [(m.ref, m.price, q) for m, q in fills]  # type: ignore[misc]

    def cancel(self, ref: int) -> str:
        order = self.orders[ref]
        if order.status != "open":
            return "order_not_open"
        asset = "XU" if order.side == "buy" else "ASA"
        self.move(order.user, asset, order.locked, -order.locked)
        order.status, order.locked = "cancelled", D(0)
        return "cancelled"


# --------------------------------------------------------------------------- operations

AMOUNTS = st.sampled_from([D("0.5"), D("1"), D("1.5"), D("2"), D("3.001"), D("0.999")])


@st.composite
def place_op(draw: st.DrawFn) -> tuple[Any, ...]:
    side = draw(st.sampled_from(["buy", "sell"]))
    # buyers bid 99..102 and sellers ask 98..101: many orders cross, some rest
    prices = [D(99), D(100), D(101), D(102)] if side == "buy" else [D(98), D(99), D(100),
                                                                    D(101)]
    return (
        "place", draw(st.sampled_from(USERS)), side,
        draw(st.sampled_from(["limit", "limit", "limit", "market"])),
        draw(st.sampled_from(["GTC", "GTC", "GTC", "IOC", "FOK"])),
        draw(st.sampled_from(prices)), draw(AMOUNTS),
        draw(st.sampled_from([None, D("99"), D("250.5"), D("150.7")])),
    )


cancel_op = st.tuples(st.just("cancel"), st.integers(min_value=0, max_value=40))
OPERATIONS = st.lists(st.one_of(place_op(), place_op(), place_op(), cancel_op),
                      min_size=3, max_size=40)
# Every example starts from a small book, so that even short sequences trade.
SEED = [
    ("place", "user0", "sell", "limit", "GTC", D(100), D("1.5"), None),
    ("place", "user1", "sell", "limit", "GTC", D(101), D("2"), None),
    ("place", "user1", "sell", "limit", "GTC", D(100), D("1"), None),
    ("place", "user1", "buy", "limit", "GTC", D(99), D("1"), None),
    ("place", "user0", "buy", "limit", "GTC", D(98), D("2"), None),
]


def body_of(op: tuple[Any, ...]) -> dict[str, Any]:
    _, _, side, kind, tif, price, amount, quote = op
    body: dict[str, Any] = {"market": "asaxu", "side": side, "type": kind}
    if kind == "limit":
        body.update(price=str(price), amount=str(amount), time_in_force=tif)
    else:
        body["time_in_force"] = "IOC" if tif == "GTC" else tif
        if side == "buy" and quote is not None:
            body["quote_amount"] = str(quote)
        else:
            body["amount"] = str(amount)
    return body


def fresh_exchange(db: Database, config: Settings) -> dict[str, int]:
    ids = {}
    for user in USERS:
        ids[user] = auth.create_user(db, config, user, "password-123").id
        for asset, amount in START[user].items():
            accounts.deposit(db, config, user, asset, str(amount))
    return ids


def run_and_compare(db: Database, config: Settings, operations: list[tuple[Any, ...]]) -> None:
    ids = fresh_exchange(db, config)
    model = Model()
    real_ids: list[int] = []  # model ref -> order id
    for op in SEED + operations:
        if op[0] == "cancel":
            if not real_ids:
                continue
            ref = op[1] % len(real_ids)
            expected = model.cancel(ref)
            owner = model.orders[ref].user
            try:
                got = orders.cancel_order(db, None, config, ids[owner], real_ids[ref]).status
            except DomainError as exc:
                got = exc.code
            assert got == expected, (op, got, expected)
            continue
        user, side, kind = op[1], op[2], op[3]
        body = body_of(op)
        price = D(body["price"]) if "price" in body else None
        amount = D(body["amount"]) if "amount" in body else None
        quote = D(body["quote_amount"]) if "quote_amount" in body else None
        expected, expected_fills = model.place(user, side, kind, body["time_in_force"], price,
                                               amount, quote)
        event(f"placement: {expected}")
        if expected_fills:
            event("placement with fills")
        try:
            placed = orders.place_order(db, None, ids[user],
                                        parse_order_request(body, config)).order
        except DomainError as exc:
            assert exc.code == expected, (body, exc.code, expected)
            continue
        assert placed.status == expected, (body, placed.status, expected)
        real_ids.append(placed.id)
        assert len(real_ids) == len(model.orders)
        maker_refs = {order_id: ref for ref, order_id in enumerate(real_ids)}
        with db.read() as session:
            trades = session.execute(
                select(Trade.maker_order_id, Trade.price, Trade.amount)
                .where(Trade.taker_order_id == placed.id).order_by(Trade.id)
            ).all()
        got_fills = [(maker_refs[m], p, a) for m, p, a in trades]
        assert got_fills == expected_fills, (body, got_fills, expected_fills)
        assert [f.amount for f in placed.fills] == [a for _, _, a in expected_fills]

    # every order's state and every balance, including the fee account
    with db.read() as session:
        rows = {r.id: r for r in session.execute(
            select(Order.id, Order.status, Order.filled_amount, Order.locked))}
        balances = {
            (name, asset): [available, locked]
            for name, asset, available, locked in session.execute(
                select(User.username, Account.asset, Account.available, Account.locked)
                .join(User, User.id == Account.user_id).where(Account.asset.in_(("ASA", "XU")))
            )
        }
    for ref, order_id in enumerate(real_ids):
        mine = model.orders[ref]
        row = rows[order_id]
        assert (row.status, row.filled_amount, row.locked) == (mine.status, mine.filled,
                                                               mine.locked), ref
    for key, (available, locked) in model.balances.items():
        assert balances.get(key, [D(0), D(0)]) == [available, locked], key
    failed = [c.name for c in reconcile(db, config) if not c.ok]
    assert failed == []


SUPPRESS = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


@pytest.mark.slow
@settings(max_examples=100, deadline=None, suppress_health_check=SUPPRESS)
@given(operations=OPERATIONS)
def test_engine_matches_the_model_on_sqlite(sqlite_template: Path, make_settings,  # type: ignore[no-untyped-def]
                                            operations) -> None:
    directory = Path(tempfile.mkdtemp(prefix="stockex-prop-"))
    try:
        path = directory / "stockex.db"
        shutil.copyfile(sqlite_template, path)
        db = Database(f"sqlite:///{path}")
        config = make_settings(db.url)
        sync_markets(db, config)
        run_and_compare(db, config, operations)
        db.dispose()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.mysql_only
@settings(max_examples=12, deadline=None, suppress_health_check=SUPPRESS)
@given(operations=OPERATIONS)
def test_engine_matches_the_model_on_mysql(mysql_template: Database, make_settings,  # type: ignore[no-untyped-def]
                                           operations) -> None:
    def empty(session) -> None:  # type: ignore[no-untyped-def]
        for table in reversed(Base.metadata.sorted_tables):
            session.execute(delete(table))

    mysql_template.transaction(empty)
    config = make_settings(mysql_template.url)
    sync_markets(mysql_template, config)
    run_and_compare(mysql_template, config, operations)
