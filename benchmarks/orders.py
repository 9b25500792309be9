"""Order placement throughput and latency through HTTP, beside a raw-commit baseline.

Starts a private MariaDB (``innodb_flush_log_at_trx_commit=1``: every commit is durable) and
measures, in rounds, one load window per WSGI server and one of the baseline:

* **stockex**: ``stockex.api:create_app()`` served by gunicorn and by granian (each started
  afresh for its window), N concurrent HTTP clients (16 by default) placing crossing limit
  orders on one market (every order trades with what rests on the other side; the book stays
  shallow);
* **the baseline**: N threads doing with PyMySQL directly what a matched order minimally
  needs: one transaction that locks one row, updates four balance rows, inserts a trade row
  and commits.

**Rounds.** The 2-vCPU development host is shared and its speed moves by a fifth from one
minute to the next; with one window each, a whole run landed above or below the target by
the minute it ran in. So the windows interleave: 3 rounds of 10 s windows by default, the
order rotating each round (gunicorn, granian, baseline; then granian, baseline, gunicorn;
then baseline, gunicorn, granian). Every figure is pooled over the rounds (all orders over
all measured seconds; percentiles over every latency), so each ratio compares figures taken
in the same minutes. ``rounds`` lists each round's rates and ratios, and
``targets.rounds_met`` counts the windows that reached 500 orders/s with p99 <= 100 ms.

Prints one JSON document: per server orders/s, p50/p99 latency and where the CPU went; the
baseline's transactions/s; each server's ratio to it; the rounds; and whether ``reconcile``
still holds afterwards.

    PYTHONPATH=src python benchmarks/orders.py [--server both|gunicorn|granian]
        [--clients 16] [--rounds 3] [--seconds 10] [--workers 5] [--threads 1]
        [--worker-class sync|gthread] [--granian-workers 3] [--granian-threads 1] [--redis]

**The two servers.** gunicorn (5 sync workers) is the contract's production server. A sync
worker serves one request per connection: every order pays a TCP connect, gunicorn's HTTP
parsing in Python and a graceful close, in the API's CPU and the clients'. granian (the
``granian`` extra; HTTP in Rust) keeps connections alive and takes 15-30 % less API CPU per
order; 3 single-threaded workers by default.

Seven runs of this script with its defaults (3 rounds of 10 s) on the 2-vCPU box, 2026-11-22
between 03:38 and 04:05 UTC, pooled orders/s (p99 ms) and the pooled baseline:

=====  ============  ============  ===========  ==========================  ===============
run    gunicorn      granian       baseline     ratios gunicorn / granian   granian rounds
=====  ============  ============  ===========  ==========================  ===============
1      456.8 (50)    560.9 (67)    1,244.0      0.367 / 0.451               634, 507, 542
2      452.9 (52)    513.1 (62)    1,235.1      0.367 / 0.415               511, 529, 499
3      402.9 (55)    492.4 (60)    1,165.7      0.346 / 0.422               531, 471, 475
4      417.2 (59)    468.7 (80)    1,078.7      0.387 / 0.435               451, 481, 474
5      418.9 (58)    461.7 (80)    1,220.9      0.343 / 0.378               519, 469, 397
6      344.5 (101)   399.4 (66)    1,064.2      0.324 / 0.375               394, 414, 390
7      372.6 (98)    444.0 (108)   1,073.0      0.347 / 0.414               454, 442, 436
=====  ============  ============  ===========  ==========================  ===============

granian's pooled figure reached 500 orders/s in 2 of the 7 runs (7 of its 21 windows),
gunicorn's in none (1 window of 21). The host's speed moved within the half hour: the same
code's API CPU per order went from 1.87 to 2.79 ms under granian and from 2.54 to 3.39 under
gunicorn, and in runs 6 and 7 some windows' p99 passed 100 ms (granian 101 and 208 ms,
gunicorn 112-143). The ratios move less than the absolute figures, but they move too: the
API is Python and the baseline mostly MariaDB's C, and a slower host does not slow both
alike. Earlier layouts of
this script (one 20 s window per server, then the baseline) gave, the same day, gunicorn
419.9-523.6 orders/s and granian 456.2-594.4 in nine runs, ratios 0.34-0.44 and 0.40-0.48.
Granian-only runs the same hour: 3 workers 572.9 and 578.7; 2 workers 472.2 and 616.9 (16
connections hashed over two workers split unevenly); 4 workers 476.5, 427.1 and 507.0.

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

**Measured and left alone** (2026-11-22, with throwaway scripts):

* Debian's Python 3.11, built with PGO and LTO like the official Docker images, instead of
  the development box's pyenv build (neither): 22 % faster on a pure-Python loop, yet the
  same API CPU per order within the noise in two interleaved pairs of runs (1.57 against
  1.61 and 1.77 against 1.73 ms), while the baseline's Python clients got faster (1,437 and
  1,441 transactions/s against 1,290 and 1,215): the ratio would only have fallen.
* One round trip fewer, the accounts locked in the market lock's round trip (the statement
  built with PREPARE from the book's user ids), in a loop of a placement's statements over
  one PyMySQL connection: 0.585 ms of client CPU per placement folded against 0.572 as now,
  MariaDB 1.105 against 1.120. On loopback a round trip costs little CPU; statements do.
* mysqlclient instead of PyMySQL in the same loop: 0.41 ms of client CPU per placement
  against 0.57, about 0.15 ms of the API's 1.7-2.4.
* MariaDB's CPU per placement in that loop, 0.98 ms, by round trip (each measured alone;
  a bare ``SELECT 1`` round trip costs 0.05): the token check 0.08; the market lock with the
  book page 0.23 (the page alone 0.11); the account lock 0.15; the writes with their durable
  COMMIT the remaining 0.5 or so.
* The token check folded into the placement's transaction, upper bound: one process calling
  the WSGI app, 12 interleaved blocks of 200 orders, with neither the check's query nor the
  ping the transaction's checkout would then need: 2.05 against 2.15 and 1.90 against 1.99
  ms of CPU per order (4-5 %), before paying back the check's SELECT inside the transaction.
  The ORM Session around a placement, against a raw pooled connection: 0.05 ms per
  transaction (0.30 against 0.25 for ``SELECT 1`` and COMMIT).

**Also measured and left alone** (2026-11-22, 04:35-04:55 UTC; 15 s granian-only windows,
interleaved; the host was slow that hour, its baseline 840-1,210 transactions/s):

* How long a placement holds the market's lock, timed in the API from the return of the
  lock's round trip to the return of the COMMIT: about one over the rate (2.3 ms at 474
  orders/s, 4.0 ms at 278), so placements do queue on it, about 0.5-0.9 ms of that being
  the accounts' round trip. Yet the two CPUs are the limit: the machine stays 86-88 % busy
  and the rate times the CPU per order equals that share. Locking the accounts in the
  lock's own round trip (the book page's users gathered with GROUP_CONCAT, the lock
  PREPAREd from them) removed the accounts' round trip but the lock's grew as much and
  MariaDB spent about 0.2 ms more per order: 384.8, 313.3 and 441.6 orders/s against 402.8,
  485.5 and 276.1 in three interleaved pairs (ratios 0.36, 0.33, 0.44 against 0.44, 0.41,
  0.31).
* granian with 2 blocking threads per worker: 3 x 2 gave 319.3, 270.2 and 420.9 orders/s
  and 2 x 2 287.1, 341.7 and 423.1, against 346.3, 399.1 and 459.0 for 3 x 1 in the same
  three triples; the machine was 79-83 % busy against 87-88 %: the threads wait on the GIL.
* MariaDB's thread pool (``--thread-handling=pool-of-threads``): 318.9, 380.6 and 384.5
  orders/s against 474.0, 367.8 and 409.4 without it (ratios 0.35, 0.43, 0.45 against 0.42,
  0.41, 0.43): no gain.
* MariaDB over its Unix socket instead of TCP on loopback, in the loop of a placement's
  statements: 0.47 ms of client CPU per placement against 0.52, MariaDB 0.90 against 0.94
  (about 3 % of an order's CPU), and in production the database is another host.

**And on 2026-11-22 between 06:40 and 07:10 UTC** (interleaved 10 s windows, 3 rounds):

* gunicorn's C HTTP parser (``gunicorn_h1c``, the ``gunicorn[fast]`` extra, used by gunicorn
  25.2+ when installed): 502.3 and 448.8 orders/s pooled against 486.2 and 454.7 with the
  Python parser, within the noise. A sync worker's cost is its connection per request, not
  the parsing: py-spy put 12 % of a worker's samples in ``close_graceful``, which (gunicorn
  27.0.1) half-closes and waits for the client's FIN before the next accept. 7 sync
  workers: 442.0 against 448.8 for 5.
* Redis configured, so the token revocation check goes there instead of to MariaDB:
  gunicorn 323.8 against 328.3, granian 507.8 against 492.0 orders/s pooled (a slow hour),
  within the noise.
* One process calling the WSGI app directly spends 1.42 ms of CPU per order; under load
  granian's processes spend 1.6-2.2 and gunicorn's 2.2-2.9 ms: the rest is the servers and
  two CPUs shared by some twenty busy processes and threads.

**Later the same day, 11:30-13:10 UTC** (defaults), a slower host: gunicorn 382.3, 385.3 and
334.3 orders/s pooled, granian 406.4, 422.7 and 416.2, baselines 1,099, 1,084 and 1,108
transactions/s (ratios 0.30-0.36 and 0.37-0.39); the API's CPU per order 2.9-3.6 ms under
gunicorn and 2.4-2.7 under granian, the clients' (unchanged code) up to 30 % above the
morning's. The test databases compare text case-insensitively since then, as a production
MySQL does (``stockex.testing.TEST_COLLATION``); granian-only runs with the old binary
collation and the new one, interleaved: 339.3 and 374.0 against 361.1 and 417.3 orders/s,
MariaDB 1.51 and 1.42 against 1.48 and 1.30 ms per order: no cost.

**2026-11-22, 13:49-15:00 UTC** (defaults; the placement path unchanged since): at 13:49
gunicorn 403.0 (p99 65 ms) and granian 355.7 (p99 129 ms, the machine 80 % busy: the 16
connections hashed unevenly over its workers), baseline 1,048.6; at 14:57, the machine quiet,
gunicorn 473.6 (49 ms) and granian **502.6** (68 ms), baseline 1,229.9 (ratios 0.385 and
0.409; one window each reached the target: gunicorn 511.9, granian 570.2); at 14:59
gunicorn 425.6 (53 ms) and granian 406.4 (76 ms), baseline 1,081.1 (ratios 0.394 and 0.376).
API CPU per order 2.47-2.93 ms under gunicorn, 2.15-2.88 under granian; MariaDB 1.07-1.42.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
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
    end_on_termination_signals,
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
BASELINE = "baseline"
TARGET_PER_SECOND, TARGET_P99_MS = 500, 100  # issue #4's acceptance
SECRET = "benchmark-secret-key-0123456789abcdef0123456789"  # noqa: S105 - a throwaway server


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def meets_target(figures: dict[str, Any]) -> bool:
    """Whether a :func:`summary` reached issue #4's target: the rate and the p99 both."""
    return bool(figures["per_second"] >= TARGET_PER_SECOND
                and figures["p99_ms"] <= TARGET_P99_MS)


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


