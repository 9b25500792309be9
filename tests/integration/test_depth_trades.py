"""Depth and public trades from the internal order book, on SQLite and MySQL."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, insert, select, text

from stockex.book_queries import read_trades
from stockex.models import Order, Trade, User

NOW = 1_719_858_240


def add_user(session, name: str) -> int:  # type: ignore[no-untyped-def]
    user = User(username=name, password_hash="x", role="user", created_at=NOW)
    session.add(user)
    session.flush()
    return user.id


def order(user_id: int, side: str, price: str | None, amount: str, filled: str = "0",
          status: str = "open", kind: str = "limit", market: str = "asaxu") -> Order:
    return Order(
        user_id=user_id, market_id=market, side=side, type=kind, time_in_force="GTC",
        price=None if price is None else Decimal(price), amount=Decimal(amount),
        filled_amount=Decimal(filled), filled_quote=Decimal(0), fee=Decimal(0),
        fee_asset="XU", locked=Decimal(0), status=status, created_at=NOW, updated_at=NOW,
    )


@pytest.fixture
def book(database):  # type: ignore[no-untyped-def]
    def work(session) -> None:  # type: ignore[no-untyped-def]
        alice, bob = add_user(session, "alice"), add_user(session, "bob")
        session.add_all([
            order(alice, "sell", "25100", "1.5"),
            order(bob, "sell", "25100", "2", filled="0.5"),  # 1.5 left
            order(alice, "sell", "25050", "0.001"),
            order(bob, "sell", "25200.5", "3"),
            order(alice, "sell", "24000", "9", status="cancelled"),
            order(alice, "sell", "24500", "1", filled="1", status="filled"),
            order(alice, "buy", "24900", "1"),
            order(bob, "buy", "24950", "0.25"),
            order(bob, "buy", "24900", "2.125", filled="0.125"),
            order(bob, "buy", None, "5", kind="market", status="cancelled"),
            order(alice, "buy", "30000", "1", market="btcvnd"),
        ])

    database.transaction(work)


def test_depth_sums_open_limit_orders_per_price(client, book) -> None:  # type: ignore[no-untyped-def]
    body = client.get("/api/v1/markets/asaxu/depth").get_json()
    assert body["market"] == "asaxu" and isinstance(body["timestamp"], int)
    local = datetime.fromisoformat(body["timestamp_local"])  # CONTRACT §4: *_local beside it
    assert local.utcoffset() == timedelta(hours=7) and local.timestamp() == body["timestamp"]
    assert body["asks"] == [["25050", "0.001"], ["25100", "3"], ["25200.5", "3"]]
    assert body["bids"] == [["24950", "0.25"], ["24900", "3"]]


def test_depth_limit_counts_levels(client, book) -> None:  # type: ignore[no-untyped-def]
    body = client.get("/api/v1/markets/asaxu/depth?limit=1").get_json()
    assert body["asks"] == [["25050", "0.001"]] and body["bids"] == [["24950", "0.25"]]
    for bad in ("0", "1001", "x"):
        response = client.get(f"/api/v1/markets/asaxu/depth?limit={bad}")
        assert response.status_code == 400
        assert response.get_json()["error"]["code"] == "invalid_limit"


def test_empty_book(client) -> None:  # type: ignore[no-untyped-def]
    body = client.get("/api/v1/markets/btcvnd/depth").get_json()
    assert body["asks"] == [] and body["bids"] == []
    assert client.get("/api/v1/markets/btcvnd/trades").get_json() == []


@pytest.fixture
def trades(database, book):  # type: ignore[no-untyped-def]
    def work(session) -> None:  # type: ignore[no-untyped-def]
        maker = session.query(Order).filter_by(side="sell", price=Decimal("25100")).first()
        taker = session.query(Order).filter_by(side="buy", price=Decimal("24900")).first()
        for i in range(5):
            price, amount = Decimal(25_000 + i), Decimal("0.5")
            session.add(Trade(
                market_id="asaxu", price=price, amount=amount, total=price * amount,
                maker_order_id=maker.id, taker_order_id=taker.id, maker_user_id=maker.user_id,
                taker_user_id=taker.user_id, taker_side="buy" if i % 2 else "sell",
                maker_fee=Decimal(0), taker_fee=Decimal(0), created_at=NOW + 60 * i,
            ))

    database.transaction(work)


def test_trades_newest_first_with_range_and_limit(client, trades) -> None:  # type: ignore[no-untyped-def]
    everything = client.get("/api/v1/markets/asaxu/trades").get_json()
    assert [t["created_at"] for t in everything] == [NOW + 60 * i for i in range(4, -1, -1)]
    newest = everything[0]
    assert set(newest) == {"id", "price", "amount", "total", "taker_side", "created_at",
                           "created_at_local"}
    assert newest["price"] == "25004" and newest["amount"] == "0.5"
    assert newest["total"] == "12502" and newest["taker_side"] == "sell"
    assert newest["created_at_local"] == "2024-07-02T01:28:00+07:00"
    window = client.get(
        "/api/v1/markets/asaxu/trades",
        query_string={"time_from": NOW + 60, "time_to": "2024-07-02T01:27:00", "limit": 2},
    ).get_json()
    assert [t["created_at"] for t in window] == [NOW + 180, NOW + 120]
    bad = client.get("/api/v1/markets/asaxu/trades?time_from=10&time_to=9")
    assert bad.get_json()["error"]["code"] == "invalid_time_range"


def test_depth_is_one_state_of_the_book_even_when_a_trade_commits_while_it_is_read(  # type: ignore[no-untyped-def]
    client, database, monkeypatch
) -> None:
    """A buy crossing the best ask commits while the depth is being read. On MySQL (READ
    COMMITTED: each statement sees what has committed when it starts) the asks and the bids
    were two statements, and the answer could hold the ask from before and the buy's resting
    rest from after: a crossed book (best bid 101 above best ask 100) that never existed."""
    from contextlib import contextmanager

    from sqlalchemy import update

    def setup(session) -> int:  # type: ignore[no-untyped-def]
        alice, bob = add_user(session, "alice"), add_user(session, "bob")
        session.add(order(alice, "sell", "100", "1"))
        return bob

    bob = database.transaction(setup)

    def trade(session) -> None:  # type: ignore[no-untyped-def]
        session.execute(update(Order).where(Order.side == "sell")
                        .values(filled_amount=Decimal(1), status="filled"))
        session.add(order(bob, "buy", "101", "1.5", filled="1"))

    real_read = database.read
    traded: list[bool] = []

    @contextmanager
    def read_while_trading():  # type: ignore[no-untyped-def]
        with real_read() as session:
            real_execute = session.execute

            def execute(*args, **kwargs):  # type: ignore[no-untyped-def]
                rows = real_execute(*args, **kwargs).freeze()  # read in full
                if not traded:
                    traded.append(True)
                    database.transaction(trade)  # commits between this read and the next
                return rows()

            session.execute = execute  # type: ignore[method-assign]
            yield session

    monkeypatch.setattr(database, "read", read_while_trading)
    body = client.get("/api/v1/markets/asaxu/depth").get_json()
    assert traded
    assert (body["asks"], body["bids"]) in (
        ([["100", "1"]], []),  # before the trade
        ([], [["101", "0.5"]]),  # after it
    )


def add_trades(session, created_at: list[int], market: str = "asaxu") -> list[int]:  # type: ignore[no-untyped-def]
    """Trades at these times (ids ascending in this order); their ids."""
    user = session.query(User).first() or User(
        username="maker", password_hash="x", role="user", created_at=NOW)
    session.add(user)
    session.flush()
    resting = order(user.id, "sell", "100", "1000000", market=market)
    session.add(resting)
    session.flush()
    first = session.execute(select(func.max(Trade.id))).scalar() or 0
    session.execute(insert(Trade), [
        {"market_id": market, "price": Decimal(100), "amount": Decimal(1),
         "total": Decimal(100), "maker_order_id": resting.id, "taker_order_id": resting.id,
         "maker_user_id": user.id, "taker_user_id": user.id, "taker_side": "buy",
         "maker_fee": Decimal(0), "taker_fee": Decimal(0), "created_at": t}
        for t in created_at
    ])
    return list(session.execute(
        select(Trade.id).where(Trade.id > first).order_by(Trade.id)).scalars())


def test_a_time_window_reads_about_limit_trades_on_mysql(mysql_database) -> None:  # type: ignore[no-untyped-def]
    """MariaDB chose to read ix_trades_market_id_created_at from the market's newest trade
    down (an equality lookup on market_id), not the range up to time_to: a page in the middle
    of a 3,000-trade history read the 1,500 trades after it to answer 50."""
    times = [NOW + i for i in range(3000)]
    mysql_database.transaction(lambda session: add_trades(session, times))
    with mysql_database.engine.connect() as conn:
        conn.execute(text("ANALYZE TABLE trades"))  # the statistics a grown table has

    def rows_read(session) -> int:  # type: ignore[no-untyped-def]
        status = session.execute(text("SHOW SESSION STATUS LIKE 'Handler_read_%'"))
        return sum(int(v) for k, v in status if k in ("Handler_read_next", "Handler_read_prev"))

    for time_from, time_to in ((None, NOW + 1500), (NOW + 1000, None), (NOW + 100, NOW + 2000),
                               (None, None)):
        with mysql_database.read() as session:
            before = rows_read(session)
            found = read_trades(session, "asaxu", 50, time_from, time_to)
            read = rows_read(session) - before
        assert len(found) == 50
        assert found[0].created_at == (NOW + 2999 if time_to is None else time_to)
        assert read <= 60, (time_from, time_to, read)


TRADES = "/api/v1/markets/asaxu/trades"


def page_through(client, limit: int, **params) -> list[list[dict]]:  # type: ignore[no-untyped-def]
    """Every page of a download that passes the last id of each page as before_id."""
    pages: list[list[dict]] = []
    query = {"limit": limit, **params}
    while True:
        response = client.get(TRADES, query_string=query)
        assert response.status_code == 200, response.get_json()
        pages.append(response.get_json())
        if len(pages[-1]) < limit:
            return pages
        query["before_id"] = pages[-1][-1]["id"]
        assert len(pages) < 100, "paging does not end"


def test_paging_by_before_id_gives_each_trade_of_a_busy_second_once(client, database) -> None:  # type: ignore[no-untyped-def]
    """More than ``limit`` trades in one second: time_to could not page through them (the
    next page with time_to = that second repeats it), and before_id did not exist."""
    ids = database.transaction(lambda session: add_trades(session, [NOW] * 250))
    pages = page_through(client, 100)
    assert [len(page) for page in pages] == [100, 100, 50]
    assert [t["id"] for page in pages for t in page] == sorted(ids, reverse=True)


def test_paging_keeps_the_order_when_a_machine_clock_is_behind(client, database) -> None:  # type: ignore[no-untyped-def]
    """Trades placed through a machine one second behind the others: higher ids, earlier
    created_at. Paging still lists every trade once, in the order of the unpaged list."""
    times = [NOW + 1] * 30 + [NOW] * 20 + [NOW + 1] * 30 + [NOW] * 20 + [NOW + 2] * 10
    database.transaction(lambda session: add_trades(session, times))
    everything = client.get(TRADES, query_string={"limit": 1000}).get_json()
    assert [t["created_at"] for t in everything] == sorted(times, reverse=True)
    for limit in (7, 25, 30, 50):
        paged = [t for page in page_through(client, limit) for t in page]
        assert paged == everything, limit


def test_before_id_combines_with_the_time_range(client, database) -> None:  # type: ignore[no-untyped-def]
    ids = database.transaction(
        lambda session: add_trades(session, [NOW] * 30 + [NOW + 1] * 30 + [NOW + 2] * 30))
    second = sorted(ids[30:60], reverse=True)
    pages = page_through(client, 12, time_from=NOW + 1, time_to=NOW + 1)
    assert [t["id"] for page in pages for t in page] == second
    up_to = client.get(TRADES, query_string={"time_to": NOW + 1, "before_id": ids[45],
                                             "limit": 20}).get_json()
    assert [t["id"] for t in up_to] == sorted(ids[25:45], reverse=True)
    # the newest-first order of before_id alone: the trades listed after that one
    alone = client.get(TRADES, query_string={"before_id": ids[5]}).get_json()
    assert [t["id"] for t in alone] == sorted(ids[:5], reverse=True)
    # an id that is no trade of this market: the trades below it
    other = database.transaction(lambda session: add_trades(session, [NOW], market="btcvnd"))
    assert client.get(TRADES, query_string={"before_id": other[0]}).get_json()[0]["id"] == ids[-1]
    beyond = client.get(TRADES, query_string={"before_id": 2**63 - 1, "limit": 3}).get_json()
    assert [t["id"] for t in beyond] == sorted(ids, reverse=True)[:3]
    assert client.get(TRADES, query_string={"before_id": ids[0]}).get_json() == []
    assert len(client.get(TRADES, query_string={"before_id": ""}).get_json()) == 50


def test_a_bad_before_id_is_refused_as_by_account_trades(app, client, database) -> None:  # type: ignore[no-untyped-def]
    from stockex import auth
    from stockex.api import services

    with app.app_context():
        settings = services().settings
    user = auth.create_user(database, settings, "reader", "password-123")
    token = {"Authorization": f"Bearer {auth.issue_token(settings, user.id, user.role)}"}
    for bad in ("0", "-1", "x", "1.5", str(2**63), str(10**30)):
        public = client.get(TRADES, query_string={"before_id": bad})
        own = client.get("/api/v1/account/trades", query_string={"before_id": bad},
                         headers=token)
        assert public.status_code == own.status_code == 400, bad
        assert public.get_json() == own.get_json(), bad
        assert public.get_json()["error"]["code"] == "invalid_before_id"


def test_a_before_id_page_reads_about_limit_trades_on_mysql(mysql_database) -> None:  # type: ignore[no-untyped-def]
    """Deep in a 3,000-trade history (ten a second), with and without a time range: the
    page reads its trades and the rest of the first one's second, not the history above."""
    quiet = mysql_database.transaction(lambda s: add_trades(s, [NOW] * 5, market="btcvnd"))
    times = [NOW + i // 10 for i in range(3000)]
    ids = mysql_database.transaction(lambda session: add_trades(session, times))
    with mysql_database.engine.connect() as conn:
        conn.execute(text("ANALYZE TABLE trades"))

    def rows_read(session) -> int:  # type: ignore[no-untyped-def]
        status = session.execute(text("SHOW SESSION STATUS LIKE 'Handler_read_%'"))
        return sum(int(v) for k, v in status if k in ("Handler_read_next", "Handler_read_prev"))

    middle = ids[1505]
    for time_from, time_to in ((None, None), (None, NOW + 150), (NOW + 100, None),
                               (NOW + 100, NOW + 200)):
        with mysql_database.read() as session:
            before = rows_read(session)
            found = read_trades(session, "asaxu", 50, time_from, time_to, before_id=middle)
            read = rows_read(session) - before
        assert [t.id for t in found] == list(range(middle - 1, middle - 51, -1))
        assert read <= 50 + 10 + 5, (time_from, time_to, read)
    with mysql_database.read() as session:  # whose trades are far below the busy one's
        before = rows_read(session)
        found = read_trades(session, "btcvnd", 50, before_id=2**63 - 1)
        read = rows_read(session) - before
    assert [t.id for t in found] == quiet[::-1] and read <= 10, read
