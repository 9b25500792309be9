"""Storing crawled one-minute candles and keeping the rollups of every longer period current.

``store_minutes`` is the one way minutes enter the database. It is idempotent: a minute that
is already stored with the same values is not written again, a minute whose values changed
(it was fetched while still open, or the upstream corrected it) is updated in place. In the
same transaction it recomputes every rollup bucket (periods 5 .. 10080, see
:mod:`stockex.buckets`) that holds a changed minute, so a reader never sees minutes and
rollups disagree.

Rollup maintenance is cheap enough for the crawler's hot path: only touched buckets are
recomputed, each from the buckets of the next shorter period nested in it (5 from minutes,
15 from 5, ..., 10080 from 1440), which needs one extra read of neighbouring buckets and one
batched upsert per call, whatever its size.

``store_minutes`` is :func:`plan_minutes` (reads only: which minutes changed and the
recomputed rollup rows) followed by :func:`write_plan` (writes only). The crawler calls the two
apart so it can plan chunk N+1 while chunk N is written (``pending``).

Each market has a :class:`~stockex.models.CandleSeries` row naming the timezone its rollups
are bucketed in (created from the configured ``timezone`` with the first minutes) and a
revision that goes up when a minute changes in a bucket that had already settled (older than
:data:`SETTLE_SECONDS`); caches key settled answers on it. ``rebuild_rollups`` recomputes
every rollup of a market, e.g. after the configured timezone changed.

Failure cases: values that break the schema (low > high, negative, too many decimals) raise
and roll the caller's transaction back; nothing is half-written.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from decimal import Decimal, localcontext
from functools import lru_cache
from operator import itemgetter
from typing import Any

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session

from stockex.batch import WriteBatch
from stockex.buckets import ROLLUP_PERIODS, SOURCE_PERIOD, BucketClock, clock_for
from stockex.db import Database, as_sqlalchemy_error, upsert_rows
from stockex.models import Candle, CandleRollup, CandleSeries
from stockex.numbers import EXACT
from stockex.tiki import Kline

_VALUE_COLUMNS = ("open", "high", "low", "close", "volume")
#: A bucket is settled once it ended this long ago: later changes to it are corrections and
#: bump the market's revision (so long-lived cache entries of settled answers are dropped).
SETTLE_SECONDS = 3600
# Writers bump the revision for minutes a little younger than that, so that a crawler whose
# clock runs up to this much behind the API's still invalidates what the API cached.
_CLOCK_SKEW_ALLOWANCE = 600
# Range conditions per SELECT (keeps statements and bind parameter counts small on SQLite).
_RANGES_PER_QUERY = 200
_REBUILD_WINDOW = 7 * 1440 * 60

Values = tuple[Decimal, Decimal, Decimal, Decimal, Decimal]  # open, high, low, close, volume


@dataclass(frozen=True)
class StoreResult:
    inserted: int
    updated: int
    first_changed: int | None  # earliest minute inserted or updated, for rollups and caches
    last_changed: int | None

    @property
    def written(self) -> int:
        return self.inserted + self.updated


def store_minutes(
    session: Session, market_id: str, klines: Sequence[Kline], *, timezone: str | None = None
) -> StoreResult:
    """Upsert ``klines`` (one market, any order; a repeated minute: the last one wins) and
    the rollups they touch, inside the caller's transaction. ``timezone`` (the caller's
    configured one) is recorded for a market's first rollups; without it the process's
    configuration is read."""
    if not klines:
        return StoreResult(0, 0, None, None)
    series = series_timezone(session, market_id, timezone)
    return write_plan(session, plan_minutes(session, market_id, klines, rollup_timezone=series))


@dataclass(frozen=True)
class MinutePlan:
    """Everything one :func:`store_minutes` call writes, computed by :func:`plan_minutes`
    and written by :func:`write_plan` (possibly later, in another transaction)."""

    market_id: str
    rollup_timezone: str
    minutes: list[tuple[int, Values]]  # changed minutes, ascending
    rollups: list[tuple[int, int, Values]]  # (period, start, values) of touched buckets
    inserted: int
    updated: int
    now: int

    @property
    def result(self) -> StoreResult:
        if not self.minutes:
            return StoreResult(0, 0, None, None)
        return StoreResult(self.inserted, self.updated, self.minutes[0][0], self.minutes[-1][0])


def plan_minutes(
    source: Session | CandleReads,
    market_id: str,
    klines: Sequence[Kline],
    *,
    rollup_timezone: str,
    pending: MinutePlan | None = None,
) -> MinutePlan:
    """What storing ``klines`` writes, from reads only (in ``source``, a session or
    :class:`CandleReads`): the changed minutes and the rollup buckets holding them,
    recomputed. ``rollup_timezone`` is the market's (as :func:`series_timezone` gives it;
    :func:`write_plan` checks it is still the one recorded).

    ``pending`` is the plan of the same market written just before this one whose transaction
    may not have committed yet: its rows are taken as stored, so the crawler can plan chunk
    N+1 while chunk N is being written (it must write the plans in order, and this one only
    after ``pending`` committed). Plans older than ``pending`` must have committed.
    """
    if pending is not None and pending.market_id != market_id:
        raise ValueError("a pending plan of another market")
    clock = clock_for(rollup_timezone)
    now = int(time.time())
    latest = {k.ts: k for k in klines}
    five_minute_starts = set(clock.align_many(list(latest), 5))
    ranges = _ranges(clock, five_minute_starts, 5)
    reads = _reads(source)
    stored = _read_minutes(reads, market_id, ranges)
    if pending is not None and ranges:
        lo, hi = ranges[0][0], ranges[-1][1]
        stored.update((t, v) for t, v in pending.minutes if lo <= t < hi)
    inserted = updated = 0
    rows: list[tuple[int, Values]] = []
    for ts in sorted(latest):
        values = latest[ts][1:]
        old = stored.get(ts)
        if old is not None and old == values:
            continue
        if old is None:
            inserted += 1
        else:
            updated += 1
        stored[ts] = values
        rows.append((ts, values))
    rollups = []
    if rows:
        rollups = _rollup_rows(reads, market_id, clock, stored, [ts for ts, _ in rows],
                               pending.rollups if pending is not None else ())
    return MinutePlan(market_id, rollup_timezone, rows, rollups, inserted, updated, now)


def write_plan(session: Session, plan: MinutePlan, batch: WriteBatch | None = None) -> StoreResult:
    """Write ``plan`` in the caller's transaction: at once, or on MySQL added to ``batch``
    for the caller to flush. Raises :class:`SeriesTimezoneChanged` when the market's rollup
    timezone is no longer the plan's (``rebuild_rollups`` ran since)."""
    if not plan.minutes:
        return plan.result
    # Locked on MySQL until this transaction ends: a rebuild committing after a plain read
    # (READ COMMITTED) would let these rollups in after its own, in the old timezone. A
    # rebuild locks the row first too; on SQLite BEGIN IMMEDIATE serializes the writers.
    mysql = session.get_bind().dialect.name == "mysql"
    check = _SERIES_TIMEZONE_FOR_UPDATE if mysql else _SERIES_TIMEZONE
    recorded = session.execute(check, {"market": plan.market_id}).scalar()
    if recorded != plan.rollup_timezone:
        raise SeriesTimezoneChanged(
            f"{plan.market_id}: rollups are now in {recorded!r}, not {plan.rollup_timezone!r}; "
            "the chunk was not written (the next run plans it again)"
        )
    _write_minutes(session, plan.market_id, plan.minutes, plan.now, batch)
    _write_rollups(session, plan.market_id, plan.rollups, batch)
    if plan.minutes[0][0] < plan.now - SETTLE_SECONDS + _CLOCK_SKEW_ALLOWANCE:
        _bump_revision(session, plan.market_id, batch)
    return plan.result