@dataclass
class Window:
    """What one load window measured, kept raw so that windows can be pooled: the 201s'
    latencies, every status, the CPU seconds each party spent and the machine's CPU ticks."""

    seconds: float
    latencies: list[float]
    statuses: dict[int, int]
    cpu_seconds: dict[str, float]  # api / mysql / clients, scaled to the measured seconds
    ticks: list[int]  # machine_cpu_ticks() after minus before
    load_average: list[float]  # before and after


def report(windows: list[Window], per: str = "order") -> dict[str, Any]:
    """Throughput, latency and where the CPU went over one or more windows, pooled: the rate
    is every success (201, or committed transaction) over all measured seconds, the
    percentiles are over every success's latency, the CPU is per request handled."""
    latencies = [x for w in windows for x in w.latencies]
    result: dict[str, Any] = summary(latencies, sum(w.seconds for w in windows))
    statuses: dict[int, int] = {}
    for window in windows:
        for status, count in window.statuses.items():
            statuses[status] = statuses.get(status, 0) + count
    if per == "order":
        result["statuses"] = statuses
    handled = max(1, sum(statuses.values()) or len(latencies))
    result[f"cpu_ms_per_{per}"] = {
        name: round(sum(w.cpu_seconds[name] for w in windows) * 1000 / handled, 3)
        for name in windows[0].cpu_seconds
    }
    result["machine_cpu_percent"] = machine_cpu_shares(
        [0] * 8, [sum(column) for column in zip(*(w.ticks for w in windows), strict=True)])
    result["machine_load_average"] = [w.load_average for w in windows]
    return result


