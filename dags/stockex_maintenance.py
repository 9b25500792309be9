"""
### stockex_maintenance — daily retention of what grows without bound

`tiki_candles` writes one `crawl_runs` row per market per minute and Airflow one task log file
per task; nothing else ever deletes either. Once a day, in parallel:

* **`prune_crawl_runs`** deletes the `crawl_runs` rows of finished runs that started more than
  `STOCKEX_CRAWL_RUNS_RETENTION_DAYS` days ago (default 90), in batches of short
  transactions; each market's newest run is kept (as `stockex crawl-runs prune`).
* **`delete_old_task_logs`** deletes the `*.log` files under Airflow's
  `[logging] base_log_folder` last written more than `STOCKEX_AIRFLOW_LOG_RETENTION_DAYS` days
  ago (default 30), and the directories they leave empty. The task runs where tasks run:
  with the LocalExecutor of docker-compose that is the scheduler, which writes every task log.
* **Airflow's metadata database** (dag runs, task instances, xcom, log) is not cleaned here:
  Airflow 3 does not let a task reach it. docker-compose's `airflow-db-clean` service runs
  `airflow db clean` daily instead (as the Helm chart's `databaseCleanup` cron job).

Failures are logged and posted to Slack like `tiki_candles`'s (dag, task, try, error); the
next success posts "resolved".
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

# Read from the environment, not the database, so parsing stays free of I/O.
CRAWL_RUNS_RETENTION_DAYS = int(os.environ.get("STOCKEX_CRAWL_RUNS_RETENTION_DAYS", "90"))
LOG_RETENTION_DAYS = int(os.environ.get("STOCKEX_AIRFLOW_LOG_RETENTION_DAYS", "30"))

# Nothing here touches the database or the disk: the tasks and callbacks import the rest of
# stockex when they run.


@dag(
    dag_id="stockex_maintenance",
    schedule="@daily",
    start_date=datetime(2024, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=2),
    on_failure_callback=report_run_failure,
    on_success_callback=report_run_success,
    tags=["stockex", "maintenance"],
    doc_md=__doc__,
    default_args={
        "owner": "stockex",
        "retries": 1,
        "retry_delay": timedelta(minutes=5),
        "execution_timeout": timedelta(hours=1),
        "on_failure_callback": report_failure,
        "on_retry_callback": report_failure,
        "on_success_callback": report_success,
    },
)
def stockex_maintenance() -> None:
    @task
    def prune_crawl_runs() -> dict[str, Any]:
        """Delete finished `crawl_runs` rows older than the retention (each market's newest
        stays); returns how many went."""
        from stockex.crawler import prune_crawl_runs as prune

        return prune(CRAWL_RUNS_RETENTION_DAYS)

    @task
    def delete_old_task_logs() -> int:
        """Delete Airflow's `*.log` files older than the retention; returns how many went."""
        from airflow.sdk import conf

        from stockex.crawler import delete_old_logs

        return delete_old_logs(conf.get("logging", "base_log_folder"), LOG_RETENTION_DAYS)

    prune_crawl_runs()
    delete_old_task_logs()


stockex_maintenance()
