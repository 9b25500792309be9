"""Incremental crawl of Tiki-Exchange one-minute k-lines into the ``candles`` table.

:func:`crawl_market` is one run for one market; every entry point (``stockex crawl``,
``cron_jobs/crawl.py``, the ``tiki_candles`` Airflow DAG) calls it. Its contract:

* **Window.** From the high-water mark — the newest stored minute of the market, else
  ``crawler.start`` — **inclusive** (a minute stored while it was still open is fetched again
  and ends with its final values) up to the last closed minute, or ``until`` if earlier. The
  still-open minute is never requested, so it is never stored.
* **Chunks.** The window is walked in chunks of ``crawler.chunk_minutes``. The upstream may
  cut an answer short at either end (Peatio caps k-line answers), so a chunk is paged on
  from the minute after the last one received, and the minutes before the first one
  received are asked for when it is not the first asked for, until the chunk is covered;
  an empty answer is a gap, not the end of the crawl. Each chunk is upserted
  (``candles.plan_minutes`` and ``write_plan``, as ``store_minutes`` does) in ONE
  transaction together with the run row's progress, so a run killed at any point leaves
  whole chunks behind and the next run resumes from the newest stored minute. Chunks are
  written one at a time and in order, on a writer thread, while the next chunk is fetched
  and planned; a chunk is written only after the one before it committed, and a failed
  write ends the run before anything after it is written.
* **One at a time.** A run first takes its market's lock (:mod:`stockex.crawler.lock`);
  while another run of the market holds it, :class:`CrawlInProgress` is raised and nothing
  is written: two runs at once would each compute rollups without the other's minutes.
  A run whose MySQL lock went with its connection fails before its next chunk
  (:class:`~stockex.crawler.lock.CrawlLockLost`).
* **Run rows.** Every run is one ``crawl_runs`` row: ``running`` and then ``success``,
  ``stopped`` (the stop flag was set; it finished the chunk in flight) or ``failed`` with the
  error. The row holds the window, rows written, and the gaps — minutes missing between the
  stored minutes the run saw (its high-water mark and every minute fetched) — as JSON
  ``[[from, to], ...]`` (inclusive) plus their count. Times are epoch seconds (UTC); the
  ``*_local`` columns and every log line also show them in ``settings.timezone``. A row a
  killed run left ``running`` is marked ``failed`` by the market's next run (which holds the
  lock, so no other run of it is alive), its error saying so.
* **Failures.** Upstream failures that outlast the client's retries, a malformed row
  (:class:`~stockex.tiki.UpstreamDataError`) or a database error fail the run: the chunk in
  flight is not stored, earlier chunks stay, the row says ``failed`` with the error, and
  :class:`CrawlFailed` is raised carrying the :class:`CrawlSummary`.

:func:`run_forever` is the standalone loop (cron job, ``stockex crawl`` without ``--once``):
it runs every configured market at each interval boundary, keeps going after failed runs, and
returns once the stop flag is set — after the chunk in flight is stored.

Modules: ``run`` (one run), ``loop`` (the loop and its signals), ``summary`` (what a run
reports), ``times`` (minutes and local time), ``lock`` (one run per market at a time),
``prune`` (retention of ``crawl_runs``), ``airflow_tasks`` (what the DAGs call).
"""

from __future__ import annotations

from stockex.crawler.airflow_tasks import (
    configured_markets,
    crawl_configured_market,
    delete_old_logs,
    prune_crawl_runs,
    report_task_failure,
)
from stockex.crawler.lock import CrawlInProgress, CrawlLockLost, market_lock
from stockex.crawler.loop import crawl_markets, run_forever, seconds_until_next_run, stop_on_signals
from stockex.crawler.prune import prune_runs
from stockex.crawler.run import crawl_market
from stockex.crawler.summary import ChunkProgress, CrawlFailed, CrawlSummary
from stockex.crawler.times import last_closed_minute, local_iso, parse_time

__all__ = [
    "ChunkProgress",
    "CrawlFailed",
    "CrawlInProgress",
    "CrawlSummary",
    "configured_markets",
    "crawl_configured_market",
    "crawl_market",
    "crawl_markets",
    "delete_old_logs",
    "last_closed_minute",
    "local_iso",
    "CrawlLockLost",
    "market_lock",
    "parse_time",
    "prune_crawl_runs",
    "prune_runs",
    "report_task_failure",
    "run_forever",
    "seconds_until_next_run",
    "stop_on_signals",
]