def measured(run: Callable[[], tuple[list[float], dict[int, int]]], seconds: float,
             warmup: float, pids: dict[str, int]) -> Window:
    """Run one load window and take the CPU of ``pids`` (and this process, as ``clients``)
    and of the machine around it; ``run`` returns the latencies and statuses it counted."""
    def cpu_now() -> dict[str, float]:
        return {**{name: process_cpu_seconds(pid) for name, pid in pids.items()},
                "clients": time.process_time()}

    cpu_before, ticks_before = cpu_now(), machine_cpu_ticks()
    load_before = os.getloadavg()[0]
    latencies, statuses = run()
    cpu_after, ticks_after = cpu_now(), machine_cpu_ticks()
    share = seconds / (seconds + warmup)  # the counters also ran during the warm-up
    return Window(
        seconds=seconds, latencies=latencies, statuses=statuses,
        cpu_seconds={name: (cpu_after[name] - cpu_before[name]) * share for name in cpu_before},
        ticks=[b - a for a, b in zip(ticks_before, ticks_after, strict=True)],
        load_average=[round(load_before, 2), round(os.getloadavg()[0], 2)],
    )


def measure(server: str, config: Path, tokens: list[str], args: argparse.Namespace,
            mysql_pid: int) -> Window:
    """One window of order load through a freshly started ``server``."""
    workers, threads = server_shape(server, args)
    process, port = serve(server, config, workers, threads, args.worker_class)
    try:
        return measured(lambda: order_load(port, tokens, args.seconds, args.warmup),
                        args.seconds, args.warmup, {"api": process.pid, "mysql": mysql_pid})
    finally:
        process.terminate()
        process.wait(30)


