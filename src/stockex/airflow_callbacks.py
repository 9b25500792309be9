"""The Airflow callbacks of stockex's DAGs (``dags/``), one set for every DAG.

Importing this module imports nothing else: a DAG file's parse stays cheap and free of I/O,
and each callback imports what it needs when Airflow calls it.
"""

from __future__ import annotations

from typing import Any


def report_failure(context: Any) -> None:
    """A task's ``on_failure_callback`` and ``on_retry_callback``: log and post the failed
    try (:func:`stockex.crawler.report_task_failure`)."""
    from stockex.crawler import report_task_failure

    report_task_failure(context)


def report_success(context: Any) -> None:
    """A task's ``on_success_callback``: "resolved" for that task's open incident."""
    from stockex.alerts import airflow_task_succeeded

    airflow_task_succeeded(context)


def report_run_failure(context: Any) -> None:
    """A DAG's ``on_failure_callback``: posts a run stopped by its ``dagrun_timeout``."""
    from stockex.alerts import airflow_dag_run_failed

    airflow_dag_run_failed(context)


def report_run_success(context: Any) -> None:
    """A DAG's ``on_success_callback``: "resolved" after a timed-out run."""
    from stockex.alerts import airflow_dag_run_succeeded

    airflow_dag_run_succeeded(context)
