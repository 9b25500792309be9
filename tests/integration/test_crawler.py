"""crawl_market against the simulator on loopback, on MySQL and SQLite.

Issue 3 acceptance lines 1-3 and 5: exact backfill, idempotent second run, resume after a
kill (hard and graceful), the open minute, capped answers, 5xx/429/timeouts, a malformed
row, gaps, and a window across local midnight. Clocks are injected so "now" is fixed; the
expected data is the simulator's own pure series (``kline_at``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from sqlalchemy import func, select
from werkzeug.serving import make_server

from stockex import alerts
from stockex.crawler import (
    CrawlFailed,
    CrawlInProgress,
    crawl_configured_market,
    crawl_market,
    local_iso,
    market_lock,
    prune_crawl_runs,
    prune_runs,
    run_forever,
)
from stockex.crawler import run as crawler_run
from stockex.db import Database
from stockex.errors import NotFound, UnknownMarket
from stockex.markets import sync_markets
from stockex.models import Candle, CrawlRun, Market
from stockex.tiki import TikiClient
from stockex.tiki.simulator import (
    DEFAULT_ORIGIN,
    Simulator,
    SimulatorConfig,
    kline_at,
    provisional_kline_at,
)

ORIGIN = DEFAULT_ORIGIN  # 2024-01-01T00:00:00+07:00
SRC = Path(__file__).resolve().parents[2] / "src"


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def minute(n: int) -> int:
    return ORIGIN + 60 * n


def iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def crawl_settings(make_settings: Any, database: Database, url: str, *, start: int = ORIGIN,
                   chunk_minutes: int = 1000, **crawler: Any) -> Any:
    return make_settings(
        database.url,
        tiki={"base_url": url, "timeout_seconds": 2},
        crawler={"start": iso(start), "chunk_minutes": chunk_minutes, "markets": ["asaxu"],
                 **crawler},
    )


def fast_client(url: str, **options: Any) -> TikiClient:
    """A client whose retries wait milliseconds, not seconds."""
    options.setdefault("timeout", 2.0)
    options.setdefault("backoff_base", 0.01)
    options.setdefault("backoff_max", 0.05)
    return TikiClient(url, **options)


def stored(db: Database, market: str = "asaxu") -> list[tuple[Any, ...]]:
    with db.read() as session:
        return [
            tuple(row)
            for row in session.execute(
                select(Candle.time, Candle.open, Candle.high, Candle.low, Candle.close,
                       Candle.volume).where(Candle.market_id == market).order_by(Candle.time)
            )
        ]


def expected(first: int, last: int, skip: tuple[tuple[int, int], ...] = ()) -> list[tuple]:
    rows = []
    for ts in range(first, last + 1, 60):
        if any(a <= ts <= b for a, b in skip):
            continue
        rows.append(tuple(Decimal(v) if not isinstance(v, Decimal) else v
                          for v in kline_at("asaxu", ts)))
    return rows


def same_values(actual: list[tuple[Any, ...]], wanted: list[tuple[Any, ...]]) -> bool:
    return len(actual) == len(wanted) and all(
        a[0] == w[0] and all(Decimal(x) == Decimal(y) for x, y in zip(a[1:], w[1:], strict=True))
        for a, w in zip(actual, wanted, strict=True)
    )


def run_rows(db: Database) -> list[CrawlRun]:
    with db.read() as session:
        return list(session.scalars(select(CrawlRun).order_by(CrawlRun.id)))


# --------------------------------------------------------------------------- acceptance 1


def test_backfill_is_exact_and_a_second_run_writes_nothing(
    database: Database, make_settings: Any, start_simulator: Any
) -> None:
    now = FakeClock(minute(2500) + 30)  # minute 2500 is open; 0..2499 are closed
    sim, url = start_simulator(clock=now)
    settings = crawl_settings(make_settings, database, url)

    first = crawl_market(database, settings, "asaxu", clock=now)

    assert same_values(stored(database), expected(minute(0), minute(2499)))
    assert (first.status, first.inserted, first.updated) == ("success", 2500, 0)
    assert (first.window_from, first.window_to) == (minute(0), minute(2499))
    assert first.requests == 3  # 1000 + 1000 + 500
    assert first.gap_minutes == 0 and first.gaps == ()

    second = crawl_market(database, settings, "asaxu", clock=now)
    assert (second.status, second.rows_written, second.inserted) == ("success", 0, 0)
    assert second.window_from == minute(2499)  # the newest stored minute, inclusive
    assert len(stored(database)) == 2500

    rows = run_rows(database)
    assert [(r.status, r.rows_written, r.window_from, r.window_to) for r in rows] == [
        ("success", 2500, minute(0), minute(2499)),
        ("success", 0, minute(2499), minute(2499)),
    ]
    assert rows[0].started_at == minute(2500) + 30 and rows[0].finished_at == minute(2500) + 30
    assert rows[0].window_from_local == "2024-01-01T00:00:00+07:00"
    assert rows[0].window_to_local == local_iso(minute(2499), settings.tz)
    assert rows[0].error is None and rows[0].gap_minutes == 0


def test_new_minutes_are_appended_on_the_next_run(
    database: Database, make_settings: Any, start_simulator: Any
) -> None:
    now = FakeClock(minute(300) + 5)
    _, url = start_simulator(clock=now)
    settings = crawl_settings(make_settings, database, url, chunk_minutes=100)
    crawl_market(database, settings, "asaxu", clock=now)
    now.now += 7 * 60
    later = crawl_market(database, settings, "asaxu", clock=now)
    assert (later.window_from, later.window_to, later.inserted) == (minute(299), minute(306), 7)
    assert same_values(stored(database), expected(minute(0), minute(306)))


def _reference_table(tmp_path: Path, sqlite_template: Path, make_settings: Any, url: str,
                     until: int) -> list[tuple[Any, ...]]:
    """What an uninterrupted run stores, in a database of its own."""
    path = tmp_path / "reference.db"
    shutil.copyfile(sqlite_template, path)
    reference = Database(f"sqlite:///{path}")
    try:
        settings = crawl_settings(make_settings, reference, url, chunk_minutes=100)
        sync_markets(reference, settings)
        summary = crawl_market(reference, settings, "asaxu", until=until,
                               client=fast_client(url))
        assert summary.status == "success"
        return stored(reference)
    finally:
        reference.dispose()


def test_a_run_killed_half_way_resumes_to_the_identical_table(
    database: Database, make_settings: Any, start_simulator: Any, tmp_path: Path,
    sqlite_template: Path,
) -> None:
    """SIGKILL a `stockex crawl --once` in the middle of a backfill, then crawl again."""
    _, url = start_simulator(latency=0.05)  # real clock: 2024 is long closed
    until = minute(2999)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKEX")}
    env.update({
        "PYTHONPATH": str(SRC),
        "STOCKEX__DATABASE__URL": database.url,
        "STOCKEX__TIKI__BASE_URL": url,
        "STOCKEX__CRAWLER__START": f"'{iso(ORIGIN)}'",
        "STOCKEX__CRAWLER__CHUNK_MINUTES": "100",
    })
    process = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "stockex.cli", "crawl", "--once", "--until", str(until)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(stored(database)) < 500:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
        if process.stderr:
            process.stderr.close()
    partial = stored(database)
    assert 500 <= len(partial) < 3000, "the kill must land in the middle of the backfill"
    assert len(partial) % 100 == 0, "only whole chunks are ever stored"
    assert same_values(partial, expected(minute(0), minute(len(partial) - 1)))
    assert [r.status for r in run_rows(database)] == ["running"]  # the killed run's row

    settings = crawl_settings(make_settings, database, url, chunk_minutes=100)
    resumed = crawl_market(database, settings, "asaxu", until=until, client=fast_client(url))

    assert resumed.status == "success"
    assert resumed.window_from == minute(len(partial) - 1)  # resumed where it stopped
    killed, last = run_rows(database)  # the killed run's row is closed by the next run
    assert (killed.status, last.status) == ("failed", "success")
    assert "killed" in killed.error and killed.finished_at is None
    assert resumed.inserted == 3000 - len(partial)
    table = stored(database)
    assert same_values(table, expected(minute(0), until))
    reference = _reference_table(tmp_path, sqlite_template, make_settings, url, until)
    assert same_values(table, reference)


def test_a_stopped_run_finishes_its_chunk_and_the_next_run_completes(
    database: Database, make_settings: Any, start_simulator: Any
) -> None:
    now = FakeClock(minute(1000) + 1)
    _, url = start_simulator(clock=now)
    settings = crawl_settings(make_settings, database, url, chunk_minutes=100)
    stop = threading.Event()
    seen: list[int] = []

    def on_chunk(chunk: Any) -> None:
        seen.append(chunk.chunk_to)
        if len(seen) == 3:
            stop.set()  # as SIGTERM would, while chunk 3 is being finished

    result: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: result.update(summary=crawl_market(
        database, settings, "asaxu", clock=now, stop=stop, on_chunk=on_chunk,
        client=fast_client(url))))
    worker.start()
    worker.join(60)
    summary = result["summary"]
    assert (summary.status, summary.covered_to, summary.inserted) == ("stopped", minute(299), 300)
    assert run_rows(database)[0].status == "stopped"
    assert same_values(stored(database), expected(minute(0), minute(299)))

    rest = crawl_market(database, settings, "asaxu", clock=now, client=fast_client(url))
    assert (rest.status, rest.window_from, rest.inserted) == ("success", minute(299), 700)
    assert same_values(stored(database), expected(minute(0), minute(999)))


def test_a_second_run_of_a_market_while_one_runs_does_not_start(
    database: Database, make_settings: Any, start_simulator: Any
) -> None:
    """Two runs of one market at once would each compute rollups (a day's, a week's candle)
    without the other's minutes, and the last commit would win: the second run is refused
    before it writes anything, even its run row; once the first has ended, runs start again."""
    now = FakeClock(minute(1000) + 1)
    _, url = start_simulator(clock=now)
    settings = crawl_settings(make_settings, database, url, chunk_minutes=100)
    other = Database(database.url)  # as another process would connect
    refused: list[BaseException] = []

    def on_chunk(chunk: Any) -> None:
        if not refused:
            with pytest.raises(CrawlInProgress) as caught:
                crawl_market(other, settings, "asaxu", clock=now, until=minute(600),
                             client=fast_client(url))
            refused.append(caught.value)

    try:
        first = crawl_market(database, settings, "asaxu", clock=now, on_chunk=on_chunk,
                             client=fast_client(url))
        assert refused and refused[0].code == "crawl_in_progress"
        assert "asaxu is being crawled by another process" in str(refused[0])
        assert first.status == "success" and [r.id for r in run_rows(database)] == [first.run_id]
        later = crawl_market(other, settings, "asaxu", clock=now, client=fast_client(url))
    finally:
        other.dispose()
    assert later.status == "success" and later.rows_written == 0
    assert same_values(stored(database), expected(minute(0), minute(999)))


@pytest.mark.parametrize("backend", ["mysql"], indirect=True)
def test_a_run_whose_mysql_lock_goes_with_its_connection_stops_before_writing_more(
    database: Database, make_settings: Any, start_simulator: Any
) -> None:
    """The lock lives on one connection; if that connection ends mid-run (a MySQL restart,
    wait_timeout), another run may start, so this one must not write on: it fails before its
    next chunk, and the next run resumes and completes the table."""
    from sqlalchemy import text

    now = FakeClock(minute(1000) + 1)
    _, url = start_simulator(clock=now)
    settings = crawl_settings(make_settings, database, url, chunk_minutes=100)
    killed: list[int] = []

    def on_chunk(chunk: Any) -> None:
        if not killed:
            with database.engine.connect() as admin:
                holder = admin.execute(text(
                    "SELECT IS_USED_LOCK(SHA1(CONCAT('stockex-crawl/', DATABASE(), '/asaxu')))"
                )).scalar()
                admin.execute(text(f"KILL {int(holder)}"))
            killed.append(int(holder))

    with pytest.raises(CrawlFailed) as failure:
        crawl_market(database, settings, "asaxu", clock=now, on_chunk=on_chunk,
                     client=fast_client(url))
    assert killed, "the lock's connection was killed after the first chunk"
    summary = failure.value.summary
    assert summary.status == "failed" and "crawl lock was lost" in (summary.error or "")
    partial = stored(database)
    assert 100 <= len(partial) < 1000 and len(partial) % 100 == 0
    resumed = crawl_market(database, settings, "asaxu", clock=now, client=fast_client(url))
    assert resumed.status == "success"
    assert same_values(stored(database), expected(minute(0), minute(999)))


def test_the_loop_skips_a_market_another_crawler_holds_and_does_not_alert(
    database: Database, make_settings: Any, start_simulator: Any, fake_slack: Any, caplog: Any
) -> None:
    now = FakeClock(minute(300))
    _, url = start_simulator(clock=now)
    settings = make_settings(
        database.url, tiki={"base_url": url, "timeout_seconds": 2},
        crawler={"start": iso(ORIGIN), "markets": ["asaxu"], "interval_seconds": 1},
        slack={"token": fake_slack.token, "base_url": fake_slack.api_base_url,
               "channel": "#ops"},
    )
    other = Database(database.url)
    try:
        with caplog.at_level(logging.INFO, logger="stockex.crawler"):
            with market_lock(other, "asaxu"), loop_running(settings, database, url,
                                                            now) as failures:
                time.sleep(1.5)
            assert failures == [0], "a crawl that waits for another is not a failure"
    finally:
        other.dispose()
    waiting = [r.getMessage() for r in caplog.records if "crawled by another" in r.getMessage()]
    assert waiting and waiting[0].endswith("; trying again next interval"), waiting
    assert run_rows(database) == []
    alerts.flush(5)
    assert fake_slack.messages == []


def test_the_airflow_task_is_skipped_while_another_crawler_holds_the_market(
    database: Database, make_settings: Any, start_simulator: Any
) -> None:
    """Skipped, not failed: no retries, no Slack message, and the next DAG run catches up."""
    exceptions = pytest.importorskip("airflow.sdk.exceptions")
    now = FakeClock(minute(300))
    _, url = start_simulator(clock=now)
    settings = crawl_settings(make_settings, database, url)
    with market_lock(database, "asaxu"), pytest.raises(exceptions.AirflowSkipException) as skip:
        crawl_configured_market("asaxu", settings)
    assert "asaxu is being crawled by another process" in str(skip.value)
    assert run_rows(database) == []


# --------------------------------------------------------------------------- acceptance 2


def test_the_open_minute_is_never_requested(
    database: Database, make_settings: Any, start_simulator: Any
) -> None:
    now = FakeClock(minute(120) + 45)
    _, url = start_simulator(clock=now, serve_open_minute=True)
    settings = crawl_settings(make_settings, database, url)
    summary = crawl_market(database, settings, "asaxu", clock=now)
    assert summary.window_to == minute(119)
    assert stored(database)[-1][0] == minute(119)
    assert same_values(stored(database), expected(minute(0), minute(119)))


def test_a_minute_stored_while_open_ends_with_its_final_values(
    database: Database, make_settings: Any, start_simulator: Any
) -> None:
    """Our clock runs a minute ahead of the exchange's, so minute 120 is fetched while the
    exchange still has it open; the next run re-fetches it (inclusive high-water mark)."""
    exchange_now = FakeClock(minute(120) + 40)
    crawler_now = FakeClock(minute(121) + 1)
    _, url = start_simulator(clock=exchange_now, serve_open_minute=True)
    settings = crawl_settings(make_settings, database, url)

    crawl_market(database, settings, "asaxu", clock=crawler_now)
    provisional = provisional_kline_at("asaxu", minute(120), now=exchange_now.now)
    final = kline_at("asaxu", minute(120))
    assert provisional != final
    assert same_values(stored(database)[-1:], [provisional])

    exchange_now.now = minute(121) + 40  # minute 120 has closed on the exchange too
    crawler_now.now = minute(122) + 1
    again = crawl_market(database, settings, "asaxu", clock=crawler_now)

    assert again.window_from == minute(120)
    assert again.updated >= 1
    table = stored(database)
    assert same_values([r for r in table if r[0] == minute(120)], [final])
    assert same_values(table[:-1], expected(minute(0), minute(120)))


# --------------------------------------------------------------------------- acceptance 3


def test_answers_capped_at_300_rows_still_give_the_exact_data(
    database: Database, make_settings: Any, start_simulator: Any
) -> None:
    now = FakeClock(minute(2600) + 10)
    sim, url = start_simulator(clock=now, max_rows=300)
    settings = crawl_settings(make_settings, database, url, chunk_minutes=1000)
    summary = crawl_market(database, settings, "asaxu", clock=now)
    assert same_values(stored(database), expected(minute(0), minute(2599)))
    assert summary.requests == 10  # 4 + 4 + 2 pages for the chunks of 1000, 1000 and 600
    assert summary.gap_minutes == 0
    assert sim.request_count == summary.requests


class NewestRowsUpstream:
    """A Peatio-style upstream that caps an answer by keeping the NEWEST ``max_rows`` rows of
    the window (Peatio's own cap with ``time_to``, Binance's futures k-lines with both bounds),
    prices written as Ruby floats (``25012.0``); the data is the simulator's."""

    def __init__(self, simulator: Any, max_rows: int) -> None:
        self.simulator = simulator
        self.max_rows = max_rows
        self.windows: list[tuple[int, int]] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        query = parse_qs(environ["QUERY_STRING"])
        time_from, time_to = int(query["time_from"][0]), int(query["time_to"][0])
        self.windows.append((time_from, time_to))
        rows = self.simulator.rows("asaxu", time_from, time_to)[-self.max_rows:]
        body = json.dumps([[t, float(o), float(h), float(lo), float(c), v / 1000]
                           for t, o, h, lo, c, v in rows]).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]


