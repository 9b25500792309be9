"""Incremental crawl of Tiki-Exchange one-minute k-lines into the ``candles`` table.

:func:`crawl_market` is one run for one market; every entry point (``stockex crawl``,
``cron_jobs/crawl.py``, the ``tiki_candles`` Airflow DAG) calls it. Its contract:

* **Window.** From the high-water mark — the newest stored minute of the market, else
  ``crawler.start`` — **inclusive** (a minute stored while it was still open is fetched again
  and ends with its final values) up to the last closed minute, or ``until`` if earlier. The
  still-open minute is never requested, so it is never stored.
* **Chunks.** The window is walked in chunks of ``crawler.chunk_minutes``. The upstream may
  cut an answer short (Peatio caps k-line answers), so a chunk is paged on from the minute
  after the last one received until the chunk is covered; an empty answer ends the chunk —
  a gap, not the end of the crawl. Each chunk is upserted (``candles.store_minutes``) in ONE
  transaction together with the run row's progress, so a run killed at any point leaves
  whole chunks behind and the next run resumes from the newest stored minute.
* **Run rows.** Every run is one ``crawl_runs`` row: ``running`` and then ``success``,
  ``stopped`` (the stop flag was set; it finished the chunk in flight) or ``failed`` with the
  error. The row holds the window, rows written, and the gaps — minutes missing between the
  stored minutes the run saw (its high-water mark and every minute fetched) — as JSON
  ``[[from, to], ...]`` (inclusive) plus their count. Times are epoch seconds (UTC); the
  ``*_local`` columns and every log line also show them in ``settings.timezone``.
* **Failures.** Upstream failures that outlast the client's retries, a malformed row
  (:class:`~stockex.tiki.UpstreamDataError`) or a database error fail the run: the chunk in
  flight is not stored, earlier chunks stay, the row says ``failed`` with the error, and
  :class:`CrawlFailed` is raised carrying the :class:`CrawlSummary`.

:func:`run_forever` is the standalone loop (cron job, ``stockex crawl`` without ``--once``):
it runs every configured market at each interval boundary, keeps going after failed runs, and
returns once the stop flag is set — after the chunk in flight is stored.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from stockex.candles import StoreResult, store_minutes
from stockex.config import Settings
from stockex.db import Database
from stockex.errors import DomainError, InvalidInput, NotFound, UnknownMarket
from stockex.models import Candle, CrawlRun, Market
from stockex.tiki import Kline, TikiClient

log = logging.getLogger(__name__)
#: One line per stored chunk; the CLI silences it while it draws a progress bar instead.
progress_log = logging.getLogger(__name__ + ".progress")

MINUTE = 60
#: Seconds after an interval boundary at which the loop starts, so the minute has closed.
SETTLE_SECONDS = 1.0
#: At most this many gap ranges are kept in a run row and logged; gap_minutes counts all.
MAX_REPORTED_GAPS = 200

RUNNING, SUCCESS, STOPPED, FAILED = "running", "success", "stopped", "failed"


def local_iso(ts: int | None, tz: ZoneInfo) -> str | None:
    """``1719858240`` -> ``'2024-07-02T01:24:00+07:00'`` in ``tz``; None stays None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz).isoformat()


