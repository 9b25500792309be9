"""Trading through the HTTP API on SQLite and MySQL: CONTRACT §6 semantics, one by one."""

from __future__ import annotations

import threading
from decimal import Decimal as D

import pytest

from stockex.cache import book_generation
from stockex.testing import lose_mysql_connection


def fee_balances(exchange) -> dict[str, D]:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from stockex.models import Account, User

    with exchange.db.read() as session:
        rows = session.execute(
            select(Account.asset, Account.locked, Account.available)
            .join(User, User.id == Account.user_id).where(User.username == "fees")
        ).all()
    return {asset: available for asset, _, available in rows if available}


def test_limit_order_rests_locks_and_cancel_releases(exchange) -> None:  # type: ignore[no-untyped-def]
    exchange.user("alice", XU="10000")
    order = exchange.order("alice", side="buy", type="limit", price="100", amount="2.5")
    assert order["status"] == "open" and order["fills"] == []
    assert order["time_in_force"] == "GTC" and order["fee_asset"] == "ASA"
    assert exchange.balances("alice")["XU"] == ("9750", "250")
    got = exchange.client.get(f"/api/v1/orders/{order['id']}", headers=exchange.headers("alice"))
    assert got.status_code == 200 and got.get_json()["id"] == order["id"]
    cancelled = exchange.client.delete(f"/api/v1/orders/{order['id']}",
                                       headers=exchange.headers("alice"))
    assert cancelled.status_code == 200
    assert cancelled.get_json()["status"] == "cancelled"
    assert exchange.balances("alice")["XU"] == ("10000", "0")
    exchange.assert_reconciles()


def test_an_order_id_in_the_path_is_ascii_digits_only(exchange) -> None:  # type: ignore[no-untyped-def]
    """As for query integers (numbers.parse_int): Werkzeug's int converter matches any
    script's digits, so /orders/١ read and cancelled order 1."""
    exchange.user("alice", XU="10000")
    order = exchange.order("alice", side="buy", type="limit", price="100", amount="1")
    arabic = "".join(chr(0x0660 + int(d)) for d in str(order["id"]))  # ARABIC-INDIC digits
    for method in (exchange.client.get, exchange.client.delete):
        response = method(f"/api/v1/orders/{arabic}", headers=exchange.headers("alice"))
        assert response.status_code == 404, response.get_json()
        assert response.get_json()["error"]["code"] == "not_found"
    got = exchange.client.get(f"/api/v1/orders/{order['id']}", headers=exchange.headers("alice"))
    assert got.get_json()["status"] == "open"


def test_price_time_priority_at_the_makers_price_with_fees(exchange) -> None:  # type: ignore[no-untyped-def]
    exchange.user("seller1", ASA="10")
    exchange.user("seller2", ASA="10")
    exchange.user("buyer", XU="100000")
    first = exchange.order("seller1", side="sell", type="limit", price="1000", amount="1")
    second = exchange.order("seller2", side="sell", type="limit", price="1000", amount="1")
    cheap = exchange.order("seller2", side="sell", type="limit", price="990", amount="1")
    taker = exchange.order("buyer", side="buy", type="limit", price="1010", amount="2.5")
    assert [(f["price"], f["amount"], f["role"]) for f in taker["fills"]] == [
        ("990", "1", "taker"), ("1000", "1", "taker"), ("1000", "0.5", "taker")
    ]
    assert taker["status"] == "filled" and taker["filled_quote"] == "2490"
    assert taker["avg_price"] == "996" and taker["fee"] == "0.005"
    # the buyer locked 1010 x 2.5 and paid 2490: nothing stays locked
    assert exchange.balances("buyer") == {"ASA": ("2.495", "0"), "BTC": ("0", "0"),
                                          "VND": ("0", "0"), "XU": ("97510", "0")}
    orders = {o["id"]: o for o in exchange.client.get(
        "/api/v1/orders", headers=exchange.headers("seller2")).get_json()}
    assert orders[cheap["id"]]["status"] == "filled"
    assert orders[second["id"]]["status"] == "open"
    assert orders[second["id"]]["filled_amount"] == "0.5"
    seller1 = exchange.client.get(f"/api/v1/orders/{first['id']}",
                                  headers=exchange.headers("seller1")).get_json()
    assert seller1["status"] == "filled" and seller1["fills"][0]["role"] == "maker"
    assert seller1["fee"] == "1" and seller1["fee_asset"] == "XU"  # 0.1% of 1000 XU
    assert fee_balances(exchange) == {"ASA": D("0.005"), "XU": D("2.49")}  # 0.2%, 0.1%
    exchange.assert_reconciles()


