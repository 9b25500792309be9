"""Acceptance 3 of issue 6: market data answers are cached in Redis, stay fresh, and survive a
Redis outage. Real Redis servers; the database on both backends."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
import redis

from stockex.api import create_app, services
from stockex.buckets import clock_for
from stockex.cache import invalidate_book
from stockex.candles import store_minutes
from stockex.models import Order, User
from stockex.testing import RedisServer, start_redis
from stockex.tiki import Kline

HCM = ZoneInfo("Asia/Ho_Chi_Minh")
DAY0 = int(datetime(2024, 7, 1, tzinfo=HCM).timestamp())
CANDLES = "/api/v1/markets/asaxu/candles"


def kline(ts: int, price: int, volume: str = "1") -> Kline:
    p = Decimal(price)
    return Kline(ts, p, p + 5, p - 5, p, Decimal(volume))


def store(database, klines: list[Kline]) -> None:  # type: ignore[no-untyped-def]
    database.transaction(lambda s: store_minutes(s, "asaxu", klines))


def candle_keys(client: redis.Redis) -> list[bytes]:
    return sorted(client.scan_iter("stockex:candles:*"))


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def cached_app(database, make_settings, redis_url):  # type: ignore[no-untyped-def]
    """An app on Redis whose open-bucket answers live at most 1 s (crawl interval)."""
    settings = make_settings(database.url, redis={"url": redis_url},
                             crawler={"interval_seconds": 1})
    app = create_app(settings, db=database)
    yield app
    close_cache(app)


def close_cache(app) -> None:  # type: ignore[no-untyped-def]
    with app.app_context():
        services().cache.close()


def test_repeated_request_is_answered_from_redis(cached_app, database, redis_client) -> None:  # type: ignore[no-untyped-def]
    store(database, [kline(DAY0 + 60 * i, 100 + i) for i in range(180)])
    client = cached_app.test_client()
    params = {"period": 60, "time_from": DAY0, "time_to": DAY0 + 86_400}
    first = client.get(CANDLES, query_string=params)
    assert first.status_code == 200 and len(first.get_json()["candles"]) == 3
    [key] = candle_keys(redis_client)
    assert redis_client.get(key) == first.get_data()
    # Settled buckets (2024) are kept long.
    assert redis_client.pttl(key) > 3600 * 1000

    # Prove the second answer comes from Redis: it returns what Redis holds.
    marker = b'{"served_from":"redis"}'
    redis_client.set(key, marker, keepttl=True)
    assert client.get(CANDLES, query_string=params).get_data() == marker

    # A late correction of a settled minute bumps the revision: a new key, the new value,
    # once the API process re-reads the revision (at least once a second).
    store(database, [kline(DAY0 + 60, 5000)])
    corrected_at = time.monotonic()
    while client.get(CANDLES, query_string=params).get_data() == marker:
        assert time.monotonic() - corrected_at < 1.5, "correction not served"
        time.sleep(0.05)
    fresh = client.get(CANDLES, query_string=params).get_json()
    assert fresh["candles"][0]["high"] == "5005"
    assert len(candle_keys(redis_client)) == 2


def test_new_minute_shows_in_open_bucket_within_one_crawl_interval(  # type: ignore[no-untyped-def]
    cached_app, database, redis_client
) -> None:
    interval = services_interval(cached_app)
    clock = clock_for("Asia/Ho_Chi_Minh")
    now = int(time.time())
    store(database, [kline(now // 60 * 60 - 600, 100)])
    client = cached_app.test_client()
    before = client.get(CANDLES, query_string={"period": 5}).get_json()["candles"]
    [key] = candle_keys(redis_client)
    assert 0 < redis_client.pttl(key) <= interval * 1000  # open bucket: at most one interval

    minute = int(time.time()) // 60 * 60
    store(database, [kline(minute, 777, "7.5")])
    stored_at = time.monotonic()
    open_bucket = clock.align(minute, 5)
    while True:
        latest = client.get(CANDLES, query_string={"period": 5}).get_json()["candles"][-1]
        if latest["time"] == open_bucket and latest["high"] == "782":
            break
        # one interval, plus the latency of the request that sees it on a busy machine
        assert time.monotonic() - stored_at <= interval + 0.5, "stale beyond one interval"
        time.sleep(0.05)
    assert latest["volume"] in ("7.5", str(Decimal("7.5") + Decimal(before[-1]["volume"])))


def services_interval(app) -> int:  # type: ignore[no-untyped-def]
    with app.app_context():
        return services().settings.crawler.interval_seconds


def test_book_answers_follow_book_generation(cached_app, database, redis_client) -> None:  # type: ignore[no-untyped-def]
    def add(price: str) -> None:
        def work(session) -> None:  # type: ignore[no-untyped-def]
            user = session.query(User).first()
            if user is None:
                user = User(username="u", password_hash="x", role="user", created_at=0)
                session.add(user)
                session.flush()
            session.add(Order(user_id=user.id, market_id="asaxu", side="sell", type="limit",
                              time_in_force="GTC", price=Decimal(price), amount=Decimal(1),
                              filled_amount=0, filled_quote=0, fee=0, fee_asset="XU", locked=0,
                              status="open", created_at=0, updated_at=0))
        database.transaction(work)

    client = cached_app.test_client()
    add("100")
    assert client.get("/api/v1/markets/asaxu/depth").get_json()["asks"] == [["100", "1"]]
    assert list(redis_client.scan_iter("stockex:depth:asaxu:*"))
    add("99")  # committed, but nobody invalidated: the cached answer stands
    assert client.get("/api/v1/markets/asaxu/depth").get_json()["asks"] == [["100", "1"]]
    with cached_app.app_context():
        invalidate_book(services().cache, "asaxu")
    asks = client.get("/api/v1/markets/asaxu/depth").get_json()["asks"]
    assert asks == [["99", "1"], ["100", "1"]]


# ------------------------------------------------------------------------ Redis outage


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = start_redis(private=True)  # stopped by the test
    yield server
    server.close()


def test_redis_stopped_mid_test_still_answers(  # type: ignore[no-untyped-def]
    database, make_settings, own_redis, caplog
) -> None:
    settings = make_settings(database.url, redis={"url": own_redis.url})
    app = create_app(settings, db=database)
    client = app.test_client()
    store(database, [kline(DAY0 + 60 * i, 100 + i) for i in range(120)])
    routes = [
        f"{CANDLES}?period=60&time_from={DAY0}",
        f"{CANDLES}?period=1440&format=csv&time_from={DAY0}",
        f"{CANDLES}?period=5",
        "/api/v1/markets/asaxu/ticker",
        "/api/v1/markets/asaxu/depth",
        "/api/v1/markets/asaxu/trades",
    ]
    with_redis = {route: client.get(route) for route in routes}
    assert all(r.status_code == 200 for r in with_redis.values())
    assert redis_size(own_redis.url) > 0

    own_redis.stop()
    with caplog.at_level(logging.WARNING, logger="stockex.cache"):
        for route in routes:
            response = client.get(route)
            assert response.status_code == 200, (route, response.get_data(as_text=True))
            if "period=60" in route or "csv" in route:
                assert response.get_data() == with_redis[route].get_data()
        # New data is visible at once: it comes from the database.
        store(database, [kline(DAY0 + 60 * 200, 9000)])
        body = client.get(f"{CANDLES}?period=1440&time_from={DAY0}").get_json()
        assert body["candles"][0]["high"] == "9005"
    assert any("redis unavailable" in r.getMessage() for r in caplog.records)

    own_redis.start()
    assert client.get(routes[0]).status_code == 200
    assert redis_size(own_redis.url) > 0  # caching again
    close_cache(app)


def redis_size(url: str) -> int:
    with redis.Redis.from_url(url) as client:
        return int(client.dbsize())


# ------------------------------------------------------------ Redis full or restarted


def trader(app, database, name: str, **balances: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """A user with deposits; its Authorization header."""
    from stockex import auth
    from stockex.trading import accounts

    with app.app_context():
        settings = services().settings
    user = auth.create_user(database, settings, name, "password-123")
    for asset, amount in balances.items():
        accounts.deposit(database, settings, name, asset, amount)
    return {"Authorization": f"Bearer {auth.issue_token(settings, user.id, user.role)}"}


def place(client, headers: dict[str, str], side: str, price: str, amount: str) -> None:  # type: ignore[no-untyped-def]
    response = client.post("/api/v1/orders", headers=headers, json={
        "market": "asaxu", "side": side, "type": "limit", "price": price, "amount": amount,
        "time_in_force": "GTC",
    })
    assert response.status_code == 201, response.get_json()


def book(client) -> tuple[list[list[str]], list[tuple[str, str]]]:  # type: ignore[no-untyped-def]
    """(bids of the depth, (price, amount) of the trades), both as answered."""
    depth = client.get("/api/v1/markets/asaxu/depth")
    trades = client.get("/api/v1/markets/asaxu/trades")
    assert depth.status_code == 200 and trades.status_code == 200
    return depth.get_json()["bids"], [(t["price"], t["amount"]) for t in trades.get_json()]


def fill_up(client: redis.Redis) -> None:
    """maxmemory below what Redis holds, with its default policy noeviction: every write that
    needs memory is refused with an OOM error; reads and deletes still work."""
    for i in range(20):
        client.set(f"junk:{i}", b"x" * 10_000)
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", int(client.info("memory")["used_memory"]) - 100_000)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        client.set("probe", b"1")


def test_a_full_redis_never_serves_a_book_older_than_a_committed_trade(  # type: ignore[no-untyped-def]
    database, make_settings, own_redis
) -> None:
    """Redis full refuses the new book generation after a placement; before, depth and trades
    answered the book from before it for up to 5 minutes (the entries' TTL)."""
    app = create_app(make_settings(database.url, redis={"url": own_redis.url}), db=database)
    client = app.test_client()
    alice = trader(app, database, "alice", XU="1000")
    bob = trader(app, database, "bob", ASA="10")
    place(client, alice, "buy", "100", "1")
    assert book(client) == ([["100", "1"]], [])
    assert book(client) == ([["100", "1"]], [])  # now cached
    with redis.Redis.from_url(own_redis.url) as direct:
        fill_up(direct)
        place(client, bob, "sell", "100", "0.4")  # a trade: both the depth and trades change
        assert book(client) == ([["100", "0.6"]], [("100", "0.4")])
        place(client, alice, "buy", "99", "1")
        assert book(client) == ([["100", "0.6"], ["99", "1"]], [("100", "0.4")])

        direct.config_set("maxmemory", 0)  # room again: cached again, and still right
        assert book(client) == ([["100", "0.6"], ["99", "1"]], [("100", "0.4")])
        assert list(direct.scan_iter("stockex:depth:asaxu:*"))
    close_cache(app)


def test_a_book_change_while_redis_is_down_is_not_hidden_by_its_restored_data(  # type: ignore[no-untyped-def]
    database, make_settings, own_redis
) -> None:
    """Redis restarted from its saved data (docker-compose runs it with --appendonly yes)
    brings back the book generation and the depth and trades cached before the outage; a
    placement made while it was down could not bump that generation. Neither the process that
    placed it nor another one that saw the outage may serve the old book afterwards."""
    settings = make_settings(database.url, redis={"url": own_redis.url})
    writer = create_app(settings, db=database)
    reader = create_app(settings, db=database)  # another gunicorn worker
    alice = trader(writer, database, "alice", XU="1000")
    place(writer.test_client(), alice, "buy", "100", "1")
    before = ([["100", "1"]], [])
    assert book(reader.test_client()) == before and book(writer.test_client()) == before
    with redis.Redis.from_url(own_redis.url) as direct:
        direct.save()  # what the append-only file would hold
    own_redis.stop()
    assert book(reader.test_client()) == before  # from the database
    place(writer.test_client(), alice, "buy", "101", "1")
    own_redis.start()  # loads the saved data: the old generation and the old answers
    after = ([["101", "1"], ["100", "1"]], [])
    assert book(reader.test_client()) == after
    assert book(writer.test_client()) == after
    assert book(reader.test_client()) == after
    close_cache(reader)
    close_cache(writer)


def test_without_redis_a_book_change_made_by_another_process_shows_at_once(  # type: ignore[no-untyped-def]
    database, make_settings
) -> None:
    """No ``redis.url``, several workers (gunicorn, granian --workers 3): each has its own
    in-process cache, and a placement bumped the book generation of its own worker only, so
    the others answered the book from before it for up to 5 minutes (the entries' TTL)."""
    settings = make_settings(database.url)
    writer = create_app(settings, db=database)
    reader = create_app(settings, db=database)  # another worker
    alice = trader(writer, database, "alice", XU="1000")
    assert book(reader.test_client()) == ([], [])
    place(writer.test_client(), alice, "buy", "100", "1")
    assert book(reader.test_client()) == ([["100", "1"]], [])


def test_processes_configured_with_another_timezone_never_share_an_answer(  # type: ignore[no-untyped-def]
    database, make_settings, redis_url
) -> None:
    """After a change of ``timezone`` (the API restarted, maybe one worker at a time, and
    `stockex candles rebuild` run before or after), a process answered the old zone's cached
    *_local times and "timezone" (settled candles for a day), as the keys did not name it."""
    store(database, [kline(DAY0 + 60 * i, 100 + i) for i in range(3)])
    hcm = create_app(make_settings(database.url, redis={"url": redis_url}), db=database)
    utc = create_app(make_settings(database.url, redis={"url": redis_url}, timezone="UTC"),
                     db=database)
    params = {"time_from": DAY0, "time_to": DAY0 + 3600}
    for app, zone, offset in ((hcm, "Asia/Ho_Chi_Minh", "+07:00"), (utc, "UTC", "+00:00")):
        client = app.test_client()
        for _ in range(2):  # the second one from the cache
            body = client.get(CANDLES, query_string=params).get_json()
            assert body["timezone"] == zone
            assert body["candles"][0]["time_local"].endswith(offset)
            csv = client.get(CANDLES, query_string={**params, "format": "csv"}).get_data()
            assert csv.splitlines()[1].split(b",")[1].decode().endswith(offset)
            ticker = client.get("/api/v1/markets/asaxu/ticker").get_json()
            assert ticker["last_time_local"].endswith(offset)
            depth = client.get("/api/v1/markets/asaxu/depth").get_json()
            assert depth["timestamp_local"].endswith(offset)
    close_cache(hcm)
    close_cache(utc)


def test_pages_of_trades_are_cached_apart(cached_app, database, redis_client) -> None:  # type: ignore[no-untyped-def]
    """Two pages of the trades (before_id) are two cached answers: with before_id missing
    from the key, the second page was served the first one's answer."""
    from sqlalchemy import insert

    from stockex.models import Trade

    def work(session) -> None:  # type: ignore[no-untyped-def]
        user = User(username="u", password_hash="x", role="user", created_at=0)
        session.add(user)
        session.flush()
        resting = Order(user_id=user.id, market_id="asaxu", side="sell", type="limit",
                        time_in_force="GTC", price=Decimal(100), amount=Decimal(10),
                        filled_amount=0, filled_quote=0, fee=0, fee_asset="XU", locked=0,
                        status="open", created_at=0, updated_at=0)
        session.add(resting)
        session.flush()
        session.execute(insert(Trade), [
            {"market_id": "asaxu", "price": Decimal(100), "amount": Decimal(1),
             "total": Decimal(100), "maker_order_id": resting.id,
             "taker_order_id": resting.id, "maker_user_id": user.id,
             "taker_user_id": user.id, "taker_side": "buy", "maker_fee": 0, "taker_fee": 0,
             "created_at": DAY0} for _ in range(5)
        ])

    database.transaction(work)
    client = cached_app.test_client()
    trades = "/api/v1/markets/asaxu/trades"
    for _ in range(2):  # the second time from Redis
        first = client.get(trades, query_string={"limit": 2}).get_json()
        second = client.get(trades, query_string={"limit": 2, "before_id": first[-1]["id"]})
        third = client.get(trades, query_string={"limit": 2, "before_id": first[0]["id"]})
        ids = [t["id"] for t in first + second.get_json()]
        assert len(set(ids)) == 4 and ids == sorted(ids, reverse=True)
        assert [t["id"] for t in third.get_json()] == ids[1:3]
    assert len(list(redis_client.scan_iter("stockex:trades:asaxu:*"))) == 3
