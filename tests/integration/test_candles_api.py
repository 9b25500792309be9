"""The candles and ticker endpoints: validation, CSV (acceptance 2 of issue 6), paging, time
parsing, late corrections, timezone changes; on SQLite and MySQL."""

from __future__ import annotations

import csv
import io
import time
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from stockex.api import create_app
from stockex.candles import rebuild_rollups, store_minutes
from stockex.models import CandleRollup
from stockex.tiki import Kline

HCM = ZoneInfo("Asia/Ho_Chi_Minh")
URL = "/api/v1/markets/asaxu/candles"
DAY0 = int(datetime(2024, 7, 1, tzinfo=HCM).timestamp())  # Monday 00:00 local


def kline(ts: int, price: int, volume: str = "1") -> Kline:
    p = Decimal(price)
    return Kline(ts, p, p + 5, p - 5, p + 1, Decimal(volume))


def store(database, klines: list[Kline]):  # type: ignore[no-untyped-def]
    return database.transaction(lambda s: store_minutes(s, "asaxu", klines))


@pytest.fixture
def three_days(database):  # type: ignore[no-untyped-def]
    """Every minute of 2024-07-01..03 local, price = minute index."""
    minutes = [kline(DAY0 + 60 * i, 1000 + i, f"0.{i % 1000:03d}") for i in range(3 * 1440)]
    for i in range(0, len(minutes), 1000):
        store(database, minutes[i : i + 1000])
    return minutes


def get(client, **params):  # type: ignore[no-untyped-def]
    return client.get(URL, query_string=params)


# ---------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"period": "7"}, "invalid_period"),
        ({"period": "hour"}, "invalid_period"),
        ({"limit": "0"}, "invalid_limit"),
        ({"limit": "5001"}, "invalid_limit"),
        ({"limit": "many"}, "invalid_limit"),
        # int() alone reads digit-group underscores and other scripts' digits
        ({"period": "1_5"}, "invalid_period"),
        ({"period": "\u0661\u0665"}, "invalid_period"),  # Arabic-Indic 15
        ({"limit": "1_0"}, "invalid_limit"),
        ({"limit": "\uff11\uff10"}, "invalid_limit"),  # fullwidth 10
        ({"time_from": "1_719_853_200"}, "invalid_time_from"),
        ({"time_to": "\u0661\u0667\u0661\u0669\u0668\u0665\u0663\u0662\u0660\u0660"},
         "invalid_time_to"),
        ({"time_from": "yesterday"}, "invalid_time_from"),
        ({"time_to": "2024-02-30T00:00:00"}, "invalid_time_to"),
        ({"time_from": "1719853200", "time_to": "1719853199"}, "invalid_time_range"),
        ({"time_from": "2024-07-02", "time_to": "2024-07-01T23:59:59"}, "invalid_time_range"),
        ({"format": "xml"}, "invalid_format"),
        # more digits than int() converts (4300): was a 500
        ({"limit": "1" * 5000}, "invalid_limit"),
        ({"period": "1" * 5000}, "invalid_period"),
    ],
)
def test_bad_input_is_a_specific_400(client, params, code) -> None:  # type: ignore[no-untyped-def]
    response = get(client, **params)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == code and error["message"]


@pytest.mark.parametrize("route", ["candles", "ticker", "depth", "trades"])
def test_unknown_market_is_404(client, route: str) -> None:  # type: ignore[no-untyped-def]
    response = client.get(f"/api/v1/markets/nope/{route}")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "unknown_market"


def test_no_data_is_an_empty_list(client) -> None:  # type: ignore[no-untyped-def]
    body = get(client, period=60).get_json()
    assert body == {"market": "asaxu", "period": 60, "timezone": "Asia/Ho_Chi_Minh",
                    "candles": [], "next_time_from": None}


# ---------------------------------------------------------------------------- answers