def parse_time(text: str, tz: ZoneInfo) -> int:
    """Epoch seconds from epoch digits or ISO-8601 (no offset: read in ``tz``).

    Raises :class:`~stockex.errors.InvalidInput` naming the value.
    """
    value = text.strip()
    if value.isdigit():
        return int(value)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(
            f"not a time: {text!r} (use epoch seconds or ISO-8601)", code="invalid_time"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    return int(moment.timestamp())


def last_closed_minute(now: float) -> int:
    """The start of the newest minute that has ended at ``now``."""
    return math.floor(now / MINUTE) * MINUTE - MINUTE


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ChunkProgress:
    """Reported after each stored chunk (for progress bars)."""

    market: str
    window_from: int
    window_to: int
    chunk_from: int
    chunk_to: int
    fetched: int
    inserted: int
    updated: int


@dataclass(frozen=True)
class CrawlSummary:
    """What one run did. ``covered_to`` is the last minute of the last stored chunk."""

    market: str
    run_id: int
    status: str
    started_at: int
    finished_at: int
    window_from: int
    window_to: int
    covered_to: int | None
    inserted: int
    updated: int
    requests: int
    gaps: tuple[tuple[int, int], ...]
    gap_minutes: int
    error: str | None
    timezone: str

    @property
    def rows_written(self) -> int:
        return self.inserted + self.updated

    @property
    def ok(self) -> bool:
        return self.status in (SUCCESS, STOPPED)

    def as_dict(self, *, include_gaps: bool = True) -> dict[str, Any]:
        """JSON-ready, with ``*_local`` strings; ``include_gaps=False`` for a small XCom."""
        tz = ZoneInfo(self.timezone)
        data: dict[str, Any] = {
            "market": self.market,
            "run_id": self.run_id,
            "status": self.status,
            "rows_written": self.rows_written,
            "inserted": self.inserted,
            "updated": self.updated,
            "requests": self.requests,
            "gap_minutes": self.gap_minutes,
            "gap_count": len(self.gaps),
            "error": self.error,
            "timezone": self.timezone,
        }
        for name in ("started_at", "finished_at", "window_from", "window_to", "covered_to"):
            value = getattr(self, name)
            data[name] = value
            data[f"{name}_local"] = local_iso(value, tz)
        if include_gaps:
            data["gaps"] = [list(g) for g in self.gaps]
        return data

    def brief(self) -> dict[str, Any]:
        """The few fields worth passing on (an Airflow XCom): outcome and window."""
        full = self.as_dict(include_gaps=False)
        keys = ("market", "run_id", "status", "rows_written", "gap_minutes", "error",
                "window_from", "window_to", "window_from_local", "window_to_local",
                "covered_to_local")
        return {key: full[key] for key in keys}


class CrawlFailed(DomainError):
    """A run failed; ``summary`` says how far it got and ``__cause__`` is the original error."""

    status = 502
    code = "crawl_failed"

    def __init__(self, summary: CrawlSummary) -> None:
        super().__init__(
            f"crawl of {summary.market} failed (run {summary.run_id}): {summary.error}",
            details={"market": summary.market, "run_id": summary.run_id},
        )
        self.summary = summary


# --------------------------------------------------------------------------- one run


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
) -> CrawlSummary:
    """One crawl run of ``market`` (see the module docstring for the whole contract).

    ``client`` defaults to one built from ``settings.tiki`` (closed at the end); pass your own
    to tune retries. ``until`` caps the window at that minute (inclusive). ``clock`` is "now"
    for the last closed minute and the run's timestamps.

    Raises :class:`~stockex.errors.UnknownMarket` for a market not in the settings, NotFound
    (``market_not_synced``) when ``stockex db upgrade`` has not put it in the database (no run
    row then), and :class:`CrawlFailed` when the run fails.
    """
    if settings.market(market) is None:
        raise UnknownMarket(market)
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
        client = TikiClient(settings.tiki.base_url, settings.tiki.timeout_seconds)
    status, error = SUCCESS, None
    try:
        run.previous_ts = newest
        _crawl_chunks(db, client, settings, run, window_from, window_to, stop, on_chunk)
        unfinished = run.covered_to is None or run.covered_to < window_to
        if stop is not None and stop.is_set() and window_from <= window_to and unfinished:
            status = STOPPED
    except BaseException as exc:
        status, error = FAILED, _describe(exc)
        summary = _finish(db, run, status, error, started_at, window_from, window_to, clock)
        if isinstance(exc, Exception):
            raise CrawlFailed(summary) from exc
        raise  # KeyboardInterrupt, SystemExit: the run row is closed, let them through
    finally:
        if own_client:
            client.close()
    return _finish(db, run, status, error, started_at, window_from, window_to, clock)


def _window(
    db: Database, settings: Settings, market: str, now: int, until: int | None
) -> tuple[int, int, int | None]:
    """(first minute, last minute, newest stored minute or None) of this run."""
    with db.read() as session:
        newest = session.scalar(
            select(func.max(Candle.time)).where(Candle.market_id == market)
        )
    start = newest if newest is not None else _ceil_minute(settings.crawler_start_epoch)
    end = last_closed_minute(now)
    if until is not None:
        end = min(end, until - until % MINUTE)
    return int(start), end, newest


