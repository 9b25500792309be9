"""Acceptance 1 of issue 6: for random minute data with gaps (stored in random chunks, with late
corrections) the API's candles of every period equal a plain reference aggregation written
here, independently of stockex's rollups; on SQLite and MySQL.

The data always straddles a local (+07:00) midnight and a Monday 00:00 local, with minutes
placed right before and after them, so the alignment is checked where it matters.

A second property configures a zone that changes its clocks and places the minutes around one
change: the reference there buckets by local wall-clock time read with zoneinfo.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete

from stockex.api import create_app, services
from stockex.batch import WriteBatch
from stockex.buckets import clock_for
from stockex.cache import Cache
from stockex.candles import plan_minutes, series_timezone, store_minutes, write_plan
from stockex.models import Candle, CandleRollup, CandleSeries
from stockex.tiki import Kline

HCM = ZoneInfo("Asia/Ho_Chi_Minh")
OFFSET = 7 * 3600
PERIODS = [1, 5, 15, 30, 60, 120, 240, 360, 720, 1440, 4320, 10080]
SPAN_MINUTES = 16 * 1440  # a little over two weeks: several week and 3-day buckets


# ------------------------------------------------------------------ reference aggregation


def reference_bucket(t: int, period: int) -> int:
    """Bucket start, computed the plain way (not with stockex.buckets)."""
    if period == 10080:
        local = datetime.fromtimestamp(t, HCM)
        monday = (local - timedelta(days=local.weekday())).replace(hour=0, minute=0, second=0)
        return int(monday.timestamp())
    if period == 4320:
        local_day = (t + OFFSET) // 86_400  # days since 1970-01-01, local
        return (local_day - local_day % 3) * 86_400 - OFFSET
    local = datetime.fromtimestamp(t, HCM)
    minute_of_day = local.hour * 60 + local.minute
    start_minute = minute_of_day - minute_of_day % period
    start = local.replace(hour=0, minute=0, second=0) + timedelta(minutes=start_minute)
    return int(start.timestamp())


def reference_candles(minutes: dict[int, Kline], period: int) -> list[dict[str, object]]:
    groups: dict[int, list[Kline]] = defaultdict(list)
    for t in sorted(minutes):
        groups[reference_bucket(t, period)].append(minutes[t])
    out = []
    for start in sorted(groups):
        ks = groups[start]
        out.append({
            "time": start,
            "time_local": datetime.fromtimestamp(start, HCM).isoformat(),
            "open": ks[0].open,
            "high": max(k.high for k in ks),
            "low": min(k.low for k in ks),
            "close": ks[-1].close,
            "volume": sum((k.volume for k in ks), Decimal(0)),
        })
    return out


def assert_canonical_strings(candles: list[dict[str, object]]) -> None:
    """Amounts are decimal strings without exponent or trailing zeros ("25000.5")."""
    for candle in candles:
        for name in ("open", "high", "low", "close", "volume"):
            value = candle[name]
            assert isinstance(value, str)
            assert value == format(Decimal(value).normalize(), "f"), (name, value)


def as_numbers(candles: list[dict[str, object]]) -> list[dict[str, object]]:
    return [
        {k: (Decimal(v) if k in ("open", "high", "low", "close", "volume") else v)  # type: ignore[arg-type]
         for k, v in c.items()}
        for c in candles
    ]


# ------------------------------------------------------------------------- random data


@dataclass
class Scenario:
    minutes: dict[int, Kline]  # first values
    corrections: dict[int, Kline]  # later values of some minutes (and some new minutes)
    chunk_sizes: list[int]
    first: int
    last: int


prices = st.integers(min_value=1, max_value=10**9).map(lambda n: Decimal(n) / 1000)
volumes = st.integers(min_value=0, max_value=10**12).map(lambda n: Decimal(n) / 10**8)


@st.composite
def kline_at(draw: st.DrawFn, ts: int) -> Kline:
    o, c = draw(prices), draw(prices)
    up, down = draw(prices), draw(st.integers(0, 100))
    low = max(Decimal(0), min(o, c) - Decimal(down))
    return Kline(ts, o, max(o, c) + up, low, c, draw(volumes))


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    # Start at local midnight of a day in 2021..2025, a few hours early so the span opens
    # before a day boundary; it always contains a Monday 00:00 (span > 7 days).
    day = draw(st.integers(0, 5 * 365))
    start = int(datetime(2021, 1, 1, tzinfo=HCM).timestamp()) + day * 86_400 - 3 * 3600
    offsets: set[int] = set()
    for run_start, run_len in draw(
        st.lists(st.tuples(st.integers(0, SPAN_MINUTES), st.integers(1, 40)), max_size=8)
    ):
        offsets.update(range(run_start, min(SPAN_MINUTES, run_start + run_len)))
    offsets.update(draw(st.lists(st.integers(0, SPAN_MINUTES - 1), max_size=40)))
    # minutes right at a local midnight and at Monday 00:00 local, and just before them
    first_monday = next(
        d for d in range(8)
        if datetime.fromtimestamp(start + 3 * 3600 + d * 86_400, HCM).weekday() == 0
    )
    for boundary in (180, 180 + first_monday * 1440, 180 + 5 * 1440):
        offsets.update({boundary - 1, boundary} if draw(st.booleans()) else {boundary})
    times = sorted(start + 60 * o for o in offsets)
    minutes = {t: draw(kline_at(t)) for t in times}
    corrected = draw(st.lists(st.sampled_from(times), max_size=10, unique=True))
    late = draw(st.lists(st.integers(0, SPAN_MINUTES - 1), max_size=5))
    corrections = {t: draw(kline_at(t)) for t in corrected + [start + 60 * o for o in late]}
    chunks = draw(st.lists(st.integers(10, 120), min_size=1, max_size=4))
    return Scenario(minutes, corrections, chunks, start, start + 60 * SPAN_MINUTES)


def store_in_chunks(database, klines: list[Kline], sizes: list[int], pipelined: bool) -> None:  # type: ignore[no-untyped-def]
    """Store ``klines`` in parts of the given sizes (cycled). ``pipelined`` does what the
    crawler does, at its worst: each part is planned before the previous one is written, and
    written in a batch."""
    parts = []
    i = 0
    while i < len(klines):
        size = sizes[len(parts) % len(sizes)]
        parts.append(klines[i : i + size])
        i += size
    if not pipelined:
        for part in parts:
            database.transaction(lambda s, part=part: store_minutes(s, "asaxu", part))
        return
    timezone = database.transaction(lambda s: series_timezone(s, "asaxu"))
    pending = None
    for part in parts:
        with database.read() as session:
            plan = plan_minutes(session, "asaxu", part, rollup_timezone=timezone,
                                pending=pending)
        if pending is not None:
            database.transaction(lambda s, p=pending: write_batched(s, p))
        pending = plan
    if pending is not None:
        database.transaction(lambda s: write_batched(s, pending))


def write_batched(session, plan) -> None:  # type: ignore[no-untyped-def]
    """As the crawler writes a plan: on MySQL one multi-statement query ending in COMMIT."""
    batch = WriteBatch(session)
    write_plan(session, plan, batch)
    batch.flush(commit=True)


def reset(database) -> None:  # type: ignore[no-untyped-def]
    def work(session) -> None:  # type: ignore[no-untyped-def]
        for model in (CandleRollup, Candle, CandleSeries):
            session.execute(delete(model))

    database.transaction(work)


# ---------------------------------------------------------------------------------- test


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenarios(), pipelined=st.booleans(), window=st.tuples(
    st.integers(-86_400, SPAN_MINUTES * 60), st.integers(0, SPAN_MINUTES * 60),
    st.integers(5, 50)))
def test_api_candles_equal_reference_aggregation(  # type: ignore[no-untyped-def]
    app, client, database, scenario, pipelined, window
) -> None:
    reset(database)
    with app.app_context():
        services().cache = Cache("")  # a fresh cache and series memo per example
    app.extensions.pop("stockex.series_states", None)
    # Stored out of order, in random chunks; then late corrections and late new minutes.
    klines = sorted(scenario.minutes.values(), key=lambda k: (k.ts * 7919) % 10007)
    store_in_chunks(database, klines, scenario.chunk_sizes, pipelined)
    store_in_chunks(database, list(scenario.corrections.values()), scenario.chunk_sizes[::-1],
                    pipelined)
    final = {**scenario.minutes, **scenario.corrections}

    for period in PERIODS:
        expected = reference_candles(final, period)
        response = client.get(
            "/api/v1/markets/asaxu/candles",
            query_string={"period": period, "time_from": scenario.first - 7 * 86_400,
                          "time_to": scenario.last, "limit": 5000},
        )
        assert response.status_code == 200, response.get_data(as_text=True)
        body = response.get_json()
        assert body["period"] == period and body["timezone"] == "Asia/Ho_Chi_Minh"
        assert body["next_time_from"] is None
        assert as_numbers(body["candles"]) == as_numbers(expected), f"period {period}"
        assert_canonical_strings(body["candles"])

        # The newest `limit` buckets when time_from is absent.
        newest = client.get(
            "/api/v1/markets/asaxu/candles",
            query_string={"period": period, "time_to": scenario.last, "limit": 3},
        ).get_json()
        assert as_numbers(newest["candles"]) == as_numbers(expected[-3:])

        # Paging a window by next_time_from: every bucket starting in it once, in order; the
        # CSV of a page holds the JSON's candles.
        time_from, time_to = scenario.first + window[0], scenario.first + window[0] + window[1]
        pages: list[dict[str, object]] = []
        following: int | None = time_from
        while following is not None:
            params = {"period": period, "time_from": following, "time_to": time_to,
                      "limit": window[2]}
            page = client.get("/api/v1/markets/asaxu/candles", query_string=params).get_json()
            assert page["next_time_from"] is None or len(page["candles"]) == window[2]
            pages += page["candles"]
            following = page["next_time_from"]
        assert as_numbers(pages) == as_numbers(
            [c for c in expected if time_from <= c["time"] <= time_to])  # type: ignore[operator]
        sheet = client.get("/api/v1/markets/asaxu/candles",
                           query_string={**params, "format": "csv"}).get_data(as_text=True)
        assert sheet.splitlines()[1:] == [
            ",".join(str(c[k]) for k in ("time", "time_local", "open", "high", "low", "close",
                                         "volume"))
            for c in page["candles"]
        ]


# ----------------------------------------------------- a configured zone with DST changes

DST_ZONES = ["Europe/Berlin", "America/New_York", "America/Santiago", "Pacific/Chatham"]


def wall_bucket(t: int, period: int, tz: ZoneInfo) -> int:
    """Bucket start in a zone with DST, from local wall times alone: the last instant up to
    ``t`` whose wall time is the bucket's grid time (CONTRACT §5's formula with the offset in
    force at ``t``); when the clocks skipped that wall time, the moment they skipped to."""
    wall = datetime.fromtimestamp(t, tz).replace(tzinfo=None)
    if period == 10080:
        grid = (wall - timedelta(days=wall.weekday())).replace(hour=0, minute=0)
    elif period == 4320:
        day = (wall - datetime(1970, 1, 1)).days
        grid = datetime(1970, 1, 1) + timedelta(days=day - day % 3)
    else:
        minute = wall.hour * 60 + wall.minute
        grid = wall - timedelta(minutes=minute % period)
    found = [
        int(grid.replace(tzinfo=tz, fold=fold).timestamp()) for fold in (0, 1)
    ]
    found = [s for s in found
             if s <= t and datetime.fromtimestamp(s, tz).replace(tzinfo=None) == grid]
    if found:
        return max(found)
    start = t  # skipped: walk back to the first minute after the gap
    while datetime.fromtimestamp(start - 60, tz).replace(tzinfo=None) > grid:
        start -= 60
    return start


@st.composite
def dst_scenarios(draw: st.DrawFn) -> tuple[str, dict[int, Kline]]:
    """Minutes over the four days around one of the zone's clock changes (2021..2025):
    dense runs and single minutes, always some right at and around the change."""
    zone = draw(st.sampled_from(DST_ZONES))
    clock = clock_for(zone)
    changes = [t for t in clock._transitions if 1_609_459_200 <= t < 1_767_225_600]
    change = draw(st.sampled_from(changes))
    start = change - change % 60 - 2 * 86_400
    span = 4 * 1440
    offsets: set[int] = set()
    for run_start, run_len in draw(
        st.lists(st.tuples(st.integers(0, span), st.integers(1, 180)), max_size=8)
    ):
        offsets.update(range(run_start, min(span, run_start + run_len)))
    offsets.update(draw(st.lists(st.integers(0, span - 1), max_size=40)))
    offsets.update(range(2 * 1440 - 70, 2 * 1440 + 70, draw(st.integers(1, 15))))
    return zone, {start + 60 * o: draw(kline_at(start + 60 * o)) for o in sorted(offsets)}


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=dst_scenarios())
def test_api_candles_across_a_dst_change_equal_wall_clock_reference(  # type: ignore[no-untyped-def]
    database, make_settings, scenario
) -> None:
    """With ``timezone`` a zone that changes its clocks (a 23 or 25 hour day, a week holding
    the change, Chatham's 02:45 -> 03:45, Santiago's skipped midnight), every period's
    candles equal an aggregation by local wall-clock buckets computed here with zoneinfo."""
    zone, minutes = scenario
    tz = ZoneInfo(zone)
    reset(database)
    client = create_app(make_settings(database.url, timezone=zone), db=database).test_client()
    klines = sorted(minutes.values(), key=lambda k: (k.ts * 7919) % 10007)
    for i in range(0, len(klines), 400):
        database.transaction(lambda s, part=klines[i : i + 400]: store_minutes(
            s, "asaxu", part, timezone=zone))
    first, last = min(minutes), max(minutes)
    for period in PERIODS:
        groups: dict[int, list[Kline]] = defaultdict(list)
        for t in sorted(minutes):
            groups[wall_bucket(t, period, tz)].append(minutes[t])
        expected = [
            {"time": start, "time_local": datetime.fromtimestamp(start, tz).isoformat(),
             "open": ks[0].open, "high": max(k.high for k in ks),
             "low": min(k.low for k in ks), "close": ks[-1].close,
             "volume": sum((k.volume for k in ks), Decimal(0))}
            for start, ks in sorted(groups.items())
        ]
        body = client.get(
            "/api/v1/markets/asaxu/candles",
            query_string={"period": period, "time_from": first - 7 * 86_400,
                          "time_to": last, "limit": 5000},
        ).get_json()
        assert body["timezone"] == zone
        assert as_numbers(body["candles"]) == as_numbers(expected), f"{zone} period {period}"
