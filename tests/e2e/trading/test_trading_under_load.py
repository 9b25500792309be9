"""Acceptance 2 and 3: trading through HTTP against gunicorn (the contract's production
server) and granian, each with several worker processes, on the real MySQL — thousands of
random orders and cancels from 16 threads among 50 users — and the same while the API
processes are killed with SIGKILL and MySQL is restarted (gracefully and by SIGKILL).
Afterwards ``stockex reconcile`` passes and nothing is half-applied."""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select

from stockex.db import Database
from stockex.models import Account, Order
from stockex.testing import start_mysql
from stockex.trading.reconcile import reconcile

pytestmark = [pytest.mark.slow, pytest.mark.mysql_only]

THREADS = 16
USERS = 50


def assert_consistent(tools, url: str, config: Path, result) -> None:  # type: ignore[no-untyped-def]
    check = tools.stockex_cli(config, "reconcile")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "all invariants hold" in check.stdout
    db = Database(url)
    try:
        with db.read() as session:
            lowest = session.execute(
                select(func.min(Account.available), func.min(Account.locked))
            ).one()
            assert lowest[0] >= 0 and lowest[1] >= 0
            stored = {
                (row.client_order_id, row.id): row
                for row in session.execute(select(Order.id, Order.client_order_id,
                                                  Order.filled_amount, Order.status))
            }
    finally:
        db.dispose()
    by_client_id = {client_id: row for (client_id, _), row in stored.items()}
    for (_, client_id), order in result.acknowledged.items():
        row = by_client_id.get(client_id)
        assert row is not None and row.id == order["id"], client_id  # durable once answered
        assert row.filled_amount >= Decimal(order["filled_amount"])


@pytest.mark.parametrize("server_name", ["gunicorn", "granian"])
def test_thousands_of_random_orders_through_http(tools, fresh_mysql_url, make_settings,  # type: ignore[no-untyped-def]
                                                  tmp_path: Path, server_name: str) -> None:
    settings, config, traders = tools.prepare_exchange(fresh_mysql_url, make_settings, USERS,
                                                       tmp_path)
    server = tools.ApiServer(config, workers=4, threads=2, server=server_name)
    server.start()
    result = tools.LoadResult()
    live_checks: list[list[str]] = []
    done = threading.Event()

    def reconcile_while_trading() -> None:
        """reconcile reads one snapshot, so it holds even in the middle of the load."""
        db = Database(fresh_mysql_url)
        try:
            while not done.wait(1.0):
                live_checks.append([c.name for c in reconcile(db, settings) if not c.ok])
        finally:
            db.dispose()

    checker = threading.Thread(target=reconcile_while_trading)
    checker.start()
    started = time.monotonic()
    try:
        tools.trade_randomly(lambda: server.port, traders, THREADS, 2400, result, seed=1)
    finally:
        done.set()
        checker.join()
        server.stop()
    elapsed = time.monotonic() - started
    assert sum(result.statuses.values()) == 2400
    assert not [s for s in result.statuses if s >= 500 or s == 0], result.statuses
    assert result.statuses[201] > 1000, result.statuses  # most requests did trade
    assert result.codes["invalid_amount"] > 0  # the odd bad request was refused, not a 500
    print(f"\n{sum(result.statuses.values()) / elapsed:.0f} requests/s; {dict(result.statuses)}"
          f"; {dict(result.codes)}")
    assert live_checks and all(failed == [] for failed in live_checks), live_checks
    assert_consistent(tools, fresh_mysql_url, config, result)


@pytest.mark.parametrize("server_name", ["gunicorn", "granian"])
def test_kill_the_api_and_restart_mysql_during_load(tools, make_settings, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                    server_name: str) -> None:
    mysql = start_mysql(private=True)  # restarting it must not disturb other tests
    try:
        url = mysql.create_database("stockex_crash")
        _, config, traders = tools.prepare_exchange(url, make_settings, USERS, tmp_path)
        server = tools.ApiServer(config, workers=3, threads=2, server=server_name)
        server.start()
        result = tools.LoadResult()
        stop = threading.Event()
        load = threading.Thread(target=tools.trade_randomly, kwargs={
            "port_of": lambda: server.port, "traders": traders, "threads": THREADS,
            "operations": 1600, "result": result, "seed": 2, "stop": stop,
            "retry_in_doubt": True,
        })
        load.start()
        try:
            time.sleep(3)
            server.kill()  # kill -9 every API process mid-request
            time.sleep(0.5)
            server.start()
            time.sleep(3)
            mysql.stop()  # a clean MySQL restart
            mysql.start()
            time.sleep(3)
            assert mysql.process is not None
            mysql.process.kill()  # and a crash: InnoDB recovers from its redo log
            mysql.process.wait(30)
            mysql.start()
            load.join(timeout=240)
            assert not load.is_alive()
        finally:
            stop.set()
            load.join(timeout=60)
            server.stop()
        print(f"\n{dict(result.statuses)}; {dict(result.codes)}; "
              f"{len(result.in_doubt)} answers lost or 503 and retried with the same "
              f"client_order_id, {result.committed_before_fault} of which had committed")
        assert result.in_doubt, "the faults did not hit any request"
        assert not [s for s in result.statuses if s >= 500 and s != 503], result.statuses
        assert result.statuses[201] > 500
        assert_consistent(tools, url, config, result)
    finally:
        mysql.close()
