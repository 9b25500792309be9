"""One crawl run of one market: :func:`crawl_market` (contract in :mod:`stockex.crawler`)."""

from __future__ import annotations

import gc
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from operator import attrgetter
from zoneinfo import ZoneInfo

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from stockex import alerts
from stockex.batch import WriteBatch
from stockex.candles import (
    MinutePlan,
    StoreResult,
    held_reads,
    plan_minutes,
    series_timezone,
    write_plan,
)
from stockex.config import Settings
from stockex.crawler.lock import market_lock
from stockex.crawler.summary import (
    FAILED,
    RUNNING,
    STOPPED,
    SUCCESS,
    ChunkProgress,
    CrawlFailed,
    CrawlSummary,
)
from stockex.crawler.times import MINUTE, ceil_minute, last_closed_minute, local_iso
from stockex.db import Database
from stockex.errors import NotFound, UnknownMarket
from stockex.models import Candle, CrawlRun, Market
from stockex.mysql_pool import start_request_scope
from stockex.redaction import redact
from stockex.tiki import Kline, TikiClient

log = logging.getLogger("stockex.crawler")
#: One line per stored chunk; the CLI silences it while it draws a progress bar instead.
progress_log = logging.getLogger("stockex.crawler.progress")

#: At most this many gap ranges are kept in a run row and logged; gap_minutes counts all.
MAX_REPORTED_GAPS = 200
#: The error of a ``running`` row that the next run of its market found (see _open_run).
ABANDONED = ("the run ended without closing this row (killed, or its host went down); "
             "the next run of the market resumed from the newest stored minute")


@dataclass
class _Run:
    """Mutable state of a run in progress."""

    market: str
    tz: ZoneInfo
    run_id: int = 0
    inserted: int = 0
    updated: int = 0
    requests: int = 0
    covered_to: int | None = None
    previous_ts: int | None = None  # the newest minute seen, to find gaps
    gaps: list[tuple[int, int]] = field(default_factory=list)
    gap_minutes: int = 0

    def see(self, klines: Sequence[Kline]) -> None:
        """Note gaps between consecutive minutes seen (klines ascending)."""
        previous = self.previous_ts
        for k in klines:
            if previous is not None and k.ts - previous > MINUTE:
                self._gap(previous + MINUTE, k.ts - MINUTE)
            previous = k.ts
        self.previous_ts = previous

    def _gap(self, first: int, last: int) -> None:
        self.gap_minutes += (last - first) // MINUTE + 1
        if len(self.gaps) < MAX_REPORTED_GAPS:
            self.gaps.append((first, last))
            log.warning(
                "%s: gap of %d minute(s) %s .. %s (epoch %d .. %d)",
                self.market, (last - first) // MINUTE + 1, local_iso(first, self.tz),
                local_iso(last, self.tz), first, last,
            )


def crawl_market(
    db: Database,
    settings: Settings,
    market: str,
    *,
    client: TikiClient | None = None,
    until: int | None = None,
    clock: Callable[[], float] = time.time,
    stop: threading.Event | None = None,
    on_chunk: Callable[[ChunkProgress], None] | None = None,
    alert: bool = True,
) -> CrawlSummary:
    """One crawl run of ``market`` (see the module docstring for the whole contract).

    ``alert=False`` leaves Slack to the caller (the Airflow task's callbacks, which add the
    DAG, task, try and log URL): one message per failure, not two.

    A run holds up to three connections of ``db`` at once (its market's lock, its reads and
    the chunk being written): on MySQL a pool smaller than that waits and fails.

    ``client`` defaults to one built from ``settings.tiki`` (closed at the end); pass your own
    to tune retries. ``until`` caps the window at that minute (inclusive). ``clock`` is "now"
    for the last closed minute and the run's timestamps.

    Raises :class:`~stockex.errors.UnknownMarket` for a market not in the settings, NotFound
    (``market_not_synced``) when ``stockex db upgrade`` has not put it in the database (no run
    row then), :class:`~stockex.crawler.lock.CrawlInProgress` when another run of the market
    holds its lock (no run row either), :class:`~stockex.crawler.lock.CrawlLockUnavailable`
    when a SQLite database's lock file cannot be created (nor a run row), and
    :class:`CrawlFailed` when the run fails.
    """
    if settings.market(market) is None:
        raise UnknownMarket(market)
    with market_lock(db, market) as still_held:
        return _crawl(db, settings, market, client=client, until=until, clock=clock, stop=stop,
                      on_chunk=on_chunk, alert=alert, still_held=still_held)