class SeriesTimezoneChanged(RuntimeError):
    """A plan's rollups were computed in a timezone the market no longer uses."""


def series_timezone(session: Session, market_id: str, configured: str | None = None) -> str:
    """The timezone the market's rollups use; for a market without any, ``configured`` (else
    the process's configuration), which is recorded."""
    found = session.execute(_SERIES_TIMEZONE, {"market": market_id}).scalar()
    if found is not None:
        return str(found)
    timezone = configured or configured_timezone()
    _insert_series_if_missing(session, market_id, timezone)
    return str(session.execute(_SERIES_TIMEZONE, {"market": market_id}).scalar_one())


@lru_cache(maxsize=1)
def configured_timezone() -> str:
    """``timezone`` from the process's configuration (the crawler and API share it)."""
    from stockex.config import load_settings

    return load_settings().timezone


def rebuild_rollups(session: Session, market_id: str, timezone: str) -> int:
    """Recompute every rollup of ``market_id`` in ``timezone`` from its minutes (in the
    caller's transaction) and record that timezone; returns how many minutes were read."""
    clock = clock_for(timezone)
    _insert_series_if_missing(session, market_id, timezone)
    session.execute(
        update(CandleSeries)
        .where(CandleSeries.market_id == market_id)
        .values(timezone=timezone, revision=CandleSeries.revision + 1)
    )
    session.execute(delete(CandleRollup).where(CandleRollup.market_id == market_id))
    bounds = session.execute(
        select(func.min(Candle.time), func.max(Candle.time)).where(Candle.market_id == market_id)
    ).one()
    if bounds[0] is None:
        return 0
    total = 0
    window = bounds[0]
    while window <= bounds[1]:
        end = window + _REBUILD_WINDOW
        edges = {clock.align(window, 5), clock.align(end - 60, 5)}
        minutes = _read_minutes(session, market_id, _ranges(clock, edges, 5) + [(window, end)])
        changed = sorted(t for t in minutes if window <= t < end)
        if changed:
            _refresh_rollups(session, market_id, clock, minutes, changed)
            total += len(changed)
        window = end
    return total


