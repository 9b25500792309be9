"""
### tiki_candles — Tiki-Exchange one-minute k-lines into the stockex database

Every minute, one mapped task per market in `crawler.markets` runs
`stockex.crawler.crawl_market`: it resumes from the newest stored minute (inclusive, so a
minute stored while still open gets its final values), fetches up to the last closed minute in
chunks of `crawler.chunk_minutes`, upserts each chunk in one transaction and records a
`crawl_runs` row (window, rows written, gaps, error; times also in the configured timezone).

* **The window comes from the database, not from the data interval**: a failed or skipped
  run loses nothing, the next one catches up. That is why `catchup` is off and only one run
  is active at a time.
* **Settings** come from the stockex configuration of the worker (`STOCKEX_CONFIG` or
  `STOCKEX__SECTION__KEY` environment variables), e.g. `STOCKEX__DATABASE__URL` and
  `STOCKEX__TIKI__BASE_URL`.
* **XCom** holds only a small summary per market (status, rows written, window in UTC epoch
  and local time, gap count).
* **Failures** retry with exponential backoff (`STOCKEX_DAG_RETRIES`, default 4); each failed
  try is logged and posted to Slack (dag, task, try number, market, window, error) by
  `stockex.crawler.report_task_failure`; the next success posts "resolved". Each try is a
  process of its own: the cooldown between tries and "resolved" need `redis.url`. A failure of
  `configured_markets` (bad settings: every crawl would be `upstream_failed`) is posted too.
  A long first backfill that hits `execution_timeout` simply continues in the next run. A
  run stopped by its `dagrun_timeout` (45 min: Airflow marks its unfinished tasks skipped,
  not failed) is posted by the DAG's own failure callback.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import dag, task

from stockex.airflow_callbacks import (
    report_failure,
    report_run_failure,
    report_run_success,
    report_success,
)

# Retries of a failed crawl (exponential backoff from 15 s up to 5 min). Read from the
# environment, not the database, so parsing stays free of I/O; tests set 0.
CRAWL_RETRIES = int(os.environ.get("STOCKEX_DAG_RETRIES", "4"))

# Nothing here touches the database or the network: the tasks and callbacks import the rest
# of stockex when they run.


@dag(
    dag_id="tiki_candles",
    schedule="* * * * *",
    start_date=datetime(2024, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=45),
    # A run ended by dagrun_timeout has its unfinished tasks marked skipped (no task callback
    # runs): the DAG's own callbacks post it, and "resolved" after the next good run.
    on_failure_callback=report_run_failure,
    on_success_callback=report_run_success,
    tags=["stockex", "tiki", "candles", "crawler"],
    doc_md=__doc__,
    default_args={"owner": "stockex"},
)
def tiki_candles() -> None:
    # on_success_callback: a failure of this task (bad settings) is an incident like a
    # crawl's, so its next success posts "resolved" too.
    @task(retries=1, retry_delay=timedelta(seconds=10), on_failure_callback=report_failure,
          on_retry_callback=report_failure, on_success_callback=report_success)
    def configured_markets() -> list[str]:
        """The markets to crawl: `crawler.markets` of the stockex settings."""
        from stockex.crawler import configured_markets as markets

        return markets()

    @task(
        retries=CRAWL_RETRIES,
        retry_delay=timedelta(seconds=15),
        retry_exponential_backoff=2.0,
        max_retry_delay=timedelta(minutes=5),
        execution_timeout=timedelta(minutes=30),
        # A try that will be retried ends in on_retry_callback, only the last one in
        # on_failure_callback: both report, so Slack hears of the first failed try.
        on_failure_callback=report_failure,
        on_retry_callback=report_failure,
        on_success_callback=report_success,
        # The market names each mapped task in the UI from its start: read from the task's
        # arguments, not from the context during the run, which a try ended by
        # execution_timeout or a kill never got to render (it showed "0").
        map_index_template="{{ task.op_kwargs['market'] }}",
        multiple_outputs=False,
    )
    def crawl_market(market: str) -> dict[str, Any]:
        """One crawl run of `market`; returns the run's small summary."""
        from stockex.crawler import crawl_configured_market

        return crawl_configured_market(market)

    crawl_market.expand(market=configured_markets())


tiki_candles()