def _ceil_minute(ts: int) -> int:
    return -(-ts // MINUTE) * MINUTE


def _open_run(
    session: Session, market: str, started_at: int, window_from: int, window_to: int, tz: ZoneInfo
) -> int:
    if session.get(Market, market) is None:
        raise NotFound(
            f"market {market!r} is configured but not in the database; run `stockex db upgrade`",
            code="market_not_synced",
            details={"market": market},
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
) -> None:
    chunks = _chunks(window_from, window_to, settings.crawler.chunk_minutes)
    for chunk_from, chunk_to, klines in _fetched(client, run, chunks):
        if stop is not None and stop.is_set():
            log.info("%s: stop requested; run %d ends before %s", run.market, run.run_id,
                     local_iso(chunk_from, run.tz))
            return
        result = db.transaction(lambda s, k=klines: _store_chunk(s, run, k))
        run.inserted += result.inserted
        run.updated += result.updated
        run.covered_to = chunk_to
        run.see(klines)
        progress_log.info(
            "%s: %s .. %s: %d minute(s) fetched, %d new, %d updated",
            run.market, local_iso(chunk_from, run.tz), local_iso(chunk_to, run.tz),
            len(klines), result.inserted, result.updated,
        )
        if on_chunk is not None:
            on_chunk(ChunkProgress(run.market, window_from, window_to, chunk_from, chunk_to,
                                   len(klines), result.inserted, result.updated))


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
    """Every minute the upstream has in [chunk_from, chunk_to], paging past capped answers."""
    klines: list[Kline] = []
    cursor = chunk_from
    while cursor <= chunk_to:
        page = client.fetch_klines(run.market, cursor, chunk_to)
        run.requests += 1
        if not page:
            break  # nothing more in this chunk: a gap (or no data yet), not the end
        klines.extend(page)
        cursor = page[-1].ts + MINUTE
    return klines


def _store_chunk(session: Session, run: _Run, klines: list[Kline]) -> StoreResult:
    result = store_minutes(session, run.market, klines)
    if result.written:
        session.execute(
            update(CrawlRun)
            .where(CrawlRun.id == run.run_id)
            .values(rows_written=run.inserted + run.updated + result.written)
        )
    return result


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    text = str(exc).strip() or type(exc).__name__
    orig = getattr(exc, "orig", None)  # SQLAlchemy: the driver's message is the useful part
    if orig is not None:
        text = f"{type(exc).__name__}: {str(orig).strip()}"
    return text.splitlines()[0][:1000]


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
        "covered up to %s, %d gap minute(s)%s",
        run.market, run.run_id, status, local_iso(finished_at, run.tz), summary.rows_written,
        run.inserted, run.updated, run.requests, local_iso(run.covered_to, run.tz),
        run.gap_minutes, f"; error: {error}" if error else "",
    )
    return summary


# --------------------------------------------------------------------------- many runs


def crawl_markets(
    db: Database,
    settings: Settings,
    markets: Sequence[str],
    *,
    client: TikiClient | None = None,
    until: int | None = None,
    clock: Callable[[], float] = time.time,
    stop: threading.Event | None = None,
    on_chunk: Callable[[ChunkProgress], None] | None = None,
) -> list[CrawlSummary]:
    """One run per market, in order; a failed market does not keep the others from running.

    Returns the summaries (failed runs included). Errors that prevent a run row (unknown or
    unsynced market, database down) propagate.
    """
    summaries = []
    for market in markets:
        if stop is not None and stop.is_set():
            break
        try:
            summaries.append(crawl_market(db, settings, market, client=client, until=until,
                                          clock=clock, stop=stop, on_chunk=on_chunk))
        except CrawlFailed as exc:
            summaries.append(exc.summary)
    return summaries


def seconds_until_next_run(now: float, interval: float) -> float:
    """Seconds from ``now`` to the next interval boundary (+ SETTLE_SECONDS)."""
    boundary = math.floor(now / interval) * interval + SETTLE_SECONDS
    if boundary <= now:
        boundary += interval
    return boundary - now