# ---------------------------------------------------------------------------- rollups


def _refresh_rollups(
    session: Session,
    market_id: str,
    clock: BucketClock,
    minutes: dict[int, Values],
    changed: Iterable[int],
) -> None:
    """Recompute every rollup bucket holding a minute of ``changed``. ``minutes`` must hold
    every minute (new values) of the five-minute buckets those minutes are in."""
    _write_rollups(session, market_id, _rollup_rows(session, market_id, clock, minutes, changed))


def _rollup_rows(
    source: Session | CandleReads,
    market_id: str,
    clock: BucketClock,
    minutes: dict[int, Values],
    changed: Iterable[int],
    pending: Iterable[tuple[int, int, Values]] = (),
) -> list[tuple[int, int, Values]]:
    """The recomputed ``(period, start, values)`` of every rollup bucket holding a minute of
    ``changed`` (see :func:`_refresh_rollups`); ``pending`` rollup rows, written but perhaps
    not committed yet, count as stored."""
    touched: dict[int, set[int]] = {1: set(changed)}
    for period in ROLLUP_PERIODS:
        touched[period] = set(clock.align_many(list(touched[SOURCE_PERIOD[period]]), period))
    # Read the source buckets of every touched bucket, except those recomputed below anyway
    # (in a backfill all but a few at the edges of the chunk).
    ranges = [
        (SOURCE_PERIOD[period], lo, hi)
        for period in ROLLUP_PERIODS
        if SOURCE_PERIOD[period] != 1
        for lo, hi in _subtract(
            _ranges(clock, touched[period], period),
            _exact_ranges(clock, touched[SOURCE_PERIOD[period]], SOURCE_PERIOD[period]),
        )
    ]
    stored = _read_rollups(source, market_id, ranges)
    _overlay(stored, ranges, pending)
    computed: dict[int, dict[int, Values]] = {1: minutes}
    rows: list[tuple[int, int, Values]] = []
    with localcontext(EXACT):  # sums of 36-digit amounts
        for period in ROLLUP_PERIODS:
            source = SOURCE_PERIOD[period]
            pool = computed[source] if source == 1 else {**stored[source], **computed[source]}
            combined = _combine_buckets(clock, period, pool, touched[period])
            computed[period] = combined
            rows.extend((period, start, v) for start, v in combined.items())
    return rows


def _overlay(
    stored: dict[int, dict[int, Values]],
    ranges: list[tuple[int, int, int]],
    pending: Iterable[tuple[int, int, Values]],
) -> None:
    """Put the ``pending`` rows that fall inside the read ``ranges`` into ``stored``."""
    bounds: dict[int, tuple[int, int]] = {}
    for period, lo, hi in ranges:
        low, high = bounds.get(period, (lo, hi))
        bounds[period] = (min(low, lo), max(high, hi))
    for period, start, values in pending:
        span = bounds.get(period)
        if span is not None and span[0] <= start < span[1]:
            stored[period][start] = values


def _combine_buckets(
    clock: BucketClock, period: int, pool: dict[int, Values], wanted: set[int]
) -> dict[int, Values]:
    """The ``period`` candles starting at ``wanted``, each combined from the candles of
    ``pool`` (start -> values, any order) that fall in it: first open, max high, min low,
    last close, summed volume."""
    groups: dict[int, list[Values]] = defaultdict(list)
    times = sorted(pool)
    for t, start in zip(times, clock.align_many(times, period), strict=True):
        if start in wanted:
            groups[start].append(pool[t])
    return {start: _combine(items) for start, items in groups.items()}


