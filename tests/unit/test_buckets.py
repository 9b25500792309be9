"""stockex.buckets: alignment at local midnight, Mondays, 3-day buckets; time parsing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stockex.buckets import PERIODS, SOURCE_PERIOD, BucketClock, clock_for, validate_period
from stockex.errors import InvalidInput

HCM = ZoneInfo("Asia/Ho_Chi_Minh")


def at(*args: int, tz: ZoneInfo = HCM) -> int:
    return int(datetime(*args, tzinfo=tz).timestamp())  # type: ignore[misc]


@pytest.fixture(scope="module")
def clock() -> BucketClock:
    return clock_for("Asia/Ho_Chi_Minh")


def test_the_default_zone_is_plain_plus_seven_since_1975(clock: BucketClock) -> None:
    assert clock.steady_offset == 7 * 3600
    assert clock.steady_from is not None and clock.steady_from < at(1976, 1, 1)


def test_day_boundary_at_plus_seven(clock: BucketClock) -> None:
    midnight = at(2024, 7, 2)  # = 2024-07-01T17:00:00Z
    assert midnight == int(datetime(2024, 7, 1, 17, tzinfo=UTC).timestamp())
    for period in (60, 120, 240, 360, 720, 1440):
        assert clock.align(midnight, period) == midnight
        assert clock.align(midnight + 59, period) == midnight
        assert clock.align(midnight - 60, period) == midnight - period * 60
    assert clock.align(midnight - 60, 1440) == at(2024, 7, 1)
    # The UTC day boundary is no boundary in local time.
    utc_midnight = int(datetime(2024, 7, 2, tzinfo=UTC).timestamp())
    assert clock.align(utc_midnight, 1440) == midnight


def test_weeks_start_on_monday_local(clock: BucketClock) -> None:
    monday = at(2024, 7, 1)  # a Monday
    assert datetime.fromtimestamp(monday, HCM).weekday() == 0
    assert clock.align(monday, 10080) == monday
    assert clock.align(monday - 60, 10080) == at(2024, 6, 24)  # Sunday 23:59 local
    assert clock.align(at(2024, 7, 7, 23, 59), 10080) == monday
    assert clock.align(at(2024, 7, 8), 10080) == at(2024, 7, 8)


def test_three_day_buckets_count_local_days_from_1970(clock: BucketClock) -> None:
    for day in range(10):
        start = at(2024, 7, 1) + day * 86_400
        local_day = (start + 7 * 3600) // 86_400
        expected = start - (local_day % 3) * 86_400
        assert clock.align(start + 3600, 4320) == expected
    assert clock.align(at(1970, 1, 1, 5), 4320) == at(1970, 1, 1)  # day 0 starts a bucket


def test_local_iso(clock: BucketClock) -> None:
    assert clock.local_iso(at(2024, 7, 2, 1, 24)) == "2024-07-02T01:24:00+07:00"
    assert clock_for("UTC").local_iso(0) == "1970-01-01T00:00:00+00:00"
    assert clock_for("America/St_Johns").local_iso(at(2024, 1, 1, tz=ZoneInfo("UTC"))) == (
        "2023-12-31T20:30:00-03:30"
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1719858240", 1719858240),
        ("2024-07-02T01:24:00+07:00", 1719858240),
        ("2024-07-01T18:24:00Z", 1719858240),
        ("2024-07-02T01:24:00", 1719858240),  # naive: the configured timezone
        ("2024-07-02", 1719853200),  # local midnight
        (" 1719858240 ", 1719858240),
        # "+07:00" in a URL's query string unencoded: the "+" decodes to a space
        ("2024-07-02T01:24:00 07:00", 1719858240),
        ("2024-07-02 01:24 0700", 1719858240),
        ("2024-07-02T01:24:00.5 07", 1719858240),
    ],
)
def test_parse_time(clock: BucketClock, raw: str, expected: int) -> None:
    assert clock.parse_time(raw, "time_from") == expected


@pytest.mark.parametrize(
    "raw", ["abc", "2024-13-01", "1e9", "99999999999999999999", "--1", "2024-07-02 07:00 7"]
)
def test_parse_time_rejects(clock: BucketClock, raw: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        clock.parse_time(raw, "time_to")
    assert caught.value.code == "invalid_time_to"


def test_validate_period() -> None:
    assert validate_period(None) == 1
    assert [validate_period(str(p)) for p in PERIODS] == list(PERIODS)
    for bad in ("0", "2", "abc", "60.0", "-5"):
        with pytest.raises(InvalidInput) as caught:
            validate_period(bad)
        assert caught.value.code == "invalid_period"


# Zones with daylight saving time: the properties the rollups rely on must hold around
# every kind of transition (1 h, 30 min, at midnight, southern hemisphere).
DST_ZONES = ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "America/Santiago",
             "Pacific/Chatham",
             "Asia/Ho_Chi_Minh", "Asia/Kathmandu"]


@pytest.mark.parametrize("zone", DST_ZONES)
def test_alignment_properties_around_transitions(zone: str) -> None:
    clock = clock_for(zone)
    tz = ZoneInfo(zone)
    transitions = [t for t in clock._transitions if at(2015, 1, 1, tz=tz) < t < at(2027, 1, 1)]
    samples = [t + d for t in transitions[:8] for d in range(-2 * 86_400, 2 * 86_400, 900)]
    samples += [at(2024, 3, 1, tz=tz) + i * 3_517 * 60 for i in range(300)]
    for raw in samples:
        t = raw - raw % 60
        for period in PERIODS:
            start = clock.align(t, period)
            assert start <= t < clock.scan_end(start, period)
            assert clock.align(start, period) == start
            if period in SOURCE_PERIOD:
                assert clock.align(clock.align(t, SOURCE_PERIOD[period]), period) == start


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=60 * 365 * 86_400 // 60))
def test_steady_zone_matches_contract_formula(minute: int) -> None:
    """For a fixed +07:00 the alignment is exactly CONTRACT §5's formula."""
    clock = clock_for("Asia/Ho_Chi_Minh")
    t = 315_532_800 + minute * 60  # from 1980
    off = 7 * 3600
    for period in PERIODS:
        size = period * 60
        if period == 10080:
            local = datetime.fromtimestamp(t, HCM)
            monday = (local - timedelta(days=local.weekday())).replace(hour=0, minute=0)
            expected = int(monday.timestamp())
        else:
            expected = (t + off) // size * size - off
        assert clock.align(t, period) == expected


@pytest.mark.parametrize("zone", DST_ZONES)
def test_align_many_equals_align_one_by_one(zone: str) -> None:
    """The arithmetic fast path (steady zones) and the per-time path give the same starts,
    also for a batch that reaches back before the zone became steady."""
    clock = clock_for(zone)
    recent = [at(2024, 3, 1) + i * 977 * 60 for i in range(400)]
    mixed = [at(1970, 1, 1) + i * 86_413 * 60 for i in range(400)] + recent
    for times in (recent, mixed):
        for period in PERIODS:
            assert clock.align_many(times, period) == [clock.align(t, period) for t in times]
