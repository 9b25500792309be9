"""Issue 5 acceptance 1 and 2 through the API: 500s reach the fake Slack once per cooldown,
with the suppressed count later, never a credential; a dead or slow Slack costs no latency."""

from __future__ import annotations

import statistics
import time

import pytest
from flask import Flask, g

from stockex import alerts
from stockex.api import create_app

DB_PASSWORD = "db-pass-w0rd-xyz"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI3In0.TJVA95OrM7E2cBab30RMHrHDcEfxjoYZgeFONFh7HgQ"


def failing_app(settings, database) -> Flask:  # type: ignore[no-untyped-def]
    app = create_app(settings, db=database)

    @app.post("/test/orders/<int:order_id>")
    def explode(order_id: int):  # type: ignore[no-untyped-def]
        g.user_id = 7  # as the auth layer would
        url = f"mysql+pymysql://stockex:{DB_PASSWORD}@db:3306/stockex"
        raise RuntimeError(f"order {order_id}: lost {url} while checking token={JWT}")

    return app


def slack_settings(make_settings, database, slack, **slack_extra):  # type: ignore[no-untyped-def]
    return make_settings(
        database.url,
        slack={"token": slack.token, "base_url": slack.api_base_url, "channel": "#ops",
               **slack_extra},
    )


def post_failure(client, n: int):  # type: ignore[no-untyped-def]
    return client.post(
        f"/test/orders/{n}",
        json={"username": "bob", "password": "hunter2-secret"},
        headers={"Authorization": f"Bearer {JWT}", "X-Request-ID": f"burst-{n}"},
    )


def test_a_burst_of_100_failures_is_one_message_and_the_next_carries_the_count(  # type: ignore[no-untyped-def]
    database, make_settings, fake_slack
) -> None:
    settings = slack_settings(make_settings, database, fake_slack, cooldown_seconds=2)
    client = failing_app(settings, database).test_client()
    notifier = alerts.notifier_for(settings)  # the one the app uses
    for n in range(100):
        response = post_failure(client, n)
        assert response.status_code == 500
        assert response.get_json()["error"]["code"] == "internal_error"
    assert notifier.flush(10)
    [first] = fake_slack.messages
    text = first.text
    assert "*stockex-api*" in text
    # the route, not the path (its < > escaped for Slack)
    assert "*RuntimeError* in api POST /test/orders/&lt;int:order_id&gt;" in text
    for line in ("• method: POST", "• path: /test/orders/0", "• request_id: burst-0",
                 "• user_id: 7"):
        assert line in text
    assert "Traceback (most recent call last)" in text

    time.sleep(2.1)  # the cooldown passes
    assert post_failure(client, 100).status_code == 500
    assert notifier.flush(10)
    assert len(fake_slack.messages) == 2
    later = fake_slack.messages[1].text
    assert "99 more occurrence(s) were held back" in later and "request_id: burst-100" in later

    for message in fake_slack.messages:
        for secret in (DB_PASSWORD, JWT, JWT.split(".")[1], "hunter2-secret",
                       settings.secret_key, fake_slack.token):
            assert secret not in message.raw
        assert "Bearer" not in message.raw and "Authorization" not in message.raw


@pytest.mark.parametrize("fault", ["unreachable", "10 s to answer"])
def test_a_dead_or_slow_slack_costs_the_api_no_latency(  # type: ignore[no-untyped-def]
    database, make_settings, fake_slack, fault: str
) -> None:
    def latencies(client, count: int) -> list[float]:  # type: ignore[no-untyped-def]
        seconds = []
        for n in range(count):
            started = time.perf_counter()
            assert post_failure(client, n).status_code == 500
            assert client.get("/health").status_code == 200
            seconds.append(time.perf_counter() - started)
        return seconds

    # cooldown 0: every failure is a message to send, the worst case for the sender
    settings = slack_settings(make_settings, database, fake_slack, cooldown_seconds=0)
    healthy = failing_app(settings, database).test_client()
    baseline = latencies(healthy, 30)
    assert alerts.notifier_for(settings).flush(10)
    assert len(fake_slack.messages) == 30

    if fault == "unreachable":
        fake_slack.down()
    else:
        fake_slack.hang(10)
    settings = slack_settings(make_settings, database, fake_slack, cooldown_seconds=0,
                              channel="#ops-2")  # another configuration, so another notifier
    faulty = failing_app(settings, database).test_client()
    notifier = alerts.notifier_for(settings)
    try:
        degraded = latencies(faulty, 30)
        assert not notifier.flush(0.1)  # the alerts are still waiting for Slack
    finally:
        notifier.discard_pending()
    print(f"median baseline {statistics.median(baseline) * 1000:.1f} ms, "
          f"with Slack {fault} {statistics.median(degraded) * 1000:.1f} ms, "
          f"max {max(degraded) * 1000:.1f} ms")
    assert max(degraded) < 1.0  # nowhere near Slack's 10 s or its connect retries
    assert statistics.median(degraded) < max(3 * statistics.median(baseline), 0.05)