def test_partial_fill_at_better_price_releases_the_saving(exchange) -> None:  # type: ignore[no-untyped-def]
    exchange.user("seller", ASA="10")
    exchange.user("buyer", XU="10000")
    exchange.order("seller", side="sell", type="limit", price="90", amount="1")
    order = exchange.order("buyer", side="buy", type="limit", price="100", amount="3")
    assert order["status"] == "open" and order["filled_amount"] == "1"
    # locked = 100 x 2 unfilled; paid 90; 10000 - 90 - 200 available
    assert exchange.balances("buyer")["XU"] == ("9710", "200")
    exchange.assert_reconciles()


def test_self_trade_cancels_the_resting_order(exchange) -> None:  # type: ignore[no-untyped-def]
    exchange.user("alice", ASA="5", XU="10000")
    exchange.user("bob", ASA="5")
    own = exchange.order("alice", side="sell", type="limit", price="100", amount="1")
    other = exchange.order("bob", side="sell", type="limit", price="101", amount="1")
    taker = exchange.order("alice", side="buy", type="limit", price="105", amount="1")
    assert [f["price"] for f in taker["fills"]] == ["101"]
    mine = exchange.client.get(f"/api/v1/orders/{own['id']}", headers=exchange.headers("alice"))
    assert mine.get_json()["status"] == "cancelled"
    assert exchange.client.get(f"/api/v1/orders/{other['id']}",
                               headers=exchange.headers("bob")).get_json()["status"] == "filled"
    assert exchange.balances("alice")["ASA"] == ("5.998", "0")
    exchange.assert_reconciles()


def test_ioc_cancels_the_rest_and_fok_fills_entirely(exchange) -> None:  # type: ignore[no-untyped-def]
    exchange.user("seller", ASA="10")
    exchange.user("buyer", XU="10000")
    exchange.order("seller", side="sell", type="limit", price="100", amount="1")
    ioc = exchange.order("buyer", side="buy", type="limit", price="100", amount="3",
                         time_in_force="IOC")
    assert ioc["status"] == "cancelled" and ioc["filled_amount"] == "1"
    assert exchange.balances("buyer")["XU"] == ("9900", "0")
    nothing = exchange.order("buyer", side="buy", type="limit", price="100", amount="1",
                             time_in_force="IOC")
    assert nothing["status"] == "cancelled" and nothing["fills"] == []
    exchange.order("seller", side="sell", type="limit", price="100", amount="2")
    fok = exchange.order("buyer", side="buy", type="limit", price="100", amount="2",
                         time_in_force="FOK")
    assert fok["status"] == "filled"
    exchange.assert_reconciles()


def test_market_orders(exchange) -> None:  # type: ignore[no-untyped-def]
    exchange.user("maker", ASA="10", XU="10000")
    exchange.user("taker", ASA="10", XU="10000")
    exchange.order("maker", side="sell", type="limit", price="100", amount="1")
    exchange.order("maker", side="sell", type="limit", price="110", amount="1")
    by_amount = exchange.order("taker", side="buy", type="market", amount="1.5")
    assert by_amount["status"] == "filled" and by_amount["filled_quote"] == "155"
    assert by_amount["time_in_force"] == "IOC" and by_amount["price"] is None
    by_quote = exchange.order("taker", side="buy", type="market", quote_amount="100")
    assert by_quote["filled_amount"] == "0.5" and by_quote["status"] == "cancelled"
    assert by_quote["amount"] is None and by_quote["quote_amount"] == "100"
    exchange.order("maker", side="buy", type="limit", price="90", amount="1")
    sell = exchange.order("taker", side="sell", type="market", amount="2")
    assert sell["status"] == "cancelled" and sell["filled_amount"] == "1"
    assert exchange.balances("taker")["ASA"] == ("10.996", "0")  # +1.497 +0.499 -1
    exchange.assert_reconciles()