def test_day_candles_and_local_times(client, three_days) -> None:  # type: ignore[no-untyped-def]
    body = get(client, period=1440, time_from=DAY0, time_to=DAY0 + 3 * 86_400).get_json()
    assert [c["time_local"] for c in body["candles"]] == [
        "2024-07-01T00:00:00+07:00", "2024-07-02T00:00:00+07:00", "2024-07-03T00:00:00+07:00"]
    first = body["candles"][0]
    assert first["open"] == "1000" and first["close"] == str(1000 + 1439 + 1)
    assert first["high"] == str(1000 + 1439 + 5) and first["low"] == "995"
    expected_volume = sum((Decimal(f"0.{i % 1000:03d}") for i in range(1440)), Decimal(0))
    assert Decimal(first["volume"]) == expected_volume
    week = get(client, period=10080, time_from=DAY0).get_json()["candles"]
    assert len(week) == 1 and week[0]["time"] == DAY0
    assert Decimal(week[0]["volume"]) == sum((m.volume for m in three_days), Decimal(0))


def test_time_range_is_inclusive_on_bucket_start(client, three_days) -> None:  # type: ignore[no-untyped-def]
    body = get(client, period=60, time_from=DAY0 + 3600, time_to=DAY0 + 3 * 3600).get_json()
    assert [c["time"] for c in body["candles"]] == [DAY0 + 3600, DAY0 + 7200, DAY0 + 10800]
    # a bucket that starts before time_from is not included
    body = get(client, period=60, time_from=DAY0 + 3601, time_to=DAY0 + 3 * 3600).get_json()
    assert [c["time"] for c in body["candles"]] == [DAY0 + 7200, DAY0 + 10800]


def test_iso_times_naive_are_local(client, three_days) -> None:  # type: ignore[no-untyped-def]
    by_epoch = get(client, period=15, time_from=DAY0 + 3600, time_to=DAY0 + 7200).get_json()
    by_naive = get(client, period=15, time_from="2024-07-01T01:00:00",
                   time_to="2024-07-01T02:00").get_json()
    by_utc = get(client, period=15, time_from="2024-06-30T18:00:00Z",
                 time_to="2024-06-30T19:00:00+00:00").get_json()
    assert by_epoch == by_naive == by_utc
    assert len(by_epoch["candles"]) == 5


def test_iso_offset_written_into_a_url(client, three_days) -> None:  # type: ignore[no-untyped-def]
    """The documented ``2024-07-02T01:24:00+07:00`` typed or pasted into a URL unencoded: its
    "+" arrives as a space (form encoding), and was a 400 ``invalid_time_from``."""
    by_epoch = get(client, period=15, time_from=DAY0 + 3600, time_to=DAY0 + 7200).get_json()
    response = client.get(f"{URL}?period=15&time_from=2024-07-01T01:00:00+07:00"
                          "&time_to=2024-07-01T02:00+0700")
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == by_epoch


def test_newest_limit_up_to_time_to(client, three_days) -> None:  # type: ignore[no-untyped-def]
    body = get(client, period=60, limit=2, time_to="2024-07-02T00:30:00").get_json()
    assert [c["time_local"] for c in body["candles"]] == [
        "2024-07-01T23:00:00+07:00", "2024-07-02T00:00:00+07:00"]
    assert body["next_time_from"] is None
    newest = get(client, period=1, limit=1).get_json()["candles"]  # up to now
    assert newest[0]["time"] == three_days[-1].ts


def test_paging_with_next_time_from(client, three_days) -> None:  # type: ignore[no-untyped-def]
    everything = get(client, period=30, time_from=DAY0, limit=5000).get_json()["candles"]
    assert len(everything) == 3 * 48
    pages, cursor = [], DAY0
    while cursor is not None:
        body = get(client, period=30, time_from=cursor, limit=50).get_json()
        pages.extend(body["candles"])
        cursor = body["next_time_from"]
        if cursor is not None:
            assert cursor == pages[-1]["time"] + 1800
    assert pages == everything


