"""The standalone crawler loop (cron job, ``stockex crawl`` without ``--once``) and its
signal handling: every market at each interval boundary, on after failures, until stopped."""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from stockex import alerts
from stockex.config import Settings
from stockex.crawler.lock import CrawlInProgress
from stockex.crawler.run import crawl_market
from stockex.crawler.summary import SUCCESS, ChunkProgress, CrawlFailed, CrawlSummary
from stockex.crawler.times import MINUTE, local_iso
from stockex.db import RUN_UPGRADE, Database, is_missing_table
from stockex.errors import DomainError
from stockex.tiki import TikiClient

log = logging.getLogger("stockex.crawler")

#: Seconds after an interval boundary at which the loop starts, so the minute has closed.
SETTLE_SECONDS = 1.0


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
    busy: list[CrawlInProgress] | None = None,
) -> list[CrawlSummary]:
    """One run per market, in order; a failed market does not keep the others from running.

    Returns the summaries (failed runs included). A market another crawler holds
    (:class:`CrawlInProgress`) is added to ``busy`` when given, and the others still run.
    Errors that prevent a run row (unknown or unsynced market, database down, a held market
    without ``busy``) propagate.
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
        except CrawlInProgress as exc:
            if busy is None:
                raise
            busy.append(exc)
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
    tiki = client or TikiClient(settings.tiki.base_url, settings.tiki.timeout_seconds,
                                timezone=settings.tz)
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
                except CrawlInProgress as exc:  # not a failure: the other run does the work
                    reached = False
                    log.warning("%s; trying again next interval", exc.message)
                    continue
                except Exception as exc:  # before a run could start: database down, ...
                    failures += 1
                    reached = False
                    _could_not_run(market, exc, settings)
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


def _could_not_run(market: str, exc: Exception, settings: Settings) -> None:
    """Log and alert an error that kept a run from starting (it has no run row). A database
    error is one line, with what to do when the schema is missing, as ``stockex crawl
    --once`` prints it: the loop meets it again every interval; so is a domain error (the
    lock file of a SQLite database that cannot be created). Anything else also logs its
    traceback."""
    hint = RUN_UPGRADE if is_missing_table(exc) else None
    if isinstance(exc, DomainError):
        log.error("%s: crawl could not run: %s; trying again next interval", market, exc.message)
    elif isinstance(exc, SQLAlchemyError):
        detail = str(getattr(exc, "orig", None) or exc).strip()
        log.error("%s: crawl could not run: database error: %s%s; trying again next interval",
                  market, detail.splitlines()[0] if detail else type(exc).__name__,
                  f" ({hint})" if hint else "")
    else:
        log.exception("%s: crawl could not run; trying again next interval", market)
    # the run's own failures alert in crawl_market; these have no run row
    alerts.crawler_failed(market, exc, settings=settings, hint=hint)


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