def test_answers_capped_to_their_newest_rows_still_give_the_exact_data(
    database: Database, make_settings: Any
) -> None:
    """An answer that starts after the minute asked for is a gap or a cut-off head: the
    minutes before it are asked for, not skipped for good (the next run starts after them)."""
    now = FakeClock(minute(700) + 10)
    gaps = ((minute(100), minute(149)),)
    upstream = NewestRowsUpstream(Simulator(SimulatorConfig(clock=now, gaps=gaps)), 300)
    server = make_server("127.0.0.1", 0, upstream, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.port}"
        settings = crawl_settings(make_settings, database, url, chunk_minutes=1000)
        summary = crawl_market(database, settings, "asaxu", clock=now)
    finally:
        server.shutdown()
        server.server_close()

    assert summary.status == "success"
    assert same_values(stored(database), expected(minute(0), minute(699), skip=gaps))
    assert summary.gaps == gaps and summary.gap_minutes == 50
    # [0, 699] answers 400..699; [0, 399] answers 50..99 and 150..399; [0, 49] the rest
    assert upstream.windows == [(minute(0), minute(699)), (minute(0), minute(399)),
                                (minute(0), minute(49))]
    assert summary.requests == 3


@pytest.mark.parametrize(
    "faults",
    [
        pytest.param({"error_every": 3}, id="5xx-every-third-request"),
        pytest.param({"rate_limit_every": 2}, id="429-retry-after"),
        pytest.param({"slow_every": 3, "slow_seconds": 0.6}, id="timeouts"),
    ],
)
def test_upstream_faults_still_end_with_the_exact_data(
    database: Database, make_settings: Any, start_simulator: Any, faults: dict[str, Any]
) -> None:
    now = FakeClock(minute(1200) + 10)
    sim, url = start_simulator(clock=now, max_rows=300, **faults)
    settings = crawl_settings(make_settings, database, url, chunk_minutes=500)
    waits: list[float] = []
    client = TikiClient(url, timeout=0.3, backoff_base=0.01, backoff_max=2.0, max_attempts=6,
                        sleep=waits.append)  # record the backoff instead of sleeping it
    summary = crawl_market(database, settings, "asaxu", clock=now, client=client)

    assert summary.status == "success"
    assert same_values(stored(database), expected(minute(0), minute(1199)))
    assert summary.requests == 5  # pages of 300 + 200, 300 + 200, 200 for the three chunks
    assert sim.request_count > summary.requests  # the faults did happen ...
    assert len(waits) == sim.request_count - summary.requests  # ... and each was retried
    if "rate_limit_every" in faults:
        assert waits and all(w == 1.0 for w in waits)  # Retry-After: 1 honoured


