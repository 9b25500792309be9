"""Fixtures for the accounts and trading tests: an app on ``database`` (SQLite and MySQL),
users with tokens, deposits, and a snapshot of every trading table to prove "nothing changed".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import select
from werkzeug.security import generate_password_hash

from stockex import auth
from stockex.config import Settings
from stockex.db import Database
from stockex.models import Account, LedgerEntry, Order, Trade
from stockex.trading import accounts
from stockex.trading.reconcile import reconcile


@pytest.fixture(autouse=True)
def cheap_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Production hashing (scrypt N=2^15) takes ~0.25 s per user; these tests create hundreds
    of users, so they hash with a cheaper scrypt. test_auth_api checks the real cost."""
    monkeypatch.setattr(
        auth, "hash_password", lambda p: generate_password_hash(p, method="scrypt:1024:8:1")
    )


@dataclass
class Exchange:
    """The app under test plus helpers to act as its users."""

    client: Any
    db: Database
    settings: Settings
    tokens: dict[str, str] = field(default_factory=dict)
    ids: dict[str, int] = field(default_factory=dict)

    def user(self, name: str, *, admin: bool = False, **balances: str) -> dict[str, str]:
        """Create a user (with deposits) and return its Authorization header."""
        created = auth.create_user(self.db, self.settings, name, "password-123",
                                   role="admin" if admin else "user")
        self.ids[name] = created.id
        self.tokens[name] = auth.issue_token(self.settings, created.id, created.role)
        for asset, amount in balances.items():
            accounts.deposit(self.db, self.settings, name, asset, amount)
        return self.headers(name)

    def headers(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[name]}"}

    def order(self, name: str, expect: int | None = 201, **body: Any) -> dict[str, Any]:
        """POST ``body`` as ``name``; ``market`` defaults to asaxu and the required
        ``time_in_force`` to what a client would send: GTC for a limit order, IOC for a
        market order."""
        body.setdefault("market", "asaxu")
        body.setdefault("time_in_force", "GTC" if body.get("type") == "limit" else "IOC")
        response = self.client.post("/api/v1/orders", json=body, headers=self.headers(name))
        if expect is not None:
            assert response.status_code == expect, response.get_json()
        return response.get_json()  # type: ignore[no-any-return]

    def balances(self, name: str) -> dict[str, tuple[str, str]]:
        response = self.client.get("/api/v1/balances", headers=self.headers(name))
        assert response.status_code == 200
        return {b["asset"]: (b["available"], b["locked"]) for b in response.get_json()}

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of accounts, ledger, orders and trades."""
        with self.db.read() as session:
            return {
                model.__tablename__: [tuple(r) for r in session.execute(
                    select(*model.__table__.columns).order_by(model.__table__.c.id)
                )]
                for model in (Account, LedgerEntry, Order, Trade)
            }

    def assert_reconciles(self) -> None:
        failed = {c.name: c.problems for c in reconcile(self.db, self.settings) if not c.ok}
        assert failed == {}


@pytest.fixture
def exchange(app, client, database: Database, settings: Settings) -> Exchange:  # type: ignore[no-untyped-def]
    return Exchange(client=client, db=database, settings=settings)
