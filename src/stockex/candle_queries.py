"""Reading candles and the 24 h ticker (CONTRACT §5).

:func:`read_candles` answers a :class:`CandleQuery` from the one-minute table (period 1) or
from the rollups kept by :mod:`stockex.candles` (every longer period): an index range scan of
at most ``limit + 1`` rows, whatever the amount of history. Buckets whose start ``time`` lies
in ``[time_from, time_to]`` (both inclusive) are returned ascending; without ``time_from``
the newest ``limit`` of them. ``next_time_from`` is the ``time`` of the next bucket that has
data within the range, or None.

Failure cases: the rollups of a market were bucketed in another timezone than the configured
one (the operator changed ``timezone``): 503 ``candles_rebuild_required`` naming the command
that fixes it. Input validation happens before, in the API layer and :mod:`stockex.buckets`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, localcontext

from sqlalchemy import Connection, bindparam, func, literal_column, select
from sqlalchemy.orm import Session

from stockex.buckets import BucketClock
from stockex.candles import SETTLE_SECONDS
from stockex.db import Database
from stockex.errors import DomainError
from stockex.models import Candle, CandleRollup, CandleSeries
from stockex.numbers import EXACT, to_str

DEFAULT_LIMIT = 500
MAX_LIMIT = 5000
TICKER_WINDOW = 24 * 3600

#: time, then open, high, low, close, volume as canonical decimal strings ("25000.5")
CandleRow = tuple[int, str, str, str, str, str]


@dataclass(frozen=True)
class CandleQuery:
    """What a candles request asks for; times are epoch seconds, both ends inclusive."""

    market_id: str
    period: int = 1
    time_from: int | None = None
    time_to: int | None = None  # None: now
    limit: int = DEFAULT_LIMIT

    def settled(self, clock: BucketClock, now: int) -> bool:
        """True when every bucket the answer can hold ended over SETTLE_SECONDS ago, so the
        answer only changes with the market's revision (a late correction)."""
        end = now if self.time_to is None else self.time_to
        return end < clock.align(now - SETTLE_SECONDS, self.period)


@dataclass(frozen=True)
class CandlePage:
    candles: list[CandleRow]
    next_time_from: int | None


@dataclass(frozen=True)
class SeriesState:
    """The rollup timezone (None before any minute was stored) and revision of a market."""

    timezone: str | None
    revision: int


class RollupsNeedRebuild(DomainError):
    status = 503
    code = "candles_rebuild_required"


_SERIES_STATE = select(CandleSeries.timezone, CandleSeries.revision).where(
    CandleSeries.market_id == bindparam("market")
)


def series_state(conn: Connection, market_id: str) -> SeriesState:
    row = conn.execute(_SERIES_STATE, {"market": market_id}).one_or_none()
    return SeriesState(None, 0) if row is None else SeriesState(row[0], int(row[1]))


