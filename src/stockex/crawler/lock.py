"""One crawl run per market at a time, across processes and machines: :func:`market_lock`.

Two runs of one market at once (the loop and the DAG, an overlapping ``stockex crawl
--once``) do not merely do the work twice: each plans its rollups from what had committed
when it read (see :func:`stockex.candles.plan_minutes`), so the one that commits last
overwrites a day's or a week's candle with one that misses the other's minutes. So a run
takes its market's lock first, and a run that finds it taken does not start
(:class:`CrawlInProgress`); the next one catches up, as after any skipped run.

* MySQL: ``GET_LOCK`` on a connection held for the run; the server releases it when that
  connection ends, so a killed crawler never leaves it behind.
* SQLite: ``flock`` on ``<database file>.crawl-<market>.lock`` beside the database (never on
  the database file itself: closing another descriptor of it would drop SQLite's own
  locks); the kernel releases it when the process ends. An in-memory database lives in one
  process and is not locked. A lock file that cannot be created (the database's directory
  missing or not writable) is :class:`CrawlLockUnavailable`, before the database is touched.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from stockex.db import Database, as_sqlalchemy_error
from stockex.errors import Conflict, DomainError

# Server-wide on MySQL, so the database's name is part of it (SHA1: at most 64 characters).
_NAME = "SHA1(CONCAT('stockex-crawl/', DATABASE(), '/', %s))"
_GET_LOCK = f"SELECT GET_LOCK({_NAME}, 0)"
_RELEASE_LOCK = f"SELECT RELEASE_LOCK({_NAME})"
_STILL_HELD = f"SELECT IS_USED_LOCK({_NAME}) = CONNECTION_ID()"


class CrawlInProgress(Conflict):
    """Another run of the market holds its lock; this run did not start."""

    code = "crawl_in_progress"

    def __init__(self, market: str) -> None:
        super().__init__(
            f"{market} is being crawled by another process (stockex crawl or the tiki_candles "
            "DAG) right now; this run did not start",
            details={"market": market},
        )


class CrawlLockLost(Conflict):
    """The connection holding the market's MySQL lock ended during the run (a MySQL restart,
    ``wait_timeout`` on a long backfill): another run may have started, so this one stops."""

    code = "crawl_lock_lost"

    def __init__(self, market: str) -> None:
        super().__init__(
            f"{market}'s crawl lock was lost during the run (its database connection ended): "
            "the run stopped before writing more; the next run resumes from the newest stored "
            "minute",
            details={"market": market},
        )


class CrawlLockUnavailable(DomainError):
    """SQLite: the market's lock file cannot be created beside the database file (its
    directory is missing, not a directory, or not writable); the run did not start."""

    status = 503
    code = "crawl_lock_unavailable"

    def __init__(self, path: str, exc: OSError) -> None:
        super().__init__(
            f"cannot create the crawl lock file {path} beside the SQLite database file: "
            f"{exc.strerror or exc} (the directory must exist and be writable by this "
            "process)",
            details={"path": path},
        )


def _held() -> None:
    """A lock that cannot be lost while the process lives (a file lock, or none)."""


@contextmanager
def market_lock(db: Database, market: str) -> Iterator[Callable[[], None]]:
    """Hold ``market``'s crawl lock for the block; :class:`CrawlInProgress` if it is taken.

    The block gets a check to call before each write: it raises :class:`CrawlLockLost` when
    the lock went with its MySQL connection (one round trip; nothing on SQLite, where the
    kernel keeps the lock as long as the process)."""
    if db.dialect == "mysql":
        with _mysql_lock(db, market) as still_held:
            yield still_held
        return
    database = db.engine.url.database
    if database in (None, "", ":memory:"):
        yield _held
        return
    path = f"{database}.crawl-{market}.lock"
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:  # where the database file itself cannot be opened either
        raise CrawlLockUnavailable(path, exc) from exc
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CrawlInProgress(market) from None
        yield _held
    finally:
        os.close(descriptor)  # releases the lock


@contextmanager
def _mysql_lock(db: Database, market: str) -> Iterator[Callable[[], None]]:
    connection = db.engine.raw_connection()
    held = False

    def still_held() -> None:
        nonlocal held
        try:
            held = _scalar(db, connection, _STILL_HELD, market) == 1
        except SQLAlchemyError:
            held = False
        if not held:
            if connection.is_valid:  # (a lost one is invalidated already)
                connection.invalidate()  # whatever it is now, it holds no lock to release
            raise CrawlLockLost(market)

    try:
        held = _scalar(db, connection, _GET_LOCK, market) == 1
        if not held:
            raise CrawlInProgress(market)
        yield still_held
    finally:
        try:
            if held:
                _scalar(db, connection, _RELEASE_LOCK, market)
        except Exception:  # noqa: BLE001 - the server drops the lock with the connection
            connection.invalidate()
        connection.close()


def _scalar(db: Database, connection: Any, sql: str, market: str) -> Any:
    try:
        with closing(connection.cursor()) as cursor:
            cursor.execute(sql, (market,))
            return cursor.fetchone()[0]
    except db.engine.dialect.loaded_dbapi.Error as exc:
        raise as_sqlalchemy_error(exc, connection, db.engine.dialect, sql, (market,)) from exc