def test_client_order_id_is_idempotent(exchange) -> None:  # type: ignore[no-untyped-def]
    exchange.user("alice", XU="10000")
    body = {"side": "buy", "type": "limit", "price": "100", "amount": "1",
            "client_order_id": "my-1"}
    first = exchange.order("alice", **body)
    again = exchange.order("alice", expect=200, **{**body, "amount": "1.000"})
    assert again["id"] == first["id"] and again["client_order_id"] == "my-1"
    conflict = exchange.order("alice", expect=409, **{**body, "price": "101"})
    assert conflict["error"]["code"] == "duplicate_client_order_id"
    assert exchange.balances("alice")["XU"] == ("9900", "100")
    exchange.user("bob", XU="10000")  # client ids are per user
    assert exchange.order("bob", **body)["id"] != first["id"]


def test_client_order_ids_are_case_sensitive(exchange) -> None:  # type: ignore[no-untyped-def]
    """Client ids are case-sensitive (as on Binance): "CASE-1" after "case-1" is a new order.
    The test databases compare text without case like a production MySQL, where the column's
    default collation took "CASE-1" for "case-1" (200 with the other order, or a 409) until
    migration 0006 gave it a binary one."""
    exchange.user("alice", XU="10000")
    body = {"side": "buy", "type": "limit", "price": "100", "amount": "1"}
    first = exchange.order("alice", **body, client_order_id="case-1")
    seen = {first["id"]}
    for other in ({**body, "client_order_id": "CASE-1"},
                  {**body, "price": "99", "client_order_id": "Case-1"}):
        response = exchange.client.post("/api/v1/orders", headers=exchange.headers("alice"),
                                        json={"market": "asaxu", "time_in_force": "GTC",
                                              **other})
        answer = response.get_json()
        assert response.status_code == 201, answer
        assert answer["id"] not in seen
        assert answer["client_order_id"] == other["client_order_id"]
        seen.add(answer["id"])
    # and each id still finds its own order
    for client_order_id in ("case-1", "CASE-1"):
        repeat = exchange.client.post("/api/v1/orders", headers=exchange.headers("alice"),
                                      json={"market": "asaxu", "time_in_force": "GTC", **body,
                                            "client_order_id": client_order_id})
        assert repeat.status_code == 200, repeat.get_json()
        assert repeat.get_json()["client_order_id"] == client_order_id