def test_gaps_leave_no_empty_buckets(client, database) -> None:  # type: ignore[no-untyped-def]
    store(database, [kline(DAY0, 10), kline(DAY0 + 5 * 3600 + 60, 20)])
    body = get(client, period=60, time_from=DAY0, limit=2).get_json()
    assert [c["time"] for c in body["candles"]] == [DAY0, DAY0 + 5 * 3600]
    first = get(client, period=60, time_from=DAY0, limit=1).get_json()
    assert first["next_time_from"] == DAY0 + 5 * 3600  # the next bucket with data


# ---------------------------------------------------------------------------- CSV


@pytest.mark.parametrize("period", [1, 60, 1440, 10080])
def test_csv_holds_the_same_candles_as_json(client, three_days, period: int) -> None:  # type: ignore[no-untyped-def]
    params = {"period": period, "time_from": DAY0 - 600, "limit": 200}
    as_json = get(client, **params).get_json()["candles"]
    response = get(client, format="csv", **params)
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    disposition = response.headers["Content-Disposition"]
    assert disposition.startswith("attachment;") and ".csv" in disposition
    text = response.get_data(as_text=True)
    assert text.splitlines()[0] == "time,time_local,open,high,low,close,volume"
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows == [{k: str(v) for k, v in c.items()} for c in as_json]
    assert len(rows) == len(as_json) > 0


def test_csv_file_name_names_the_range(client, three_days) -> None:  # type: ignore[no-untyped-def]
    def name(**params: object) -> str:
        response = get(client, format="csv", period=1, **params)
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.headers["Content-Disposition"].split("filename=")[1].strip('"')

    assert name() == "asaxu-1m-latest-now.csv"
    assert name(time_from=0, time_to=DAY0) == f"asaxu-1m-0-{DAY0}.csv"  # 0 is no "latest"


def test_csv_errors_are_still_json(client) -> None:  # type: ignore[no-untyped-def]
    response = get(client, format="csv", period=3)
    assert response.status_code == 400 and response.mimetype == "application/json"


# ------------------------------------------------------------------ corrections, timezone


def test_late_correction_reaches_every_period(client, database, three_days) -> None:  # type: ignore[no-untyped-def]
    target = DAY0 + 86_400 + 600  # 2024-07-02T00:10 local
    result = store(database, [Kline(target, Decimal(1000), Decimal(99_999), Decimal(1),
                                    Decimal(1000), Decimal(500))])
    assert (result.inserted, result.updated) == (0, 1)
    for period in (5, 15, 60, 1440, 4320, 10080):
        candle = get(client, period=period, time_to=target, limit=1).get_json()["candles"][0]
        assert candle["high"] == "99999" and candle["low"] == "1", period


def test_timezone_change_requires_rebuild(database, make_settings, three_days) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(database.url, timezone="UTC")
    client = create_app(settings, db=database).test_client()
    refused = get(client, period=1440)
    assert refused.status_code == 503
    assert refused.get_json()["error"]["code"] == "candles_rebuild_required"
    documented = client.get("/api/openapi.json").get_json()["paths"][
        "/api/v1/markets/{market}/candles"]["get"]["responses"]["503"]["description"]
    assert "candles_rebuild_required" in documented and "stockex candles rebuild" in documented
    assert get(client, period=1).status_code == 200  # minutes do not depend on the timezone

    count = database.transaction(lambda s: rebuild_rollups(s, "asaxu", "UTC"))
    assert count == 3 * 1440
    rebuilt_at = time.monotonic()
    # Each API process re-reads the rollup timezone at least once a second.
    while (response := get(client, period=1440, time_from=0)).status_code == 503:
        assert time.monotonic() - rebuilt_at < 1.5
        time.sleep(0.05)
    days = response.get_json()["candles"]
    assert [c["time_local"][11:] for c in days] == ["00:00:00+00:00"] * 4  # 4 UTC days
    assert sum(Decimal(c["volume"]) for c in days) == sum(m.volume for m in three_days)


