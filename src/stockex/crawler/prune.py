"""Retention of the ``crawl_runs`` table: :func:`prune_runs`.

Every run writes one row (under Airflow one per market per minute: about 525,000 a year per
market) and nothing else deletes them. The crawler itself reads only a market's newest row
(a run closes the row a killed run left ``running``, see ``run._open_run``), so pruning never
deletes a market's newest row, nor a row still ``running``; every other row that started
before the cutoff goes.

Rows go in batches, each its own short transaction, so MySQL never holds the locks of one
large DELETE while the crawler writes its run rows. A market's rows are walked in id order
through the ``(market_id, id)`` index and the walk ends at the first row that started at or
after the cutoff (ids grow with ``started_at``: a market's runs are one at a time), so a prune
reads the rows it deletes and at most one batch more, however large the table.
"""

from __future__ import annotations

import time

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from stockex.config import Settings
from stockex.crawler.summary import RUNNING
from stockex.db import Database
from stockex.models import CrawlRun

DAY = 86400
DEFAULT_BATCH_SIZE = 1000


def prune_older_than(
    settings: Settings, older_than_days: int, *, batch_size: int = DEFAULT_BATCH_SIZE
) -> tuple[dict[str, int], int]:
    """:func:`prune_runs` on the configured database, for the runs that started more than
    ``older_than_days`` days ago (``stockex crawl-runs prune``, the maintenance DAG): the
    number deleted per market, and the cutoff in epoch seconds."""
    started_before = int(time.time()) - older_than_days * DAY
    db = Database(settings.database.url, pool_size=1)
    try:
        return prune_runs(db, started_before, batch_size=batch_size), started_before
    finally:
        db.dispose()


def prune_runs(
    db: Database, started_before: int, *, batch_size: int = DEFAULT_BATCH_SIZE
) -> dict[str, int]:
    """Delete the finished runs that started before ``started_before`` (epoch seconds),
    except each market's newest run. Returns the number deleted per market (every market
    with run rows, 0 included)."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    with db.read() as session:
        newest = session.execute(
            select(CrawlRun.market_id, func.max(CrawlRun.id))
            .group_by(CrawlRun.market_id).order_by(CrawlRun.market_id)
        ).all()
    deleted: dict[str, int] = {}
    for market, newest_id in newest:
        deleted[market] = 0
        after = 0
        while True:
            count, after, done = db.transaction(
                lambda s, m=market, a=after, n=newest_id: _delete_batch(
                    s, m, a, n, started_before, batch_size)
            )
            deleted[market] += count
            if done:
                break
    return deleted


def _delete_batch(session: Session, market: str, after: int, newest_id: int,
                  started_before: int, batch_size: int) -> tuple[int, int, bool]:
    """One batch: (rows deleted, last id read, whether the walk is over)."""
    rows = session.execute(
        select(CrawlRun.id, CrawlRun.started_at, CrawlRun.status)
        .where(CrawlRun.market_id == market, CrawlRun.id > after, CrawlRun.id < newest_id)
        .order_by(CrawlRun.id).limit(batch_size)
    ).all()
    ids = []
    done = len(rows) < batch_size
    for row in rows:
        if row.started_at >= started_before:
            done = True
            break
        if row.status != RUNNING:
            ids.append(row.id)
    if ids:
        session.execute(delete(CrawlRun).where(CrawlRun.id.in_(ids)))
    return len(ids), rows[-1].id if rows else after, done