@pytest.mark.mysql_only
def test_concurrent_repeats_of_one_client_order_id_make_one_order(  # type: ignore[no-untyped-def]
    mysql_database, make_settings
) -> None:
    from stockex import auth
    from stockex.trading import accounts, orders
    from stockex.trading.order_request import parse_order_request

    settings = make_settings(mysql_database.url)
    user = auth.create_user(mysql_database, settings, "racer", "password-123")
    accounts.deposit(mysql_database, settings, "racer", "XU", "100000")
    request = parse_order_request({"market": "asaxu", "side": "buy", "type": "limit",
                                   "price": "100", "amount": "1", "time_in_force": "GTC",
                                   "client_order_id": "x"},
                                  settings)
    results: list[object] = []

    def place() -> None:
        results.append(orders.place_order(mysql_database, None, user.id, request))

    threads = [threading.Thread(target=place) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8
    assert len({r.order.id for r in results}) == 1  # type: ignore[attr-defined]
    assert sum(r.created for r in results) == 1  # type: ignore[attr-defined]
    balance = accounts.balances_of(mysql_database, settings, user.id)
    assert {b.asset: b.locked for b in balance}["XU"] == D("100")


def test_a_duplicate_that_slips_past_the_check_is_caught_by_the_unique_key(  # type: ignore[no-untyped-def]
    exchange, monkeypatch
) -> None:
    """Two requests with one client_order_id, both checked before either committed: the
    second insert hits the unique key, rolls back, and answers like a repeat."""
    from stockex.trading import orders

    exchange.user("alice", XU="10000")
    body = {"side": "buy", "type": "limit", "price": "100", "amount": "1",
            "client_order_id": "race"}
    first = exchange.order("alice", **body)
    real_repeat = orders._repeat
    calls: list[int] = []

    def late_repeat(*args):  # type: ignore[no-untyped-def]
        calls.append(1)
        return None if len(calls) == 1 else real_repeat(*args)  # the first check "misses"

    monkeypatch.setattr(orders, "_repeat", late_repeat)
    before = exchange.snapshot()
    again = exchange.order("alice", expect=200, **body)
    assert again["id"] == first["id"] and len(calls) == 2
    conflict = exchange.order("alice", expect=409, **{**body, "price": "99"})
    assert conflict["error"]["code"] == "duplicate_client_order_id"
    assert exchange.snapshot() == before


def test_lists_filters_and_paging(exchange) -> None:  # type: ignore[no-untyped-def]
    exchange.user("maker", ASA="10")
    exchange.user("taker", XU="10000")
    placed = [exchange.order("maker", side="sell", type="limit", price=str(100 + i), amount="1")
              for i in range(4)]
    exchange.order("taker", side="buy", type="limit", price="101", amount="2")
    get = exchange.client.get
    headers = exchange.headers("maker")
    ids = [o["id"] for o in get("/api/v1/orders", headers=headers).get_json()]
    assert ids == sorted((o["id"] for o in placed), reverse=True)
    assert [o["id"] for o in get("/api/v1/orders?limit=2", headers=headers).get_json()] == ids[:2]
    page = get(f"/api/v1/orders?before_id={ids[1]}", headers=headers).get_json()
    assert [o["id"] for o in page] == ids[2:]
    filled = get("/api/v1/orders?status=filled&market=asaxu", headers=headers).get_json()
    assert {o["id"] for o in filled} == {placed[0]["id"], placed[1]["id"]}
    assert get("/api/v1/orders?status=nope", headers=headers).status_code == 400
    assert get("/api/v1/orders?market=nope", headers=headers).status_code == 404
    fills = get("/api/v1/account/trades", headers=headers).get_json()
    assert [(f["role"], f["side"], f["price"]) for f in fills] == [
        ("maker", "sell", "101"), ("maker", "sell", "100")
    ]
    assert fills[0]["fee_asset"] == "XU" and fills[0]["fee"] == "0.101"
    taker_fills = get("/api/v1/account/trades?limit=1", headers=exchange.headers("taker"))
    assert [f["role"] for f in taker_fills.get_json()] == ["taker"]
    older = get(f"/api/v1/account/trades?before_id={fills[0]['id']}", headers=headers)
    assert [f["id"] for f in older.get_json()] == [fills[1]["id"]]
    # someone else's order does not exist for you
    other = get(f"/api/v1/orders/{placed[0]['id']}", headers=exchange.headers("taker"))
    assert other.status_code == 404 and other.get_json()["error"]["code"] == "order_not_found"


def test_a_page_of_orders_matches_each_fill_to_its_order_once(  # type: ignore[no-untyped-def]
    exchange, monkeypatch
) -> None:
    """A page holds up to 500 orders and their fills are unbounded: going through every fill
    for each order cost 500 x the fills (3.5 s of CPU for 100,000 fills on a 2-core VM)."""
    from stockex.trading import orders

    exchange.user("maker", ASA="10")
    exchange.user("taker", XU="10000")
    makers = [exchange.order("maker", side="sell", type="limit", price="100", amount="0.004")
              for _ in range(8)]
    for _ in range(32):
        exchange.order("taker", side="buy", type="limit", price="100", amount="0.001",
                       time_in_force="IOC")
    comparisons = 0

    class CountedId(int):
        __hash__ = int.__hash__

        def __eq__(self, other: object) -> bool:
            nonlocal comparisons
            comparisons += 1
            return int(self) == other

    real_fills = orders._fills

    def fills_with_counted_ids(*args, **kwargs):  # type: ignore[no-untyped-def]
        found = real_fills(*args, **kwargs)
        for fill in found:
            fill.order_id = CountedId(fill.order_id)
        return found

    monkeypatch.setattr(orders, "_fills", fills_with_counted_ids)
    for name, orders_count in (("maker", 8), ("taker", 32)):
        comparisons = 0
        page = exchange.client.get("/api/v1/orders?limit=500", headers=exchange.headers(name))
        listed = page.get_json()
        assert len(listed) == orders_count
        assert all(f["order_id"] == o["id"] for o in listed for f in o["fills"])
        assert sum(len(o["fills"]) for o in listed) == 32
        assert comparisons <= 32 + orders_count, name
    by_id = {o["id"]: o for o in exchange.client.get(
        "/api/v1/orders", headers=exchange.headers("maker")).get_json()}
    for placed in makers:
        fills = by_id[placed["id"]]["fills"]
        assert len(fills) == 4
        assert [f["id"] for f in fills] == sorted((f["id"] for f in fills), reverse=True)


def test_a_cancel_reads_the_fills_outside_the_market_lock(  # type: ignore[no-untyped-def]
    exchange, monkeypatch
) -> None:
    """An order's fills are unbounded (100,000 took 3.5 s to read): read under the market's
    lock, every placement and cancel in the market waited for them."""
    from stockex.trading import orders

    exchange.user("maker", ASA="10")
    exchange.user("taker", XU="10000")
    resting = exchange.order("maker", side="sell", type="limit", price="100", amount="1")
    for _ in range(3):
        exchange.order("taker", side="buy", type="limit", price="100", amount="0.001",
                       time_in_force="IOC")
    locking_sessions: list[object] = []
    read_under_lock: list[bool] = []
    real_lock, real_fills = orders.lock_market, orders._fills

    def lock_market(session, market_id):  # type: ignore[no-untyped-def]
        locking_sessions.append(session)
        return real_lock(session, market_id)

    def fills(session, *args, **kwargs):  # type: ignore[no-untyped-def]
        read_under_lock.append(any(session is s for s in locking_sessions))
        return real_fills(session, *args, **kwargs)

    monkeypatch.setattr(orders, "lock_market", lock_market)
    monkeypatch.setattr(orders, "_fills", fills)
    response = exchange.client.delete(f"/api/v1/orders/{resting['id']}",
                                      headers=exchange.headers("maker"))
    assert response.status_code == 200
    cancelled = response.get_json()
    assert cancelled["status"] == "cancelled" and cancelled["filled_amount"] == "0.003"
    assert [f["amount"] for f in cancelled["fills"]] == ["0.001"] * 3
    assert locking_sessions and read_under_lock == [False]
    exchange.assert_reconciles()


def test_placement_and_cancel_invalidate_the_book_cache(exchange, app) -> None:  # type: ignore[no-untyped-def]
    from stockex.api import services

    with app.app_context():
        cache = services().cache
    exchange.user("alice", XU="1000")
    before = book_generation(cache, "asaxu")
    order = exchange.order("alice", side="buy", type="limit", price="10", amount="1")
    after_place = book_generation(cache, "asaxu")
    assert after_place != before
    exchange.client.delete(f"/api/v1/orders/{order['id']}", headers=exchange.headers("alice"))
    assert book_generation(cache, "asaxu") != after_place


def test_orders_need_a_token(client) -> None:  # type: ignore[no-untyped-def]
    response = client.post("/api/v1/orders", json={})
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "missing_token"
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("side", ["buy", "sell"])
def test_a_deep_sweep_reads_the_book_page_by_page(exchange, side: str) -> None:  # type: ignore[no-untyped-def]
    """More resting orders than one page (8), several at each price: still best price first,
    oldest first within a price."""
    exchange.user("maker", ASA="100", XU="1000000")
    exchange.user("taker", ASA="100", XU="1000000")
    maker_side = "sell" if side == "buy" else "buy"
    placed = [
        exchange.order("maker", side=maker_side, type="limit", price=str(100 + (i * 7) % 5),
                       amount="1")
        for i in range(23)
    ]
    ranked = sorted(placed, key=lambda o: (int(o["price"]) * (1 if side == "buy" else -1),
                                           o["id"]))
    sweep = exchange.order("taker", side=side, type="market", amount="21.5")
    assert sweep["status"] == "filled" and len(sweep["fills"]) == 22
    with exchange.db.read() as session:
        from sqlalchemy import select

        from stockex.models import Trade

        makers = list(session.scalars(select(Trade.maker_order_id).order_by(Trade.id)))
    assert makers == [o["id"] for o in ranked[:22]]
    exchange.assert_reconciles()


def test_totals_of_36_digits_are_exact(exchange, make_settings, database) -> None:  # type: ignore[no-untyped-def]
    """A market with 8 + 8 decimals: a lock of price x amount, a partial fill and the cancel
    keep every one of their up to 36 digits (Python's default context keeps 28)."""
    from stockex.api import create_app
    from stockex.markets import sync_markets

    settings = make_settings(database.url, markets=[
        {"id": "asaxu", "base": "ASA", "quote": "XU", "price_precision": 8,
         "amount_precision": 8, "min_amount": "0.00000001", "maker_fee": "0.001",
         "taker_fee": "0.002"}])
    sync_markets(database, settings)
    exchange.client = create_app(settings, db=database).test_client()
    exchange.settings = settings
    exchange.user("seller", ASA="20000000")
    exchange.user("buyer", XU="100000000000000")
    bid = exchange.order("buyer", side="buy", type="limit", price="1000000.12345678",
                         amount="1000000.12345678")
    # 1000000.12345678 squared, every digit
    assert exchange.balances("buyer")["XU"] == ("98999999753086.4247584234720316",
                                                "1000000246913.5752415765279684")
    exchange.assert_reconciles()
    sell = exchange.order("seller", side="sell", type="limit", price="1000000.12345678",
                          amount="0.12345679")
    assert sell["filled_quote"] == "123456.8052415777625362"
    exchange.assert_reconciles()
    response = exchange.client.delete(f"/api/v1/orders/{bid['id']}",
                                      headers=exchange.headers("buyer"))
    assert response.status_code == 200
    assert exchange.balances("buyer")["XU"] == ("99999999876543.1947584222374638", "0")
    exchange.assert_reconciles()


@pytest.mark.mysql_only
@pytest.mark.parametrize("backend", ["mysql"], indirect=True)
def test_a_placement_whose_commit_answer_is_lost_says_it_may_have_happened(  # type: ignore[no-untyped-def]
    exchange, app, monkeypatch
) -> None:
    """The connection drops after MySQL ran the placement's last query, COMMIT included: the
    order exists, so the 503 must not read "the database is not reachable" (which says
    nothing happened), the book's caches are retired, and the same client_order_id then
    answers 200 with that order."""
    from contextlib import contextmanager

    from stockex import batch
    from stockex.api import services

    with app.app_context():
        cache = services().cache
    exchange.user("alice", XU="1000")
    real_cursor = batch.mysql_cursor

    class AnswerLost:
        def __init__(self, cursor) -> None:  # type: ignore[no-untyped-def]
            self.cursor = cursor

        def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
            return getattr(self.cursor, name)

        def execute(self, sql: str, *args):  # type: ignore[no-untyped-def]
            result = self.cursor.execute(sql, *args)
            if sql.endswith("COMMIT"):
                while self.cursor.nextset():
                    pass
                lose_mysql_connection(self.cursor.connection)
            return result

    @contextmanager
    def losing_cursor(session):  # type: ignore[no-untyped-def]
        with real_cursor(session) as cursor:
            yield AnswerLost(cursor)

    generation = book_generation(cache, "asaxu")
    monkeypatch.setattr(batch, "mysql_cursor", losing_cursor)
    body = {"side": "buy", "type": "limit", "price": "100", "amount": "1",
            "client_order_id": "lost-answer"}
    error = exchange.order("alice", expect=503, **body)["error"]
    monkeypatch.setattr(batch, "mysql_cursor", real_cursor)
    assert error["code"] == "database_unavailable"
    assert error["details"] == {"outcome": "unknown"}
    assert "may or may not have been made" in error["message"]
    assert "client_order_id" in error["message"]
    assert book_generation(cache, "asaxu") != generation
    again = exchange.order("alice", expect=200, **body)
    assert again["status"] == "open" and exchange.balances("alice")["XU"] == ("900", "100")
    exchange.assert_reconciles()


@pytest.mark.mysql_only
@pytest.mark.parametrize("backend", ["mysql"], indirect=True)
def test_a_cancel_whose_commit_answer_is_lost_says_so_and_retires_the_book(  # type: ignore[no-untyped-def]
    exchange, app, monkeypatch
) -> None:
    """The connection drops right after MySQL committed a cancel: the answer says the outcome
    is unknown (without the placement's client_order_id hint) and the market's book caches
    are retired, since the order may have left the book."""

    from stockex.api import services
    from stockex.cache import book_generation

    with app.app_context():
        cache = services().cache
    exchange.user("alice", XU="1000")
    order = exchange.order("alice", side="buy", type="limit", price="100", amount="1")
    generation = book_generation(cache, "asaxu")
    dialect = exchange.db.engine.dialect
    real_commit = dialect.do_commit

    def commit_lost(dbapi_connection) -> None:  # type: ignore[no-untyped-def]
        real_commit(dbapi_connection)
        lose_mysql_connection(dbapi_connection)

    monkeypatch.setattr(dialect, "do_commit", commit_lost)
    response = exchange.client.delete(f"/api/v1/orders/{order['id']}",
                                      headers=exchange.headers("alice"))
    monkeypatch.setattr(dialect, "do_commit", real_commit)
    error = response.get_json()["error"]
    assert response.status_code == 503 and error["code"] == "database_unavailable"
    assert error["details"] == {"outcome": "unknown"}
    assert "may or may not have been made" in error["message"]
    assert "client_order_id" not in error["message"]
    assert book_generation(cache, "asaxu") != generation
    assert exchange.balances("alice")["XU"] == ("1000", "0")  # it did commit, here
    exchange.assert_reconciles()