def test_a_malformed_row_fails_the_run_and_keeps_earlier_chunks(
    database: Database, make_settings: Any, start_simulator: Any, caplog: Any
) -> None:
    now = FakeClock(minute(500) + 10)
    bad = minute(250)
    _, url = start_simulator(clock=now, malformed_ts=bad)
    settings = crawl_settings(make_settings, database, url, chunk_minutes=100)

    with caplog.at_level(logging.ERROR, logger="stockex.crawler"), pytest.raises(
        CrawlFailed
    ) as failure:
        crawl_market(database, settings, "asaxu", clock=now, client=fast_client(url))

    message = str(failure.value)
    assert "asaxu" in message and f"ts={bad}" in message and "high" in message
    summary = failure.value.summary
    assert (summary.status, summary.covered_to, summary.inserted) == ("failed", minute(199), 200)
    assert same_values(stored(database), expected(minute(0), minute(199)))  # chunk 3: nothing
    row = run_rows(database)[0]
    assert row.status == "failed" and row.rows_written == 200
    assert row.error is not None and f"ts={bad}" in row.error
    assert row.finished_at is not None
    assert any(f"ts={bad}" in r.getMessage() for r in caplog.records)


def test_a_failed_run_names_the_bad_minute_in_the_configured_timezone(
    database: Database, make_settings: Any, start_simulator: Any
) -> None:
    """The run's error (its row, its log line, the CLI's line, Slack) quotes the upstream
    error in the same local time as every other crawl log line, not in UTC."""
    now = FakeClock(minute(500) + 10)
    bad = minute(250)
    _, url = start_simulator(clock=now, malformed_ts=bad)
    settings = crawl_settings(make_settings, database, url, chunk_minutes=100)
    with pytest.raises(CrawlFailed) as failure:
        crawl_market(database, settings, "asaxu", clock=now)  # the client built from settings
    local = local_iso(bad, settings.tz)
    assert local == "2024-01-01T04:10:00+07:00"
    assert f"asaxu ts={bad} ({local}): high " in (failure.value.summary.error or "")
    assert f"({local})" in (run_rows(database)[0].error or "")


