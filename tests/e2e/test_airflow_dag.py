"""The ``tiki_candles`` Airflow 3 DAG (issue 3, acceptance line 4).

Airflow runs in subprocesses with a temporary AIRFLOW_HOME and a SQLite metadata database,
migrated once per session: first a ``DagBag`` parse (zero import errors, the DAG's settings,
no network at import time), then ``airflow dags test tiki_candles`` loading candles from a
simulator on loopback into a MySQL stockex database.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from sqlalchemy import select

from stockex.db import Database
from stockex.models import Candle, CrawlRun
from stockex.tiki.simulator import kline_at

pytest.importorskip("airflow", reason="the airflow extra is not installed")

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
DAGS = ROOT / "dags"
BIN = Path(sys.executable).parent


def airflow_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("STOCKEX", "AIRFLOW"))}
    env.update({
        "PYTHONPATH": str(SRC),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        **extra,
    })
    return env


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One AIRFLOW_HOME with a migrated SQLite metadata database for every Airflow test."""
    home = tmp_path_factory.mktemp("airflow-home")
    result = subprocess.run(  # noqa: S603
        [str(BIN / "airflow"), "db", "migrate"], env=airflow_env(home), capture_output=True,
        text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    yield home


DAGBAG_PROBE = """
import json, socket, sys

def no_network(*args, **kwargs):
    raise AssertionError("network access while importing the DAG")

socket.socket.connect = no_network
socket.create_connection = no_network

from airflow.dag_processing.dagbag import DagBag

bag = DagBag(dag_folder=sys.argv[1])
dag = bag.dags.get("tiki_candles")
out = {"import_errors": {str(k): str(v) for k, v in bag.import_errors.items()},
       "dag_ids": sorted(bag.dags)}
def callback_names(task, kind="on_failure_callback"):
    callbacks = getattr(task, kind)
    if not isinstance(callbacks, list):
        callbacks = [callbacks] if callbacks else []
    return [getattr(f, "__name__", str(f)) for f in callbacks]


if dag is not None:
    crawl = dag.get_task("crawl_market")
    out.update(
        timetable=str(getattr(dag.timetable, "summary", dag.timetable)),
        catchup=dag.catchup,
        max_active_runs=dag.max_active_runs,
        dagrun_timeout=dag.dagrun_timeout.total_seconds() if dag.dagrun_timeout else None,
        tags=sorted(dag.tags),
        doc_md=dag.doc_md or "",
        tasks=sorted(t.task_id for t in dag.tasks),
        mapped=type(crawl).__name__,
        retries=crawl.retries,
        retry_exponential_backoff=crawl.retry_exponential_backoff,
        execution_timeout=crawl.execution_timeout.total_seconds(),
        on_failure_callback=callback_names(crawl),
        on_retry_callback=callback_names(crawl, "on_retry_callback"),
        upstream=sorted(crawl.upstream_task_ids),
        markets_on_failure_callback=callback_names(dag.get_task("configured_markets")),
        markets_on_retry_callback=callback_names(dag.get_task("configured_markets"),
                                                 "on_retry_callback"),
        on_success_callback=callback_names(crawl, "on_success_callback"),
        markets_on_success_callback=callback_names(dag.get_task("configured_markets"),
                                                   "on_success_callback"),
        dag_on_failure_callback=callback_names(dag),
        dag_on_success_callback=callback_names(dag, "on_success_callback"),
    )
maintenance = bag.dags.get("stockex_maintenance")
if maintenance is not None:
    out["maintenance"] = dict(
        timetable=str(getattr(maintenance.timetable, "summary", maintenance.timetable)),
        catchup=maintenance.catchup,
        doc_md=maintenance.doc_md or "",
        tasks={t.task_id: dict(
            retries=t.retries,
            on_failure_callback=callback_names(t),
            on_retry_callback=callback_names(t, "on_retry_callback"),
            on_success_callback=callback_names(t, "on_success_callback"),
        ) for t in maintenance.tasks},
        dag_on_failure_callback=callback_names(maintenance),
    )
print("PROBE " + json.dumps(out))
"""


def test_dagbag_imports_the_dag_with_zero_errors_and_no_io(airflow_home: Path) -> None:
    # A stockex database and upstream that cannot be reached: importing must not care.
    env = airflow_env(
        airflow_home,
        STOCKEX__DATABASE__URL="mysql+pymysql://nobody:x@127.0.0.1:1/none",
        STOCKEX__TIKI__BASE_URL="http://127.0.0.1:1",
    )
    started = time.monotonic()
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-c", DAGBAG_PROBE, str(DAGS)], env=env, capture_output=True,
        text=True, timeout=180, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("PROBE "))
    probe = json.loads(line[len("PROBE "):])
    assert probe["import_errors"] == {}
    assert probe["dag_ids"] == ["stockex_maintenance", "tiki_candles"]
    assert "* * * * *" in probe["timetable"]
    assert probe["catchup"] is False and probe["max_active_runs"] == 1
    assert probe["dagrun_timeout"] and probe["execution_timeout"] < probe["dagrun_timeout"]
    assert {"stockex", "tiki"} <= set(probe["tags"])
    assert "newest stored minute" in probe["doc_md"]
    assert probe["tasks"] == ["configured_markets", "crawl_market"]
    assert probe["mapped"] == "DecoratedMappedOperator"  # .expand over the markets
    assert probe["upstream"] == ["configured_markets"]
    assert probe["retries"] >= 1 and probe["retry_exponential_backoff"] > 1
    assert probe["on_failure_callback"] == ["report_failure"]
    assert probe["markets_on_failure_callback"] == ["report_failure"]  # bad settings too
    # A try that Airflow retries ends in on_retry_callback, not on_failure_callback
    assert probe["on_retry_callback"] == ["report_failure"]
    assert probe["markets_on_retry_callback"] == ["report_failure"]
    # Both tasks alert, so both say "resolved" when they work again
    assert probe["on_success_callback"] == ["report_success"]
    assert probe["markets_on_success_callback"] == ["report_success"]
    # A run stopped by dagrun_timeout skips its unfinished tasks: the DAG itself tells
    assert probe["dag_on_failure_callback"] == ["report_run_failure"]
    assert probe["dag_on_success_callback"] == ["report_run_success"]
    # The daily retention DAG: both tasks alert like the crawl's, and say "resolved"
    maintenance = probe["maintenance"]
    assert "0 0 * * *" in maintenance["timetable"] and maintenance["catchup"] is False
    assert "airflow db clean" in maintenance["doc_md"]
    assert sorted(maintenance["tasks"]) == ["delete_old_task_logs", "prune_crawl_runs"]
    for settings in maintenance["tasks"].values():
        assert settings == {"retries": 1, "on_failure_callback": ["report_failure"],
                            "on_retry_callback": ["report_failure"],
                            "on_success_callback": ["report_success"]}
    assert maintenance["dag_on_failure_callback"] == ["report_run_failure"]
    assert time.monotonic() - started < 120