class SeriesStates:
    """A per-process memo of :func:`series_state`, at most ``max_age`` seconds old.

    A cached candles answer then costs no database round trip at all. The price: a late
    correction of a settled bucket (which bumps the revision) or a rollup rebuild is seen by
    this process up to ``max_age`` later, far below one crawl interval.
    """

    def __init__(
        self, db: Database, max_age: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._db = db
        self._max_age = max_age
        self._clock = clock
        self._states: dict[str, tuple[float, SeriesState]] = {}
        self._lock = threading.Lock()

    def get(self, market_id: str) -> SeriesState:
        now = self._clock()
        with self._lock:
            known = self._states.get(market_id)
        if known is not None and now - known[0] < self._max_age:
            return known[1]
        with self._db.engine.connect() as conn:
            state = series_state(conn, market_id)
        with self._lock:
            self._states[market_id] = (now, state)
        return state


def check_timezone(state: SeriesState, query: CandleQuery, configured: str) -> None:
    """Refuse rollups bucketed in another timezone than the configured one."""
    if query.period > 1 and state.timezone is not None and state.timezone != configured:
        raise RollupsNeedRebuild(
            f"the {query.market_id} rollups are bucketed in {state.timezone} but the "
            f"configured timezone is {configured}; run `stockex candles rebuild`",
            details={"market": query.market_id, "rollup_timezone": state.timezone,
                     "configured_timezone": configured},
        )


def read_candles(conn: Connection, query: CandleQuery, now: int) -> CandlePage:
    """The page of candles ``query`` asks for (see the module docstring). Takes a Core
    connection (``db.engine.connect()``): cheaper than a Session on the busiest route."""
    time_to = now if query.time_to is None else query.time_to
    newest_first = query.time_from is None
    fetch = query.limit if newest_first else query.limit + 1
    if conn.dialect.name == "mysql":
        rows = _mysql_rows(conn, query, time_to, fetch, newest_first)
    else:
        rows = _portable_rows(conn, query, time_to, fetch, newest_first)
    if newest_first:
        return CandlePage(rows, None)
    following = rows[query.limit][0] if len(rows) > query.limit else None
    return CandlePage(rows[: query.limit], following)


# MySQL renders the whole page as ONE value: rows "time,open,high,low,close,volume" joined
# by ";", with the amounts as canonical decimal strings (DECIMAL(36,18) without
# trailing zeros). This is the hot path: PyMySQL parses result rows in pure Python, and one
# value instead of 1,000 rows of six columns (and no Decimal round trips) cuts the cost of a
# large page several times; the server barely notices. COUNT(*) guards against a
# group_concat_max_len too small for the page (MariaDB's default of 1 MB fits 5,000 rows;
# MySQL's 1 KB does not): then the rows are fetched one by one instead.
_MYSQL_TRIM = "TRIM(TRAILING '.' FROM TRIM(TRAILING '0' FROM {}))"
_MYSQL_LINE = "CONCAT_WS(',', time, {})".format(
    ", ".join(_MYSQL_TRIM.format(c) for c in ("open", "high", "low", "close", "volume"))
)


def _mysql_rows(
    conn: Connection, query: CandleQuery, time_to: int, fetch: int, newest_first: bool
) -> list[CandleRow]:
    """Ascending rows (the newest ``fetch`` ones when ``newest_first``)."""
    if query.period == 1:
        source, period_filter = "candles", ""
    else:
        source, period_filter = "candle_rollups", "AND period = %(period)s "
    lower = "" if query.time_from is None else "AND time >= %(time_from)s "
    order = "DESC" if newest_first else "ASC"
    page = (
        f"SELECT {_MYSQL_LINE} AS line FROM {source} "  # noqa: S608 - fixed fragments
        f"WHERE market_id = %(market)s {period_filter}{lower}AND time <= %(time_to)s "
        f"ORDER BY time {order} LIMIT %(fetch)s"
    )
    params = {"market": query.market_id, "period": query.period,
              "time_from": query.time_from, "time_to": time_to, "fetch": fetch}
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(
            "SELECT COUNT(*), GROUP_CONCAT(line SEPARATOR ';') "  # noqa: S608
            f"FROM ({page}) AS page",
            params,
        )
        count, joined = cursor.fetchone()
        lines = joined.split(";") if joined else []
        if len(lines) != count:  # truncated by group_concat_max_len
            cursor.execute(page, params)
            lines = [line for (line,) in cursor.fetchall()]
    finally:
        cursor.close()
    rows: list[CandleRow] = []
    for line in lines:
        t, o, h, lo, c, v = line.split(",")
        rows.append((int(t), o, h, lo, c, v))
    rows.sort()  # by time; cheaper here than an ORDER BY inside GROUP_CONCAT
    return rows


def _portable_rows(
    conn: Connection, query: CandleQuery, time_to: int, fetch: int, newest_first: bool
) -> list[CandleRow]:
    """Ascending rows (the newest ``fetch`` ones when ``newest_first``)."""
    if query.period == 1:
        table = Candle.__table__
        where = [table.c.market_id == query.market_id]
    else:
        table = CandleRollup.__table__
        where = [table.c.market_id == query.market_id, table.c.period == query.period]
    time_col = table.c.time
    where.append(time_col <= time_to)
    if query.time_from is not None:
        where.append(time_col >= query.time_from)
    columns = (time_col, table.c.open, table.c.high, table.c.low, table.c.close, table.c.volume)
    order = time_col.desc() if newest_first else time_col.asc()
    stmt = select(*columns).where(*where).order_by(order).limit(fetch)
    rows: list[CandleRow] = [
        (t, to_str(o), to_str(h), to_str(lo), to_str(c), to_str(v))
        for t, o, h, lo, c, v in conn.execute(stmt)
    ]
    if newest_first:
        rows.reverse()
    return rows


# ---------------------------------------------------------------------------- ticker


@dataclass(frozen=True)
class Ticker:
    """24 h statistics from the crawled minutes in ``(now - 24 h, now]``."""

    market_id: str
    at: int
    last: Decimal | None  # close of the newest minute at or before ``at`` (maybe older)
    last_time: int | None
    open: Decimal | None  # open of the first minute of the window
    high: Decimal | None
    low: Decimal | None
    volume: Decimal
    price_change: Decimal | None
    price_change_percent: Decimal | None


def read_ticker(session: Session, market_id: str, now: int) -> Ticker:
    """24 h open/high/low/volume and the last price; None fields when there is no data.

    Every figure comes from one snapshot, so a crawl committing meanwhile shows in all of
    them or in none (never a ``last`` above ``high``). On MySQL that takes one statement:
    under READ COMMITTED each statement reads its own snapshot. SQLite's read transaction
    keeps one snapshot for all of its statements, and there the volume is summed in Python
    after the statement (SQLite's SUM would go through floats)."""
    mysql = session.get_bind().dialect.name == "mysql"
    mine = Candle.market_id == market_id
    window = (mine, Candle.time > now - TICKER_WINDOW, Candle.time <= now)

    def newest(column):  # type: ignore[no-untyped-def]
        return (select(column).where(mine, Candle.time <= now).order_by(Candle.time.desc())
                .limit(1).correlate(None).scalar_subquery())

    first_open = (select(Candle.open).where(*window).order_by(Candle.time).limit(1)
                  .correlate(None).scalar_subquery())
    volume_sum = func.sum(Candle.volume) if mysql else literal_column("NULL")
    last_time, last, first, high, low, total = session.execute(
        select(newest(Candle.time), newest(Candle.close), first_open, func.max(Candle.high),
               func.min(Candle.low), volume_sum).where(*window)
    ).one()
    if first is None:
        return Ticker(market_id, now, last, last_time, None, None, None, Decimal(0), None, None)
    if mysql:  # DECIMAL SUM is exact in MySQL and saves shipping 1,440 rows.
        volume = Decimal(total or 0)
    else:
        with localcontext(EXACT):
            volume = sum(session.execute(select(Candle.volume).where(*window)).scalars(),
                         Decimal(0))
    change = last - first  # the window holds a minute, so there is a newest minute
    percent = None
    if first != 0:
        with localcontext(EXACT):
            percent = (change * 100 / first).quantize(Decimal("0.01"))
    return Ticker(market_id, now, last, last_time, first, high, low, volume, change, percent)
