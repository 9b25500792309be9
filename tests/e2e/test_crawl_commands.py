"""`stockex crawl`, `stockex sim` and `cron_jobs/crawl.py` as an operator runs them.

Real processes against a simulator on loopback and a database of each backend: exit codes,
one-line errors, JSON summaries, the terminal progress bar, and SIGTERM finishing the chunk in
flight before exiting (0 for the loop, 1 for an unfinished `--once`).
"""

from __future__ import annotations

import json
import os
import pty
import select as select_module
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from stockex.db import Database
from stockex.models import Candle, CrawlRun
from stockex.testing import free_port, signal_when
from stockex.tiki.simulator import DEFAULT_ORIGIN, kline_at

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
STOCKEX = [sys.executable, "-m", "stockex.cli"]
ORIGIN = DEFAULT_ORIGIN


def minute(n: int) -> int:
    return ORIGIN + 60 * n


def crawl_env(database: Database, url: str, chunk_minutes: int = 100) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKEX")}
    env.update({
        "PYTHONPATH": str(SRC),
        "STOCKEX__DATABASE__URL": database.url,
        "STOCKEX__TIKI__BASE_URL": url,
        "STOCKEX__TIKI__TIMEOUT_SECONDS": "5",
        "STOCKEX__CRAWLER__START": f"'{datetime.fromtimestamp(ORIGIN, UTC).isoformat()}'",
        "STOCKEX__CRAWLER__CHUNK_MINUTES": str(chunk_minutes),
        "STOCKEX__CRAWLER__INTERVAL_SECONDS": "1",
    })
    return env


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(STOCKEX + args, env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def candle_times(db: Database) -> list[int]:
    with db.read() as session:
        return list(session.scalars(select(Candle.time).order_by(Candle.time)))


def run_statuses(db: Database) -> list[str]:
    with db.read() as session:
        return list(session.scalars(select(CrawlRun.status).order_by(CrawlRun.id)))


def test_crawl_once_exits_0_and_prints_a_summary_with_local_times(
    database: Database, start_simulator: Any
) -> None:
    _, url = start_simulator()
    result = run(["crawl", "--once", "--until", "2024-01-01T04:59:00"], crawl_env(database, url))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["status"] == "success" and summary["inserted"] == 300
    assert summary["window_from_local"] == "2024-01-01T00:00:00+07:00"
    assert summary["window_to_local"] == "2024-01-01T04:59:00+07:00"  # --until read as +07:00
    assert candle_times(database) == list(range(minute(0), minute(300), 60))
    # not a terminal: plain log lines, one per chunk, with local times
    assert result.stderr.count("minute(s) fetched") == 3
    assert "2024-01-01T01:40:00+07:00 .. 2024-01-01T03:19:00+07:00" in result.stderr

    again = run(["crawl", "--once", "--until", "2024-01-01T04:59:00"], crawl_env(database, url))
    assert again.returncode == 0
    assert json.loads(again.stdout.strip().splitlines()[-1])["rows_written"] == 0


def test_crawl_once_exits_non_zero_with_one_line_on_failure(
    database: Database, start_simulator: Any
) -> None:
    _, url = start_simulator(malformed_ts=minute(150))
    result = run(["crawl", "--once", "--until", str(minute(299))], crawl_env(database, url))
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("stockex: asaxu ts=") and "high" in last  # the market once
    assert "Traceback" not in result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["status"] == "failed"
    assert candle_times(database) == list(range(minute(0), minute(100), 60))


def test_crawl_refuses_an_unknown_market_and_a_bad_until(
    database: Database, start_simulator: Any
) -> None:
    _, url = start_simulator()
    env = crawl_env(database, url)
    unknown = run(["crawl", "--once", "--market", "nope"], env)
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "stockex: unknown_market: unknown market 'nope'"
    bad = run(["crawl", "--once", "--until", "yesterday"], env)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        "stockex: invalid_time: not a time: 'yesterday' (use epoch seconds or ISO-8601)"]
    assert run_statuses(database) == []
    for args in (["crawl", "--once"], ["crawl"]):  # an empty list: the loop idled for ever
        nothing = run(args, {**env, "STOCKEX__CRAWLER__MARKETS": ""})
        assert nothing.returncode == 2
        assert nothing.stderr.strip() == ("stockex: config: crawler.markets: empty: nothing to "
                                          "crawl (list a market in it, or pass --market M)")



