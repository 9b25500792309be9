"""Degraded modes on real servers we stop and start mid-test.

* MySQL down: ``/ready`` and database-backed routes answer 503 JSON within 2 s, also with
  pooled connections left dead by the outage; after MySQL restarts the same process answers
  200 again. A hung (not stopped) server is bounded too. Slack hears of it once, and then
  hears it resolved.
* Redis down: the API serves without cache, ``/ready`` says Redis is down; alert, then resolved.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from flask import Flask, jsonify
from sqlalchemy import Engine, func, select

from stockex.api import create_app, services
from stockex.db import Database
from stockex.migrate import upgrade
from stockex.models import Market
from stockex.testing import MySQLServer, start_mysql, start_redis

pytestmark = pytest.mark.slow

#: Database-backed routes that must answer 503 while MySQL is down. Only a test route touches
#: the database on this branch; market data routes (candles, ticker, depth, trades) belong here.
DB_ROUTES = ["/test/db-backed"]
# Market routes with parameters nobody asked for before the outage, so no cached answer can
# stand in for the database (cached answers may rightly still be served while it is down).
UNCACHED_MARKET_ROUTES = [
    "/api/v1/markets/asaxu/candles?period=5&limit=7",
    "/api/v1/markets/asaxu/ticker",
    "/api/v1/markets/asaxu/depth?limit=7",
    "/api/v1/markets/asaxu/trades?limit=7",
]


@pytest.fixture(scope="module")
def own_mysql() -> Iterator[MySQLServer]:
    """A MySQL server of this module's own, which the tests stop and start."""
    server = start_mysql(private=True)
    yield server
    server.close()


def slack_section(slack) -> dict:  # type: ignore[no-untyped-def,type-arg]
    return {"token": slack.token, "base_url": slack.api_base_url, "cooldown_seconds": 300}


def with_test_routes(app: Flask) -> Flask:
    @app.get("/test/db-backed")
    def db_backed():  # type: ignore[no-untyped-def]
        with services().db.read() as session:
            count = session.scalar(select(func.count()).select_from(Market))
        return jsonify({"markets": count})

    @app.get("/test/cached")
    def cached():  # type: ignore[no-untyped-def]
        cache = services().cache
        value = cache.get("degraded-test")
        if value is None:
            cache.set("degraded-test", b"fresh", ttl=60)
        return jsonify({"cached": value.decode() if value else None})

    return app


def timed(client, path: str):  # type: ignore[no-untyped-def]
    started = time.monotonic()
    response = client.get(path)
    return response, time.monotonic() - started


def assert_503_json(response, code: str) -> dict:  # type: ignore[no-untyped-def,type-arg]
    assert response.status_code == 503, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert error["code"] == code and set(error) == {"code", "message", "details"}
    return error  # type: ignore[no-any-return]


def test_mysql_down_answers_503_within_2s_and_heals_without_restart(  # type: ignore[no-untyped-def]
    own_mysql, make_settings, fake_slack
) -> None:
    url = own_mysql.create_database("stockex_outage")
    migrated = Database(url)
    upgrade(migrated)
    migrated.dispose()
    settings = make_settings(url, slack=slack_section(fake_slack))
    app = with_test_routes(create_app(settings))  # its own engine and pool, as in production
    client = app.test_client()

    def get(path: str):  # type: ignore[no-untyped-def]
        return timed(app.test_client(), path)

    # Fill the pool with several connections, which the outage will leave dead.
    with ThreadPoolExecutor(8) as pool:
        warm = list(pool.map(get, DB_ROUTES * 16))
    assert {r.status_code for r, _ in warm} == {200}
    assert client.get("/ready").status_code == 200
    engine = services_engine(app)

    own_mysql.stop()
    try:
        with ThreadPoolExecutor(8) as pool:
            during = list(pool.map(get, (["/ready"] + DB_ROUTES) * 8 + UNCACHED_MARKET_ROUTES))
        for response, seconds in during:
            assert seconds < 2.0, f"{seconds:.2f}s"
            if response.request.path == "/ready":
                error = assert_503_json(response, "not_ready")
                assert "database" in error["message"]
                assert error["details"]["checks"]["database"].startswith("unavailable")
            else:
                assert_503_json(response, "database_unavailable")
    finally:
        own_mysql.start()

    for path in ["/ready", *DB_ROUTES, *UNCACHED_MARKET_ROUTES]:
        response, seconds = timed(client, path)
        assert response.status_code == 200, (path, response.get_data(as_text=True))
    assert services_engine(app) is engine  # the same process and engine healed

    messages = fake_slack.wait_for(2, timeout=10)
    texts = [m.text for m in messages]
    down = [t for t in texts if ":rotating_light:" in t]
    assert len(down) == 1, texts  # 16 failing requests, one alert (cooldown)
    assert "in database" in down[0] and "OperationalError" in down[0]
    assert any("resolved database" in t for t in texts)
    own_mysql.drop_database("stockex_outage")