def test_a_failed_chunk_write_fails_the_run_and_nothing_after_it_is_written(
    database: Database, make_settings: Any, start_simulator: Any, monkeypatch: Any
) -> None:
    """Chunks are planned while the one before is written: when chunk 3's transaction fails,
    chunk 4 (already planned on top of chunk 3's rows) must not be written."""
    now = FakeClock(minute(600) + 10)
    _, url = start_simulator(clock=now)
    settings = crawl_settings(make_settings, database, url, chunk_minutes=100)
    real_write = crawler_run.write_plan
    calls: list[int] = []

    def failing_third(session: Any, plan: Any, batch: Any = None) -> Any:
        calls.append(plan.minutes[0][0])
        if len(calls) == 3:
            real_write(session, plan, batch)  # written, then the transaction fails
            raise RuntimeError("disk full")
        return real_write(session, plan, batch)

    monkeypatch.setattr(crawler_run, "write_plan", failing_third)
    with pytest.raises(CrawlFailed, match="disk full") as failure:
        crawl_market(database, settings, "asaxu", clock=now, client=fast_client(url))

    summary = failure.value.summary
    assert (summary.status, summary.covered_to, summary.inserted) == ("failed", minute(199), 200)
    assert calls == [minute(0), minute(100), minute(200)]  # chunk 4 was never written
    assert same_values(stored(database), expected(minute(0), minute(199)))
    row = run_rows(database)[0]
    assert (row.status, row.rows_written) == ("failed", 200)

    monkeypatch.setattr(crawler_run, "write_plan", real_write)
    rest = crawl_market(database, settings, "asaxu", clock=now, client=fast_client(url))
    assert (rest.status, rest.window_from) == ("success", minute(199))
    assert same_values(stored(database), expected(minute(0), minute(599)))