def test_crawl_runs_prune_deletes_old_runs_and_says_how_many(database: Database) -> None:
    """Finished runs older than N days go, in batches; each market's newest run stays."""
    now, day = int(time.time()), 86400
    old = [("asaxu", now - 100 * day), ("asaxu", now - 95 * day), ("asaxu", now - day),
           ("btcvnd", now - 100 * day)]  # btcvnd's only run: its newest
    database.transaction(lambda s: s.add_all(
        CrawlRun(market_id=m, started_at=t, finished_at=t + 5, status="success",
                 rows_written=0, gap_minutes=0) for m, t in old))
    env = crawl_env(database, "http://127.0.0.1:1")  # no upstream needed
    result = run(["crawl-runs", "prune", "--older-than-days", "90", "--batch-size", "1"], env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[:2] == ["asaxu: 2 run row(s) deleted", "btcvnd: 0 run row(s) deleted"]
    assert lines[2].startswith("deleted 2 crawl_runs row(s) started before 20")
    assert lines[2].endswith("+07:00")
    with database.read() as session:
        kept = list(session.execute(select(CrawlRun.market_id, CrawlRun.started_at)
                                    .order_by(CrawlRun.id)))
    assert [tuple(r) for r in kept] == [("asaxu", now - day), ("btcvnd", now - 100 * day)]

    bad = run(["crawl-runs", "prune", "--older-than-days", "-1"], env)
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1 and "--older-than-days" in bad.stderr

def test_crawl_draws_a_progress_bar_on_a_terminal(
    database: Database, start_simulator: Any
) -> None:
    _, url = start_simulator()
    leader, follower = pty.openpty()
    process = subprocess.Popen(  # noqa: S603
        STOCKEX + ["crawl", "--once", "--until", str(minute(999))],
        env=crawl_env(database, url), stdout=subprocess.PIPE, stderr=follower,
    )
    os.close(follower)
    output = b""
    while True:
        ready, _, _ = select_module.select([leader], [], [], 30)
        if not ready:
            break
        try:
            data = os.read(leader, 4096)
        except OSError:  # the terminal closed: the process ended
            break
        if not data:
            break
        output += data
    assert process.wait(60) == 0
    if process.stdout:
        process.stdout.close()
    os.close(leader)
    text = output.decode(errors="replace")
    assert "asaxu" in text and "100%" in text
    assert "minute(s) fetched" not in text  # the bar replaces the per-chunk lines


def test_cron_loop_finishes_the_chunk_on_sigterm_and_exits_0(
    database: Database, start_simulator: Any
) -> None:
    _, url = start_simulator(latency=0.05)
    process = subprocess.Popen(  # noqa: S603
        [sys.executable, str(ROOT / "cron_jobs" / "crawl.py")],
        env=crawl_env(database, url), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    _, stderr = signal_when(process, lambda: len(candle_times(database)) >= 300, signal.SIGTERM)
    assert process.returncode == 0, stderr
    assert "SIGTERM received" in stderr
    times = candle_times(database)
    assert len(times) % 100 == 0, "the chunk in flight was finished, not cut"
    assert times == list(range(minute(0), minute(len(times)), 60))
    assert run_statuses(database) == ["stopped"]
    sample = kline_at("asaxu", times[-1])
    with database.read() as session:
        row = session.get(Candle, ("asaxu", times[-1]))
        assert row is not None and (row.open, row.close) == (sample[1], sample[4])


def test_crawl_once_stopped_by_sigterm_finishes_the_chunk_and_exits_1(
    database: Database, start_simulator: Any
) -> None:
    """`stockex crawl --once` cut short did not catch up: before, it exited 0 like a full
    pass, so `stockex crawl --once && next-step` went on (and a shell script's Ctrl-C too)."""
    _, url = start_simulator(latency=0.05)
    process = subprocess.Popen(  # noqa: S603
        STOCKEX + ["crawl", "--once", "--until", str(minute(99_999))],
        env=crawl_env(database, url), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    stdout, stderr = signal_when(process, lambda: len(candle_times(database)) >= 200,
                                 signal.SIGTERM)
    assert process.returncode == 1, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        "stockex: stopped by a signal before catching up: asaxu (run again to resume)")
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["status"] == "stopped"
    assert len(candle_times(database)) % 100 == 0, "the chunk in flight was finished, not cut"
    assert run_statuses(database) == ["stopped"]


def test_crawl_once_crawls_the_other_markets_when_one_is_being_crawled(
    database: Database, start_simulator: Any
) -> None:
    """A market another crawler holds (the DAG's task, the loop) fails that market, not the
    pass: before, `crawl --once` stopped at it, leaving the markets after it uncrawled and the
    summaries of those before it unprinted."""
    from stockex.crawler import market_lock

    _, url = start_simulator(markets=("asaxu", "btcvnd"))
    env = {**crawl_env(database, url), "STOCKEX__MARKETS": (
        "[{id: asaxu, base: ASA, quote: XU, price_precision: 0, amount_precision: 3, "
        "min_amount: '0.001'}, {id: btcvnd, base: BTC, quote: VND, price_precision: 0, "
        "amount_precision: 6, min_amount: '0.000001'}]")}
    other = Database(database.url)  # as the other crawler's process would connect
    try:
        with market_lock(other, "asaxu"):
            result = run(["crawl", "--once", "--market", "asaxu", "--market", "btcvnd",
                          "--until", str(minute(99))], env)
    finally:
        other.dispose()
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "stockex: crawl_in_progress: asaxu is being crawled by another process (stockex crawl "
        "or the tiki_candles DAG) right now; this run did not start")
    summaries = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [(s["market"], s["status"], s["inserted"]) for s in summaries] == [
        ("btcvnd", "success", 100)]
    assert run_statuses(database) == ["success"]


def test_sim_serves_klines_and_refuses_bad_switches(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKEX")}
    env["PYTHONPATH"] = str(SRC)
    port = free_port()
    process = subprocess.Popen(  # noqa: S603
        STOCKEX + ["sim", "--port", str(port), "--origin", "2024-03-01T00:00:00",
                   "--max-rows", "5"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )
    origin = int(datetime(2024, 2, 29, 17, 0, tzinfo=UTC).timestamp())  # 00:00 +07:00
    try:
        assert process.stderr is not None
        assert "stockex sim listening on" in process.stderr.readline()
        query = f"period=1&time_from={origin - 600}&time_to={origin + 3600}"
        url = f"http://127.0.0.1:{port}/rally/markets/asaxu/klines?{query}"
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
            rows = json.loads(response.read())
    finally:
        process.terminate()
        process.wait(10)
        if process.stderr:
            process.stderr.close()
    assert [r[0] for r in rows] == [origin + 60 * i for i in range(5)]
    assert rows[0][4] == kline_at("asaxu", origin)[4]

    bad = subprocess.run(STOCKEX + ["sim", "--origin", "30"], env=env, capture_output=True,
                         text=True, timeout=60, check=False, cwd=tmp_path)
    assert bad.returncode == 1
    assert bad.stderr.strip() == "stockex: sim: --origin 30 is not a multiple of 60"
