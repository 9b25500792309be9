"""What the Airflow DAGs call: the bodies of ``tiki_candles``'s and ``stockex_maintenance``'s
tasks, and their failure callback.

Kept out of the DAG files so that parsing a DAG imports nothing but Airflow.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stockex import alerts
from stockex.config import ConfigError, Settings, load_settings
from stockex.crawler.lock import CrawlInProgress
from stockex.crawler.prune import DAY, prune_older_than
from stockex.crawler.run import crawl_market
from stockex.crawler.summary import CrawlFailed
from stockex.db import Database

log = logging.getLogger("stockex.crawler")


def configured_markets(settings: Settings | None = None) -> list[str]:
    """``crawler.markets`` from the settings (no I/O beyond reading the config file).

    Raises :class:`ConfigError` when it is empty (``STOCKEX__CRAWLER__MARKETS=``): Airflow
    maps no ``crawl_market`` task over an empty list and marks the run successful, so every
    run would be green while nothing is crawled. ``stockex crawl`` refuses it too.
    """
    markets = list((settings or load_settings()).crawler.markets)
    if not markets:
        raise ConfigError("crawler.markets", "empty: nothing to crawl (list a market in it)")
    return markets


def crawl_configured_market(market: str, settings: Settings | None = None) -> dict[str, Any]:
    """One run of ``market`` with its own database engine and client; a small summary dict.

    For the Airflow task: raises :class:`CrawlFailed` (so the task retries) on failure. The
    task's callbacks alert (:func:`report_task_failure` adds the market, run and window), so
    the run does not alert itself as well. When another crawler holds the market
    (:class:`CrawlInProgress`) the task is skipped: nothing failed, the next run catches up.
    """
    settings = settings or load_settings()
    db = Database(settings.database.url, pool_size=2)  # a run holds up to three connections
    try:
        return crawl_market(db, settings, market, alert=False).brief()
    except CrawlInProgress as exc:
        from airflow.sdk.exceptions import AirflowSkipException

        raise AirflowSkipException(exc.message) from exc
    finally:
        db.dispose()


def prune_crawl_runs(older_than_days: int, settings: Settings | None = None) -> dict[str, Any]:
    """``stockex crawl-runs prune --older-than-days N`` for the maintenance DAG: a small
    summary (rows deleted in all, per market)."""
    deleted, _ = prune_older_than(settings or load_settings(), older_than_days)
    log.info("crawl_runs: %d row(s) older than %d day(s) deleted (%s)", sum(deleted.values()),
             older_than_days, ", ".join(f"{m} {n}" for m, n in deleted.items()) or "no runs")
    return {"deleted": sum(deleted.values()), "per_market": deleted}


def delete_old_logs(folder: str | os.PathLike[str], older_than_days: int) -> int:
    """Delete the ``*.log`` files under ``folder`` last written more than N days ago, then the
    directories they leave empty (what the official Airflow image's ``clean-logs``, the Helm
    chart's log groomer, does). Returns the number of files deleted.

    A directory is removed when this walk emptied it, or when it has been empty for an hour:
    a task that is starting creates its log directory a moment before its log file. Symbolic
    links (the dag processor's ``latest``) are left alone, ``lost+found`` is not entered.
    """
    root = Path(folder)
    now = time.time()
    file_cutoff, dir_cutoff = now - older_than_days * DAY, now - 3600
    deleted = 0
    emptied: set[Path] = set()  # directories this walk deleted something in
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        here = Path(dirpath)
        if "lost+found" in here.relative_to(root).parts:
            continue
        for name in filenames:
            path = here / name
            try:
                if (name.endswith(".log") and not path.is_symlink()
                        and path.stat().st_mtime < file_cutoff):
                    path.unlink()
                    deleted += 1
                    emptied.add(here)
            except FileNotFoundError:  # gone meanwhile
                pass
        for name in dirnames:
            path = here / name
            try:
                if (not path.is_symlink() and not any(path.iterdir())
                        and (path in emptied or path.stat().st_mtime < dir_cutoff)):
                    path.rmdir()
                    emptied.add(here)
            except OSError:  # gone, or written to meanwhile
                pass
    return deleted


def report_task_failure(context: Mapping[str, Any]) -> str:
    """Airflow ``on_failure_callback``: log which market's task failed and why.

    Returns the message, also posted to Slack (:func:`stockex.alerts.airflow_task_failed`).
    Never raises: a broken callback must not hide the original failure.
    """
    try:
        where, fields = alerts.airflow_fields(context)
        try_number = fields["try_number"] if fields["try_number"] is not None else "?"
        exception = context.get("exception")
        market = _market_of(exception, context)
        message = (
            f"{where.removeprefix('airflow ')} failed on try {try_number}"
            + (f" for market {market}" if market else "")
            + (f": {exception}" if exception is not None else "")
        )
    except Exception as exc:  # pragma: no cover - defensive
        message = f"task failed (the failure report itself failed: {exc})"
    log.error("airflow: %s", message)
    alerts.airflow_task_failed(context, **_run_fields(context.get("exception")))
    return message


def _run_fields(exception: Any) -> dict[str, Any]:
    """The failed run's market, id and window for the alert (what the crawler's own alert
    would have said), when the task failed in a run."""
    if not isinstance(exception, CrawlFailed):
        return {}
    summary = exception.summary
    return {"market": summary.market, "crawl_run_id": summary.run_id,
            "window": (summary.window_from, summary.window_to)}


def _market_of(exception: Any, context: Mapping[str, Any]) -> str | None:
    if isinstance(exception, CrawlFailed):
        return exception.summary.market
    task = context.get("task")
    op_kwargs = getattr(task, "op_kwargs", None) or {}
    market = op_kwargs.get("market") if isinstance(op_kwargs, Mapping) else None
    return str(market) if market else None