def _crawl(
    db: Database,
    settings: Settings,
    market: str,
    *,
    client: TikiClient | None,
    until: int | None,
    clock: Callable[[], float],
    stop: threading.Event | None,
    on_chunk: Callable[[ChunkProgress], None] | None,
    alert: bool,
    still_held: Callable[[], None],
) -> CrawlSummary:
    """:func:`crawl_market` once it holds the market's lock (``still_held`` raises
    :class:`~stockex.crawler.lock.CrawlLockLost` once it does not)."""
    tz = settings.tz
    started_at = int(clock())
    window_from, window_to, newest = _window(db, settings, market, started_at, until)
    run = _Run(market=market, tz=tz)
    run.run_id = db.transaction(
        lambda s: _open_run(s, market, started_at, window_from, window_to, tz)
    )
    log.info(
        "%s: run %d crawls %s .. %s (epoch %d .. %d, %d minute(s))",
        market, run.run_id, local_iso(window_from, tz), local_iso(window_to, tz),
        window_from, window_to, max(0, (window_to - window_from) // MINUTE + 1),
    )
    own_client = client is None
    if client is None:
        client = TikiClient(settings.tiki.base_url, settings.tiki.timeout_seconds,
                            timezone=settings.tz)
    status, error = SUCCESS, None
    try:
        run.previous_ts = newest
        _crawl_chunks(db, client, settings, run, window_from, window_to, stop, on_chunk,
                      still_held)
        unfinished = run.covered_to is None or run.covered_to < window_to
        if stop is not None and stop.is_set() and window_from <= window_to and unfinished:
            status = STOPPED
    except BaseException as exc:
        status, error = FAILED, _describe(exc)
        summary = _finish(db, run, status, error, started_at, window_from, window_to, clock)
        if isinstance(exc, Exception):
            if alert:  # after the run row is committed, never inside a transaction; never raises
                alerts.crawler_failed(
                    market, exc, window=(window_from, window_to), run_id=run.run_id,
                    settings=settings,
                )
            raise CrawlFailed(summary) from exc
        raise  # KeyboardInterrupt, SystemExit: the run row is closed, let them through
    finally:
        if own_client:
            client.close()
    summary = _finish(db, run, status, error, started_at, window_from, window_to, clock)
    if status == SUCCESS and alert:
        alerts.crawler_recovered(market, run_id=run.run_id, settings=settings)  # if it failed
    return summary


def _window(
    db: Database, settings: Settings, market: str, now: int, until: int | None
) -> tuple[int, int, int | None]:
    """(first minute, last minute, newest stored minute or None) of this run."""
    with db.read() as session:
        newest = session.scalar(
            select(func.max(Candle.time)).where(Candle.market_id == market)
        )
    start = newest if newest is not None else ceil_minute(settings.crawler_start_epoch)
    end = last_closed_minute(now)
    if until is not None:
        end = min(end, until - until % MINUTE)
    return int(start), end, newest


def _open_run(
    session: Session, market: str, started_at: int, window_from: int, window_to: int, tz: ZoneInfo
) -> int:
    if session.get(Market, market) is None:
        raise NotFound(
            f"market {market!r} is configured but not in the database; run `stockex db upgrade`",
            code="market_not_synced",
            details={"market": market},
        )
    # This run holds the market's lock, so no other run of it is alive: a row still
    # ``running`` is a run that was killed (or lost its host) before it could close it. Only
    # the market's newest row can be one (every run closes the row before its own), so one
    # row is read through the (market_id, id) index, however many runs the table holds.
    newest = session.execute(
        select(CrawlRun.id, CrawlRun.status).where(CrawlRun.market_id == market)
        .order_by(CrawlRun.id.desc()).limit(1)
    ).first()
    if newest is not None and newest.status == RUNNING:
        session.execute(
            update(CrawlRun).where(CrawlRun.id == newest.id).values(status=FAILED, error=ABANDONED)
        )
    row = CrawlRun(
        market_id=market,
        started_at=started_at,
        started_at_local=local_iso(started_at, tz),
        window_from=window_from,
        window_from_local=local_iso(window_from, tz),
        window_to=window_to,
        window_to_local=local_iso(window_to, tz),
        rows_written=0,
        status=RUNNING,
        gap_minutes=0,
    )
    session.add(row)
    session.flush()
    return row.id


def _chunks(window_from: int, window_to: int, chunk_minutes: int) -> Iterable[tuple[int, int]]:
    span = chunk_minutes * MINUTE
    for chunk_from in range(window_from, window_to + 1, span):
        yield chunk_from, min(chunk_from + span - MINUTE, window_to)


def _crawl_chunks(
    db: Database,
    client: TikiClient,
    settings: Settings,
    run: _Run,
    window_from: int,
    window_to: int,
    stop: threading.Event | None,
    on_chunk: Callable[[ChunkProgress], None] | None,
    still_held: Callable[[], None],
) -> None:
    chunks = _chunks(window_from, window_to, settings.crawler.chunk_minutes)
    with fewer_gc_passes:
        _store_chunks(db, client, run, window_from, window_to, chunks, stop, on_chunk,
                      still_held)


class _FewerGcPasses:
    """Lets the cyclic garbage collector run less often while chunks are crawled.

    A backfill allocates tens of objects per minute, almost none of them in reference cycles
    (reference counting frees them), yet with the default thresholds (700, 10, 10) the
    collector walks the young objects every 700 allocations and the whole heap every hundred
    passes: about a fifth of the crawl's CPU in ``benchmarks/crawl.py``. Re-entrant across
    threads: the first user raises the youngest generation's threshold, the last one to leave
    (also on errors) puts the previous thresholds back.
    """

    #: Allocations between passes of the youngest generation while crawling (default 700).
    young_threshold = 50_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._saved: tuple[int, int, int] = gc.get_threshold()

    def __enter__(self) -> None:
        with self._lock:
            if self._users == 0:
                self._saved = gc.get_threshold()
                young, *older = self._saved
                gc.set_threshold(max(young, self.young_threshold), *older)
            self._users += 1

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                gc.set_threshold(*self._saved)


fewer_gc_passes = _FewerGcPasses()


@dataclass
class _Chunk:
    """A fetched chunk on its way to the database."""

    chunk_from: int
    chunk_to: int
    klines: list[Kline]
    plan: MinutePlan
    written: Future[StoreResult]
    counted: bool = False


def _store_chunks(
    db: Database,
    client: TikiClient,
    run: _Run,
    window_from: int,
    window_to: int,
    chunks: Iterable[tuple[int, int]],
    stop: threading.Event | None,
    on_chunk: Callable[[ChunkProgress], None] | None,
    still_held: Callable[[], None],
) -> None:
    """Plan each chunk (reads and CPU) in this thread while a writer thread commits the chunk
    before it, so the database's work on chunk N overlaps the computing of chunk N+1. Each
    chunk is handed to the writer only while the market's lock is still held (``still_held``):
    a run that lost it (its MySQL connection ended) may no longer be the only one.

    Chunks are still written one at a time and in order, each in its own transaction, and
    chunk N+1 only after chunk N committed (its plan takes chunk N's rows as stored, see
    :func:`stockex.candles.plan_minutes`). Whatever ends the loop (a stop request, a fetch or
    planning error, a failed write), the chunk being written is waited for and counted
    before the run ends, so the run row's figures match the table; a failed write is raised.
    """
    rollup_timezone = db.transaction(lambda s: series_timezone(s, run.market, run.tz.key))
    # The writer thread is one request scope (stockex.mysql_pool): its pooled connection is
    # pinged when first used in the run, not before every chunk. A connection lost mid-run
    # (a MySQL restart) fails the run; the next run resumes from the newest stored minute.
    with (held_reads(db) as reads,
          ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"store-{run.market}",
                             initializer=start_request_scope) as writer):
        writing: _Chunk | None = None
        try:
            for chunk_from, chunk_to, klines in _fetched(client, run, chunks):
                plan = plan_minutes(reads, run.market, klines, rollup_timezone=rollup_timezone,
                                    pending=writing.plan if writing is not None else None)
                if writing is not None:
                    _stored(run, writing, window_from, window_to, on_chunk)
                if stop is not None and stop.is_set():
                    log.info("%s: stop requested; run %d ends before %s", run.market,
                             run.run_id, local_iso(chunk_from, run.tz))
                    break
                still_held()
                store = partial(_store_chunk, run=run, plan=plan,
                                rows_before=run.inserted + run.updated)
                writing = _Chunk(chunk_from, chunk_to, klines, plan,
                                 writer.submit(db.transaction, store))
        except BaseException:
            if writing is not None and not writing.counted:
                try:
                    _stored(run, writing, window_from, window_to, on_chunk)
                except Exception:
                    log.exception("%s: the chunk being written when the run failed failed too",
                                  run.market)
            raise
        if writing is not None and not writing.counted:
            _stored(run, writing, window_from, window_to, on_chunk)


