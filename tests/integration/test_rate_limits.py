"""Rate limits: login per IP + username, the password routes per IP, orders per user, 429 +
Retry-After, shared via Redis.

Most tests guard small test-only routes with the decorators, the same way the real ones use
them; the password routes' tests use the real register and login (their cost is the hash).
SQLite only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import wraps
from typing import Any

import pytest
import redis
from flask import Flask, g, request
from sqlalchemy import select

from stockex import auth
from stockex.api import create_app
from stockex.api.params import json_body
from stockex.api.ratelimits import limit_login, limit_orders
from stockex.models import User
from stockex.testing import start_redis


@pytest.fixture
def backend() -> str:
    return "sqlite"


def fake_auth(view: Callable[..., Any]) -> Callable[..., Any]:
    """Stands in for the auth decorator: it sets g.user_id from a test header."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if "X-Test-User" in request.headers:
            g.user_id = int(request.headers["X-Test-User"])
        return view(*args, **kwargs)

    return wrapper


def limited_app(settings, database) -> tuple[Flask, dict[str, int]]:  # type: ignore[no-untyped-def]
    app = create_app(settings, db=database)
    reached = {"login": 0, "orders": 0}

    @app.post("/test/login")
    @limit_login
    def login():  # type: ignore[no-untyped-def]
        reached["login"] += 1
        return {"username": json_body().get("username")}

    @app.post("/test/orders")
    @fake_auth
    @limit_orders
    def orders():  # type: ignore[no-untyped-def]
        reached["orders"] += 1
        return {"user_id": g.get("user_id")}, 201

    return app, reached


def login(client, username: str, ip: str = "10.0.0.1", forwarded_for: str | None = None):  # type: ignore[no-untyped-def]
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for is not None else {}
    return client.post("/test/login", json={"username": username, "password": "x"},
                       headers=headers, environ_base={"REMOTE_ADDR": ip})


def order(client, user: int | None, ip: str = "10.0.0.1"):  # type: ignore[no-untyped-def]
    headers = {"X-Test-User": str(user)} if user is not None else {}
    return client.post("/test/orders", json={}, headers=headers, environ_base={"REMOTE_ADDR": ip})


def assert_rate_limited(response, limit: str, window: int) -> int:  # type: ignore[no-untyped-def]
    assert response.status_code == 429
    assert response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert error["code"] == "rate_limited"
    assert error["details"]["limit"] == limit
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= window
    assert error["details"]["retry_after"] == retry_after
    assert response.headers["X-Request-ID"]
    return retry_after