def test_gaps_are_skipped_and_reported(
    database: Database, make_settings: Any, start_simulator: Any, caplog: Any
) -> None:
    now = FakeClock(minute(600) + 10)
    gaps = ((minute(50), minute(69)), (minute(250), minute(499)))  # the 2nd spans chunk 300s
    _, url = start_simulator(clock=now, gaps=gaps)
    settings = crawl_settings(make_settings, database, url, chunk_minutes=100)
    with caplog.at_level(logging.WARNING, logger="stockex.crawler"):
        summary = crawl_market(database, settings, "asaxu", clock=now)

    assert same_values(stored(database), expected(minute(0), minute(599), skip=gaps))
    assert summary.gaps == gaps
    assert summary.gap_minutes == 20 + 250
    row = run_rows(database)[0]
    assert json.loads(row.gaps or "[]") == [list(g) for g in gaps]
    assert row.gap_minutes == 270
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert local_iso(minute(250), settings.tz) in logged  # 2024-01-01T04:10:00+07:00
    assert local_iso(minute(499), settings.tz) in logged


# --------------------------------------------------------------------------- acceptance 5


def test_a_window_across_local_midnight_has_utc_epochs_and_local_times(
    database: Database, make_settings: Any, start_simulator: Any, caplog: Any
) -> None:
    start = int(datetime(2024, 7, 1, 16, 50, tzinfo=UTC).timestamp())  # 23:50 +07:00
    midnight_local = int(datetime(2024, 7, 1, 17, 0, tzinfo=UTC).timestamp())
    now = FakeClock(start + 20 * 60 + 30)
    _, url = start_simulator(clock=now)
    settings = crawl_settings(make_settings, database, url, start=start)
    with caplog.at_level(logging.INFO, logger="stockex.crawler"):
        summary = crawl_market(database, settings, "asaxu", clock=now)

    table = stored(database)
    assert [r[0] for r in table] == list(range(1719852600, 1719853800, 60))
    assert same_values(table, expected(start, start + 19 * 60))
    assert midnight_local in [r[0] for r in table]
    assert local_iso(midnight_local, settings.tz) == "2024-07-02T00:00:00+07:00"
    view = summary.as_dict()
    assert view["window_from_local"] == "2024-07-01T23:50:00+07:00"
    assert view["window_to_local"] == "2024-07-02T00:09:00+07:00"
    row = run_rows(database)[0]
    assert (row.window_from, row.window_to) == (1719852600, 1719853740)
    assert (row.window_from_local, row.window_to_local) == (
        "2024-07-01T23:50:00+07:00", "2024-07-02T00:09:00+07:00")
    assert row.started_at_local == "2024-07-02T00:10:30+07:00"
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "2024-07-01T23:50:00+07:00" in logged and "2024-07-02T00:09:00+07:00" in logged


