"""Fixtures shared by every test layer.

* ``mysql_server`` / ``redis_server``: real servers started once per session
  (see :mod:`stockex.testing`).
* ``backend``: parametrizes a test over ``sqlite`` and ``mysql``; ``database`` is a migrated,
  empty database of that backend with the configured markets synced, fresh for each test.
* ``settings``, ``app``, ``client``: the Flask app factory pattern, built on ``database``.
* ``fake_slack``: a local Slack (Web API + webhooks) recording messages, see
  :class:`stockex.testing.FakeSlack`.

At the end, the run reports how many tests passed on each backend.

Hypothesis profile ``ci`` (``pytest --hypothesis-profile=ci``, which ``.ci/run`` and the
Jenkinsfile pass): the same examples on every run and no per-example
deadline, so a landing run does not fail on a rare draw or a slow minute of a shared host.
Without it the property tests explore new examples on every run.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from sqlalchemy import delete

from stockex.config import Settings, settings_from_mapping
from stockex.db import Database
from stockex.markets import sync_markets
from stockex.migrate import upgrade
from stockex.models import Base
from stockex.testing import (
    FakeSlack,
    MySQLServer,
    RedisServer,
    end_on_termination_signals,
    start_mysql,
    start_redis,
)

hypothesis_settings.register_profile(
    "ci", derandomize=True, deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)


def pytest_configure(config: pytest.Config) -> None:
    """End on SIGTERM/SIGHUP as on Ctrl-C, which tears the fixtures down (the session's
    MariaDB and Redis would otherwise run on after a CI timeout or a cancelled job)."""
    end_on_termination_signals()


TEST_SECRET = "test-secret-key-that-is-long-enough-for-hs256"

BASE_CONFIG: dict[str, Any] = {
    "secret_key": TEST_SECRET,
    # Rate limits off unless a test sets its own: many tests place orders in quick bursts.
    "api": {"login_rate_limit": "", "password_rate_limit": "", "order_rate_limit": ""},
    "markets": [
        {"id": "asaxu", "base": "ASA", "quote": "XU", "price_precision": 0,
         "amount_precision": 3, "min_amount": "0.001", "maker_fee": "0.001",
         "taker_fee": "0.002"},
        {"id": "btcvnd", "base": "BTC", "quote": "VND", "price_precision": 0,
         "amount_precision": 6, "min_amount": "0.000001"},
    ],
}


def make_settings(url: str, **sections: Any) -> Settings:
    raw = {**BASE_CONFIG, "database": {"url": url}, **sections}
    return settings_from_mapping(raw)


@pytest.fixture(name="make_settings")
def make_settings_fixture():  # type: ignore[no-untyped-def]
    """``make_settings(url, **sections)``: test settings for any database URL."""
    return make_settings


# ----------------------------------------------------------------------------- servers


@pytest.fixture(scope="session")
def mysql_server() -> Iterator[MySQLServer]:
    server = start_mysql()
    yield server
    server.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.close()


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    """A fake Slack on a free loopback port; ``fake_slack.messages`` is what it received."""
    with FakeSlack() as slack:
        yield slack


def uses_backend(request: pytest.FixtureRequest, name: str) -> None:
    """Record that the running test touched a real server, for the per-backend summary."""
    request.node.stash.setdefault(_BACKENDS, set()).add(name)


@pytest.fixture
def redis_url(redis_server: RedisServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """The session's Redis, emptied for this test."""
    import redis

    uses_backend(request, "redis")
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    client.close()
    yield redis_server.url


# ----------------------------------------------------------------------------- databases


@pytest.fixture(scope="session")
def mysql_template(mysql_server: MySQLServer) -> Iterator[Database]:
    """One migrated MySQL database for the session; tests get it emptied."""
    name = f"stockex_test_{os.getpid()}"
    db = Database(mysql_server.create_database(name), pool_size=20)
    upgrade(db)
    yield db
    db.dispose()
    mysql_server.drop_database(name)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    db = Database(f"sqlite:///{path}")
    upgrade(db)
    db.dispose()
    return path


def empty_all_tables(db: Database) -> None:
    def work(session: Any) -> None:
        for table in reversed(Base.metadata.sorted_tables):
            session.execute(delete(table))

    db.transaction(work)


@pytest.fixture(params=["sqlite", "mysql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Database]:
    """A migrated, empty database of ``backend`` with BASE_CONFIG's markets synced."""
    uses_backend(request, backend)
    if backend == "mysql":
        db: Database = request.getfixturevalue("mysql_template")
        empty_all_tables(db)
    else:
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "stockex.db"
        shutil.copyfile(template, path)
        db = Database(f"sqlite:///{path}")
    sync_markets(db, make_settings(db.url))
    yield db
    if backend == "sqlite":
        db.dispose()


@pytest.fixture
def mysql_database(mysql_template: Database, request: pytest.FixtureRequest) -> Database:
    """The MySQL database alone, for tests of MySQL-only behaviour (locks, deadlocks)."""
    uses_backend(request, "mysql")
    empty_all_tables(mysql_template)
    sync_markets(mysql_template, make_settings(mysql_template.url))
    return mysql_template


@pytest.fixture
def fresh_mysql_url(mysql_server: MySQLServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """An empty, unmigrated MySQL database of its own."""
    uses_backend(request, "mysql")
    name = f"stockex_fresh_{uuid.uuid4().hex[:10]}"
    url = mysql_server.create_database(name)
    yield url
    mysql_server.drop_database(name)


@pytest.fixture
def settings(database: Database) -> Settings:
    return make_settings(database.url)


@pytest.fixture
def app(settings: Settings, database: Database):  # type: ignore[no-untyped-def]
    from stockex.api import create_app

    return create_app(settings, db=database)


@pytest.fixture
def client(app):  # type: ignore[no-untyped-def]
    return app.test_client()


# ----------------------------------------------------------------------------- upstream


@pytest.fixture
def start_simulator() -> Iterator[Any]:
    """``start_simulator(**SimulatorConfig fields) -> (Simulator, url)`` served on loopback;
    every simulator started is shut down after the test."""
    from stockex.tiki.simulator import Simulator, SimulatorConfig

    handles = []

    def start(**config: Any) -> tuple[Simulator, str]:
        simulator = Simulator(SimulatorConfig(**config))
        handle = simulator.serve()
        handles.append(handle)
        return simulator, handle.url

    yield start
    for handle in handles:
        handle.shutdown()


# ----------------------------------------------------------------------------- reporting

_passed_by_backend: Counter[str] = Counter()
_BACKENDS = pytest.StashKey[set[str]]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.passed:
        backends = set(item.stash.get(_BACKENDS, set()))
        if "mysql_server" in getattr(item, "fixturenames", ()):
            backends.add("mysql")
        if "redis_server" in getattr(item, "fixturenames", ()):
            backends.add("redis")
        for name in backends:
            _passed_by_backend[name] += 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _passed_by_backend:
        parts = ", ".join(f"{k}: {v}" for k, v in sorted(_passed_by_backend.items()))
        terminalreporter.write_line(f"tests passed per backend: {parts}")