def test_airflow_dags_test_loads_candles_into_the_stockex_database(
    airflow_home: Path, mysql_database: Database, start_simulator: Any
) -> None:
    now_minute = int(time.time()) // 60 * 60
    origin = now_minute - 240 * 60
    _, url = start_simulator(origin=origin)  # the real clock: closed minutes up to now
    env = airflow_env(
        airflow_home,
        STOCKEX__DATABASE__URL=mysql_database.url,
        STOCKEX__TIKI__BASE_URL=url,
        STOCKEX__CRAWLER__START=f"'{datetime.fromtimestamp(origin, UTC).isoformat()}'",
        STOCKEX__CRAWLER__CHUNK_MINUTES="100",
        STOCKEX__CRAWLER__MARKETS="[asaxu]",
        STOCKEX__MARKETS=json.dumps([
            {"id": "asaxu", "base": "ASA", "quote": "XU", "maker_fee": "0.001",
             "taker_fee": "0.002"},
            {"id": "btcvnd", "base": "BTC", "quote": "VND", "amount_precision": 6,
             "min_amount": "0.000001"},
        ]),
    )
    result = subprocess.run(  # noqa: S603
        [str(BIN / "airflow"), "dags", "test", "tiki_candles"], env=env, capture_output=True,
        text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]

    with mysql_database.read() as session:
        runs = list(session.scalars(select(CrawlRun)))
        candles = list(session.execute(
            select(Candle.time, Candle.open, Candle.high, Candle.low, Candle.close,
                   Candle.volume).where(Candle.market_id == "asaxu").order_by(Candle.time)))
    assert [(r.market_id, r.status) for r in runs] == [("asaxu", "success")]
    run = runs[0]
    assert run.window_from == origin and run.window_to is not None
    assert run.window_to >= now_minute - 60
    assert [c[0] for c in candles] == list(range(origin, run.window_to + 60, 60))
    for row in candles:
        assert tuple(Decimal(v) for v in row[1:]) == tuple(
            Decimal(v) for v in kline_at("asaxu", row[0])[1:])

    # Only the small summary went through XCom, once per mapped task.
    meta = sqlite3.connect(airflow_home / "airflow.db")
    try:
        xcoms = meta.execute(
            "SELECT task_id, map_index, key, value FROM xcom WHERE task_id = 'crawl_market' "
            "AND run_id = (SELECT MAX(run_id) FROM xcom WHERE task_id = 'crawl_market')"
        ).fetchall()
    finally:
        meta.close()
    assert [(t, m, k) for t, m, k, _ in xcoms] == [("crawl_market", 0, "return_value")]
    summary = json.loads(xcoms[0][3])
    assert summary["status"] == "success" and summary["rows_written"] == len(candles)
    assert summary["window_from_local"].endswith("+07:00")
    assert len(xcoms[0][3]) < 600