def services_engine(app: Flask) -> Engine:
    with app.app_context():
        return services().db.engine


def test_a_hung_mysql_is_bounded_too(own_mysql, make_settings) -> None:  # type: ignore[no-untyped-def]
    url = own_mysql.create_database("stockex_hung")
    upgrade(Database(url))
    settings = make_settings(url)
    app = with_test_routes(create_app(settings))
    client = app.test_client()
    assert client.get("/ready").status_code == 200
    with own_mysql.hung():  # accepts TCP, never answers
        response, seconds = timed(client, "/ready")  # a pooled connection: the ping times out
        assert_503_json(response, "not_ready")
        assert seconds < 4.0, f"{seconds:.2f}s"
        response, seconds = timed(client, "/ready")  # a new connection: the handshake times out
        assert_503_json(response, "not_ready")
        assert seconds < 4.0, f"{seconds:.2f}s"
    assert client.get("/ready").status_code == 200
    own_mysql.drop_database("stockex_hung")


def test_redis_down_serves_without_cache_and_ready_says_so(  # type: ignore[no-untyped-def]
    database, make_settings, fake_slack
) -> None:
    server = start_redis(private=True)
    try:
        settings = make_settings(
            database.url, redis={"url": server.url}, slack=slack_section(fake_slack)
        )
        app = with_test_routes(create_app(settings, db=database))
        client = app.test_client()
        assert client.get("/test/cached").get_json() == {"cached": None}
        assert client.get("/test/cached").get_json() == {"cached": "fresh"}
        assert client.get("/ready").get_json()["checks"] == {"database": "ok", "redis": "ok"}

        server.stop()
        for _ in range(5):
            response, seconds = timed(client, "/test/cached")
            assert response.status_code == 200 and seconds < 1.0
            assert response.get_json() == {"cached": None}  # no cache, still an answer
        error = assert_503_json(client.get("/ready"), "not_ready")
        assert error["message"] == "unavailable: redis"
        assert error["details"]["checks"]["database"] == "ok"
        assert client.get("/api/v1/markets").status_code == 200

        server.start()
        client.get("/test/cached")  # the cache reaches Redis again
        assert client.get("/test/cached").get_json() == {"cached": "fresh"}
        assert client.get("/ready").status_code == 200
        with app.app_context():
            services().cache.close()
    finally:
        server.close()
    messages = fake_slack.wait_for(2, timeout=10)
    texts = [m.text for m in messages]
    assert len([t for t in texts if ":rotating_light:" in t and "in redis" in t]) == 1, texts
    assert len([t for t in texts if "resolved redis" in t]) == 1, texts


def test_a_hung_redis_costs_one_timeout_then_is_skipped_until_it_answers(  # type: ignore[no-untyped-def]
    database, make_settings
) -> None:
    """A frozen Redis accepts TCP and never answers: every call would wait out its 0.5 s
    timeout (an authenticated cached read makes three). After one timeout the cache and the
    token revocations skip Redis for ``pause_seconds``; then Redis is asked again."""
    from stockex import auth

    server = start_redis(private=True)
    try:
        settings = make_settings(database.url, redis={"url": server.url})
        app = with_test_routes(create_app(settings, db=database))
        with app.app_context():
            cache = services().cache
        cache.pause_seconds = 3.0
        user = auth.create_user(database, settings, "patient", "long-enough-password")
        headers = {"Authorization": f"Bearer {auth.issue_token(settings, user.id, user.role)}"}
        client = app.test_client()

        def timed_me():  # type: ignore[no-untyped-def]
            started = time.monotonic()
            response = client.get("/api/v1/me", headers=headers)
            return response, time.monotonic() - started

        assert timed_me()[0].status_code == 200
        assert client.get("/test/cached").get_json() == {"cached": None}
        with server.hung():
            response, first = timed_me()  # the revocation check meets the timeout, once
            assert response.status_code == 200 and 0.4 < first < 1.5, f"{first:.2f}s"
            for _ in range(5):
                response, seconds = timed(client, "/test/cached")
                assert response.get_json() == {"cached": None}, "Redis is skipped"
                assert seconds < 0.2, f"{seconds:.2f}s"
                response, seconds = timed_me()
                assert response.status_code == 200 and seconds < 0.2, f"{seconds:.2f}s"
            logout = client.post("/api/v1/auth/logout", headers=headers)
            assert logout.status_code == 503
            assert logout.get_json()["error"]["code"] == "revocation_unavailable"
            assert cache.redis_paused
        # thawed, but still within the pause: /ready asks Redis anyway and ends the pause
        assert client.get("/ready").status_code == 200
        assert not cache.redis_paused
        assert client.get("/test/cached").get_json() == {"cached": "fresh"}
        with server.hung():
            timed(client, "/test/cached")  # pauses again
            assert cache.redis_paused
        deadline = time.monotonic() + 10
        while cache.redis_paused and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.get("/test/cached").get_json() == {"cached": "fresh"}  # asked again
        with app.app_context():
            services().cache.close()
    finally:
        server.close()


