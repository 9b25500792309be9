"""CONTRACT §6 rejections: each answers its specific code and changes nothing at all —
the accounts, the ledger, the orders and the trades are identical before and after."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def book(exchange):  # type: ignore[no-untyped-def]
    """A market with something on both sides, and a poor user 'carol' to be rejected."""
    exchange.user("alice", ASA="10", XU="100000")
    exchange.user("bob", ASA="10", XU="100000")
    exchange.user("carol", ASA="1", XU="500")
    exchange.order("alice", side="sell", type="limit", price="1000", amount="1")
    exchange.order("alice", side="sell", type="limit", price="1010", amount="2")
    exchange.order("bob", side="buy", type="limit", price="990", amount="1")
    exchange.order("carol", side="sell", type="limit", price="1020", amount="0.5")
    return exchange


# time_in_force is required (CONTRACT §5): GTC here, IOC on MARKET's market orders.
LIMIT_BUY = {"market": "asaxu", "side": "buy", "type": "limit", "price": "100", "amount": "1",
             "time_in_force": "GTC"}
MARKET = {"market": "asaxu", "type": "market", "time_in_force": "IOC"}

INVALID: list[tuple[str, dict[str, Any], int, str]] = [
    ("unknown market", {**LIMIT_BUY, "market": "nope"}, 404, "unknown_market"),
    ("market missing", {k: v for k, v in LIMIT_BUY.items() if k != "market"}, 400,
     "invalid_market"),
    ("bad side", {**LIMIT_BUY, "side": "hold"}, 400, "invalid_side"),
    ("no side", {k: v for k, v in LIMIT_BUY.items() if k != "side"}, 400, "invalid_side"),
    ("bad type", {**LIMIT_BUY, "type": "stop"}, 400, "invalid_type"),
    ("bad tif", {**LIMIT_BUY, "time_in_force": "GTD"}, 400, "invalid_time_in_force"),
    ("no tif", {k: v for k, v in LIMIT_BUY.items() if k != "time_in_force"}, 400,
     "invalid_time_in_force"),
    ("no tif on a market order", {"market": "asaxu", "side": "sell", "type": "market",
                                  "amount": "1"}, 400, "invalid_time_in_force"),
    ("market GTC", {"market": "asaxu", "side": "buy", "type": "market", "amount": "1",
                    "time_in_force": "GTC"}, 400, "invalid_time_in_force"),
    ("no price", {k: v for k, v in LIMIT_BUY.items() if k != "price"}, 400, "invalid_price"),
    ("zero price", {**LIMIT_BUY, "price": "0"}, 400, "invalid_price"),
    ("negative price", {**LIMIT_BUY, "price": "-5"}, 400, "invalid_price"),
    ("text price", {**LIMIT_BUY, "price": "cheap"}, 400, "invalid_price"),
    ("float price", {**LIMIT_BUY, "price": 100.5}, 400, "invalid_price"),
    ("NaN price", {**LIMIT_BUY, "price": "NaN"}, 400, "invalid_price"),
    # Python's Decimal() reads both as 1000; no exchange API does
    ("digit-group underscore", {**LIMIT_BUY, "price": "1_000"}, 400, "invalid_price"),
    ("non-ASCII digits", {**LIMIT_BUY, "amount": "\u0661"}, 400, "invalid_amount"),
    ("price on market", {**MARKET, "side": "sell", "amount": "1",
                         "price": "100"}, 400, "invalid_price"),
    ("no amount", {k: v for k, v in LIMIT_BUY.items() if k != "amount"}, 400,
     "invalid_amount"),
    ("zero amount", {**LIMIT_BUY, "amount": "0"}, 400, "invalid_amount"),
    ("negative amount", {**LIMIT_BUY, "amount": "-1"}, 400, "invalid_amount"),
    ("text amount", {**LIMIT_BUY, "amount": "lots"}, 400, "invalid_amount"),
    ("infinite amount", {**LIMIT_BUY, "amount": "Infinity"}, 400, "invalid_amount"),
    ("huge value", {**LIMIT_BUY, "price": "999999999999", "amount": "9999999"}, 400,
     "invalid_amount"),
    ("both amounts", {**MARKET, "side": "buy", "amount": "1",
                      "quote_amount": "10"}, 400, "invalid_amount"),
    ("quote on limit", {**LIMIT_BUY, "quote_amount": "10"}, 400, "invalid_quote_amount"),
    ("quote on sell", {**MARKET, "side": "sell", "quote_amount": "10"}, 400,
     "invalid_quote_amount"),
    ("bad quote", {**MARKET, "side": "buy", "quote_amount": "x"},
     400, "invalid_quote_amount"),
    ("price decimals", {**LIMIT_BUY, "price": "100.5"}, 400, "too_many_decimals"),
    ("amount decimals", {**LIMIT_BUY, "amount": "1.0001"}, 400, "too_many_decimals"),
    ("quote decimals", {**MARKET, "side": "buy", "quote_amount": "1.0001"}, 400,
     "too_many_decimals"),
    ("amount decimals, other market", {"market": "btcvnd", "side": "buy", "type": "limit",
                                       "price": "1", "amount": "0.0000001",
                                       "time_in_force": "GTC"}, 400,
     "too_many_decimals"),
    ("amount decimals, below min too", {**LIMIT_BUY, "amount": "0.0001"}, 400,
     "too_many_decimals"),
    ("amount decimals beyond 28 digits", {**LIMIT_BUY, "price": "1",
                                          "amount": "123456789012345678.0000000000001"}, 400,
     "too_many_decimals"),
    ("client id", {**LIMIT_BUY, "client_order_id": "has space"}, 400,
     "invalid_client_order_id"),
    ("client id type", {**LIMIT_BUY, "client_order_id": 5}, 400, "invalid_client_order_id"),
    ("client id with a trailing newline", {**LIMIT_BUY, "client_order_id": "abc\n"}, 400,
     "invalid_client_order_id"),
    ("unknown field", {**LIMIT_BUY, "quantity": "1"}, 400, "unknown_field"),
]


@pytest.mark.parametrize(("body", "status", "code"), [c[1:] for c in INVALID],
                         ids=[c[0] for c in INVALID])
def test_invalid_orders(book, body: dict[str, Any], status: int, code: str) -> None:  # type: ignore[no-untyped-def]
    before = book.snapshot()
    response = book.client.post("/api/v1/orders", json=body, headers=book.headers("carol"))
    assert response.status_code == status, response.get_json()
    assert response.get_json()["error"]["code"] == code
    assert book.snapshot() == before


@pytest.mark.parametrize(("body", "message"), [
    ({**LIMIT_BUY, "price": "1000000000000000000"}, "price must be below 10^18"),
    ({**LIMIT_BUY, "price": "-1"}, 'price must be a positive decimal string, e.g. "1.5"'),
    ({**LIMIT_BUY, "market": 5}, 'market must be a market id string, e.g. "asaxu"'),
    ({k: v for k, v in LIMIT_BUY.items() if k != "market"}, "market is required"),
])
def test_rejection_messages_say_what_is_wrong(book, body, message: str) -> None:  # type: ignore[no-untyped-def]
    response = book.client.post("/api/v1/orders", json=body, headers=book.headers("carol"))
    assert response.status_code == 400
    assert response.get_json()["error"]["message"] == message


def test_below_min_amount(exchange, make_settings, database) -> None:  # type: ignore[no-untyped-def]
    from stockex.api import create_app

    settings = make_settings(database.url, markets=[
        {"id": "asaxu", "base": "ASA", "quote": "XU", "price_precision": 0,
         "amount_precision": 3, "min_amount": "0.5"}])
    exchange.client = create_app(settings, db=database).test_client()
    exchange.settings = settings
    exchange.user("carol", XU="1000")
    before = exchange.snapshot()
    error = exchange.order("carol", expect=400, **{**LIMIT_BUY, "amount": "0.499"})["error"]
    assert error["code"] == "below_min_amount"
    assert error["details"] == {"amount": "0.499", "min_amount": "0.5"}
    assert exchange.snapshot() == before


def test_a_market_buy_by_quote_below_min_amount(exchange, make_settings, database) -> None:  # type: ignore[no-untyped-def]
    """What a quote_amount buys is held against min_amount as an amount is (Binance: a
    quoteOrderQty order's quantity must pass LOT_SIZE): 400 below_min_amount, nothing
    changed. Such orders traded 0.495 where min_amount is 0.5."""
    from stockex.api import create_app

    exchange.user("alice", ASA="10")
    exchange.user("carol", XU="10000")
    exchange.order("alice", side="sell", type="limit", price="1000", amount="0.1")  # 0.001 min
    settings = make_settings(database.url, markets=[
        {"id": "asaxu", "base": "ASA", "quote": "XU", "price_precision": 0,
         "amount_precision": 3, "min_amount": "0.5"}])
    exchange.client = create_app(settings, db=database).test_client()
    exchange.settings = settings

    def refused(quote: str, tif: str = "IOC") -> dict[str, Any]:
        error = exchange.order("carol", expect=400, side="buy", type="market",
                               quote_amount=quote, time_in_force=tif)["error"]
        assert error["code"] == "below_min_amount"
        return error  # type: ignore[no-any-return]

    # the book runs out first: the rest is counted at the last price, the most it could buy
    before = exchange.snapshot()
    assert refused("300")["details"] == {"quote_amount": "300", "amount": "0.3",
                                         "min_amount": "0.5"}
    assert exchange.snapshot() == before
    thin = exchange.order("carol", side="buy", type="market", quote_amount="600")
    assert (thin["status"], thin["filled_amount"]) == ("cancelled", "0.1")  # as amount=0.5 would
    # the quote runs out first: what it bought
    exchange.order("alice", side="sell", type="limit", price="1010", amount="2")
    before = exchange.snapshot()
    for tif in ("IOC", "FOK"):
        error = refused("500", tif)
        assert error["details"] == {"quote_amount": "500", "amount": "0.495",
                                    "min_amount": "0.5"}
        assert error["message"] == ("quote_amount buys 0.495 ASA at the book's prices, below "
                                    "the market's minimum 0.5; nothing was done")
    assert exchange.snapshot() == before
    enough = exchange.order("carol", side="buy", type="market", quote_amount="505",
                            time_in_force="FOK")
    assert (enough["status"], enough["filled_amount"]) == ("filled", "0.5")
    exchange.assert_reconciles()


def test_not_json(book) -> None:  # type: ignore[no-untyped-def]
    before = book.snapshot()
    nested = b"[" * 30_000 + b"]" * 30_000  # deeper than Python's parser can recurse
    constants = [b'{"market": "asaxu", "side": NaN}', b'{"amount": Infinity}',
                 b'{"price": -Infinity}']
    for data in (b"{nope", b"[1, 2]", b"", nested, *constants, b'{"side": "\xff"}'):
        response = book.client.post("/api/v1/orders", data=data, headers=book.headers("carol"),
                                     content_type="application/json")
        assert response.status_code == 400
        assert response.get_json()["error"]["code"] == "invalid_json"
    assert book.snapshot() == before


def test_a_repeated_key_is_refused_not_read_as_its_last_value(book) -> None:  # type: ignore[no-untyped-def]
    """{"amount": "0.1", "amount": "0.4"} placed an order for 0.4 (Python keeps the last
    value) while anything reading the first saw 0.1; Binance answers -1101 "Duplicate values
    for a parameter"."""
    before = book.snapshot()
    body = ('{"market": "asaxu", "side": "buy", "type": "limit", "price": "1000", '
            '"amount": "0.1", "time_in_force": "GTC", "amount": "0.4"}')
    response = book.client.post("/api/v1/orders", data=body, headers=book.headers("carol"),
                                content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["error"] == {
        "code": "invalid_json",
        "message": "the key 'amount' appears more than once in the request body",
        "details": {"field": "amount"},
    }
    # a key that is no UTF-8 text is not echoed back
    response = book.client.post("/api/v1/orders", data='{"\\ud800": 1, "\\ud800": 2}',
                                headers=book.headers("carol"), content_type="application/json")
    assert response.get_json()["error"] == {
        "code": "invalid_json", "message": "the request body is not valid JSON: a string "
        "escapes a lone surrogate (\\ud800-\\udfff), which no UTF-8 text can hold",
        "details": {}}
    # register and login read their bodies the same way
    response = book.client.post("/api/v1/auth/register", content_type="application/json",
                                data='{"username": "zoe", "username": "admin", '
                                     '"password": "password-123"}')
    assert response.status_code == 400
    assert response.get_json()["error"]["details"] == {"field": "username"}
    assert book.snapshot() == before
    # the control: the order meant, without the repeat, goes through
    assert book.client.post("/api/v1/orders", headers=book.headers("carol"),
                            json={**LIMIT_BUY, "price": "1000", "amount": "0.4"}).status_code \
        == 201


STATEFUL: list[tuple[str, dict[str, Any], int, str]] = [
    ("limit buy beyond XU", {**LIMIT_BUY, "price": "1000", "amount": "0.6"}, 400,
     "insufficient_balance"),
    ("limit sell beyond ASA (0.5 is locked)", {**LIMIT_BUY, "side": "sell", "price": "2000",
                                               "amount": "0.6"}, 400, "insufficient_balance"),
    ("market sell beyond ASA", {**MARKET, "side": "sell", "amount": "0.6"}, 400,
     "insufficient_balance"),
    ("market buy by quote beyond XU", {**MARKET, "side": "buy", "quote_amount": "501"}, 400,
     "insufficient_balance"),
    ("market buy by amount costing beyond XU", {**MARKET, "side": "buy", "amount": "0.6"}, 400,
     "insufficient_balance"),
    ("FOK limit not fillable", {**LIMIT_BUY, "price": "1000", "amount": "0.4",
                                "time_in_force": "FOK", "side": "sell"}, 409,
     "fok_not_filled"),
    ("FOK limit beyond the book at its price", {"market": "asaxu", "side": "buy",
                                                "type": "limit", "price": "1000",
                                                "amount": "0.45", "time_in_force": "FOK"},
     201, ""),
    ("FOK market beyond the book", {"market": "asaxu", "side": "sell", "type": "market",
                                    "amount": "0.5", "time_in_force": "FOK"}, 201, ""),
]


@pytest.mark.parametrize(("body", "status", "code"), [c[1:] for c in STATEFUL],
                         ids=[c[0] for c in STATEFUL])
def test_stateful_rejections(book, body: dict[str, Any], status: int, code: str) -> None:  # type: ignore[no-untyped-def]
    before = book.snapshot()
    response = book.client.post("/api/v1/orders", json=body, headers=book.headers("carol"))
    assert response.status_code == status, response.get_json()
    if status == 201:  # the control cases: the same shape of order does go through
        assert book.snapshot() != before
        book.assert_reconciles()
        return
    assert response.get_json()["error"]["code"] == code
    assert book.snapshot() == before


def test_fok_beyond_the_book(book) -> None:  # type: ignore[no-untyped-def]
    before = book.snapshot()
    for body in (
        {"market": "asaxu", "side": "buy", "type": "limit", "price": "1010", "amount": "4",
         "time_in_force": "FOK"},
        {"market": "asaxu", "side": "sell", "type": "market", "amount": "1.5",
         "time_in_force": "FOK"},
    ):
        response = book.client.post("/api/v1/orders", json=body, headers=book.headers("alice"))
        assert response.status_code == 409
        assert response.get_json()["error"]["code"] == "fok_not_filled"
    assert book.snapshot() == before


def test_insufficient_liquidity(exchange) -> None:  # type: ignore[no-untyped-def]
    exchange.user("dave", ASA="5", XU="5000")
    before = exchange.snapshot()
    for body in ({"side": "buy", "type": "market", "amount": "1"},
                 {"side": "buy", "type": "market", "quote_amount": "100"},
                 {"side": "sell", "type": "market", "amount": "1"},
                 # FOK too: an empty book is "nothing to match", not a partial fill
                 {"side": "sell", "type": "market", "amount": "1", "time_in_force": "FOK"}):
        error = exchange.order("dave", expect=409, **body)["error"]
        assert error["code"] == "insufficient_liquidity"
        assert error["message"].startswith("nothing to trade with: the book is empty, ")
    assert exchange.snapshot() == before
    # only the user's own order rests: it would be cancelled, but nothing is recorded
    exchange.order("dave", side="sell", type="limit", price="100", amount="1")
    before = exchange.snapshot()
    error = exchange.order("dave", expect=409, side="buy", type="market", amount="1")["error"]
    assert error["code"] == "insufficient_liquidity"
    assert "only your own orders rest at the best prices" in error["message"]
    assert exchange.snapshot() == before
    # a quote_amount too small to buy one amount step (0.001 ASA) of what rests
    exchange.user("erin", XU="10")
    before = exchange.snapshot()
    error = exchange.order("erin", expect=409, side="buy", type="market", quote_amount="0.05")
    assert error["error"]["code"] == "insufficient_liquidity"
    assert "smaller than one amount step" in error["error"]["message"]
    assert exchange.snapshot() == before


def test_cancel_rejections(book) -> None:  # type: ignore[no-untyped-def]
    mine = book.order("carol", side="buy", type="limit", price="10", amount="1")
    book.client.delete(f"/api/v1/orders/{mine['id']}", headers=book.headers("carol"))
    filled = book.order("carol", side="buy", type="limit", price="1000", amount="0.4")
    assert filled["status"] == "filled"
    before = book.snapshot()
    for order_id in (mine["id"], filled["id"]):
        response = book.client.delete(f"/api/v1/orders/{order_id}",
                                      headers=book.headers("carol"))
        assert response.status_code == 409
        assert response.get_json()["error"]["code"] == "order_not_open"
    alices = book.client.get("/api/v1/orders", headers=book.headers("alice")).get_json()
    for path in (f"/api/v1/orders/{alices[0]['id']}", "/api/v1/orders/999999",
                 f"/api/v1/orders/{2**63}", f"/api/v1/orders/{10**30}"):
        for response in (book.client.delete(path, headers=book.headers("carol")),
                         book.client.get(path, headers=book.headers("carol"))):
            assert response.status_code == 404, (path, response.get_json())
            assert response.get_json()["error"]["code"] == "order_not_found"
    assert book.snapshot() == before


def test_duplicate_client_order_id_changes_nothing(book) -> None:  # type: ignore[no-untyped-def]
    book.order("carol", side="buy", type="limit", price="10", amount="1", client_order_id="c1")
    before = book.snapshot()
    error = book.order("carol", expect=409, side="buy", type="limit", price="11", amount="1",
                       client_order_id="c1")["error"]
    assert error["code"] == "duplicate_client_order_id"
    assert book.snapshot() == before


def test_withdrawal_rejections(book) -> None:  # type: ignore[no-untyped-def]
    admin = book.user("root1", admin=True)
    before = book.snapshot()
    cases = [
        ({"username": "carol", "asset": "XU", "amount": "500.01"}, 400, "insufficient_balance"),
        ({"username": "carol", "asset": "ASA", "amount": "0.6"}, 400, "insufficient_balance"),
        ({"username": "nobody", "asset": "XU", "amount": "1"}, 404, "unknown_user"),
        ({"username": "Carol ", "asset": "XU", "amount": "1"}, 404, "unknown_user"),
        ({"username": "carol", "asset": "DOGE", "amount": "1"}, 400, "unknown_asset"),
        ({"username": "carol", "asset": "XU", "amount": "-1"}, 400, "invalid_amount"),
        ({"username": "carol", "asset": "XU", "amount": "1e-19"}, 400, "invalid_amount"),
        ({"username": "carol", "asset": "XU", "amount": "1_0"}, 400, "invalid_amount"),
    ]
    for body, status, code in cases:
        response = book.client.post("/api/v1/admin/withdrawals", json=body, headers=admin)
        assert response.status_code == status, (body, response.get_json())
        assert response.get_json()["error"]["code"] == code
    response = book.client.post("/api/v1/admin/deposits", json=cases[0][0],
                                headers=book.headers("carol"))
    assert response.status_code == 403
    huge = {"username": "carol", "asset": "XU", "amount": "99999999999999999999"}
    response = book.client.post("/api/v1/admin/deposits", json=huge, headers=admin)
    assert response.get_json()["error"]["message"] == "amount must be below 10^18"
    assert book.snapshot() == before


def test_amounts_in_rejections_are_plain_decimals(exchange) -> None:  # type: ignore[no-untyped-def]
    """CONTRACT §4: decimals as strings, never scientific notation (a zero balance read back
    from DECIMAL(36,18) is Decimal('0E-18'))."""
    exchange.user("erin", ASA="0.001")
    admin = exchange.user("root2", admin=True)
    exchange.client.post("/api/v1/admin/withdrawals", headers=admin,
                         json={"username": "erin", "asset": "ASA", "amount": "0.001"})
    error = exchange.order("erin", expect=400, **{**LIMIT_BUY, "amount": "0.001"})["error"]
    assert error["code"] == "insufficient_balance"
    assert error["details"] == {"asset": "XU", "needed": "0.1", "available": "0"}
    assert "E-" not in error["message"]
    response = exchange.client.post("/api/v1/admin/withdrawals", headers=admin,
                                    json={"username": "erin", "asset": "ASA", "amount": "1"})
    assert response.get_json()["error"]["details"] == {"asset": "ASA", "available": "0"}


def test_a_balance_beyond_what_the_database_stores_is_refused(exchange) -> None:  # type: ignore[no-untyped-def]
    """DECIMAL(36,18) holds less than 10^18: a credit that would reach it, by a deposit or a
    trade, is a 400 that changes nothing, not a 500 from the database (or a clipped balance);
    moves between available and locked still go through."""
    admin = exchange.user("root3", admin=True)
    exchange.user("frank", XU="999999999999999999", ASA="1")
    exchange.user("gina", XU="10")
    exchange.order("gina", side="buy", type="limit", price="2", amount="1")
    before = exchange.snapshot()
    response = exchange.client.post("/api/v1/admin/deposits", headers=admin,
                                    json={"username": "frank", "asset": "XU", "amount": "1"})
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["error"]["code"] == "invalid_amount"
    error = exchange.order("frank", expect=400, side="sell", type="limit", price="2",
                           amount="1")["error"]  # would credit frank 2 XU less the fee
    assert (error["code"], error["details"]["asset"]) == ("invalid_amount", "XU")
    assert exchange.snapshot() == before
    mine = exchange.order("frank", side="buy", type="limit", price="1", amount="5")
    assert mine["status"] == "open"
    response = exchange.client.delete(f"/api/v1/orders/{mine['id']}",
                                      headers=exchange.headers("frank"))
    assert response.status_code == 200, response.get_json()
    exchange.assert_reconciles()


def test_a_body_that_is_not_json_says_why(book) -> None:  # type: ignore[no-untyped-def]
    """A body edited by hand (Swagger UI's "Try it out", curl -d) with a trailing comma or
    a missing quote was answered "the request body must be a JSON object", while it looked
    like one: the answer now says where the parser stopped, or that the body is empty."""
    cases = [
        ('{"market": "asaxu",\n "side": "buy",\n}', "the request body is not valid JSON: "
         "expecting property name enclosed in double quotes (line 3, column 1)",
         {"line": 3, "column": 1}),
        ('{"market": asaxu}', "the request body is not valid JSON: expecting value "
         "(line 1, column 12)", {"line": 1, "column": 12}),
        ('{"market": "asa', "the request body is not valid JSON: unterminated string "
         "starting at (line 1, column 12)", {"line": 1, "column": 12}),
        ("", "the request body is empty: send a JSON object", {}),
        ("  \n", "the request body is empty: send a JSON object", {}),
        (b'{"side": "\xff"}', "the request body is not UTF-8 text", {}),
        ("[1, 2]", "the request body must be a JSON object", {}),
        # what Python's parser takes and JSON does not (json.dumps writes NaN for a float
        # nan): these were "must be a JSON object" too
        ('{"market": "asaxu", "price": NaN}', "the request body is not valid JSON: NaN is "
         "not a JSON value (send numbers as strings)", {}),
        ('{"amount": -Infinity}', "the request body is not valid JSON: -Infinity is not a "
         "JSON value (send numbers as strings)", {}),
        ('{"side": "\\udc00"}', "the request body is not valid JSON: a string escapes a lone "
         "surrogate (\\ud800-\\udfff), which no UTF-8 text can hold", {}),
        ("[" * 30_000 + "]" * 30_000, "the request body is nested too deeply", {}),
    ]
    for data, message, details in cases:
        response = book.client.post("/api/v1/orders", data=data, headers=book.headers("carol"),
                                    content_type="application/json")
        assert response.status_code == 400
        assert response.get_json()["error"] == {
            "code": "invalid_json", "message": message, "details": details}, data