def run_forever(
    settings: Settings,
    *,
    markets: Sequence[str] | None = None,
    db: Database | None = None,
    client: TikiClient | None = None,
    until: int | None = None,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.time,
    on_chunk: Callable[[ChunkProgress], None] | None = None,
) -> int:
    """Crawl ``markets`` (default ``crawler.markets``) at every interval boundary until stopped.

    A failed run — or an error before the run could start, such as the database being down —
    is logged and the loop goes on at the next boundary. With ``until``, the loop ends once
    every market's window reached it. Returns the number of runs that failed.
    """
    stop = stop if stop is not None else threading.Event()
    markets = tuple(markets or settings.crawler.markets)
    own_db = db is None
    database = db if db is not None else Database(settings.database.url, pool_size=2)
    own_client = client is None
    tiki = client or TikiClient(settings.tiki.base_url, settings.tiki.timeout_seconds)
    failures = 0
    interval = settings.crawler.interval_seconds
    try:
        while not stop.is_set():
            reached = True
            for market in markets:
                if stop.is_set():
                    break
                try:
                    summary = crawl_market(database, settings, market, client=tiki, until=until,
                                           clock=clock, stop=stop, on_chunk=on_chunk)
                except CrawlFailed as exc:
                    failures += 1
                    summary = exc.summary
                except Exception:
                    failures += 1
                    reached = False
                    log.exception("%s: crawl could not run; trying again next interval", market)
                    continue
                reached = reached and summary.status == SUCCESS and until is not None and (
                    summary.window_to >= until - until % MINUTE
                )
            if until is not None and reached:
                log.info("every market is crawled up to %s; done", local_iso(until, settings.tz))
                break
            stop.wait(seconds_until_next_run(clock(), interval))
    finally:
        if own_client:
            tiki.close()
        if own_db:
            database.dispose()
    log.info("crawler loop ended (%d failed run(s))", failures)
    return failures


def stop_on_signals(
    stop: threading.Event, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)
) -> Callable[[], None]:
    """Make SIGTERM/SIGINT set ``stop`` (a second one interrupts at once); main thread only.

    Returns a function that restores the previous handlers.
    """
    previous: dict[int, Any] = {}

    def handler(signum: int, _frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        log.info("%s received: finishing the chunk in flight, then exiting",
                 signal.Signals(signum).name)
        stop.set()

    for signum in signals:
        previous[signum] = signal.signal(signum, handler)

    def restore() -> None:
        for signum, old in previous.items():
            signal.signal(signum, old)

    return restore


# --------------------------------------------------------------------------- Airflow


def configured_markets(settings: Settings | None = None) -> list[str]:
    """``crawler.markets`` from the settings (no I/O beyond reading the config file)."""
    from stockex.config import load_settings

    return list((settings or load_settings()).crawler.markets)


def crawl_configured_market(market: str, settings: Settings | None = None) -> dict[str, Any]:
    """One run of ``market`` with its own database engine and client; a small summary dict.

    For the Airflow task: raises :class:`CrawlFailed` (so the task retries) on failure.
    """
    from stockex.config import load_settings

    settings = settings or load_settings()
    db = Database(settings.database.url, pool_size=1)
    try:
        return crawl_market(db, settings, market).brief()
    finally:
        db.dispose()


def report_task_failure(context: Mapping[str, Any]) -> str:
    """Airflow ``on_failure_callback``: log which market's task failed and why.

    Returns the message (the operations work will post it to Slack). Never raises: a broken
    callback must not hide the original failure.
    """
    try:
        ti = context.get("ti") or context.get("task_instance")
        dag_id = getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", "?")
        task_id = getattr(ti, "task_id", "?")
        map_index = getattr(ti, "map_index", -1)
        try_number = getattr(ti, "try_number", "?")
        exception = context.get("exception")
        market = _market_of(exception, context)
        message = (
            f"{dag_id}.{task_id}[{map_index}] failed on try {try_number}"
            + (f" for market {market}" if market else "")
            + (f": {exception}" if exception is not None else "")
        )
    except Exception as exc:  # pragma: no cover - defensive
        message = f"task failed (the failure report itself failed: {exc})"
    log.error("airflow: %s", message)
    return message


def _market_of(exception: Any, context: Mapping[str, Any]) -> str | None:
    if isinstance(exception, CrawlFailed):
        return exception.summary.market
    task = context.get("task")
    op_kwargs = getattr(task, "op_kwargs", None) or {}
    market = op_kwargs.get("market") if isinstance(op_kwargs, Mapping) else None
    return str(market) if market else None