def test_a_book_bump_on_a_hung_redis_costs_one_timeout_and_is_retired_later() -> None:
    """A placement or cancel bumps its book's generation after the commit: on a frozen Redis
    the refused SET must not be followed by a DEL that waits out a second 0.5 s timeout.
    The generation is deleted once Redis answers again, so no old depth comes back."""
    from stockex.cache import Cache, book_generation, invalidate_book

    server = start_redis(private=True)
    cache = Cache(server.url)
    try:
        before = book_generation(cache, "asaxu")
        assert before is not None
        with server.hung():
            started = time.monotonic()
            invalidate_book(cache, "asaxu")
            seconds = time.monotonic() - started
            assert seconds < 0.8, f"{seconds:.2f}s: one timeout, not two"
            assert cache.redis_paused
        cache.ping()  # answered: the pause ends
        after = book_generation(cache, "asaxu")
        assert after is not None and after != before
    finally:
        cache.close()
        server.close()


def test_authenticated_requests_survive_a_mysql_restart_and_are_bounded_when_it_hangs(  # type: ignore[no-untyped-def]
    own_mysql, make_settings
) -> None:
    """The token revocation lookup (every authenticated request) takes a pooled connection
    without a ping and lets its own query tell: a connection left dead by a restart is
    replaced on the spot, and a hung server still answers 503 in bounded time."""
    from stockex import auth

    url = own_mysql.create_database("stockex_auth_outage")
    migrated = Database(url)
    upgrade(migrated)
    settings = make_settings(url)
    user = auth.create_user(migrated, settings, "survivor", "long-enough-password")
    migrated.dispose()
    headers = {"Authorization": f"Bearer {auth.issue_token(settings, user.id, user.role)}"}
    client = create_app(settings).test_client()

    def me():  # type: ignore[no-untyped-def]
        started = time.monotonic()
        response = client.get("/api/v1/me", headers=headers)
        return response, time.monotonic() - started

    assert me()[0].status_code == 200  # a pooled connection, which the restart will kill
    own_mysql.stop()
    own_mysql.start()
    response, _ = me()  # its lookup meets the dead connection, and runs again on a new one
    assert response.status_code == 200, response.get_data(as_text=True)

    own_mysql.stop()
    try:
        response, seconds = me()
        assert_503_json(response, "database_unavailable")
        assert seconds < 2.0, f"{seconds:.2f}s"
    finally:
        own_mysql.start()
    assert me()[0].status_code == 200
    assert me()[0].status_code == 200  # and again on the (now live) pooled connection

    with own_mysql.hung():
        response, seconds = me()
        assert_503_json(response, "database_unavailable")
        assert seconds < 4.0, f"{seconds:.2f}s"
    assert me()[0].status_code == 200
    own_mysql.drop_database("stockex_auth_outage")


@pytest.mark.parametrize("kind", ["sqlite", "mysql"])
def test_an_unmigrated_database_is_not_ready_and_routes_say_what_to_run(  # type: ignore[no-untyped-def]
    kind, tmp_path, make_settings, request
) -> None:
    """``stockex serve`` before ``stockex db upgrade``: /ready is 503 and names the command;
    a route that reads a table answers 503 schema_not_migrated, not a 500."""
    empty = Database(request.getfixturevalue("fresh_mysql_url") if kind == "mysql"
                     else f"sqlite:///{tmp_path / 'empty.db'}")
    client = create_app(make_settings(empty.url), db=empty).test_client()
    ready = client.get("/ready")
    assert ready.status_code == 503
    run_upgrade = "the database schema is not migrated: run `stockex db upgrade`"
    assert ready.get_json()["error"]["details"]["checks"] == {"database": run_upgrade}
    for method, path, body in (
        ("get", "/api/v1/markets/asaxu/candles", None),
        ("get", "/api/v1/markets/asaxu/depth", None),
        ("post", "/api/v1/auth/register", {"username": "alice", "password": "password-123"}),
    ):
        response = getattr(client, method)(path, json=body)
        assert response.status_code == 503, (path, response.get_json())
        assert response.get_json()["error"]["code"] == "schema_not_migrated"
        assert response.get_json()["error"]["message"] == run_upgrade

    upgrade(empty)
    assert client.get("/ready").status_code == 200
    assert client.get("/api/v1/markets/asaxu/depth").status_code == 200


