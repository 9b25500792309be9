"""store_minutes: idempotent upserts of crawled minutes on both backends."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from stockex.batch import WriteBatch
from stockex.buckets import ROLLUP_PERIODS, clock_for
from stockex.candles import (
    SeriesTimezoneChanged,
    plan_minutes,
    rebuild_rollups,
    series_timezone,
    store_minutes,
    write_plan,
)
from stockex.models import Candle, CandleRollup
from stockex.tiki import Kline


def k(ts: int, close: str = "25000", volume: str = "1.5") -> Kline:
    c = Decimal(close)
    return Kline(ts=ts, open=c, high=c + 10, low=c - 10, close=c, volume=Decimal(volume))


def stored(db) -> dict[int, tuple[Decimal, Decimal]]:  # type: ignore[no-untyped-def]
    with db.read() as s:
        return {r.time: (r.close, r.volume) for r in s.scalars(select(Candle))}


def test_insert_then_noop_then_update(database) -> None:  # type: ignore[no-untyped-def]
    rows = [k(60 * i) for i in range(1, 6)]
    first = database.transaction(lambda s: store_minutes(s, "asaxu", rows))
    assert (first.inserted, first.updated) == (5, 0)
    again = database.transaction(lambda s: store_minutes(s, "asaxu", rows))
    assert (again.inserted, again.updated, again.first_changed) == (0, 0, None)
    changed = [k(180, close="25100"), k(360)]
    third = database.transaction(lambda s: store_minutes(s, "asaxu", changed))
    assert (third.inserted, third.updated) == (1, 1)
    assert (third.first_changed, third.last_changed) == (180, 360)
    data = stored(database)
    assert len(data) == 6
    assert data[180] == (Decimal("25100"), Decimal("1.5"))


def test_a_plan_made_before_the_pending_one_committed_counts_its_rows(database) -> None:  # type: ignore[no-untyped-def]
    """plan_minutes(pending=...) takes the pending plan's rows as stored: a minute it holds
    counts as an update, not an insert, and the buckets come out whole."""
    tz = database.transaction(lambda s: series_timezone(s, "asaxu", "UTC"))
    with database.read() as s:
        first = plan_minutes(s, "asaxu", [k(60 * i) for i in range(1, 4)], rollup_timezone=tz)
        second = plan_minutes(s, "asaxu", [k(180, close="25100"), k(240)], rollup_timezone=tz,
                              pending=first)
    assert (second.inserted, second.updated) == (1, 1)
    five = {(p, t): v for p, t, v in second.rollups if p == 5}
    # the five-minute bucket at 0 holds minutes 60..240: three from `first`, one updated
    assert five[(5, 0)][0] == Decimal("25000") and five[(5, 0)][3] == Decimal("25000")
    assert five[(5, 0)][4] == Decimal("6.0")  # 4 minutes x 1.5
    database.transaction(lambda s: write_plan(s, first))
    database.transaction(lambda s: write_plan(s, second))
    assert stored(database)[180] == (Decimal("25100"), Decimal("1.5"))


def test_a_plan_is_not_written_after_the_rollup_timezone_changed(database) -> None:  # type: ignore[no-untyped-def]
    database.transaction(lambda s: store_minutes(s, "asaxu", [k(60)], timezone="UTC"))
    with database.read() as s:
        plan = plan_minutes(s, "asaxu", [k(120)], rollup_timezone="UTC")
    database.transaction(lambda s: rebuild_rollups(s, "asaxu", "Asia/Ho_Chi_Minh"))
    with pytest.raises(SeriesTimezoneChanged, match="Asia/Ho_Chi_Minh"):
        database.transaction(lambda s: write_plan(s, plan))
    assert sorted(stored(database)) == [60]  # nothing of the plan was written


def test_a_chunk_written_while_a_rebuild_commits_is_refused(mysql_database) -> None:  # type: ignore[no-untyped-def]
    """`stockex candles rebuild` while the crawler writes a chunk (MySQL, READ COMMITTED):
    the chunk's timezone check read the old timezone before the rebuild committed, its rollup
    writes then waited for the rebuild's row locks and went in after it, in the old timezone:
    day candles at 17:00 UTC beside the rebuilt 00:00 UTC ones, until the next rebuild."""
    db = mysql_database
    hcm = "Asia/Ho_Chi_Minh"
    db.transaction(lambda s: store_minutes(s, "asaxu", [k(86_400 + 60 * i) for i in range(60)],
                                           timezone=hcm))
    with db.read() as s:
        plan = plan_minutes(s, "asaxu", [k(86_400 + 3600 + 60 * i) for i in range(10)],
                            rollup_timezone=hcm)
    rebuilt, commit = threading.Event(), threading.Event()

    def rebuild(session) -> None:  # type: ignore[no-untyped-def]
        rebuild_rollups(session, "asaxu", "UTC")
        rebuilt.set()
        assert commit.wait(20)

    def crawl_chunk(session):  # type: ignore[no-untyped-def]
        return write_batched(session, plan)

    with ThreadPoolExecutor(max_workers=2) as pool:
        rebuilding = pool.submit(db.transaction, rebuild, attempts=1)
        assert rebuilt.wait(20)
        writing = pool.submit(db.transaction, crawl_chunk, attempts=1)
        time.sleep(1)  # the chunk's transaction is under way, waiting for the rebuild's locks
        commit.set()
        rebuilding.result(timeout=20)
        with pytest.raises(SeriesTimezoneChanged, match="UTC"):
            writing.result(timeout=20)
    with db.read() as s:
        days = s.scalars(select(CandleRollup.time).where(CandleRollup.period == 1440)).all()
    assert days == [86_400]  # the UTC day alone, no Ho Chi Minh day beside it
    assert len(stored(db)) == 60  # nothing of the chunk was written


@pytest.mark.parametrize("zone", ["Europe/Berlin", "Asia/Ho_Chi_Minh", "America/New_York"])
def test_pipelined_chunks_keep_every_rollup_equal_to_its_minutes(database, zone) -> None:  # type: ignore[no-untyped-def]
    """Crawler-style writes (each chunk planned before the previous one committed, odd chunk
    sizes, then a pass of corrections) across a DST change and a week boundary: every rollup
    row equals the aggregation of its minutes. For zones with DST every source bucket is
    read back; for steady ones only those not recomputed (the reads the crawler skips)."""
    clock = clock_for(zone)
    day = 2 if zone == "America/New_York" else 26  # two days before the zone's change
    start = int(datetime(2024, 11 if day == 2 else 10, day, 20, tzinfo=ZoneInfo(zone)).timestamp())
    rng = random.Random(zone)
    minutes = {}
    for i in range(3 * 1440):
        if rng.random() < 0.9:  # some minutes missing: gaps inside buckets
            close = Decimal(rng.randint(20_000, 30_000))
            minutes[start + 60 * i] = k(start + 60 * i, close=str(close),
                                        volume=str(rng.randint(0, 500) / 100))
    ordered = [minutes[t] for t in sorted(minutes)]
    corrections = [k(t, close="31000", volume="9") for t in rng.sample(sorted(minutes), 40)]
    timezone = database.transaction(lambda s: series_timezone(s, "asaxu", zone))
    for klines, size in ((ordered, 97), (sorted(corrections, key=lambda c: c.ts), 7)):
        pending = None
        for i in range(0, len(klines), size):
            with database.read() as session:
                plan = plan_minutes(session, "asaxu", klines[i : i + size],
                                    rollup_timezone=timezone, pending=pending)
            if pending is not None:
                database.transaction(lambda s, p=pending: write_batched(s, p))
            pending = plan
        database.transaction(lambda s, p=pending: write_batched(s, p))
    for c in corrections:
        minutes[c.ts] = c

    with database.read() as session:
        stored_rollups = {(r.period, r.time): (r.open, r.high, r.low, r.close, r.volume)
                          for r in session.scalars(select(CandleRollup))}
    expected = {}
    for period in ROLLUP_PERIODS:
        groups: dict[int, list[Kline]] = {}
        for t in sorted(minutes):
            groups.setdefault(clock.align(t, period), []).append(minutes[t])
        for bucket, ks in groups.items():
            expected[(period, bucket)] = (
                ks[0].open, max(x.high for x in ks), min(x.low for x in ks), ks[-1].close,
                sum((x.volume for x in ks), Decimal(0)),
            )
    assert stored_rollups == expected


def write_batched(session, plan) -> None:  # type: ignore[no-untyped-def]
    batch = WriteBatch(session)
    write_plan(session, plan, batch)
    batch.flush(commit=True)