def _stored(
    run: _Run,
    chunk: _Chunk,
    window_from: int,
    window_to: int,
    on_chunk: Callable[[ChunkProgress], None] | None,
) -> None:
    """Wait for ``chunk``'s transaction (its error is raised) and count it in the run."""
    chunk.counted = True
    result = chunk.written.result()
    run.inserted += result.inserted
    run.updated += result.updated
    run.covered_to = chunk.chunk_to
    run.see(chunk.klines)
    progress_log.info(
        "%s: %s .. %s: %d minute(s) fetched, %d new, %d updated",
        run.market, local_iso(chunk.chunk_from, run.tz), local_iso(chunk.chunk_to, run.tz),
        len(chunk.klines), result.inserted, result.updated,
    )
    if on_chunk is not None:
        on_chunk(ChunkProgress(run.market, window_from, window_to, chunk.chunk_from,
                               chunk.chunk_to, len(chunk.klines), result.inserted,
                               result.updated))


def _fetched(
    client: TikiClient, run: _Run, chunks: Iterable[tuple[int, int]]
) -> Iterator[tuple[int, int, list[Kline]]]:
    """``(chunk_from, chunk_to, klines)`` in order, fetching the next chunk in a helper thread
    while the caller stores this one (the upstream and the database wait for each other less).

    A fetch error surfaces when its chunk is due, so every earlier chunk has been stored by
    then. When the caller stops early, the chunk fetched ahead is dropped (after its request
    ends: the client is not shared between two requests).
    """
    remaining = iter(chunks)
    current = next(remaining, None)
    if current is None:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"fetch-{run.market}") as pool:
        future = pool.submit(_fetch_chunk, client, run, *current)
        while current is not None:
            klines = future.result()
            following = next(remaining, None)
            if following is not None:
                future = pool.submit(_fetch_chunk, client, run, *following)
            yield current[0], current[1], klines
            current = following