# --------------------------------------------------------------------------- edges


def test_unknown_and_unsynced_markets_are_refused_without_a_run_row(
    database: Database, make_settings: Any, start_simulator: Any
) -> None:
    now = FakeClock(minute(10))
    _, url = start_simulator(clock=now)
    settings = crawl_settings(make_settings, database, url)
    with pytest.raises(UnknownMarket):
        crawl_market(database, settings, "nope", clock=now)

    def drop_btcvnd(session: Any) -> None:
        session.delete(session.get(Market, "btcvnd"))

    database.transaction(drop_btcvnd)
    with pytest.raises(NotFound) as missing:
        crawl_market(database, settings, "btcvnd", clock=now)
    assert missing.value.code == "market_not_synced"
    assert run_rows(database) == []


def test_upstream_down_fails_the_run_with_a_clear_error(
    database: Database, make_settings: Any
) -> None:
    from stockex.testing import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    now = FakeClock(minute(10))
    settings = crawl_settings(make_settings, database, url)
    with pytest.raises(CrawlFailed) as failure:
        crawl_market(database, settings, "asaxu", clock=now,
                     client=fast_client(url, max_attempts=2))
    assert "upstream unavailable after 2 attempt(s)" in str(failure.value)
    assert run_rows(database)[0].status == "failed"
    assert stored(database) == []


def test_a_failed_run_counts_the_requests_it_made(
    database: Database, make_settings: Any, start_simulator: Any, caplog: Any
) -> None:
    """A request that failed (after its retries) or whose page was refused still went out:
    the summary (the CLI's JSON, XCom) and the log line must not say "0 request(s)" beside
    "upstream unavailable after 2 attempt(s)", as if the upstream had never been asked."""
    from stockex.testing import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    now = FakeClock(minute(10))
    settings = crawl_settings(make_settings, database, url)
    with caplog.at_level(logging.ERROR, logger="stockex.crawler"), pytest.raises(
        CrawlFailed
    ) as failure:
        crawl_market(database, settings, "asaxu", clock=now,
                     client=fast_client(url, max_attempts=2))
    assert failure.value.summary.requests == 1
    assert failure.value.summary.as_dict()["requests"] == 1
    assert any("1 request(s)" in r.getMessage() for r in caplog.records)

    # chunks 0-99 and 100-199 stored, 200-299 answered with a bad minute and refused
    bad_now = FakeClock(minute(500) + 10)
    _, sim_url = start_simulator(clock=bad_now, malformed_ts=minute(250))
    settings = crawl_settings(make_settings, database, sim_url, chunk_minutes=100)
    with pytest.raises(CrawlFailed) as failure:
        crawl_market(database, settings, "asaxu", clock=bad_now, client=fast_client(sim_url))
    assert failure.value.summary.requests == 3


