"""Benchmark: a one-year backfill (525,600 minutes) from the simulator into MySQL.

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/crawl.py [--minutes N] [--chunk-minutes N]``

What it does, in one run:

1. starts a private MariaDB (``stockex.testing.start_mysql``; ``innodb_flush_log_at_trx_commit=1``
   as configured there), migrates a fresh database;
2. serves ``stockex sim`` in its own process (the upstream is another machine in production)
   with its origin ``--minutes`` before the current minute;
3. **crawl**: ``stockex.crawler.crawl_market`` backfills the whole window — HTTP, parsing and
   validation of every row, one transaction per chunk, run row — and is timed end to end;
4. **baseline**: the same rows (read back from the crawled table) are bulk-inserted with raw
   PyMySQL ``executemany`` (multi-row INSERTs, one transaction per 50,000 rows) into an
   identical empty table, timed for the inserts and commits alone;
5. repeats 1-4 ``--repeat`` times (default 3, a fresh database each time; the machine may be
   shared, so single runs are noisy) and prints JSON: the median candles/s of both, the
   median ratio, every run (with CPU microseconds per candle of this process, of MariaDB and
   of the simulator, which noise affects less than wall time) and the targets
   (>= 20,000 candles/s, ratio >= 0.5).

The crawl table is checked against the simulator's own series afterwards (count and a sample
of values) so a fast-but-wrong crawl cannot pass.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from stockex.config import settings_from_mapping
from stockex.crawler import crawl_market
from stockex.db import Database
from stockex.markets import sync_markets
from stockex.migrate import upgrade
from stockex.testing import (
    end_on_termination_signals,
    free_port,
    process_cpu_seconds,
    start_mysql,
    wait_for_http,
)
from stockex.tiki import TikiClient
from stockex.tiki.simulator import kline_at

YEAR_MINUTES = 525_600
TARGET_RATE = 20_000
TARGET_RATIO = 0.5
BASELINE_BATCH = 50_000
SRC = Path(__file__).resolve().parents[1] / "src"


def start_simulator(origin: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    env = {k: v for k, v in env.items() if not k.startswith("STOCKEX")}
    process = subprocess.Popen(
        [sys.executable, "-m", "stockex.cli", "sim", "--port", str(port), "--origin", str(origin)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    probe = f"{url}/rally/markets/asaxu/klines?period=1&time_from={origin}&time_to={origin}"
    wait_for_http(probe, process, 30, "the simulator")
    return process, url


def baseline_insert(
    db: Database, rows: list[tuple[object, ...]], mysqld_pid: int, batch: int = BASELINE_BATCH
) -> tuple[float, float, float]:
    """(wall, CPU, mysqld CPU) seconds to bulk-insert ``rows`` with raw PyMySQL into an
    empty copy of ``candles``, committing every ``batch`` rows."""
    raw = db.engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("DROP TABLE IF EXISTS candles_baseline")
        cursor.execute("CREATE TABLE candles_baseline LIKE candles")
        raw.commit()
        sql = (
            "INSERT INTO candles_baseline (market_id, time, open, high, low, close, volume, "
            "updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
        )
        mysqld_started = process_cpu_seconds(mysqld_pid)
        started, cpu_started = time.perf_counter(), time.process_time()
        for i in range(0, len(rows), batch):
            cursor.executemany(sql, rows[i : i + batch])
            raw.commit()
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        mysqld_cpu = process_cpu_seconds(mysqld_pid) - mysqld_started
        cursor.execute("SELECT COUNT(*) FROM candles_baseline")
        (count,) = cursor.fetchone()
        assert count == len(rows), (count, len(rows))
        return elapsed, cpu, mysqld_cpu
    finally:
        raw.close()


def verify(db: Database, origin: int, minutes: int) -> None:
    with db.engine.connect() as conn:
        count = conn.exec_driver_sql("SELECT COUNT(*) FROM candles").scalar()
        assert count == minutes, f"crawled {count} rows, expected {minutes}"
        for ts in random.Random(1).sample(range(origin, origin + minutes * 60, 60), 200):
            row = conn.exec_driver_sql(
                "SELECT time, open, high, low, close, volume FROM candles WHERE time = %s", (ts,)
            ).one()
            expected = kline_at("asaxu", ts)
            assert tuple(Decimal(v) for v in row) == tuple(Decimal(v) for v in expected), ts


def crawl_once(server: Any, sim: subprocess.Popen[bytes], url: str, origin: int, until: int,
               args: argparse.Namespace, repetition: int) -> dict[str, Any]:
    """One full backfill into a fresh database, then the baseline on the same rows."""
    name = f"stockex_bench_{repetition}"
    db_url = server.create_database(name)
    settings = settings_from_mapping({
        "database": {"url": db_url},
        "tiki": {"base_url": url},
        "crawler": {"start": datetime.fromtimestamp(origin, UTC).isoformat(),
                    "chunk_minutes": args.chunk_minutes},
    })
    db = Database(db_url)
    try:
        upgrade(db)
        sync_markets(db, settings)
        with TikiClient(url, timeout=30) as client:
            mysqld_started = process_cpu_seconds(server.process.pid)
            sim_started = process_cpu_seconds(sim.pid)
            started, cpu_started = time.perf_counter(), time.process_time()
            if args.profile:
                import cProfile

                profiler = cProfile.Profile()
                summary = profiler.runcall(
                    crawl_market, db, settings, "asaxu", client=client, until=until
                )
                profiler.dump_stats(args.profile)
            else:
                summary = crawl_market(db, settings, "asaxu", client=client, until=until)
            crawl_seconds = time.perf_counter() - started
            crawl_cpu = time.process_time() - cpu_started
            mysqld_cpu = process_cpu_seconds(server.process.pid) - mysqld_started
            sim_cpu = process_cpu_seconds(sim.pid) - sim_started
        assert summary.status == "success" and summary.inserted == args.minutes, summary
        verify(db, origin, args.minutes)
        with db.engine.connect() as conn:
            rows = [tuple(r) for r in conn.exec_driver_sql(
                "SELECT market_id, time, open, high, low, close, volume, updated_at FROM candles"
            )]
        baseline_seconds, baseline_cpu, baseline_mysqld_cpu = baseline_insert(
            db, rows, server.process.pid)
        # The same rows committed chunk by chunk, as the crawl must (one transaction each).
        chunked_seconds, _, _ = baseline_insert(db, rows, server.process.pid, args.chunk_minutes)
    finally:
        db.dispose()
        server.drop_database(name)
    return {
        "crawl_seconds": round(crawl_seconds, 2),
        "crawl_candles_per_s": round(args.minutes / crawl_seconds),
        "crawl_cpu_us_per_candle": round(crawl_cpu / args.minutes * 1e6, 1),
        "crawl_mysqld_cpu_us_per_candle": round(mysqld_cpu / args.minutes * 1e6, 1),
        "crawl_simulator_cpu_us_per_candle": round(sim_cpu / args.minutes * 1e6, 1),
        "requests": summary.requests,
        "baseline_seconds": round(baseline_seconds, 2),
        "baseline_candles_per_s": round(args.minutes / baseline_seconds),
        "baseline_cpu_us_per_candle": round(baseline_cpu / args.minutes * 1e6, 1),
        "baseline_mysqld_cpu_us_per_candle": round(baseline_mysqld_cpu / args.minutes * 1e6, 1),
        "ratio": round(baseline_seconds / crawl_seconds, 3),
        "baseline_same_transactions_candles_per_s": round(args.minutes / chunked_seconds),
        "ratio_same_transactions": round(chunked_seconds / crawl_seconds, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, default=YEAR_MINUTES)
    parser.add_argument("--chunk-minutes", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3,
                        help="crawl + baseline pairs, each on a fresh database (median reported)")
    parser.add_argument("--profile", metavar="FILE", help="cProfile the crawl into FILE")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    now_minute = int(time.time()) // 60 * 60
    origin = now_minute - args.minutes * 60
    until = origin + (args.minutes - 1) * 60
    load_before = os.getloadavg()
    end_on_termination_signals()  # a kill stops the servers too
    server = start_mysql()
    sim, url = start_simulator(origin)
    try:
        runs = [crawl_once(server, sim, url, origin, until, args, i) for i in range(args.repeat)]
    finally:
        sim.terminate()
        sim.wait(10)
        server.close()

    def median(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    crawl_rate, ratio = median("crawl_candles_per_s"), median("ratio")
    print(json.dumps({
        "benchmark": "crawl_backfill_mysql",
        "candles": args.minutes,
        "chunk_minutes": args.chunk_minutes,
        "crawl": "stockex.crawler.crawl_market: HTTP from `stockex sim` (own process), "
                 "validation, one transaction per chunk",
        "baseline": "pymysql executemany multi-row INSERT of the same rows, "
                    f"{BASELINE_BATCH} rows per transaction",
        "crawl_candles_per_s": round(crawl_rate),
        "baseline_candles_per_s": round(median("baseline_candles_per_s")),
        "ratio": round(ratio, 3),
        "baseline_same_transactions": "the same executemany, committing every "
                                      f"{args.chunk_minutes} rows like the crawl",
        "baseline_same_transactions_candles_per_s": round(
            median("baseline_same_transactions_candles_per_s")),
        "ratio_same_transactions": round(median("ratio_same_transactions"), 3),
        "target_candles_per_s": TARGET_RATE,
        "target_ratio": TARGET_RATIO,
        "meets_targets": crawl_rate >= TARGET_RATE and ratio >= TARGET_RATIO,
        "runs": runs,
        "load_average_before": [round(x, 2) for x in load_before],
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }, indent=2))


if __name__ == "__main__":
    main()