def test_rebuild_gives_the_same_rollups_as_incremental(database, three_days) -> None:  # type: ignore[no-untyped-def]
    def rollups():  # type: ignore[no-untyped-def]
        with database.read() as s:
            return sorted(tuple(r) for r in s.execute(select(
                CandleRollup.period, CandleRollup.time, CandleRollup.open, CandleRollup.high,
                CandleRollup.low, CandleRollup.close, CandleRollup.volume)))

    incremental = rollups()
    database.transaction(lambda s: rebuild_rollups(s, "asaxu", "Asia/Ho_Chi_Minh"))
    assert rollups() == incremental
    # per day 5, 15, 30, 60, 120, 240, 360, 720, 1440; one 3-day bucket (day 19905 % 3 == 0); a week
    assert len(incremental) == 3 * (288 + 96 + 48 + 24 + 12 + 6 + 4 + 2 + 1) + 1 + 1


# ---------------------------------------------------------------------------- ticker


def test_ticker_over_the_last_24_hours(client, database) -> None:  # type: ignore[no-untyped-def]
    now = int(time.time()) // 60 * 60
    store(database, [
        kline(now - 25 * 3600, 10),  # outside the window
        kline(now - 23 * 3600, 200, "2"),
        kline(now - 3600, 300, "3.5"),
        kline(now - 60, 250, "0.25"),
    ])
    body = client.get("/api/v1/markets/asaxu/ticker").get_json()
    assert body["market"] == "asaxu"
    assert body["last"] == "251" and body["last_time"] == now - 60
    assert body["open"] == "200" and body["high"] == "305" and body["low"] == "195"
    assert body["volume"] == "5.75"
    assert body["price_change"] == "51" and body["price_change_percent"] == "25.5"
    assert body["last_time_local"].endswith("+07:00")


def test_ticker_without_recent_data(client, database) -> None:  # type: ignore[no-untyped-def]
    store(database, [kline(DAY0, 100)])
    body = client.get("/api/v1/markets/asaxu/ticker").get_json()
    assert body["last"] == "101" and body["last_time"] == DAY0
    assert body["open"] is None and body["volume"] == "0"
    assert body["price_change_percent"] is None


