"""Balances change only through the ledger; reconcile finds every kind of inconsistency."""

from __future__ import annotations

from decimal import Decimal as D

import pytest
from sqlalchemy import select, update

from stockex.models import Account, LedgerEntry, Order, Trade
from stockex.trading import accounts
from stockex.trading.reconcile import reconcile


def test_deposits_and_withdrawals_write_ledger_rows(exchange) -> None:  # type: ignore[no-untyped-def]
    exchange.user("alice")
    assert accounts.deposit(exchange.db, exchange.settings, "alice", "XU", "100.5").available \
        == D("100.5")
    after = accounts.withdraw(exchange.db, exchange.settings, "alice", "XU", "0.5")
    assert (after.available, after.locked) == (D("100"), D(0))
    with exchange.db.read() as session:
        rows = session.execute(
            select(LedgerEntry.reason, LedgerEntry.delta_available, LedgerEntry.delta_locked)
            .order_by(LedgerEntry.id)
        ).all()
    assert rows == [("deposit", D("100.5"), D(0)), ("withdrawal", D("-0.5"), D(0))]
    exchange.assert_reconciles()


def test_check_constraints_refuse_negative_balances(database) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy.exc import IntegrityError, OperationalError

    from stockex.models import User

    def work(session) -> None:  # type: ignore[no-untyped-def]
        user = User(username="zed", password_hash="x", role="user", created_at=0)
        session.add(user)
        session.flush()
        session.add(Account(user_id=user.id, asset="XU", available=D(1), locked=D(0),
                            updated_at=0))
        session.flush()
        # bypass the Amount type's own refusal to show the database constraint holds
        session.execute(update(Account).values(available=Account.available - 5))

    with pytest.raises((IntegrityError, OperationalError)):
        database.transaction(work)


def _failed(exchange) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    return {c.name: c.problems for c in reconcile(exchange.db, exchange.settings) if not c.ok}


@pytest.fixture
def traded(exchange):  # type: ignore[no-untyped-def]
    exchange.user("alice", ASA="10", XU="10000")
    exchange.user("bob", ASA="10", XU="10000")
    exchange.order("alice", side="sell", type="limit", price="100", amount="2")
    exchange.order("bob", side="buy", type="limit", price="100", amount="1")
    exchange.order("bob", side="buy", type="limit", price="90", amount="1")
    exchange.assert_reconciles()
    return exchange


def _account_id(exchange, user_id: int, asset: str) -> int:  # type: ignore[no-untyped-def]
    with exchange.db.read() as session:
        return int(session.scalar(select(Account.id).where(Account.user_id == user_id,
                                                           Account.asset == asset)))


def _tamper(exchange, statement) -> None:  # type: ignore[no-untyped-def]
    exchange.db.transaction(lambda session: session.execute(statement))


def test_reconcile_finds_a_balance_changed_behind_the_ledger(traded) -> None:  # type: ignore[no-untyped-def]
    alice = traded.ids["alice"]
    _tamper(traded, update(Account).where(Account.user_id == alice, Account.asset == "XU")
            .values(available=D("1000000")))
    failed = _failed(traded)
    assert set(failed) == {"ledger_matches_balances", "assets_conserved"}
    assert "XU" in failed["assets_conserved"][0]
    # the amounts read as a person writes them, not as DECIMAL(36,18) ("1000000.0000...",
    # "0E-18")
    assert failed["ledger_matches_balances"] == [
        f"account {_account_id(traded, alice, 'XU')} (user {alice} XU): balance 1000000/0 but "
        "ledger sums to 10099.9/0"
    ]
    assert failed["assets_conserved"] == [
        "XU: accounts hold 1009900.1 but deposits - withdrawals = 20000"
    ]