def test_the_maintenance_dag_and_the_db_clean_service_delete_what_is_past_retention(
    airflow_home: Path, mysql_database: Database, tmp_path: Path
) -> None:
    """`airflow dags test stockex_maintenance`: crawl_runs rows past the retention go (the
    market's newest stays), and so do task log files past theirs, with the directories they
    leave empty; fresh logs and the folder itself stay. Then Airflow's own records go."""
    now, day = int(time.time()), 86400
    mysql_database.transaction(lambda s: s.add_all(
        CrawlRun(market_id="asaxu", started_at=t, finished_at=t + 5, status="success",
                 rows_written=0, gap_minutes=0)
        for t in (now - 50 * day, now - 40 * day, now - 5 * day)))
    logs = airflow_home / "logs"
    old_log = logs / "dag_id=gone" / "run_id=old" / "task_id=t" / "attempt=1.log"
    fresh_log = logs / "dag_id=kept" / "run_id=new" / "task_id=t" / "attempt=1.log"
    for path in (old_log, fresh_log):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("a task's log\n")
    os.utime(old_log, (now - 31 * day, now - 31 * day))
    env = airflow_env(airflow_home, STOCKEX__DATABASE__URL=mysql_database.url,
                      STOCKEX_CRAWL_RUNS_RETENTION_DAYS="30",
                      STOCKEX_AIRFLOW_LOG_RETENTION_DAYS="30")
    result = subprocess.run(  # noqa: S603
        [str(BIN / "airflow"), "dags", "test", "stockex_maintenance"], env=env,
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    with mysql_database.read() as session:
        kept = list(session.scalars(select(CrawlRun.started_at).order_by(CrawlRun.id)))
    assert kept == [now - 5 * day]
    assert not old_log.exists() and not (logs / "dag_id=gone").exists()
    assert fresh_log.exists() and logs.is_dir()

    # The metadata of that run: docker-compose's airflow-db-clean loop, with this Airflow,
    # accepts its flags and timestamp and deletes what is older than the retention (0 days:
    # every run so far); a fake `sleep` ends the loop after its first pass.
    script = yaml.safe_load((ROOT / "docker-compose.yml").read_text())[
        "services"]["airflow-db-clean"]["command"]
    assert script[:2] == ["bash", "-c"]
    (tmp_path / "sleep").write_text('#!/bin/sh\necho "sleep $*"\nkill -TERM "$PPID"\n')
    (tmp_path / "sleep").chmod(0o755)
    meta = sqlite3.connect(airflow_home / "airflow.db")
    try:
        before = meta.execute("SELECT COUNT(*) FROM task_instance").fetchone()[0]
    finally:
        meta.close()
    env = airflow_env(airflow_home, AIRFLOW_DB_RETENTION_DAYS="0",
                      PATH=f"{tmp_path}:{BIN}:{os.environ['PATH']}")
    result = subprocess.run(  # noqa: S603
        ["bash", "-c", script[2].replace("$$", "$")], env=env,  # noqa: S607
        capture_output=True, text=True, timeout=300, check=False,
    )
    output = result.stdout + result.stderr
    assert "sleep 86400" in result.stdout, output[-4000:]
    assert "airflow db clean failed" not in result.stderr, output[-4000:]
    meta = sqlite3.connect(airflow_home / "airflow.db")
    try:
        after = meta.execute("SELECT COUNT(*) FROM task_instance").fetchone()[0]
    finally:
        meta.close()
    assert before > 0 and after == 0, (before, after, output[-4000:])


def failing_upstream_env(airflow_home: Path, database: Database, start_simulator: Any,
                         fake_slack: Any, **extra: str) -> tuple[dict[str, str], int]:
    """Airflow's environment for a run against a simulator answering 503 to everything,
    crawling asaxu from 30 minutes ago (returned too) into ``database``, alerting
    ``fake_slack``."""
    crawl_from = int(time.time()) // 60 * 60 - 30 * 60
    _, url = start_simulator(origin=crawl_from, error_rate=1.0)
    return airflow_env(
        airflow_home,
        STOCKEX__DATABASE__URL=database.url,
        STOCKEX__TIKI__BASE_URL=url,
        STOCKEX__CRAWLER__START=f"'{datetime.fromtimestamp(crawl_from, UTC).isoformat()}'",
        STOCKEX__CRAWLER__MARKETS="[asaxu]",
        STOCKEX__SLACK__TOKEN=fake_slack.token,
        STOCKEX__SLACK__BASE_URL=fake_slack.api_base_url,
        **extra,
    ), crawl_from


def test_the_first_failed_try_alerts_slack_not_only_the_last(
    airflow_home: Path, mysql_database: Database, start_simulator: Any, fake_slack: Any
) -> None:
    """With retries, Slack hears of try 1 when it fails (on_retry_callback), not minutes
    later when the retries are used up; try 2 falls in the cooldown."""
    env, _ = failing_upstream_env(airflow_home, mysql_database, start_simulator, fake_slack,
                                  STOCKEX_DAG_RETRIES="1", STOCKEX__TIKI__TIMEOUT_SECONDS="1")
    result = subprocess.run(  # noqa: S603
        [str(BIN / "airflow"), "dags", "test", "tiki_candles"], env=env, capture_output=True,
        text=True, timeout=300, check=False,
    )
    assert result.returncode != 0
    texts = [m.text for m in fake_slack.wait_for(1, timeout=30)]
    assert texts and "• try_number: 1" in texts[0], (texts, (result.stdout + result.stderr)[-4000:])
    assert "failed on try 1 for market asaxu" in result.stdout + result.stderr
    with mysql_database.read() as session:
        assert [r.status for r in session.scalars(select(CrawlRun))] == ["failed", "failed"]


def test_a_failing_upstream_fails_the_task_and_alerts_slack(
    airflow_home: Path, mysql_database: Database, start_simulator: Any, fake_slack: Any
) -> None:
    """`airflow dags test tiki_candles` against an upstream answering 503 to everything: the
    task fails and its failure callback posts ONE message to Slack with dag/task/try and the
    run's market and window (the crawler does not alert on its own as well); no message
    carries the database password."""
    env, crawl_from = failing_upstream_env(
        airflow_home, mysql_database, start_simulator, fake_slack,
        STOCKEX_DAG_RETRIES="0",
        STOCKEX__TIKI__TIMEOUT_SECONDS="2",
        STOCKEX__MARKETS=json.dumps([
            {"id": "asaxu", "base": "ASA", "quote": "XU"},
            {"id": "btcvnd", "base": "BTC", "quote": "VND", "amount_precision": 6,
             "min_amount": "0.000001"},
        ]),
        STOCKEX__SECRET_KEY="an-airflow-test-signing-key",
        STOCKEX__SLACK__CHANNEL="'#ops'",
    )
    result = subprocess.run(  # noqa: S603
        [str(BIN / "airflow"), "dags", "test", "tiki_candles"], env=env, capture_output=True,
        text=True, timeout=300, check=False,
    )
    assert result.returncode != 0  # the DAG run failed, as it should
    fake_slack.wait_for(1, timeout=30)
    messages = fake_slack.messages  # the callback waited for delivery before the task ended
    texts = [m.text for m in messages]
    assert len(texts) == 1, (texts, (result.stdout + result.stderr)[-4000:])
    [alert] = texts
    assert "airflow tiki_candles.crawl_market" in alert
    for line in ("• dag: tiki_candles", "• task: crawl_market", "• try_number: 1",
                 "• market: asaxu", "• crawl_run_id: "):
        assert line in alert, alert
    assert "UpstreamUnavailable" in alert or "503" in alert
    start = datetime.fromtimestamp(crawl_from, UTC).astimezone(ZoneInfo(
        "Asia/Ho_Chi_Minh")).isoformat()
    assert f"• window: {start} .. " in alert, alert
    credentials = mysql_database.url.split("//", 1)[1].split("@", 1)[0]  # user:password
    assert all(credentials not in m.raw for m in messages)
    with mysql_database.read() as session:
        runs = list(session.scalars(select(CrawlRun)))
    assert [(r.market_id, r.status) for r in runs] == [("asaxu", "failed")]


def test_a_running_crawl_is_named_by_its_market_in_the_ui(
    airflow_home: Path, mysql_database: Database, start_simulator: Any
) -> None:
    """The map index shows the market from the task's start, not only once it returned or
    raised an Exception: a try ended by execution_timeout or a kill (BaseExceptions) never
    rendered it, and the grid showed "0" for it, as for every crawl while it ran."""
    crawl_from = int(time.time()) // 60 * 60 - 30 * 60
    simulator, url = start_simulator(origin=crawl_from, latency=4.0)  # each request: 4 s
    env = airflow_env(
        airflow_home,
        STOCKEX__DATABASE__URL=mysql_database.url,
        STOCKEX__TIKI__BASE_URL=url,
        STOCKEX__CRAWLER__START=f"'{datetime.fromtimestamp(crawl_from, UTC).isoformat()}'",
        STOCKEX__CRAWLER__MARKETS="[asaxu]",
    )
    started = time.time()
    process = subprocess.Popen(  # noqa: S603
        [str(BIN / "airflow"), "dags", "test", "tiki_candles"], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    seen: set[Any] = set()
    try:
        while process.poll() is None and time.time() - started < 240:
            if simulator.request_count == 0:  # the crawl has not begun fetching yet
                time.sleep(0.2)
                continue
            meta = sqlite3.connect(airflow_home / "airflow.db", timeout=1)
            try:
                seen.update(meta.execute(
                    "SELECT rendered_map_index FROM task_instance WHERE task_id = "
                    "'crawl_market' AND state = 'running' AND start_date >= ?",
                    (datetime.fromtimestamp(started, UTC).strftime("%Y-%m-%d %H:%M:%S"),),
                ).fetchall())
            except sqlite3.OperationalError:  # locked by Airflow for a moment
                pass
            finally:
                meta.close()
            time.sleep(0.2)
        output, _ = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output[-4000:]
    assert seen == {("asaxu",)}, seen