def test_a_credential_in_the_upstream_url_is_not_stored_in_the_run_row(
    database: Database, make_settings: Any, start_simulator: Any
) -> None:
    # A proxy's password in tiki.base_url: a rejected request's error names the URL, and
    # crawl_runs.error (what `stockex crawl --once` prints, and XCom) must not show it.
    now = FakeClock(minute(10))
    _, url = start_simulator(clock=now)
    url = url.replace("http://", "http://crawler:pr0xy-s3cret@") + "/no-such-prefix"
    settings = crawl_settings(make_settings, database, url)
    with pytest.raises(CrawlFailed) as failure:
        crawl_market(database, settings, "asaxu", clock=now,
                     client=fast_client(url, max_attempts=1))
    [row] = run_rows(database)
    assert row.status == "failed" and "HTTP 404" in (row.error or "")
    assert "crawler:***@" in row.error
    for text in (row.error, str(failure.value), failure.value.summary.error):
        assert "pr0xy-s3cret" not in text


def test_until_caps_the_window(
    database: Database, make_settings: Any, start_simulator: Any
) -> None:
    now = FakeClock(minute(500))
    _, url = start_simulator(clock=now)
    settings = crawl_settings(make_settings, database, url)
    summary = crawl_market(database, settings, "asaxu", clock=now, until=minute(99) + 59)
    assert (summary.window_to, summary.inserted) == (minute(99), 100)


def test_a_run_with_nothing_to_fetch_says_so(
    database: Database, make_settings: Any, start_simulator: Any, caplog: Any
) -> None:
    now = FakeClock(minute(100) + 10)
    _, url = start_simulator(clock=now)
    settings = crawl_settings(make_settings, database, url)
    crawl_market(database, settings, "asaxu", clock=now)
    with caplog.at_level(logging.INFO, logger="stockex.crawler"):
        summary = crawl_market(database, settings, "asaxu", clock=now, until=minute(50))
    assert (summary.requests, summary.covered_to) == (0, None)  # until is before the data
    ended = [r.getMessage() for r in caplog.records if "row(s) written" in r.getMessage()]
    assert "nothing to fetch (the window is empty: up to date)" in ended[-1]
    assert "None" not in ended[-1]


# --------------------------------------------------------------------------- the loop


@contextlib.contextmanager
def loop_running(settings: Any, db: Database, url: str, clock: Any) -> Iterator[list[int]]:
    """``run_forever`` on a thread, stopped and joined on exit; yields the list its result
    (failed runs) lands in once it has returned."""
    stop = threading.Event()
    failures: list[int] = []
    loop = threading.Thread(target=lambda: failures.append(run_forever(
        settings, db=db, client=fast_client(url), stop=stop, clock=clock)))
    loop.start()
    try:
        yield failures
    finally:
        stop.set()
        loop.join(30)


def test_the_loop_keeps_running_after_a_failed_run_and_stops_on_request(
    database: Database, make_settings: Any, start_simulator: Any
) -> None:
    now = FakeClock(minute(300) + 10)
    sim, url = start_simulator(clock=now, malformed_ts=minute(150))
    settings = crawl_settings(make_settings, database, url, chunk_minutes=100,
                              interval_seconds=1)
    with loop_running(settings, database, url, now) as failures:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "failed" not in [r.status for r in
                                                                run_rows(database)]:
            time.sleep(0.05)
        sim.config.malformed_ts = None  # the upstream repairs its data
        while time.monotonic() < deadline and "success" not in [r.status for r in
                                                                 run_rows(database)]:
            time.sleep(0.05)
    assert failures, "the loop did not return after stop"
    statuses = [r.status for r in run_rows(database)]
    assert statuses[0] == "failed" and "success" in statuses
    assert failures and failures[0] >= 1
    assert same_values(stored(database), expected(minute(0), minute(299)))


def test_the_loop_alerts_when_a_crawl_cannot_even_start(
    make_settings: Any, start_simulator: Any, fake_slack: Any, tmp_path: Path, caplog: Any
) -> None:
    """No run row can be written (here: a database without its tables, as when MySQL is
    down): the loop goes on, and Slack hears of it, not only the log."""
    now = FakeClock(minute(300))
    _, url = start_simulator(clock=now)
    unmigrated = Database(f"sqlite:///{tmp_path / 'empty.db'}")
    settings = make_settings(
        unmigrated.url, tiki={"base_url": url, "timeout_seconds": 2},
        crawler={"start": iso(ORIGIN), "markets": ["asaxu"], "interval_seconds": 1},
        slack={"token": fake_slack.token, "base_url": fake_slack.api_base_url,
               "channel": "#ops", "cooldown_seconds": 300},
    )
    try:
        with (caplog.at_level(logging.INFO, logger="stockex.crawler"),
              loop_running(settings, unmigrated, url, now) as failures):
            texts = [m.text for m in fake_slack.wait_for(1, timeout=20)]
    finally:
        unmigrated.dispose()
    assert failures and failures[0] >= 1, "the loop did not return after stop"
    assert "*stockex-crawler*" in texts[0] and "in crawler asaxu" in texts[0], texts
    assert "no such table" in texts[0]
    # what to do, in Slack and in the log, as `stockex crawl --once` says it; one line a try
    assert "• action: the database schema is not migrated: run `stockex db upgrade`" in texts[0]
    [line, *_] = [r for r in caplog.records if "could not run" in r.getMessage()]
    assert line.getMessage() == (
        "asaxu: crawl could not run: database error: no such table: candles (the database "
        "schema is not migrated: run `stockex db upgrade`); trying again next interval")
    assert line.exc_info is None


