"""Helpers for trading under load: the app served by gunicorn or granian on MySQL, and random
HTTP traders."""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from werkzeug.security import generate_password_hash

import stockex
from stockex import auth
from stockex.db import Database
from stockex.markets import sync_markets
from stockex.migrate import upgrade
from stockex.testing import api_server_command, free_port, wait_for_api_server
from stockex.trading import accounts

SRC = str(Path(stockex.__file__).resolve().parent.parent)


@pytest.fixture(autouse=True)
def cheap_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """~50 users per test: hash with a cheaper scrypt (the real cost is tested elsewhere)."""
    monkeypatch.setattr(
        auth, "hash_password", lambda p: generate_password_hash(p, method="scrypt:1024:8:1")
    )


@dataclass
class Trader:
    name: str
    token: str


def prepare_exchange(url: str, make_settings, users: int, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Migrate ``url``, create ``users`` funded traders; returns (settings, config, traders)."""
    settings = make_settings(url)
    db = Database(url)
    upgrade(db)
    sync_markets(db, settings)
    traders = []
    for i in range(users):
        name = f"trader{i:02d}"
        user = auth.create_user(db, settings, name, "password-123")
        for asset, amount in (("ASA", "200"), ("XU", "300000"), ("BTC", "5"),
                              ("VND", "50000000")):
            accounts.deposit(db, settings, name, asset, amount)
        traders.append(Trader(name, auth.issue_token(settings, user.id, user.role)))
    db.dispose()
    config = tmp_path / "stockex.yaml"
    raw: dict[str, Any] = {"secret_key": settings.secret_key, "database": {"url": url},
                           "markets": [json.loads(json.dumps(m, default=str)) for m in
                                       _markets(settings)]}
    config.write_text(json.dumps(raw))
    return settings, config, traders


def _markets(settings) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    from dataclasses import asdict

    return [asdict(m) for m in settings.markets]


class ApiServer:
    """The API with several worker processes on 127.0.0.1, served as in production:
    ``gunicorn 'stockex.api:create_app()'`` (gthread workers), or granian (the ``granian``
    extra) with as many threads per worker."""

    def __init__(self, config: Path, workers: int = 4, threads: int = 2,
                 server: str = "gunicorn") -> None:
        self.config, self.workers, self.threads, self.server = config, workers, threads, server
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKEX")}
        env["STOCKEX_CONFIG"] = str(self.config)
        env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
        return env

    def start(self) -> None:
        self.process = subprocess.Popen(  # noqa: S603
            api_server_command(self.server, self.port, self.workers, self.threads, "gthread"),
            env=self.env(), start_new_session=True,
        )
        wait_for_api_server(self.server, self.port, self.process, self.workers)

    def kill(self) -> None:
        """kill -9 the master and every worker."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class LoadResult:
    statuses: Counter[int] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    acknowledged: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    in_doubt: list[tuple[Trader, dict[str, Any]]] = field(default_factory=list)
    committed_before_fault: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def random_order(rng: random.Random, seq: str) -> dict[str, Any]:
    market = rng.choice(["asaxu", "asaxu", "asaxu", "btcvnd"])
    side = rng.choice(["buy", "sell"])
    if market == "asaxu":
        price = str(rng.randint(95, 105))
        amount = f"{rng.randint(1, 3000) / 1000:.3f}"
        quote = str(rng.randint(50, 3000))
    else:
        price = str(rng.randint(990_000, 1_010_000))
        amount = f"{rng.randint(1, 500_000) / 1_000_000:.6f}"
        quote = str(rng.randint(10_000, 300_000))
    kind = rng.choice(["limit"] * 5 + ["market"])
    body: dict[str, Any] = {"market": market, "side": side, "type": kind,
                            "client_order_id": seq}
    if kind == "limit":
        body.update(price=price, amount=amount,
                    time_in_force=rng.choice(["GTC", "GTC", "GTC", "IOC", "FOK"]))
    elif side == "buy" and rng.random() < 0.5:
        body.update(quote_amount=quote, time_in_force="IOC")
    else:
        body.update(amount=amount, time_in_force=rng.choice(["IOC", "IOC", "FOK"]))
    if rng.random() < 0.02:  # now and then a request that must be refused
        body["amount" if "amount" in body else "quote_amount"] = "-1"
    return body


def trade_randomly(port_of, traders: list[Trader], threads: int, operations: int,  # type: ignore[no-untyped-def]
                   result: LoadResult, seed: int = 0, stop: threading.Event | None = None,
                   retry_in_doubt: bool = False) -> None:
    """``threads`` HTTP clients doing ``operations`` random placements and cancels in all.

    ``port_of()`` gives the server's current port (it may be restarted). A request that got
    no answer or a 503 is "in doubt": with ``retry_in_doubt`` it is sent again (same
    client_order_id) until it gets a real answer.
    """
    per_thread = operations // threads

    def run(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        open_orders: dict[str, list[int]] = {}
        conn: http.client.HTTPConnection | None = None
        for n in range(per_thread):
            if stop is not None and stop.is_set():
                break
            trader = rng.choice(traders)
            mine = open_orders.setdefault(trader.name, [])
            if mine and rng.random() < 0.25:
                method, path, body = "DELETE", f"/api/v1/orders/{mine.pop()}", None
            else:
                method, path = "POST", "/api/v1/orders"
                body = random_order(rng, f"t{seed}-{index}-{n}")
            doubtful = False
            while True:
                status, payload, conn = _request(conn, port_of(), method, path, body, trader)
                if status not in (0, 503):
                    break
                doubtful = True
                if not retry_in_doubt or method == "DELETE":
                    break
                time.sleep(0.2)
            with result.lock:
                result.statuses[status] += 1
                if isinstance(payload, dict) and "error" in payload:
                    result.codes[payload["error"]["code"]] += 1
                if doubtful and method == "POST":
                    result.in_doubt.append((trader, body))  # type: ignore[arg-type]
                    if status == 200:  # it had committed before the fault hid the answer
                        result.committed_before_fault += 1
                if method == "POST" and status in (200, 201):
                    result.acknowledged[(trader.name, body["client_order_id"])] = payload  # type: ignore[index]
            if method == "POST" and status == 201 and payload.get("status") == "open":
                mine.append(payload["id"])
        if conn is not None:
            conn.close()

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def _request(conn, port: int, method: str, path: str, body: Any, trader: Trader):  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {trader.token}", "Content-Type": "application/json"}
    try:
        if conn is not None and conn.port != port:
            conn.close()
            conn = None
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers=headers)
        response = conn.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else None, conn
    except (OSError, http.client.HTTPException, json.JSONDecodeError):
        if conn is not None:
            conn.close()
        return 0, None, None


def stockex_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKEX")}
    env["STOCKEX_CONFIG"] = str(config)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "stockex.cli", *args], env=env,  # noqa: S603
                          capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture
def tools():  # type: ignore[no-untyped-def]
    """The helpers above, for test modules (tests are not a package, so no imports)."""
    from types import SimpleNamespace

    return SimpleNamespace(ApiServer=ApiServer, LoadResult=LoadResult,
                           prepare_exchange=prepare_exchange, stockex_cli=stockex_cli,
                           trade_randomly=trade_randomly)