def test_ticker_reads_one_snapshot(database) -> None:  # type: ignore[no-untyped-def]
    """A crawl committing while the ticker is read shows in all of it or none of it: on
    MySQL (READ COMMITTED) every statement sees what committed before it, and a ticker read
    in several statements mixed the two states (a high above every minute it said was last,
    a volume counting a minute its last price had not seen) for one crawl interval."""
    from sqlalchemy import event

    from stockex.candle_queries import read_ticker

    def ticker():  # type: ignore[no-untyped-def]
        with database.read() as session:
            return read_ticker(session, "asaxu", now)

    now = int(time.time()) // 60 * 60
    store(database, [kline(now - 3600, 100)])
    before = ticker()
    crawled = []

    def crawl_meanwhile(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        if not crawled and "candles" in statement:
            crawled.append(statement)  # first: the crawl's own statements pass through here
            store(database, [kline(now - 60, 500, "2")])

    event.listen(database.engine, "after_cursor_execute", crawl_meanwhile)
    try:
        seen = ticker()
    finally:
        event.remove(database.engine, "after_cursor_execute", crawl_meanwhile)
    after = ticker()
    assert crawled and before != after
    assert seen in (before, after)
    assert seen.last is not None and seen.high is not None and seen.last <= seen.high


def test_series_states_memo_refreshes_after_max_age(database) -> None:  # type: ignore[no-untyped-def]
    from stockex.candle_queries import SeriesStates

    now = [0.0]
    states = SeriesStates(database, max_age=1.0, clock=lambda: now[0])
    assert states.get("asaxu").timezone is None  # nothing stored yet
    store(database, [kline(DAY0, 100)])  # an old minute: settles, bumps the revision
    assert states.get("asaxu").timezone is None  # memo, less than max_age old
    now[0] = 1.0
    state = states.get("asaxu")
    assert state.timezone == "Asia/Ho_Chi_Minh" and state.revision == 1


@pytest.mark.parametrize(
    "bad",
    [Decimal("-1"), Decimal("1.0000000000000000001"), Decimal(10) ** 18, Decimal("NaN")],
)
def test_invalid_amounts_write_nothing(database, bad: Decimal) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import func
    from sqlalchemy.exc import StatementError

    from stockex.db import AmountOutOfRange
    from stockex.models import Candle

    good = [kline(DAY0 + 60 * i, 100) for i in range(3)]
    broken = Kline(DAY0 + 180, Decimal(100), Decimal(105), Decimal(95), Decimal(100), bad)
    with pytest.raises((AmountOutOfRange, StatementError)):
        store(database, [*good, broken])
    with database.read() as s:
        assert s.scalar(select(func.count()).select_from(Candle)) == 0
        assert s.scalar(select(func.count()).select_from(CandleRollup)) == 0


def test_only_changes_to_settled_buckets_bump_the_revision(database) -> None:  # type: ignore[no-untyped-def]
    from stockex.candle_queries import series_state

    def revision() -> int:
        with database.engine.connect() as conn:
            return series_state(conn, "asaxu").revision

    now = int(time.time()) // 60 * 60
    store(database, [kline(now - 120, 100)])  # the live edge: caches expire by TTL
    assert revision() == 0
    store(database, [kline(now - 120, 200)])  # corrected while young: still no bump
    assert revision() == 0
    store(database, [kline(now - 2 * 3600, 100)])  # settled bucket: a correction
    assert revision() == 1


def test_settled_answers() -> None:
    from stockex.buckets import clock_for
    from stockex.candle_queries import CandleQuery

    clock = clock_for("Asia/Ho_Chi_Minh")
    now = DAY0 + 10 * 86_400 + 5 * 3600  # 05:00 local
    assert CandleQuery("asaxu", 60, time_to=now - 3 * 3600).settled(clock, now)
    assert not CandleQuery("asaxu", 60, time_to=now - 3000).settled(clock, now)
    assert not CandleQuery("asaxu", 60).settled(clock, now)  # up to now
    # a day is settled an hour after it ended, not before
    assert not CandleQuery("asaxu", 1440, time_to=now - 3 * 3600).settled(clock, now)
    assert CandleQuery("asaxu", 1440, time_to=now - 6 * 3600).settled(clock, now)
    assert not CandleQuery("asaxu", 1440, time_to=now - 6 * 3600).settled(clock, now - 16_200)


def test_mysql_page_longer_than_group_concat_max_len(mysql_database) -> None:  # type: ignore[no-untyped-def]
    """MySQL's default group_concat_max_len (1 KB) truncates a page: rows come one by one."""
    from stockex.candle_queries import CandleQuery, read_candles

    store(mysql_database, [kline(DAY0 + 60 * i, 1000 + i, "0.125") for i in range(300)])
    for query in (CandleQuery("asaxu", 1, None, DAY0 + 86_400, 250),
                  CandleQuery("asaxu", 5, DAY0 + 600, DAY0 + 86_400, 20)):
        with mysql_database.engine.connect() as conn:
            whole = read_candles(conn, query, DAY0 + 86_400)
        with mysql_database.engine.connect() as conn:
            conn.exec_driver_sql("SET SESSION group_concat_max_len = 1024")
            try:
                truncated = read_candles(conn, query, DAY0 + 86_400)
            finally:
                conn.exec_driver_sql("SET SESSION group_concat_max_len = DEFAULT")
        assert truncated == whole
        assert len(whole.candles) == query.limit
        assert [c[0] for c in whole.candles] == sorted(c[0] for c in whole.candles)
    assert whole.next_time_from == DAY0 + 600 + 20 * 300