def _fetch_chunk(client: TikiClient, run: _Run, chunk_from: int, chunk_to: int) -> list[Kline]:
    """Every minute the upstream has in [chunk_from, chunk_to], paging past capped answers.

    An answer may be cut short at either end: Peatio keeps the first rows of a capped answer
    with ``time_from``, the newest with ``time_to`` (as Binance's futures k-lines do with both
    bounds). So the minutes after an answer's last row are asked for, and so are those before
    its first row when it starts after the minute asked for: an empty answer there is a gap.
    Minutes skipped here would never be fetched again (the next run starts after them).
    """
    klines: list[Kline] = []
    windows = [(chunk_from, chunk_to)]
    while windows:
        first, last = windows.pop()
        try:
            page = client.fetch_klines(run.market, first, last)
        finally:
            run.requests += 1  # failed or refused, it was asked: not "0 request(s)"
        if not page:
            continue  # nothing in this window: a gap (or no data yet), not the end
        klines.extend(page)
        if page[-1].ts < last:
            windows.append((page[-1].ts + MINUTE, last))
        if page[0].ts > first:  # asked for first: the one seldom needed
            windows.append((first, page[0].ts - MINUTE))
    klines.sort(key=attrgetter("ts"))  # the windows are disjoint: no minute twice
    return klines