_HIGH, _LOW, _VOLUME = itemgetter(1), itemgetter(2), itemgetter(4)
_ZERO = Decimal(0)


def _combine(items: list[Values]) -> Values:
    """One candle from consecutive ones in time order."""
    return (items[0][0], max(map(_HIGH, items)), min(map(_LOW, items)), items[-1][3],
            sum(map(_VOLUME, items), _ZERO))


def _ranges(clock: BucketClock, starts: Iterable[int], period: int) -> list[tuple[int, int]]:
    """Merged ``[lo, hi)`` second ranges covering the buckets of ``period`` at ``starts``."""
    return _merged((s, clock.scan_end(s, period)) for s in starts)


def _exact_ranges(clock: BucketClock, starts: Iterable[int], period: int) -> list[tuple[int, int]]:
    """Merged ``[lo, hi)`` ranges holding exactly the buckets of ``period`` at ``starts`` (a
    bucket whose end is not exact, near a DST transition, is left out)."""
    span = period * 60
    return _merged((s, s + span) for s in starts if clock.scan_end(s, period) == s + span)


def _merged(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """``[lo, hi)`` ranges (any order) sorted, with overlapping and touching ones joined."""
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def _subtract(
    ranges: list[tuple[int, int]], holes: list[tuple[int, int]]
) -> list[tuple[int, int]]:
    """The parts of merged ``ranges`` outside merged ``holes`` (both sorted, half-open)."""
    out: list[tuple[int, int]] = []
    i = 0
    for lo, hi in ranges:
        while i < len(holes) and holes[i][1] <= lo:
            i += 1
        j = i
        while lo < hi:
            if j >= len(holes) or holes[j][0] >= hi:
                out.append((lo, hi))
                break
            if holes[j][0] > lo:
                out.append((lo, holes[j][0]))
            lo = max(lo, holes[j][1])
            j += 1
    return out


# Reads on the hot path are plain SQL on the DBAPI cursor: their OR-of-ranges shape changes
# from call to call (SQLAlchemy would compile and cache every shape anew) and the rows need no
# result processing but the amounts' on SQLite. The ranges are ints.


class CandleReads:
    """The reads of :func:`plan_minutes` on one DBAPI connection.

    Inside a transaction use :meth:`of_session`. A crawl instead holds one pooled connection
    for the whole run (:func:`held_reads`): no checkout, ping or ROLLBACK per chunk. That is
    safe for plans because MySQL runs READ COMMITTED (every SELECT sees what committed before
    it, and holds no locks) and SQLite connections are in autocommit mode (every SELECT is its
    own read transaction under WAL).
    """

    def __init__(self, connection: Any, dialect: Dialect) -> None:
        """``connection``: a pooled DBAPI connection (SQLAlchemy's proxy of one)."""
        self._connection = connection
        self._dialect = dialect
        self._marker = "?" if dialect.name == "sqlite" else "%s"
        # MySQL returns DECIMAL as Decimal; SQLite returns Amount's zero-padded text
        self._text_amounts = dialect.name == "sqlite"

    @classmethod
    def of_session(cls, session: Session) -> CandleReads:
        """Reads in ``session``'s transaction (begun here if it has not yet)."""
        connection = session.connection()
        return cls(connection.connection, connection.dialect)

    def rows(self, sql: str, market_id: str) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` (its one ``{market}`` placeholder bound to ``market_id``), each
        ``(..keys, open, high, low, close, volume)`` with Decimal amounts.

        Driver errors come out as SQLAlchemy's (:func:`stockex.db.as_sqlalchemy_error`): a
        lost server is an ``OperationalError`` and the connection is not pooled again."""
        statement = sql.format(market=self._marker)
        try:
            with closing(self._connection.cursor()) as cursor:
                cursor.execute(statement, (market_id,))
                found = cursor.fetchall()
        except self._dialect.loaded_dbapi.Error as exc:
            raise as_sqlalchemy_error(exc, self._connection, self._dialect, statement,
                                      (market_id,)) from exc
        if self._text_amounts:
            return [(*r[:-5], *map(Decimal, r[-5:])) for r in found]
        return list(found)


@contextmanager
def held_reads(db: Database) -> Iterator[CandleReads]:
    """:class:`CandleReads` on one pooled connection for as long as the block lasts."""
    connection = db.engine.raw_connection()
    try:
        yield CandleReads(connection, db.engine.dialect)
    finally:
        connection.close()  # back to the pool, which ends any transaction with ROLLBACK


def _reads(source: Session | CandleReads) -> CandleReads:
    return source if isinstance(source, CandleReads) else CandleReads.of_session(source)


def _read_minutes(
    source: Session | CandleReads, market_id: str, ranges: list[tuple[int, int]]
) -> dict[int, Values]:
    reads = _reads(source)
    found: dict[int, Values] = {}
    for batch in _batches(ranges):
        condition = " OR ".join(f"(time >= {int(lo)} AND time < {int(hi)})" for lo, hi in batch)
        sql = ("SELECT time, open, high, low, close, volume FROM candles "  # noqa: S608 - ints
               f"WHERE market_id = {{market}} AND ({condition})")
        for t, *values in reads.rows(sql, market_id):
            found[t] = tuple(values)  # type: ignore[assignment]
    return found


def _read_rollups(
    source: Session | CandleReads, market_id: str, ranges: list[tuple[int, int, int]]
) -> dict[int, dict[int, Values]]:
    reads = _reads(source)
    found: dict[int, dict[int, Values]] = defaultdict(dict)
    for batch in _batches(ranges):
        condition = " OR ".join(
            f"(period = {int(p)} AND time >= {int(lo)} AND time < {int(hi)})"
            for p, lo, hi in batch
        )
        sql = ("SELECT period, time, open, high, low, close, volume "  # noqa: S608 - ints
               f"FROM candle_rollups WHERE market_id = {{market}} AND ({condition})")
        for period, t, *values in reads.rows(sql, market_id):
            found[period][t] = tuple(values)  # type: ignore[assignment]
    return found


def _batches(items: list, size: int = _RANGES_PER_QUERY) -> Iterable[list]:  # type: ignore[type-arg]
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _write_minutes(
    session: Session,
    market_id: str,
    rows: list[tuple[int, Values]],
    now: int,
    batch: WriteBatch | None = None,
) -> None:
    upsert_rows(session, Candle.__table__, _MINUTE_COLUMNS,
                [(market_id, t, *v, now) for t, v in rows], ("market_id", "time"),
                _MINUTE_UPDATES, batch=batch)


def _write_rollups(
    session: Session,
    market_id: str,
    rows: list[tuple[int, int, Values]],
    batch: WriteBatch | None = None,
) -> None:
    upsert_rows(session, CandleRollup.__table__, _ROLLUP_COLUMNS,
                [(market_id, p, t, *v) for p, t, v in rows], ("market_id", "period", "time"),
                _VALUE_COLUMNS, batch=batch)


_MINUTE_COLUMNS = ("market_id", "time", *_VALUE_COLUMNS, "updated_at")
_ROLLUP_COLUMNS = ("market_id", "period", "time", *_VALUE_COLUMNS)
_MINUTE_UPDATES = (*_VALUE_COLUMNS, "updated_at")


def _insert_series_if_missing(session: Session, market_id: str, timezone: str) -> None:
    values = {"market_id": market_id, "timezone": timezone, "revision": 0}
    if session.get_bind().dialect.name == "mysql":
        insert = mysql_insert(CandleSeries).values(values)
        # not INSERT IGNORE: that would also swallow a foreign key error (unknown market)
        stmt = insert.on_duplicate_key_update(market_id=insert.inserted.market_id)
    else:
        stmt = sqlite_insert(CandleSeries).values(values).on_conflict_do_nothing()
    session.execute(stmt)


def _bump_revision(session: Session, market_id: str, batch: WriteBatch | None = None) -> None:
    if batch is not None and batch.mysql:
        market = batch.literal(market_id)  # escaped by the driver
        batch.statement(
            f"UPDATE candle_series SET revision = revision + 1 WHERE market_id = {market}"  # noqa: S608
        )
        return
    session.execute(_BUMP_REVISION, {"market": market_id})


_BUMP_REVISION = text(
    "UPDATE candle_series SET revision = revision + 1 WHERE market_id = :market"
)
_SERIES_TIMEZONE = text("SELECT timezone FROM candle_series WHERE market_id = :market")
_SERIES_TIMEZONE_FOR_UPDATE = text(
    "SELECT timezone FROM candle_series WHERE market_id = :market FOR UPDATE"
)