def test_reconcile_finds_a_lock_without_an_order(traded) -> None:  # type: ignore[no-untyped-def]
    bob = traded.ids["bob"]
    with traded.db.read() as session:
        order_id = session.scalar(select(Order.id).where(Order.user_id == bob,
                                                         Order.status == "open"))
    _tamper(traded, update(Order).where(Order.id == order_id).values(status="cancelled"))
    failed = _failed(traded)
    assert set(failed) == {"locked_matches_open_orders"}
    assert any("still reserves" in p for p in failed["locked_matches_open_orders"])


def test_reconcile_finds_fills_without_trades(traded) -> None:  # type: ignore[no-untyped-def]
    alice = traded.ids["alice"]
    _tamper(traded, update(Order).where(Order.user_id == alice)
            .values(filled_amount=D("2"), status="filled", locked=D(0)))
    failed = _failed(traded)
    assert "fills_match_trades" in failed
    assert "locked_matches_open_orders" in failed


def test_reconcile_finds_a_ledger_row_without_a_balance(traded) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import insert

    with traded.db.read() as session:
        account = session.execute(select(Account).limit(1)).scalar_one()
    _tamper(traded, insert(LedgerEntry).values(
        account_id=account.id, user_id=account.user_id, asset=account.asset,
        delta_available=D("1"), delta_locked=D(0), reason="deposit", created_at=0))
    assert set(_failed(traded)) == {"ledger_matches_balances", "assets_conserved"}


def _trade(exchange):  # type: ignore[no-untyped-def]
    """The one trade of ``traded``: alice's sell (maker) and bob's buy (taker), 1 @ 100, fees
    0.1 XU (maker, 0.001) and 0.002 ASA (taker, 0.002)."""
    with exchange.db.read() as session:
        return session.execute(select(Trade)).scalar_one()


def test_reconcile_finds_a_trade_whose_total_is_not_price_times_amount(traded) -> None:  # type: ignore[no-untyped-def]
    """Its orders' filled quotes agree with it, so only the trade itself can tell."""
    trade = _trade(traded)
    _tamper(traded, update(Trade).values(total=D("110")))
    _tamper(traded, update(Order).where(Order.id.in_((trade.maker_order_id,
                                                      trade.taker_order_id)))
            .values(filled_quote=Order.filled_quote + 10))
    assert _failed(traded) == {"trades_consistent": [
        f"trade {trade.id}: total 110 but price x amount = 100"]}


def test_reconcile_finds_trades_that_disagree_with_their_orders(traded) -> None:  # type: ignore[no-untyped-def]
    trade, bob = _trade(traded), traded.ids["bob"]
    _tamper(traded, update(Trade).values(price=D("110"), total=D("110"), maker_user_id=bob))
    _tamper(traded, update(Order).where(Order.id.in_((trade.maker_order_id,
                                                      trade.taker_order_id)))
            .values(filled_quote=Order.filled_quote + 10))
    assert _failed(traded) == {"trades_consistent": [
        f"trade {trade.id}: user {bob} traded with itself",
        f"trade {trade.id} disagrees with its maker order {trade.maker_order_id}: "
        f"user {bob} vs {traded.ids['alice']}, price 110 vs 100",
        f"trade {trade.id}: price 110 is beyond the limit 100 of taker order "
        f"{trade.taker_order_id}",
    ]}


def test_reconcile_finds_fees_out_of_bounds_or_not_credited(traded) -> None:  # type: ignore[no-untyped-def]
    """Fees are not held against today's rates (the configuration may have changed since),
    only against what every rate allows (at least 0, below what a side received) and what
    the fee account was credited."""
    trade = _trade(traded)
    _tamper(traded, update(Trade).values(taker_fee=D("1"), maker_fee=D("0")))
    _tamper(traded, update(Order).where(Order.id == trade.taker_order_id).values(fee=D("1")))
    _tamper(traded, update(Order).where(Order.id == trade.maker_order_id).values(fee=D("0")))
    assert _failed(traded) == {"trades_consistent": [
        f"trade {trade.id}: taker fee 1 ASA is not below the 1 ASA the taker received",
        "ASA: the fee account was credited 0.002 by trades but the trades' fees sum to 1",
        "XU: the fee account was credited 0.1 by trades but the trades' fees sum to 0",
    ]}


