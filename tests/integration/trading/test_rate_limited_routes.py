"""The real login and order routes are rate limited, and the limits hold across two app
instances sharing one Redis (issue 5, acceptance line 3)."""

from __future__ import annotations

from typing import Any

from stockex import auth
from stockex.api import create_app
from stockex.trading import accounts


def test_login_and_order_limits_across_two_apps(
    database: Any, make_settings: Any, redis_url: str
) -> None:
    settings = make_settings(
        database.url, redis={"url": redis_url},
        api={"login_rate_limit": "3 per minute", "order_rate_limit": "2 per minute"},
    )
    first = create_app(settings, db=database).test_client()
    second = create_app(settings, db=database).test_client()
    user = auth.create_user(database, settings, "erin", "password-123")
    accounts.deposit(database, settings, "erin", "XU", "1000000")

    def login(client: Any, password: str) -> Any:
        return client.post("/api/v1/auth/login", json={"username": "erin", "password": password})

    # Wrong and right passwords count alike: a brute force is slowed down either way.
    assert login(first, "wrong-password").status_code == 401
    assert login(second, "password-123").status_code == 200
    assert login(first, "password-123").status_code == 200
    limited = login(second, "password-123")
    assert limited.status_code == 429
    assert limited.get_json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["Retry-After"]) <= 60

    token = auth.issue_token(settings, user.id, user.role)
    headers = {"Authorization": f"Bearer {token}"}
    body = {"market": "asaxu", "side": "buy", "type": "limit", "price": "100", "amount": "1",
            "time_in_force": "GTC"}
    assert first.post("/api/v1/orders", json=body, headers=headers).status_code == 201
    assert second.post("/api/v1/orders", json=body, headers=headers).status_code == 201
    third = first.post("/api/v1/orders", json=body, headers=headers)
    assert third.status_code == 429 and "Retry-After" in third.headers
    # Reading is not limited, and the turned-away order changed nothing.
    listed = second.get("/api/v1/orders", headers=headers)
    assert listed.status_code == 200 and len(listed.get_json()) == 2