def _store_chunk(
    session: Session, *, run: _Run, plan: MinutePlan, rows_before: int
) -> StoreResult:
    """The chunk's writes and the run row's progress; on MySQL in one round trip that ends
    with COMMIT (see :class:`stockex.batch.WriteBatch`)."""
    batch = WriteBatch(session)
    result = write_plan(session, plan, batch)
    if result.written:
        batch.update(CrawlRun.__table__, run.run_id,
                     {"rows_written": rows_before + result.written})
    batch.flush(commit=True)
    return result


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    text = str(exc).strip() or type(exc).__name__
    orig = getattr(exc, "orig", None)  # SQLAlchemy: the driver's message is the useful part
    if orig is not None:
        text = f"{type(exc).__name__}: {str(orig).strip()}"
    # The row, the CLI's summary and XCom are read by more people than the redacted log:
    # a rejected request names its URL, with a proxy's password in tiki.base_url if any.
    # Redacted before the cut, which could leave a credential's pattern unrecognisable.
    return redact(text.splitlines()[0])[:1000]


def _finish(
    db: Database,
    run: _Run,
    status: str,
    error: str | None,
    started_at: int,
    window_from: int,
    window_to: int,
    clock: Callable[[], float],
) -> CrawlSummary:
    finished_at = int(clock())
    summary = CrawlSummary(
        market=run.market,
        run_id=run.run_id,
        status=status,
        started_at=started_at,
        finished_at=finished_at,
        window_from=window_from,
        window_to=window_to,
        covered_to=run.covered_to,
        inserted=run.inserted,
        updated=run.updated,
        requests=run.requests,
        gaps=tuple(run.gaps),
        gap_minutes=run.gap_minutes,
        error=error,
        timezone=str(run.tz.key),
    )

    def close_row(session: Session) -> None:
        row = session.get(CrawlRun, run.run_id)
        if row is None:  # pragma: no cover - someone deleted it under us
            return
        row.status = status
        row.error = error
        row.finished_at = finished_at
        row.finished_at_local = local_iso(finished_at, run.tz)
        row.rows_written = summary.rows_written
        row.gap_minutes = run.gap_minutes
        row.gaps = json.dumps([list(g) for g in run.gaps]) if run.gaps else None

    try:
        db.transaction(close_row)
    except Exception:
        # The database may be what failed; the summary and the log still tell the story.
        log.exception("%s: could not record the end of run %d", run.market, run.run_id)
    level = logging.ERROR if status == FAILED else logging.INFO
    log.log(
        level,
        "%s: run %d %s at %s: %d row(s) written (%d new, %d updated), %d request(s), "
        "%s, %d gap minute(s)%s",
        run.market, run.run_id, status, local_iso(finished_at, run.tz), summary.rows_written,
        run.inserted, run.updated, run.requests,
        f"covered up to {local_iso(run.covered_to, run.tz)}" if run.covered_to is not None
        else "nothing to fetch (the window is empty: up to date)" if window_from > window_to
        else "nothing covered",
        run.gap_minutes, f"; error: {error}" if error else "",
    )
    return summary
