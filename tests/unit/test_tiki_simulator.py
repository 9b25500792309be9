"""The Tiki-Exchange stand-in: deterministic rows, the closed-minute rule, and fault injection.

Requests go over real HTTP on loopback with a plain ``requests`` session, the way the
exchange would be spoken to; the clock is injected so "now" is fixed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests

from stockex.tiki.simulator import (
    DEFAULT_ORIGIN,
    Simulator,
    SimulatorConfig,
    kline_at,
    provisional_kline_at,
)

ORIGIN = DEFAULT_ORIGIN
SRC = Path(__file__).resolve().parents[2] / "src"


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture
def start_sim(start_simulator: Any) -> Any:
    """conftest's ``start_simulator`` with this module's fixed clock as the default."""

    def start(**config: Any) -> tuple[Simulator, str]:
        config.setdefault("clock", FakeClock(ORIGIN + 30 * 86_400))
        return start_simulator(**config)  # type: ignore[no-any-return]

    return start


def get_klines(
    http: requests.Session, url: str, market: str = "asaxu", **params: Any
) -> requests.Response:
    return http.get(f"{url}/rally/markets/{market}/klines", params=params, timeout=5)


def rows_of(response: requests.Response) -> list[list[Any]]:
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
    return json.loads(response.content, parse_float=Decimal)


def as_list(row: tuple[Any, ...]) -> list[Any]:
    return list(row)


# --- the pure price series ------------------------------------------------------------------


def test_default_origin_is_the_crawlers_default_start() -> None:
    start = datetime.fromisoformat("2024-01-01T00:00:00+07:00")
    assert DEFAULT_ORIGIN == int(start.timestamp()) == SimulatorConfig().origin


def test_kline_at_is_deterministic_and_depends_on_market_and_seed() -> None:
    ts = ORIGIN + 12_345 * 60
    assert kline_at("asaxu", ts) == kline_at("asaxu", ts, seed=0)
    assert kline_at("asaxu", ts, seed=1) != kline_at("asaxu", ts, seed=0)
    assert kline_at("btcvnd", ts) != kline_at("asaxu", ts)


def test_kline_at_rows_are_valid_continuous_and_in_range() -> None:
    previous_close = None
    for i in range(20_000):
        ts, open_, high, low, close, volume = kline_at("asaxu", ORIGIN + i * 60)
        assert ts == ORIGIN + i * 60
        assert all(type(p) is int for p in (open_, high, low, close))
        assert high >= max(open_, close) and low <= min(open_, close)
        assert 20_000 <= low and high <= 30_000
        assert isinstance(volume, Decimal) and volume >= 0
        assert volume.as_tuple().exponent >= -3
        if previous_close is not None:
            assert open_ == previous_close
        previous_close = close


def test_kline_at_refuses_a_ts_that_is_not_a_minute_start() -> None:
    with pytest.raises(ValueError, match="multiple of 60"):
        kline_at("asaxu", ORIGIN + 30)


def test_provisional_kline_differs_from_final_but_is_valid() -> None:
    for i in range(200):
        ts = ORIGIN + i * 60
        final = kline_at("asaxu", ts)
        ts_p, open_, high, low, close, volume = provisional_kline_at("asaxu", ts, 0, ts + 42)
        assert ts_p == ts and open_ == final[1]
        assert close != final[4]
        assert high >= max(open_, close) and low <= min(open_, close)
        assert 0 <= volume <= final[5]


# --- the HTTP endpoint ----------------------------------------------------------------------


def test_window_answers_exact_rows_inclusive_of_both_bounds(start_sim, http) -> None:
    sim, url = start_sim()
    rows = rows_of(get_klines(http, url, period=1, time_from=ORIGIN, time_to=ORIGIN + 4 * 60))
    assert rows == [as_list(kline_at("asaxu", ORIGIN + i * 60)) for i in range(5)]
    assert sim.request_count == 1


def test_unaligned_bounds_cover_only_minutes_starting_inside(start_sim, http) -> None:
    _, url = start_sim()
    rows = rows_of(get_klines(http, url, period=1, time_from=ORIGIN + 61, time_to=ORIGIN + 239))
    assert [r[0] for r in rows] == [ORIGIN + 120, ORIGIN + 180]


def test_nothing_before_origin(start_sim, http) -> None:
    _, url = start_sim()
    rows = rows_of(get_klines(http, url, period=1, time_from=ORIGIN - 600, time_to=ORIGIN + 60))
    assert [r[0] for r in rows] == [ORIGIN, ORIGIN + 60]


def test_only_closed_minutes_are_served(start_sim, http) -> None:
    clock = FakeClock(ORIGIN + 10 * 60 + 30)  # minute 10 is open, minute 9 closed at +600
    _, url = start_sim(clock=clock)
    rows = rows_of(get_klines(http, url, period=1, time_from=ORIGIN, time_to=ORIGIN + 3600))
    assert rows[-1][0] == ORIGIN + 9 * 60 and len(rows) == 10

    clock.now = ORIGIN + 11 * 60  # exactly when minute 10 closes
    rows = rows_of(get_klines(http, url, period=1, time_from=ORIGIN, time_to=ORIGIN + 3600))
    assert rows[-1] == as_list(kline_at("asaxu", ORIGIN + 10 * 60))


def test_max_rows_caps_the_answer_to_its_first_rows(start_sim, http) -> None:
    _, url = start_sim(max_rows=7)
    rows = rows_of(get_klines(http, url, period=1, time_from=ORIGIN, time_to=ORIGIN + 99 * 60))
    assert [r[0] for r in rows] == [ORIGIN + i * 60 for i in range(7)]


def test_gaps_are_left_out_inclusively(start_sim, http) -> None:
    _, url = start_sim(gaps=((ORIGIN + 120, ORIGIN + 240),))
    rows = rows_of(get_klines(http, url, period=1, time_from=ORIGIN, time_to=ORIGIN + 6 * 60))
    assert [r[0] for r in rows] == [ORIGIN, ORIGIN + 60, ORIGIN + 300, ORIGIN + 360]
    # Data resumes as if trading went on unseen: the open is still the previous minute's close.
    assert rows[2] == as_list(kline_at("asaxu", ORIGIN + 300))


def test_malformed_ts_breaks_exactly_that_row(start_sim, http) -> None:
    bad = ORIGIN + 120
    _, url = start_sim(malformed_ts=bad)
    rows = rows_of(get_klines(http, url, period=1, time_from=ORIGIN, time_to=ORIGIN + 240))
    by_ts = {r[0]: r for r in rows}
    _, open_, high, _, close, _ = by_ts[bad]
    assert high < max(open_, close)
    assert by_ts[ORIGIN + 60] == as_list(kline_at("asaxu", ORIGIN + 60))


def test_open_minute_is_provisional_until_the_clock_moves_on(start_sim, http) -> None:
    open_ts = ORIGIN + 5 * 60
    clock = FakeClock(open_ts + 25)
    _, url = start_sim(clock=clock, serve_open_minute=True)
    params = {"period": 1, "time_from": ORIGIN, "time_to": ORIGIN + 3600}
    rows = rows_of(get_klines(http, url, **params))
    assert rows[-1] == as_list(provisional_kline_at("asaxu", open_ts, 0, open_ts + 25))
    assert rows[-1] != as_list(kline_at("asaxu", open_ts))

    clock.now = open_ts + 60
    rows = rows_of(get_klines(http, url, **params))
    assert rows[5] == as_list(kline_at("asaxu", open_ts))
    assert rows[-1] == as_list(provisional_kline_at("asaxu", open_ts + 60, 0, open_ts + 60))


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"period": 1, "time_to": ORIGIN}, "market.candle.invalid_time_from"),
        ({"period": 1, "time_from": ORIGIN}, "market.candle.invalid_time_to"),
        ({"period": 1, "time_from": "yesterday", "time_to": ORIGIN}, "invalid_time_from"),
        ({"period": 1, "time_from": ORIGIN, "time_to": "1.5"}, "invalid_time_to"),
        ({"period": 5, "time_from": ORIGIN, "time_to": ORIGIN}, "market.candle.invalid_period"),
    ],
)
def test_bad_parameters_answer_400_json(start_sim, http, params, code) -> None:
    _, url = start_sim()
    response = get_klines(http, url, **params)
    assert response.status_code == 400
    assert code in response.json()["errors"][0]


def test_unknown_market_and_path_answer_404_and_other_methods_405(start_sim, http) -> None:
    _, url = start_sim(markets=("asaxu", "btcvnd"))
    params = {"period": 1, "time_from": ORIGIN, "time_to": ORIGIN}
    assert get_klines(http, url, "btcvnd", **params).status_code == 200
    unknown = get_klines(http, url, "dogevnd", **params)
    assert unknown.status_code == 404
    assert unknown.json() == {"errors": ["market.market.doesnt_exist"]}
    assert http.get(f"{url}/rally/markets", timeout=5).status_code == 404
    post = http.post(f"{url}/rally/markets/asaxu/klines", params=params, timeout=5)
    assert post.status_code == 405


# --- fault injection ------------------------------------------------------------------------


def test_error_every_fails_every_nth_request_with_a_5xx(start_sim, http) -> None:
    sim, url = start_sim(error_every=3)
    params = {"period": 1, "time_from": ORIGIN, "time_to": ORIGIN}
    statuses = [get_klines(http, url, **params).status_code for _ in range(9)]
    assert statuses == [200, 200, 500, 200, 200, 502, 200, 200, 503]
    assert sim.request_count == 9


def test_rate_limit_every_answers_429_with_retry_after(start_sim, http) -> None:
    _, url = start_sim(rate_limit_every=2)
    params = {"period": 1, "time_from": ORIGIN, "time_to": ORIGIN}
    first, second = get_klines(http, url, **params), get_klines(http, url, **params)
    assert first.status_code == 200
    assert second.status_code == 429 and second.headers["Retry-After"] == "1"


def test_error_rate_is_reproducible_for_a_seed(start_sim, http) -> None:
    params = {"period": 1, "time_from": ORIGIN, "time_to": ORIGIN}
    runs = []
    for _ in range(2):
        _, url = start_sim(error_rate=0.5, seed=7)
        runs.append([get_klines(http, url, **params).status_code for _ in range(30)])
    assert runs[0] == runs[1]
    assert {200, 503} == set(runs[0])


def test_slow_every_delays_only_every_nth_request(start_sim, http) -> None:
    _, url = start_sim(slow_every=2, slow_seconds=0.3)
    params = {"period": 1, "time_from": ORIGIN, "time_to": ORIGIN}
    durations = []
    for _ in range(2):
        started = time.perf_counter()
        assert get_klines(http, url, **params).status_code == 200
        durations.append(time.perf_counter() - started)
    assert durations[0] < 0.2 <= 0.3 <= durations[1]


def test_request_count_is_exact_under_concurrency(start_sim) -> None:
    from concurrent.futures import ThreadPoolExecutor

    sim, url = start_sim()

    def one(_: int) -> int:
        with requests.Session() as session:
            return get_klines(session, url, period=1, time_from=ORIGIN, time_to=ORIGIN).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert set(pool.map(one, range(40))) == {200}
    assert sim.request_count == 40


# --- serving --------------------------------------------------------------------------------


def test_thousand_row_answer_is_fast(start_sim, http) -> None:
    _, url = start_sim()
    params = {"period": 1, "time_from": ORIGIN, "time_to": ORIGIN + 999 * 60}
    assert len(rows_of(get_klines(http, url, **params))) == 1000  # warm the connection
    started = time.perf_counter()
    for _ in range(10):
        assert len(get_klines(http, url, **params).content) > 30_000
    per_answer = (time.perf_counter() - started) / 10
    # Typically ~5 ms; the bound only guards against an accidental O(n^2) or per-row objects.
    assert per_answer < 0.1


def test_serve_handle_stops_listening_on_shutdown(http) -> None:
    sim = Simulator(SimulatorConfig(clock=FakeClock(ORIGIN + 3600)))
    with sim.serve() as handle:
        assert handle.url == f"http://127.0.0.1:{handle.port}" and handle.port > 0
        assert get_klines(http, handle.url, period=1, time_from=ORIGIN, time_to=ORIGIN).ok
    http.close()  # drop the kept-alive connection so the next request must connect anew
    with pytest.raises(requests.ConnectionError):
        get_klines(http, handle.url, period=1, time_from=ORIGIN, time_to=ORIGIN)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT delivery differs on Windows")
def test_run_simulator_announces_its_url_and_stops_on_ctrl_c() -> None:
    code = "from stockex.tiki.simulator import main; main(['--port', '0', '--max-rows', '3'])"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline().strip()
        assert line.startswith("stockex sim listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1]
        with requests.Session() as session:
            response = get_klines(session, url, period=1, time_from=ORIGIN, time_to=ORIGIN + 600)
            assert [r[0] for r in rows_of(response)] == [ORIGIN, ORIGIN + 60, ORIGIN + 120]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