@pytest.mark.parametrize("kind", ["sqlite", "mysql"])
def test_a_table_missing_from_a_migrated_database_is_a_500_not_advice_to_migrate(  # type: ignore[no-untyped-def]
    kind, tmp_path, make_settings, request
) -> None:
    """Dropped by hand (or a bug): `stockex db upgrade` would not help, so no 503 saying so;
    a 500 with its traceback and alert like any other unexpected error."""
    db = Database(request.getfixturevalue("fresh_mysql_url") if kind == "mysql"
                  else f"sqlite:///{tmp_path / 'dropped.db'}")
    upgrade(db)
    with db.engine.begin() as conn:
        if kind == "mysql":
            conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 0")
        conn.exec_driver_sql("DROP TABLE trades")
    app = create_app(make_settings(db.url), db=db)
    seen: list[BaseException] = []
    app.extensions["stockex.on_unhandled_error"] = seen.append
    client = app.test_client()
    assert client.get("/ready").status_code == 200
    response = client.get("/api/v1/markets/asaxu/trades")
    assert response.status_code == 500
    assert response.get_json()["error"]["code"] == "internal_error"
    assert len(seen) == 1


def test_a_schema_newer_than_the_code_is_ready(database, make_settings) -> None:  # type: ignore[no-untyped-def]
    """After a migration, code rolled back to the previous release keeps serving."""
    with database.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'ffff_from_the_future'")
    client = create_app(make_settings(database.url), db=database).test_client()
    assert client.get("/ready").get_json()["checks"] == {"database": "ok"}


def services_notifier_flush(app: Flask) -> bool:
    return bool(app.extensions["stockex.alerts"].flush(10))


def test_a_full_redis_is_one_alert_and_resolved_once_it_takes_writes_again(  # type: ignore[no-untyped-def]
    database, make_settings, fake_slack, caplog
) -> None:
    """Redis full (maxmemory, noeviction) refuses writes but still answers reads. Each read
    used to count as "Redis is back": every request that missed the cache sent an alert and a
    "resolved" to Slack (a resolution restarts the cooldown), and logged both."""
    import logging

    import redis

    server = start_redis(private=True)
    try:
        settings = make_settings(
            database.url, redis={"url": server.url}, slack=slack_section(fake_slack)
        )
        app = create_app(settings, db=database)
        client = app.test_client()
        assert client.get("/api/v1/markets/asaxu/ticker").status_code == 200  # cached
        direct = redis.Redis.from_url(server.url)
        for i in range(20):
            direct.set(f"junk:{i}", b"x" * 10_000)
        direct.config_set("maxmemory-policy", "noeviction")
        direct.config_set("maxmemory", int(direct.info("memory")["used_memory"]) - 100_000)
        with caplog.at_level(logging.WARNING, logger="stockex.cache"):
            for limit in range(1, 11):  # answers nobody cached: a read, then a refused write
                for route in ("depth", "trades", "ticker"):
                    response = client.get(f"/api/v1/markets/asaxu/{route}?limit={limit}")
                    assert response.status_code == 200
        assert [r.getMessage() for r in caplog.records if "redis is back" in r.getMessage()] == []
        assert len([r for r in caplog.records if "redis unavailable" in r.getMessage()]) == 1
        # reachable, so ready (the API works without its cache), but not "resolved" either
        assert client.get("/ready").get_json()["checks"] == {"database": "ok", "redis": "ok"}
        assert services_notifier_flush(app)
        assert not [m for m in fake_slack.messages if "resolved redis" in m.text]

        direct.config_set("maxmemory", 0)
        for limit in range(1, 3):
            assert client.get(f"/api/v1/markets/asaxu/depth?limit={limit}").status_code == 200
        direct.close()
        with app.app_context():
            services().cache.close()
    finally:
        server.close()
    fake_slack.wait_for(2, timeout=10)
    time.sleep(0.5)  # anything more would have come by now
    texts = [m.text for m in fake_slack.messages]
    down = [t for t in texts if ":rotating_light:" in t and "in redis" in t]
    assert len(down) == 1 and "OutOfMemoryError" in down[0], texts
    assert len([t for t in texts if "resolved redis" in t]) == 1, texts