def test_login_is_limited_per_ip_and_username(database, make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(database.url, api={"login_rate_limit": "3 per minute"})
    app, reached = limited_app(settings, database)
    client = app.test_client()
    assert [login(client, "bob").status_code for _ in range(3)] == [200, 200, 200]
    assert_rate_limited(login(client, "bob"), "3 per 1 minute", 60)
    assert_rate_limited(login(client, "  BOB "), "3 per 1 minute", 60)  # same account
    assert reached["login"] == 3  # turned-away requests never reach the view
    assert login(client, "alice").status_code == 200  # another account from the same IP
    assert login(client, "bob", ip="10.0.0.2").status_code == 200  # the same account elsewhere


def test_a_forwarded_for_header_is_ignored_unless_proxies_are_configured(  # type: ignore[no-untyped-def]
    database, make_settings
) -> None:
    """api.proxy_hops 0 (the default): the socket's peer is the client. Were X-Forwarded-For
    read, one client could try passwords without end by sending a new address each time."""
    settings = make_settings(database.url, api={"login_rate_limit": "2 per minute"})
    assert settings.api.proxy_hops == 0
    client = limited_app(settings, database)[0].test_client()
    statuses = [login(client, "bob", forwarded_for=f"198.51.100.{n}").status_code
                for n in range(3)]
    assert statuses == [200, 200, 429]


def test_behind_a_proxy_each_forwarded_client_has_its_own_login_budget(  # type: ignore[no-untyped-def]
    database, make_settings
) -> None:
    """api.proxy_hops 1: every request comes from the proxy (10.0.0.254), which appends the
    client's address to X-Forwarded-For. One client's failed logins must not lock everyone
    out, and addresses a client writes in front of its own are not taken (ProxyFix reads the
    first value from the right)."""
    settings = make_settings(database.url, api={"login_rate_limit": "2 per minute",
                                                "proxy_hops": 1})
    client = limited_app(settings, database)[0].test_client()
    proxy = "10.0.0.254"
    assert [login(client, "bob", proxy, "203.0.113.5").status_code
            for _ in range(3)] == [200, 200, 429]
    assert login(client, "bob", proxy, "203.0.113.6").status_code == 200  # another client
    # the limited client cannot escape by prepending made-up addresses
    for fake in ("1.2.3.4, 203.0.113.5", "5.6.7.8,9.9.9.9, 203.0.113.5"):
        assert login(client, "bob", proxy, fake).status_code == 429, fake
    # a request without the header (the proxy's own) counts for the proxy's address
    assert login(client, "bob", proxy).status_code == 200


def test_with_two_proxies_the_second_value_from_the_right_is_the_client(  # type: ignore[no-untyped-def]
    database, make_settings
) -> None:
    settings = make_settings(database.url, api={"login_rate_limit": "1 per minute",
                                                "proxy_hops": 2})
    client = limited_app(settings, database)[0].test_client()
    # load balancer -> nginx (10.0.0.7) -> stockex: the balancer saw 203.0.113.5
    assert login(client, "bob", "10.0.0.254", "203.0.113.5, 10.0.0.7").status_code == 200
    assert login(client, "bob", "10.0.0.254", "1.1.1.1, 203.0.113.5, 10.0.0.8").status_code == 429
    assert login(client, "bob", "10.0.0.254", "203.0.113.6, 10.0.0.7").status_code == 200


def test_orders_are_limited_per_user(database, make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(database.url, api={"order_rate_limit": "2 per minute"})
    client = limited_app(settings, database)[0].test_client()
    assert [order(client, 1).status_code for _ in range(2)] == [201, 201]
    assert_rate_limited(order(client, 1, ip="10.9.9.9"), "2 per 1 minute", 60)  # any address
    assert order(client, 2).status_code == 201  # another user has their own budget
    # before authentication there is no user: the client address is the key
    assert [order(client, None).status_code for _ in range(3)] == [201, 201, 429]
    assert order(client, None, ip="10.0.0.3").status_code == 201


def test_retry_after_tells_when_to_come_back(database, make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(database.url, api={"order_rate_limit": "2 per 2 seconds"})
    client = limited_app(settings, database)[0].test_client()
    order(client, 1)
    order(client, 1)
    retry_after = assert_rate_limited(order(client, 1), "2 per 2 second", 2)
    time.sleep(retry_after + 0.05)
    assert order(client, 1).status_code == 201


def test_limits_hold_across_two_app_instances_sharing_redis(  # type: ignore[no-untyped-def]
    database, make_settings, redis_url
) -> None:
    settings = make_settings(
        database.url,
        redis={"url": redis_url},
        api={"login_rate_limit": "4 per minute", "order_rate_limit": "3 per minute"},
    )
    first = limited_app(settings, database)[0].test_client()  # e.g. two gunicorn workers,
    second = limited_app(settings, database)[0].test_client()  # or two machines
    statuses = [login(client, "carol").status_code for client in (first, second) * 2]
    assert statuses == [200, 200, 200, 200]
    assert_rate_limited(login(first, "carol"), "4 per 1 minute", 60)
    assert_rate_limited(login(second, "carol"), "4 per 1 minute", 60)
    assert [order(c, 5).status_code for c in (first, second, first)] == [201, 201, 201]
    assert_rate_limited(order(second, 5), "3 per 1 minute", 60)
    keys = redis.Redis.from_url(redis_url).keys("LIMITS:LIMITER/stockex/*")
    assert keys, "the counters live in Redis"


def test_without_redis_each_process_counts_for_itself(database, make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(database.url, api={"login_rate_limit": "2 per minute"})
    first = limited_app(settings, database)[0].test_client()
    second = limited_app(settings, database)[0].test_client()
    assert [login(first, "dave").status_code for _ in range(3)] == [200, 200, 429]
    assert [login(second, "dave").status_code for _ in range(3)] == [200, 200, 429]


def test_an_empty_limit_switches_it_off(database, make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(database.url, api={"login_rate_limit": "", "order_rate_limit": ""})
    client = limited_app(settings, database)[0].test_client()
    assert {login(client, "eve").status_code for _ in range(30)} == {200}
    assert {order(client, 1).status_code for _ in range(30)} == {201}


def test_an_oversized_login_body_is_413_and_does_not_upset_the_limiter(  # type: ignore[no-untyped-def]
    database, make_settings, redis_url
) -> None:
    settings = make_settings(database.url, redis={"url": redis_url},
                             api={"login_rate_limit": "2 per minute"})
    app, _ = limited_app(settings, database)
    client = app.test_client()
    response = client.post("/test/login", data=b"{" + b" " * 100_000 + b"}",
                           content_type="application/json")
    assert response.status_code == 413
    assert app.extensions["stockex.limiter"]._storage_dead is False  # still counting in Redis
    assert [login(client, "frank").status_code for _ in range(3)] == [200, 200, 429]


def test_redis_going_down_never_fails_a_request_and_limits_go_on_in_process(  # type: ignore[no-untyped-def]
    database, make_settings
) -> None:
    server = start_redis(private=True)  # stopped by the test
    try:
        settings = make_settings(database.url, redis={"url": server.url},
                                 api={"login_rate_limit": "3 per minute"})
        client = limited_app(settings, database)[0].test_client()
        assert login(client, "gina").status_code == 200
        server.stop()
        started = time.monotonic()
        statuses = [login(client, "gina").status_code for _ in range(5)]
        assert time.monotonic() - started < 5
        assert 500 not in statuses
        assert statuses[-1] == 429  # counted in memory meanwhile
        server.start()
    finally:
        server.close()


# ------------------------------------------------------------------ password routes, per IP


@pytest.fixture
def hashes(monkeypatch) -> list[str]:  # type: ignore[no-untyped-def]
    """Every password hash the API computes ("hash" on register, "check" on login)."""
    computed: list[str] = []
    hash_password, check_password_hash = auth.hash_password, auth.check_password_hash

    def counted_hash(password: str) -> str:
        computed.append("hash")
        return hash_password(password)

    def counted_check(pwhash: str, password: str) -> bool:
        computed.append("check")
        return check_password_hash(pwhash, password)

    monkeypatch.setattr(auth, "hash_password", counted_hash)
    monkeypatch.setattr(auth, "check_password_hash", counted_check)
    return computed


def password_app(database, make_settings, **api: Any):  # type: ignore[no-untyped-def]
    settings = make_settings(database.url, api={"login_rate_limit": "", **api})
    return create_app(settings, db=database).test_client()


def register(client, username: str, ip: str = "10.0.0.1"):  # type: ignore[no-untyped-def]
    return client.post("/api/v1/auth/register",
                       json={"username": username, "password": "password-123"},
                       environ_base={"REMOTE_ADDR": ip})


def real_login(client, username: str, ip: str = "10.0.0.1"):  # type: ignore[no-untyped-def]
    return client.post("/api/v1/auth/login",
                       json={"username": username, "password": "password-123"},
                       environ_base={"REMOTE_ADDR": ip})


def usernames(database) -> list[str]:  # type: ignore[no-untyped-def]
    with database.read() as session:
        return sorted(session.scalars(select(User.username)))


def test_register_is_limited_per_client_ip(database, make_settings, hashes) -> None:  # type: ignore[no-untyped-def]
    """Without a limit one client had the API compute a scrypt hash (~0.1 s of CPU) for every
    registration it sent, as fast as it could send them."""
    client = password_app(database, make_settings, password_rate_limit="3 per minute")
    assert [register(client, f"user{n}").status_code for n in range(3)] == [201, 201, 201]
    assert_rate_limited(register(client, "user3"), "3 per 1 minute", 60)
    assert_rate_limited(register(client, "user4"), "3 per 1 minute", 60)
    assert hashes == ["hash"] * 3  # a turned-away registration computes no hash ...
    assert usernames(database) == ["user0", "user1", "user2"]  # ... and writes nothing
    assert register(client, "user3", ip="10.0.0.2").status_code == 201  # another client
    assert usernames(database) == ["user0", "user1", "user2", "user3"]


def test_behind_a_proxy_the_password_limit_counts_per_forwarded_client(  # type: ignore[no-untyped-def]
    database, make_settings
) -> None:
    client = password_app(database, make_settings, password_rate_limit="1 per minute",
                          proxy_hops=1)

    def via_proxy(username: str, forwarded_for: str):  # type: ignore[no-untyped-def]
        return client.post("/api/v1/auth/register",
                           json={"username": username, "password": "password-123"},
                           headers={"X-Forwarded-For": forwarded_for},
                           environ_base={"REMOTE_ADDR": "10.0.0.254"})

    assert via_proxy("ann", "203.0.113.5").status_code == 201
    assert via_proxy("ben", "203.0.113.5").status_code == 429
    assert via_proxy("ben", "1.2.3.4, 203.0.113.5").status_code == 429  # made-up address
    assert via_proxy("ben", "203.0.113.6").status_code == 201  # another client


def test_logins_with_a_new_username_each_time_are_limited_per_client_ip(  # type: ignore[no-untyped-def]
    database, make_settings, hashes
) -> None:
    """The per IP + username limit gives every name a budget of its own, and a login for an
    unknown name hashes too (against a dummy, so that timing does not tell which names exist):
    a client trying a new name each time was not limited at all."""
    client = password_app(database, make_settings, login_rate_limit="10 per minute",
                          password_rate_limit="3 per minute")
    assert [real_login(client, f"nobody{n}").status_code for n in range(3)] == [401, 401, 401]
    assert_rate_limited(real_login(client, "nobody3"), "3 per 1 minute", 60)
    assert hashes == ["check"] * 3
    assert real_login(client, "nobody3", ip="10.0.0.2").status_code == 401  # another client


def test_register_and_login_share_the_client_ips_budget(database, make_settings) -> None:  # type: ignore[no-untyped-def]
    """Both cost the same hash: separate budgets would let a client burn twice as much CPU."""
    client = password_app(database, make_settings, password_rate_limit="3 per minute")
    assert register(client, "alice").status_code == 201
    assert real_login(client, "alice").status_code == 200
    assert register(client, "bob").status_code == 201
    assert_rate_limited(real_login(client, "alice"), "3 per 1 minute", 60)
    assert_rate_limited(register(client, "carol"), "3 per 1 minute", 60)
    assert usernames(database) == ["alice", "bob"]
    assert real_login(client, "alice", ip="10.0.0.2").status_code == 200


def test_the_per_username_login_limit_still_holds_and_comes_first(  # type: ignore[no-untyped-def]
    database, make_settings, hashes
) -> None:
    """A login turned away by its per-username limit (a script retrying one account) does not
    use up the budget of its address, which colleagues behind the same NAT share."""
    client = password_app(database, make_settings, login_rate_limit="2 per minute",
                          password_rate_limit="4 per minute")
    assert [real_login(client, "bob").status_code for _ in range(2)] == [401, 401]
    for _ in range(3):
        assert_rate_limited(real_login(client, "bob"), "2 per 1 minute", 60)
    assert [real_login(client, name).status_code for name in ("alice", "carol")] == [401, 401]
    assert_rate_limited(real_login(client, "dave"), "4 per 1 minute", 60)
    assert len(hashes) == 4


def test_the_password_limit_goes_on_in_process_while_redis_is_down(  # type: ignore[no-untyped-def]
    database, make_settings
) -> None:
    server = start_redis(private=True)  # stopped by the test
    try:
        settings = make_settings(database.url, redis={"url": server.url},
                                 api={"login_rate_limit": "",
                                      "password_rate_limit": "3 per minute"})
        client = create_app(settings, db=database).test_client()
        assert register(client, "gina").status_code == 201
        server.stop()
        statuses = [register(client, f"gina{n}").status_code for n in range(4)]
        assert 500 not in statuses
        assert statuses[-1] == 429  # counted in memory meanwhile
        server.start()
    finally:
        server.close()
