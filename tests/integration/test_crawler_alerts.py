"""A failing crawler alerts Slack once and says "resolved" when a later run succeeds."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from stockex import alerts
from stockex.crawler import CrawlFailed, crawl_market
from stockex.tiki import TikiClient
from stockex.tiki.simulator import DEFAULT_ORIGIN


def test_crawler_failure_then_resolved(
    database: Any, make_settings: Any, start_simulator: Any, fake_slack: Any
) -> None:
    now = DEFAULT_ORIGIN + 120 * 60
    broken, broken_url = start_simulator(origin=DEFAULT_ORIGIN, error_rate=1.0, clock=lambda: now)
    healthy, healthy_url = start_simulator(origin=DEFAULT_ORIGIN, clock=lambda: now)
    settings = make_settings(
        database.url,
        slack={"token": fake_slack.token, "base_url": fake_slack.api_base_url,
               "channel": "#ops"},
        crawler={"start": datetime.fromtimestamp(DEFAULT_ORIGIN, UTC).isoformat(),
                 "markets": ["asaxu"]},
    )

    def client(url: str) -> TikiClient:
        return TikiClient(url, timeout=2, max_attempts=2, backoff_base=0.01, backoff_max=0.02)

    for _ in range(3):  # three failed runs inside the cooldown: one message
        with pytest.raises(CrawlFailed):
            crawl_market(database, settings, "asaxu", client=client(broken_url),
                         clock=lambda: now)
    summary = crawl_market(database, settings, "asaxu", client=client(healthy_url),
                           clock=lambda: now)
    assert summary.status == "success" and summary.rows_written == 120
    alerts.flush(10)
    texts = [m.text for m in fake_slack.wait_for(2, timeout=10)]
    assert len(texts) == 2, texts
    failure, resolved = texts
    assert "crawler asaxu" in failure and "• market: asaxu" in failure
    assert "UpstreamUnavailable" in failure
    assert "+07:00" in failure  # the window in local time
    assert "resolved crawler asaxu" in resolved and "3 occurrence(s)" in resolved
    assert broken.request_count >= 6 and healthy.request_count >= 1