def server_shape(server: str, args: argparse.Namespace) -> tuple[int, int]:
    """(workers, threads per worker) of ``server`` under these arguments."""
    if server == "gunicorn":
        return args.workers, args.threads
    return args.granian_workers, args.granian_threads


def server_info(server: str, args: argparse.Namespace) -> dict[str, Any]:
    workers, threads = server_shape(server, args)
    info: dict[str, Any] = {"name": server, "workers": workers, "threads_per_worker": threads}
    if server == "gunicorn":
        info["worker_class"] = args.worker_class or ("gthread" if threads > 1 else "sync")
    return info


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


def order_load(port: int, tokens: list[str], seconds: float,
               warmup: float) -> tuple[list[float], dict[int, int]]:
    """16 (``len(tokens)``) clients placing crossing limit orders for ``warmup`` + ``seconds``;
    the latencies of the 201s and every status of the measured ``seconds``."""
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
                "amount": f"{rng.randint(100, 2000) / 1000:.3f}", "time_in_force": "GTC",
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
    return latencies, statuses


# --------------------------------------------------------------------------- the baseline


class Baseline:
    """N threads doing what a matched order minimally needs, with PyMySQL directly: lock a
    row, update four balance rows, insert a trade, commit (its own database, set up once)."""

    def __init__(self, server: MySQLServer, clients: int) -> None:
        import pymysql

        server.create_database("baseline")
        u = make_url(server.url)
        self.clients = clients
        self.mysql_pid = server.process.pid if server.process else 0
        self.connect = lambda: pymysql.connect(
            host=u.host, port=u.port, user=u.username, password=u.password,
            database="baseline", autocommit=False)
        setup = self.connect()
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

    def measure(self, seconds: float) -> Window:
        return measured(lambda: self._load(seconds), seconds, 0.0, {"mysql": self.mysql_pid})

    def _load(self, seconds: float) -> tuple[list[float], dict[int, int]]:
        latencies: list[float] = []
        lock = threading.Lock()
        stop_at = time.monotonic() + seconds
        accounts = range(1, 2 * self.clients + 1)

        def worker(index: int) -> None:
            rng = random.Random(index)
            conn = self.connect()
            with conn.cursor() as cur:
                cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
            mine = []
            while time.monotonic() < stop_at:
                began = time.monotonic()
                with conn.cursor() as cur:
                    cur.execute("SELECT id FROM market WHERE id = 1 FOR UPDATE")
                    for i, account in enumerate(rng.sample(accounts, 4)):
                        delta = "0.001" if i % 2 else "-0.001"
                        cur.execute("UPDATE balance SET available = available + %s, locked "
                                    "= locked WHERE id = %s", (delta, account))
                    cur.execute("INSERT INTO trade (price, amount, total, created_at) VALUES "
                                "(1000, 1, 1000, %s)", (int(time.time()),))
                conn.commit()
                mine.append(time.monotonic() - began)
            conn.close()
            with lock:
                latencies.extend(mine)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(self.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return latencies, {}  # no HTTP here: every transaction committed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="measured seconds of each window (one per server and round)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of one window per server and one of the baseline")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--server", choices=("both", *SERVERS), default="both",
                        help="the WSGI server(s) to measure")
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

    end_on_termination_signals()  # a kill stops the servers too
    server = start_mysql()
    redis_server = start_redis() if args.redis else None
    workdir = Path(tempfile.mkdtemp(prefix="stockex-bench-"))
    try:
        info, tokens, db = prepare(server, args.clients, workdir,
                                   redis_server.url if redis_server else "")
        mysql_pid = server.process.pid if server.process else 0
        raw = Baseline(server, args.clients)
        windows: dict[str, list[Window]] = {name: [] for name in (*servers, BASELINE)}
        rounds = []
        for number in range(args.rounds):
            order = [*servers, BASELINE]
            order = order[number % len(order):] + order[:number % len(order)]  # rotate
            for name in order:
                windows[name].append(raw.measure(args.seconds) if name == BASELINE else
                                     measure(name, info["config"], tokens, args, mysql_pid))
            rounds.append(round_figures(order, {n: w[-1] for n, w in windows.items()}))
        checks = reconcile(db, info["settings"])
        orders = {name: {**report(windows[name]), "server": server_info(name, args)}
                  for name in servers}
        baseline = report(windows[BASELINE], per="tx")
        result = {
            "benchmark": "orders",
            "setup": {
                "redis": bool(args.redis), "clients": args.clients,
                "rounds": args.rounds, "seconds_per_window": args.seconds,
                "innodb_flush_log_at_trx_commit": 1, "cpus": os.cpu_count(),
            },
            "orders": orders,
            "baseline_raw_commit": baseline,
            "ratio_orders_to_baseline": {
                name: round(o["per_second"] / baseline["per_second"], 3)
                for name, o in orders.items()
            },
            "rounds": rounds,
            "targets": {
                "orders_per_second": TARGET_PER_SECOND, "p99_ms": TARGET_P99_MS,
                "met": {name: meets_target(o) for name, o in orders.items()},
                "rounds_met": {name: sum(r[name]["met"] for r in rounds) for name in servers},
            },
            "reconcile_ok": all(c.ok for c in checks),
        }
        print(json.dumps(result, indent=2))
    finally:
        server.close()
        if redis_server is not None:
            redis_server.close()
        shutil.rmtree(workdir, ignore_errors=True)


def round_figures(order: list[str], last: dict[str, Window]) -> dict[str, Any]:
    """One round in brief: each server's rate, p99 and ratio to this round's baseline."""
    base = report([last[BASELINE]], per="tx")["per_second"]
    figures: dict[str, Any] = {"order": order, BASELINE: base}
    for name in order:
        if name == BASELINE:
            continue
        one = report([last[name]])
        figures[name] = {
            "per_second": one["per_second"], "p99_ms": one["p99_ms"],
            "ratio": round(one["per_second"] / base, 3) if base else None,
            "met": meets_target(one),
        }
    return figures


if __name__ == "__main__":
    main()
