"""The Airflow failure callback in a real Airflow 3 task process (``airflow dags test``).

A one-task DAG that fails, with ``on_failure_callback=stockex.alerts.airflow_task_failed``,
runs against the fake Slack; the message must name the DAG, task and try and hide the
password in the error. (The tiki_candles DAG gets the same callback; see the issue-3 tests.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

AIRFLOW = Path(sys.executable).with_name("airflow")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not AIRFLOW.exists(), reason="apache-airflow is not installed"),
]

DAG = textwrap.dedent(
    """
    from datetime import datetime

    from airflow.sdk import dag, task

    from stockex.alerts import airflow_task_failed


    @dag(dag_id="alert_probe", start_date=datetime(2024, 1, 1), schedule=None, catchup=False,
         default_args={"on_failure_callback": airflow_task_failed, "retries": 0})
    def alert_probe():
        @task
        def crawl():
            raise RuntimeError("upstream 503 while using mysql+pymysql://u:sekrit-pw@db/x")

        crawl()


    alert_probe()
    """
)


def test_a_failing_airflow_task_alerts_slack(tmp_path: Path, fake_slack) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "dags").mkdir()
    (tmp_path / "dags" / "alert_probe.py").write_text(DAG)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STOCKEX", "AIRFLOW"))}
    env.update(
        AIRFLOW_HOME=str(tmp_path / "airflow"),
        AIRFLOW__CORE__DAGS_FOLDER=str(tmp_path / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="false",
        STOCKEX__SECRET_KEY="an-airflow-test-signing-key",
        STOCKEX__SLACK__TOKEN=fake_slack.token,
        STOCKEX__SLACK__BASE_URL=fake_slack.api_base_url,
        STOCKEX__SLACK__CHANNEL="#ops",
    )

    def airflow(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603 - the venv's airflow, fixed arguments
            [str(AIRFLOW), *args], env=env, cwd=tmp_path, capture_output=True, text=True,
            timeout=300, check=False,
        )

    migrated = airflow("db", "migrate")
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    run = airflow("dags", "test", "alert_probe")
    assert run.returncode != 0  # the DAG run failed, as it should
    messages = fake_slack.wait_for(1, timeout=30)
    assert len(messages) == 1, (run.stdout + run.stderr)[-4000:]
    [message] = messages
    text = message.text
    assert "*stockex-airflow*" in text and "*RuntimeError* in airflow alert_probe.crawl" in text
    for line in ("• dag: alert_probe", "• task: crawl", "• try_number: 1", "• run_id: manual__"):
        assert line in text
    assert "mysql+pymysql://u:***@db/x" in text and "sekrit-pw" not in message.raw
