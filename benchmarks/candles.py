"""Candles on one year of minutes in MySQL, over HTTP (gunicorn), side by side in one run.

What it does, all on private servers (``stockex.testing``: MariaDB and Redis):

1. Backfills one year of minutes (525,600) through ``store_minutes`` in 1000-minute chunks,
   one transaction each, so the rollups are built the real way; and, as the baseline, the
   same year into a second database with the minutes-only upsert (no rollups). Reports
   candles/s of both and the ratio (issue 6: with rollups >= 20,000 candles/s).
2. Serves the rollup database with gunicorn and measures four shapes (period 1 limit 1000,
   60/1000, 1440/365, 10080/52; the newest buckets up to the year's end):
   * uncached p50: Redis flushed before every (timed) request;
   * cached p50: the same request repeated;
   * GROUP BY p50: one on-the-fly SQL ``GROUP BY`` over the minute table computing the same
     candles (run directly on the database, no HTTP, which favours the baseline), checked
     equal to the API's answer; and the speedup ``group_by_p50 / uncached_p50``.

Prints one JSON document. Run: ``PYTHONPATH=src python benchmarks/candles.py [--days N]``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import subprocess
import time
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import redis
from sqlalchemy import text
from sqlalchemy.orm import Session

from stockex.buckets import clock_for
from stockex.candles import _ranges, _read_minutes, _write_minutes, store_minutes
from stockex.config import settings_from_mapping
from stockex.db import Database
from stockex.markets import sync_markets
from stockex.migrate import upgrade
from stockex.testing import (
    api_server_command,
    end_on_termination_signals,
    free_port,
    start_mysql,
    start_redis,
    wait_for_api_server,
)
from stockex.tiki import Kline

TIMEZONE = "Asia/Ho_Chi_Minh"
OFFSET = 7 * 3600
MARKET = "asaxu"
CHUNK = 1000
SHAPES = [(1, 1000), (60, 1000), (1440, 365), (10080, 52)]
TARGETS = {  # issue 6: uncached p50 ms, cached p50 ms, minimum speedup vs GROUP BY
    1: (20, 3, None), 60: (20, 3, 5), 1440: (10, 3, 50), 10080: (5, 3, 100),
}
ROOT = Path(__file__).resolve().parent.parent


# -------------------------------------------------------------------------- the data


def year_of_minutes(start: int, minutes: int, seed: int = 7):  # type: ignore[no-untyped-def]
    """Deterministic minutes: a random walk around 25,000 XU, volumes with 3 decimals."""
    rng = random.Random(seed)
    price = 25_000
    batch: list[Kline] = []
    for i in range(minutes):
        o = price
        price = max(100, price + rng.randint(-20, 20))
        high = max(o, price) + rng.randint(0, 10)
        low = min(o, price) - rng.randint(0, 10)
        volume = Decimal(rng.randint(0, 50_000)).scaleb(-3)
        batch.append(Kline(start + 60 * i, Decimal(o), Decimal(high), Decimal(low),
                           Decimal(price), volume))
        if len(batch) == CHUNK:
            yield batch
            batch = []
    if batch:
        yield batch


def minutes_only(session: Session, market_id: str, klines: list[Kline]) -> int:
    """The baseline: what storing cost before rollups (read the range, upsert changes)."""
    clock = clock_for(TIMEZONE)
    stored = _read_minutes(session, market_id, _ranges(clock, {k.ts for k in klines}, 1))
    rows = [
        (k.ts, (k.open, k.high, k.low, k.close, k.volume))
        for k in klines
        if stored.get(k.ts) != (k.open, k.high, k.low, k.close, k.volume)
    ]
    _write_minutes(session, market_id, rows, int(time.time()))
    return len(rows)


def backfill(db: Database, start: int, minutes: int, store) -> dict[str, float]:  # type: ignore[no-untyped-def]
    spent = 0.0
    count = 0
    for chunk in year_of_minutes(start, minutes):
        began = time.perf_counter()
        db.transaction(lambda s, chunk=chunk: store(s, MARKET, chunk))
        spent += time.perf_counter() - began
        count += len(chunk)
    return {"minutes": count, "seconds": round(spent, 2), "candles_per_s": round(count / spent)}


# -------------------------------------------------------------------------- HTTP


def start_gunicorn(db_url: str, redis_url: str, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "STOCKEX__DATABASE__URL": db_url,
        "STOCKEX__REDIS__URL": redis_url,
        "STOCKEX__TIMEZONE": TIMEZONE,
        "STOCKEX__SECRET_KEY": "benchmark-secret-key-long-enough-for-hs256",
    }
    process = subprocess.Popen(api_server_command("gunicorn", port, 2, 1), env=env, cwd=ROOT)
    wait_for_api_server("gunicorn", port, process, 2, 30)
    return process


def http_get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def timed_get(port: int, path: str) -> tuple[float, bytes]:
    began = time.perf_counter()
    status, body = http_get(port, path)
    elapsed = time.perf_counter() - began
    if status != 200:
        raise RuntimeError(f"{path}: HTTP {status}: {body[:300]!r}")
    return elapsed * 1000, body


# -------------------------------------------------------------------------- GROUP BY


def bucket_sql(period: int) -> str:
    size = period * 60
    shift = OFFSET + (3 * 86_400 if period == 10080 else 0)
    return f"time - MOD(time + {shift}, {size})"


def group_by_candles(db: Database, period: int, time_from: int, time_to: int) -> list[tuple]:  # type: ignore[type-arg]
    """One statement over the minute table. First open / last close via MIN/MAX over
    "zero-padded time + value" strings (cheaper than GROUP_CONCAT ... ORDER BY)."""
    sql = text(f"""
        SELECT {bucket_sql(period)} AS bucket,
               SUBSTRING(MIN(CONCAT(LPAD(time, 12, '0'), open)), 13) AS o,
               MAX(high), MIN(low),
               SUBSTRING(MAX(CONCAT(LPAD(time, 12, '0'), close)), 13) AS c,
               SUM(volume)
        FROM candles
        WHERE market_id = :market AND time BETWEEN :lo AND :hi
        GROUP BY bucket ORDER BY bucket
    """)  # noqa: S608 - integers computed here, no user input
    with db.engine.connect() as conn:
        rows = conn.execute(sql, {"market": MARKET, "lo": time_from, "hi": time_to}).all()
    return [(int(b), Decimal(o), Decimal(h), Decimal(lo), Decimal(c), Decimal(v))
            for b, o, h, lo, c, v in rows]


def p50(values: list[float]) -> float:
    return round(statistics.median(values), 2)


def measure_shapes(db: Database, port: int, redis_url: str, year_end: int,
                   samples: int) -> list[dict[str, Any]]:
    flush = redis.Redis.from_url(redis_url)
    results = []
    for period, limit in SHAPES:
        path = (f"/api/v1/markets/{MARKET}/candles?period={period}&limit={limit}"
                f"&time_to={year_end}")
        timed_get(port, path)  # warm both workers' connection pools and code paths
        timed_get(port, path)
        uncached = []
        for _ in range(samples):
            flush.flushdb()
            ms, body = timed_get(port, path)
            uncached.append(ms)
        cached = [timed_get(port, path)[0] for _ in range(samples * 4)]
        candles = json.loads(body)["candles"]
        assert 0 < len(candles) <= limit, (period, len(candles))
        first = candles[0]["time"]
        group_by_ms = []
        for _ in range(max(3, samples // 10)):
            began = time.perf_counter()
            rows = group_by_candles(db, period, first, year_end)
            group_by_ms.append((time.perf_counter() - began) * 1000)
        api_rows = [(c["time"], Decimal(c["open"]), Decimal(c["high"]), Decimal(c["low"]),
                     Decimal(c["close"]), Decimal(c["volume"])) for c in candles]
        assert rows == api_rows, f"GROUP BY and the API disagree for period {period}"
        target_uncached, target_cached, target_speedup = TARGETS[period]
        speedup = p50(group_by_ms) / p50(uncached)
        results.append({
            "period": period,
            "limit": limit,
            "minutes_covered": (year_end - first) // 60 + 1,
            "uncached_p50_ms": p50(uncached),
            "cached_p50_ms": p50(cached),
            "group_by_p50_ms": p50(group_by_ms),
            "speedup_vs_group_by": round(speedup, 1),
            "targets": {"uncached_p50_ms": target_uncached, "cached_p50_ms": target_cached,
                        "min_speedup": target_speedup},
            "meets_targets": p50(uncached) <= target_uncached
            and p50(cached) <= target_cached
            and (target_speedup is None or speedup >= target_speedup),
        })
    flush.close()
    return results


# -------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--samples", type=int, default=50)
    args = parser.parse_args()
    minutes = args.days * 1440
    tz = ZoneInfo(TIMEZONE)
    start = int(datetime(2025, 1, 1, tzinfo=tz).timestamp())
    year_end = start + minutes * 60 - 1

    load_at_start = [round(x, 2) for x in os.getloadavg()]
    end_on_termination_signals()  # a kill stops the servers too
    mysql = start_mysql()
    cache = start_redis()
    gunicorn = None
    try:
        settings = settings_from_mapping({"timezone": TIMEZONE})
        dbs = {}
        for name in ("bench_rollups", "bench_minutes_only"):
            db = Database(mysql.create_database(name))
            upgrade(db)
            sync_markets(db, settings)
            dbs[name] = db
        # the rollup timezone is recorded with the first minutes
        from stockex.candles import rebuild_rollups

        dbs["bench_rollups"].transaction(lambda s: rebuild_rollups(s, MARKET, TIMEZONE))
        baseline = backfill(dbs["bench_minutes_only"], start, minutes, minutes_only)
        with_rollups = backfill(dbs["bench_rollups"], start, minutes, store_minutes)
        with dbs["bench_rollups"].engine.connect() as conn:
            rollup_rows = conn.execute(text("SELECT COUNT(*) FROM candle_rollups")).scalar()

        port = free_port()
        gunicorn = start_gunicorn(dbs["bench_rollups"].url, cache.url, port)
        shapes = measure_shapes(dbs["bench_rollups"], port, cache.url, year_end, args.samples)
        health = [timed_get(port, "/health")[0] for _ in range(args.samples * 4)]
        report = {
            "benchmark": "candles",
            "minutes": minutes,
            "server": "gunicorn, 2 sync workers; MariaDB and Redis on loopback",
            "cpus": os.cpu_count(),
            "load_average_at_start": load_at_start,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "backfill_chunk_minutes": CHUNK,
            "backfill_with_rollups": with_rollups,
            "backfill_minutes_only_baseline": baseline,
            "rollup_overhead_ratio": round(baseline["candles_per_s"]
                                           / with_rollups["candles_per_s"], 2),
            "rollup_rows": rollup_rows,
            "backfill_meets_20000_per_s": with_rollups["candles_per_s"] >= 20_000,
            "http_floor_p50_ms": {"GET /health (no I/O)": p50(health)},
            "shapes": shapes,
        }
        print(json.dumps(report, indent=2))
    finally:
        if gunicorn is not None:
            gunicorn.terminate()
            gunicorn.wait(20)
        cache.close()
        mysql.close()


if __name__ == "__main__":
    main()