def test_the_loop_with_until_ends_by_itself(
    database: Database, make_settings: Any, start_simulator: Any
) -> None:
    now = FakeClock(minute(300))
    _, url = start_simulator(clock=now)
    settings = crawl_settings(make_settings, database, url, chunk_minutes=100)
    failures = run_forever(settings, db=database, client=fast_client(url), clock=now,
                           until=minute(149))
    assert failures == 0
    assert same_values(stored(database), expected(minute(0), minute(149)))
    with database.read() as session:
        assert session.scalar(select(func.count()).select_from(CrawlRun)) == 1


def test_rollups_use_the_crawlers_configured_timezone(
    database: Database, make_settings: Any, start_simulator: Any
) -> None:
    """The crawler hands its own settings' timezone to store_minutes; the process's
    configuration (Asia/Ho_Chi_Minh by default) is not consulted."""
    from stockex.candles import series_timezone

    now = FakeClock(minute(30))
    _, url = start_simulator(clock=now)
    settings = make_settings(
        database.url, timezone="UTC", tiki={"base_url": url, "timeout_seconds": 2},
        crawler={"start": iso(ORIGIN), "markets": ["asaxu"]},
    )
    crawl_market(database, settings, "asaxu", client=fast_client(url), clock=now)
    with database.read() as session:
        assert series_timezone(session, "asaxu") == "UTC"


# --------------------------------------------------------------------------- retention

DAY = 86400


def add_runs(db: Database, market: str, *runs: tuple[int, str]) -> None:
    """crawl_runs rows of ``market``, in this order: (started_at, status)."""
    def work(session: Any) -> None:
        for started_at, status in runs:
            session.add(CrawlRun(market_id=market, started_at=started_at, status=status,
                                 finished_at=None if status == "running" else started_at + 5,
                                 rows_written=1, gap_minutes=0))

    db.transaction(work)


def kept_runs(db: Database) -> list[tuple[str, int, str]]:
    with db.read() as session:
        return [tuple(r) for r in session.execute(  # type: ignore[misc]
            select(CrawlRun.market_id, CrawlRun.started_at, CrawlRun.status)
            .order_by(CrawlRun.id))]


def test_prune_deletes_old_finished_runs_in_batches_and_keeps_each_markets_newest(
    database: Database,
) -> None:
    now = int(time.time())
    old, recent = now - 100 * DAY, now - 10 * DAY
    add_runs(database, "asaxu",
             *((old + 60 * i, "success") for i in range(5)),
             (old + 300, "failed"), (old + 360, "running"),  # a killed run, never closed
             (old + 420, "stopped"), (recent, "success"), (recent + 60, "failed"))
    add_runs(database, "btcvnd", (old, "success"), (old + 60, "failed"))  # crawled no more

    deleted = prune_runs(database, now - 90 * DAY, batch_size=2)

    assert deleted == {"asaxu": 7, "btcvnd": 1}
    assert kept_runs(database) == [
        ("asaxu", old + 360, "running"),
        ("asaxu", recent, "success"), ("asaxu", recent + 60, "failed"),
        ("btcvnd", old + 60, "failed"),  # the newest run of its market, however old
    ]
    assert prune_runs(database, now - 90 * DAY) == {"asaxu": 0, "btcvnd": 0}


def test_the_run_after_a_prune_still_closes_the_row_a_killed_run_left(
    database: Database, make_settings: Any, start_simulator: Any
) -> None:
    """The crawler reads the market's newest row: pruning everything old keeps it."""
    now = FakeClock(minute(30))
    _, url = start_simulator(clock=now)
    add_runs(database, "asaxu", (minute(-100 * 1440), "success"),
             (minute(-100 * 1440) + 60, "running"))
    assert prune_runs(database, int(time.time())) == {"asaxu": 1}
    settings = crawl_settings(make_settings, database, url)
    crawl_market(database, settings, "asaxu", client=fast_client(url), clock=now)
    killed, last = run_rows(database)
    assert (killed.status, last.status) == ("failed", "success")
    assert "killed" in (killed.error or "")


def test_the_maintenance_task_prunes_with_its_retention(
    database: Database, make_settings: Any
) -> None:
    now = int(time.time())
    add_runs(database, "asaxu", (now - 40 * DAY, "success"), (now - 20 * DAY, "success"),
             (now - 60, "success"))
    summary = prune_crawl_runs(30, make_settings(database.url))
    assert summary == {"deleted": 1, "per_market": {"asaxu": 1}}
    assert [r[1] for r in kept_runs(database)] == [now - 20 * DAY, now - 60]
