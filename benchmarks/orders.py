"""Order placement throughput and latency through HTTP, beside a raw-commit baseline.

Starts a private MariaDB (``innodb_flush_log_at_trx_commit=1``: every commit is durable),
serves ``stockex.api:create_app()`` with gunicorn and then with granian, and lets N
concurrent HTTP clients (16 by default) place crossing limit orders on one market for a
while under each (every order trades with what rests on the other side; the book stays
shallow). Then, in the same run, the baseline: N threads doing with PyMySQL directly what a
matched order minimally needs — one transaction that locks one row, updates four balance
rows, inserts a trade row and commits.

Prints one JSON document: per server orders/s, p50/p99 latency and where the CPU went; the
baseline's transactions/s, each server's ratio to it, and whether ``reconcile`` still holds
afterwards.

    PYTHONPATH=src python benchmarks/orders.py [--server both|gunicorn|granian]
        [--clients 16] [--seconds 20] [--workers 5] [--threads 1]
        [--worker-class sync|gthread] [--granian-workers 3] [--granian-threads 1] [--redis]

**The two servers.** gunicorn (5 sync workers) is the contract's production server. A sync
worker serves one request per connection: every order pays a TCP connect, gunicorn's HTTP
parsing in Python and a graceful close, in the API's CPU and the clients'. granian (the
``granian`` extra; HTTP in Rust) keeps connections alive and takes 15-30 % less API CPU per
order; 3 single-threaded workers by default. Six 20 s runs of this script on the 2-vCPU box
(2026-11-22), gunicorn then granian in each: gunicorn 430.6, 456.7, 491.0, 465.4, 462.6,
523.6 orders/s (p99 40-55 ms); granian 456.2, 549.1, 574.3, 493.0, 568.1, 556.5 (p99 45-66
ms), beside baselines of 1,142, 1,279, 1,266, 1,058, 1,253 and 1,261 transactions/s: granian
reaches 500 when the shared host is quiet (baseline above ~1,200) and falls short when it is
not (granian's ratio to the baseline: 0.40-0.47; gunicorn's 0.36-0.44). Two granian-only runs of
3 workers the same hour: 572.9 and 578.7; of 2 workers: 472.2 and 616.9 (16 connections
hashed over two workers split unevenly); of 4 workers, 476.5, 427.1 and 507.0.

**Wait for every granian worker.** Each granian worker listens on a socket of its own
(``SO_REUSEPORT``) and the kernel spreads new connections over the sockets listening at that
moment, by a hash of the client's address and port. ``/health`` answers as soon as the first
worker is up, while the others are still importing the app; clients that connect then all
land on the first one or two workers and stay there (a kept-alive connection does not move).
Earlier versions of this script started the load at that moment, and granian's figures were
bimodal (281-547 orders/s with 8 workers, the slow runs with the machine half idle).
:func:`stockex.testing.wait_for_api_server` now waits until all workers listen (counted in
``/proc/net/tcp``); in production the same holds for clients that connect while the API
starts.

The clients are a minimal HTTP/1.1 client on raw sockets (:class:`MinimalHTTPClient`), so
that the load generator takes as little as possible of the CPUs it shares with gunicorn and
MariaDB (``http.client`` cost 0.35-0.4 ms per order, this one 0.18-0.23).

On the 2-vCPU development box 5 sync workers do best now that a placement costs less CPU (20
s runs on a quiet machine: 4 workers 400-500 orders/s, 5 workers 465-482, 6 workers 422-439;
every process more adds context switches and cache misses on two cores, every one fewer
leaves cores idle while a worker waits for MariaDB). gthread workers lose to the GIL; with
one thread per gthread worker keep-alive saves the clients' reconnects but ties each client
to one worker, and throughput fell. gevent workers (2 or 3, keep-alive; gevent is not a
dependency, it was installed by hand to try) were within the noise of 5 sync workers in
interleaved 10 s runs (347-462 against 390-456 orders/s). ``cpu_ms_per_order`` shows where
the CPU goes: API processes, MariaDB, and this script's clients;
``baseline_raw_commit.cpu_ms_per_tx`` the same for a raw transaction;
``machine_cpu_percent`` whether the load was limited by the two CPUs (``busy`` near 100:
throughput is then the CPUs over the CPU time of an order) or by waiting (idle CPUs while
the market's lock, round trips and fsyncs hold orders up; ``steal`` is CPU the hypervisor
gave to other guests); and ``machine_load_average`` how busy the machine was (other
sessions share it), which moves every figure, the baseline's too. Under the 2-CPU load a
granian's processes spend 1.75-2.4 ms of CPU per order; one process calling the WSGI app
directly, one order at a time, spent 2.0-3.1 ms per order in the same hour (this host's
speed varies by a fifth from one minute to the next).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from stockex import auth
from stockex.config import settings_from_mapping
from stockex.db import Database
from stockex.markets import sync_markets
from stockex.migrate import upgrade
from stockex.testing import (
    MySQLServer,
    api_server_command,
    free_port,
    machine_cpu_shares,
    machine_cpu_ticks,
    process_cpu_seconds,
    start_mysql,
    start_redis,
    wait_for_api_server,
)
from stockex.trading import accounts
from stockex.trading.reconcile import reconcile

# gunicorn is the production server of the contract; granian (the ``granian`` extra) the
# faster alternative, see the module docstring.
SERVERS = ("gunicorn", "granian")
MARKET = {
    "id": "asaxu", "base": "ASA", "quote": "XU", "price_precision": 0, "amount_precision": 3,
    "min_amount": "0.001", "maker_fee": "0.001", "taker_fee": "0.002",
}
SECRET = "benchmark-secret-key-0123456789abcdef0123456789"  # noqa: S105 - a throwaway server


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def summary(latencies: list[float], elapsed: float) -> dict[str, float]:
    return {
        "count": len(latencies),
        "per_second": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2) if latencies else 0.0,
    }


# --------------------------------------------------------------------------- stockex via HTTP


def prepare(server: MySQLServer, clients: int, workdir: Path,
            redis_url: str = "") -> tuple[dict, list[str], Database]:
    url = server.create_database("stockex_bench")
    # The per-user order limit (api.order_rate_limit) is switched off: this measures the
    # engine's throughput, and each client would otherwise be held to that limit.
    raw = {"secret_key": SECRET, "database": {"url": url}, "markets": [MARKET],
           "redis": {"url": redis_url}, "api": {"order_rate_limit": ""}}
    settings = settings_from_mapping(raw)
    db = Database(url)
    upgrade(db)
    sync_markets(db, settings)
    tokens = []
    for i in range(clients):
        user = auth.create_user(db, settings, f"trader{i:02d}", "bench-password")
        accounts.deposit(db, settings, user.username, "ASA", "1000000")
        accounts.deposit(db, settings, user.username, "XU", "1000000000")
        tokens.append(auth.issue_token(settings, user.id, user.role))
    config = workdir / "config.yaml"
    config.write_text(json.dumps(raw))  # JSON is YAML
    return {"config": config, "settings": settings}, tokens, db


def serve(server: str, config: Path, workers: int, threads: int,
          worker_class: str = "") -> tuple[subprocess.Popen[bytes], int]:
    """Start ``server`` (gunicorn or granian) on a free port with the stockex app; either
    way the app logs its line per request to stderr (stockex's own logging)."""
    port = free_port()
    env = {**os.environ, "STOCKEX_CONFIG": str(config)}
    process = subprocess.Popen(  # noqa: S603
        api_server_command(server, port, workers, threads, worker_class), env=env)
    wait_for_api_server(server, port, process, workers)
    return process, port


def measure(server: str, config: Path, tokens: list[str], args: argparse.Namespace,
            mysql_pid: int) -> dict[str, Any]:
    """One server's order load: throughput, latency, where the CPU went."""
    if server == "gunicorn":
        workers, threads = args.workers, args.threads
    else:
        workers, threads = args.granian_workers, args.granian_threads
    process, port = serve(server, config, workers, threads, args.worker_class)
    try:
        def cpu_now() -> tuple[float, float, float]:
            return (process_cpu_seconds(process.pid), process_cpu_seconds(mysql_pid),
                    time.process_time())

        cpu_before = cpu_now()
        load_before = os.getloadavg()[0]
        ticks_before = machine_cpu_ticks()
        orders = order_load(port, tokens, args.seconds, args.warmup)
        cpu_after = cpu_now()
        handled = max(1, sum(orders["statuses"].values()))
        orders["cpu_ms_per_order"] = {
            name: round((after - before) * 1000 / handled * args.seconds
                        / (args.seconds + args.warmup), 3)
            for name, before, after in zip(("api", "mysql", "clients"), cpu_before,
                                           cpu_after, strict=True)
        }
        orders["machine_cpu_percent"] = machine_cpu_shares(ticks_before, machine_cpu_ticks())
        orders["machine_load_average"] = [round(load_before, 2),
                                          round(os.getloadavg()[0], 2)]
        orders["server"] = {"name": server, "workers": workers, "threads_per_worker": threads}
        if server == "gunicorn":
            orders["server"]["worker_class"] = (
                args.worker_class or ("gthread" if threads > 1 else "sync"))
        return orders
    finally:
        process.terminate()
        process.wait(30)


class MinimalHTTPClient:
    """Just enough HTTP/1.1 for the load: send a prepared request, read the status line, the
    headers and a ``Content-Length`` body; reconnect when the server closes (sync gunicorn
    workers close every connection) and keep the connection otherwise.

    The clients share the 2 vCPUs with gunicorn and MariaDB, so the load generator is kept
    cheap: ``http.client`` parses every response's headers with the ``email`` package, which
    cost about as much CPU per order as MariaDB's share of a raw transaction.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None

    def exchange(self, request: bytes) -> tuple[int, bytes]:
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        self.sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ValueError("connection closed before the response headers")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        fields = {k.strip().lower(): v.strip()
                  for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(fields.get("content-length", "0"))
        while len(body) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ValueError("connection closed inside the response body")
            body += chunk
        if fields.get("connection", "").lower() == "close":
            self.close()
        return status, body[:length]

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def order_load(port: int, tokens: list[str], seconds: float, warmup: float) -> dict:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    start = time.monotonic()
    measure_from, stop_at = start + warmup, start + warmup + seconds

    def client(index: int, token: str) -> None:
        rng = random.Random(index)
        head = (f"POST /api/v1/orders HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                "Content-Length: {}\r\n\r\n")
        http = MinimalHTTPClient(port)
        mine: list[float] = []
        seen: dict[int, int] = {}
        side = "buy" if index % 2 else "sell"
        while True:
            now = time.monotonic()
            if now >= stop_at:
                break
            # Buys bid above every ask and sells ask below every bid: each order crosses.
            price = 1000 + rng.randint(0, 5) if side == "buy" else 1000 - rng.randint(0, 5)
            body = json.dumps({
                "market": "asaxu", "side": side, "type": "limit", "price": str(price),
                "amount": f"{rng.randint(100, 2000) / 1000:.3f}",
            }).encode()
            began = time.monotonic()
            try:
                status, _ = http.exchange(head.format(len(body)).encode("latin-1") + body)
            except (OSError, ValueError):
                http.close()
                status = 0
            ended = time.monotonic()
            if began >= measure_from:
                seen[status] = seen.get(status, 0) + 1
                if status == 201:
                    mine.append(ended - began)
            side = "sell" if side == "buy" else "buy"
        http.close()
        with lock:
            latencies.extend(mine)
            for key, value in seen.items():
                statuses[key] = statuses.get(key, 0) + value

    threads = [threading.Thread(target=client, args=(i, t)) for i, t in enumerate(tokens)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {**summary(latencies, seconds), "statuses": statuses}


# --------------------------------------------------------------------------- the baseline


def baseline(server: MySQLServer, clients: int, seconds: float) -> dict:
    """N threads: lock a row, update four balance rows, insert a trade, commit."""
    import pymysql

    server.create_database("baseline")
    u = make_url(server.url)

    def connect() -> Any:
        return pymysql.connect(host=u.host, port=u.port, user=u.username, password=u.password,
                              database="baseline", autocommit=False)

    setup = connect()
    with setup.cursor() as cur:
        cur.execute("CREATE TABLE market (id INT PRIMARY KEY) ENGINE=InnoDB")
        cur.execute("CREATE TABLE balance (id INT PRIMARY KEY, available DECIMAL(36,18) "
                    "NOT NULL, locked DECIMAL(36,18) NOT NULL) ENGINE=InnoDB")
        cur.execute("CREATE TABLE trade (id BIGINT AUTO_INCREMENT PRIMARY KEY, price "
                    "DECIMAL(36,18), amount DECIMAL(36,18), total DECIMAL(36,18), "
                    "created_at BIGINT) ENGINE=InnoDB")
        cur.execute("INSERT INTO market VALUES (1)")
        cur.executemany("INSERT INTO balance VALUES (%s, 1000000, 1000000)",
                        [(i,) for i in range(1, 2 * clients + 1)])
    setup.commit()
    setup.close()
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def worker(index: int) -> None:
        rng = random.Random(index)
        conn = connect()
        with conn.cursor() as cur:
            cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        mine = []
        while time.monotonic() < stop_at:
            began = time.monotonic()
            with conn.cursor() as cur:
                cur.execute("SELECT id FROM market WHERE id = 1 FOR UPDATE")
                ids = rng.sample(range(1, 2 * clients + 1), 4)
                for i, account in enumerate(ids):
                    delta = "0.001" if i % 2 else "-0.001"
                    cur.execute("UPDATE balance SET available = available + %s, locked = "
                                "locked WHERE id = %s", (delta, account))
                cur.execute("INSERT INTO trade (price, amount, total, created_at) VALUES "
                            "(1000, 1, 1000, %s)", (int(time.time()),))
            conn.commit()
            mine.append(time.monotonic() - began)
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    mysql_pid = server.process.pid if server.process else 0
    cpu_before = process_cpu_seconds(mysql_pid), time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cpu_after = process_cpu_seconds(mysql_pid), time.process_time()
    result: dict = summary(latencies, seconds)
    # What MariaDB itself spends per raw transaction: the floor under cpu_ms_per_order.mysql.
    result["cpu_ms_per_tx"] = {
        name: round((after - before) * 1000 / max(1, len(latencies)), 3)
        for name, before, after in zip(("mysql", "clients"), cpu_before, cpu_after,
                                       strict=True)
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--server", choices=("both", *SERVERS), default="both",
                        help="the WSGI server(s) to measure, one after the other")
    parser.add_argument("--workers", type=int, default=5, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads per gunicorn worker (1: sync workers; more: gthread)")
    parser.add_argument("--worker-class", default="",
                        help="gunicorn worker class (default: sync, gthread with --threads > 1)")
    parser.add_argument("--granian-workers", type=int, default=3,
                        help="granian worker processes")
    parser.add_argument("--granian-threads", type=int, default=1,
                        help="granian blocking threads (running the app) per worker")
    parser.add_argument("--redis", action="store_true",
                        help="configure Redis (token revocation checks go there)")
    args = parser.parse_args()
    servers = SERVERS if args.server == "both" else (args.server,)

    server = start_mysql()
    redis_server = start_redis() if args.redis else None
    workdir = Path(tempfile.mkdtemp(prefix="stockex-bench-"))
    try:
        info, tokens, db = prepare(server, args.clients, workdir,
                                   redis_server.url if redis_server else "")
        mysql_pid = server.process.pid if server.process else 0
        orders = {name: measure(name, info["config"], tokens, args, mysql_pid)
                  for name in servers}
        checks = reconcile(db, info["settings"])
        raw = baseline(server, args.clients, args.seconds)
        result = {
            "benchmark": "orders",
            "setup": {
                "redis": bool(args.redis),
                "clients": args.clients, "seconds": args.seconds,
                "innodb_flush_log_at_trx_commit": 1, "cpus": os.cpu_count(),
            },
            "orders": orders,
            "baseline_raw_commit": raw,
            "ratio_orders_to_baseline": {
                name: round(o["per_second"] / raw["per_second"], 3) for name, o in orders.items()
            },
            "targets": {
                "orders_per_second": 500, "p99_ms": 100,
                "met": {name: o["per_second"] >= 500 and o["p99_ms"] <= 100
                        for name, o in orders.items()},
            },
            "reconcile_ok": all(c.ok for c in checks),
        }
        print(json.dumps(result, indent=2))
    finally:
        server.close()
        if redis_server is not None:
            redis_server.close()


if __name__ == "__main__":
    main()