def test_balances_of_36_digits_are_stored_exactly(exchange) -> None:  # type: ignore[no-untyped-def]
    """DECIMAL(36,18) holds 12345678901.123456789012345678; Python's default 28-digit context
    stored it rounded to ...01234568 while the ledger kept every digit."""
    exchange.user("alice")
    amount = "12345678901.123456789012345678"
    view = accounts.deposit(exchange.db, exchange.settings, "alice", "XU", amount)
    assert view.available == D(amount)
    after = accounts.withdraw(exchange.db, exchange.settings, "alice", "XU",
                              "0.000000000000000001")
    assert after.available == D("12345678901.123456789012345677")
    assert exchange.balances("alice")["XU"] == ("12345678901.123456789012345677", "0")
    exchange.assert_reconciles()


@pytest.mark.mysql_only
def test_placements_cancels_deposits_and_withdrawals_racing_keep_every_invariant(  # type: ignore[no-untyped-def]
    mysql_database, make_settings
) -> None:
    """8 threads of random placements (every type, time in force, client ids that repeat),
    cancels, deposits and withdrawals by 6 users on one market: no error but rejections,
    and reconcile holds (READ COMMITTED, the market lock, accounts locked in key order)."""
    import random
    import threading

    from stockex import auth
    from stockex.errors import DomainError
    from stockex.trading import orders
    from stockex.trading.order_request import parse_order_request

    db = mysql_database
    settings = make_settings(db.url)
    names = [f"user{i}" for i in range(6)]
    ids: dict[str, int] = {}
    for n in names:
        ids[n] = auth.create_user(db, settings, n, "password-123").id
        accounts.deposit(db, settings, n, "ASA", "50")
        accounts.deposit(db, settings, n, "XU", "5000")
    errors: list[str] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(150):
            n = rng.choice(names)
            op = rng.random()
            try:
                if op < 0.55:
                    side = rng.choice(["buy", "sell"])
                    if rng.random() < 0.7:
                        body = {"market": "asaxu", "side": side, "type": "limit",
                                "price": str(rng.randint(95, 105)),
                                "amount": str(D(rng.randint(1, 3000)) / 1000),
                                "time_in_force": rng.choice(["GTC", "GTC", "IOC", "FOK"])}
                    elif side == "buy" and rng.random() < 0.5:
                        body = {"market": "asaxu", "side": side, "type": "market",
                                "quote_amount": str(rng.randint(1, 300)),
                                "time_in_force": rng.choice(["IOC", "FOK"])}
                    else:
                        body = {"market": "asaxu", "side": side, "type": "market",
                                "amount": str(D(rng.randint(1, 3000)) / 1000),
                                "time_in_force": rng.choice(["IOC", "FOK"])}
                    if rng.random() < 0.2:
                        body["client_order_id"] = f"c{rng.randint(1, 20)}"
                    req = parse_order_request(body, settings)
                    orders.place_order(db, None, ids[n], req)
                elif op < 0.75:
                    mine = orders.list_orders(db, ids[n], status="open", limit=5)
                    if mine:
                        orders.cancel_order(db, None, settings, ids[n], rng.choice(mine).id)
                elif op < 0.88:
                    accounts.withdraw(db, settings, n, rng.choice(["ASA", "XU"]),
                                      str(rng.randint(1, 40)))
                else:
                    accounts.deposit(db, settings, n, rng.choice(["ASA", "XU"]),
                                     str(rng.randint(1, 40)))
            except DomainError:  # rejections (funds, FOK, not open, ...) change nothing
                pass
            except Exception as exc:  # noqa: BLE001 - any other is the failure
                errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    failed = {c.name: c.problems for c in reconcile(db, settings) if not c.ok}
    assert failed == {}
