"""Balance routes: ``/balances`` (the caller's) and ``/admin/deposits|withdrawals`` (admin)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from stockex.api import services
from stockex.api.params import json_body
from stockex.api.trading_json import balance_json
from stockex.auth import current_principal, requires_auth
from stockex.trading import accounts

bp = Blueprint("accounts", __name__)


@bp.get("/balances")
@requires_auth()
def balances() -> Response:
    """Available and locked of every asset of every market."""
    svc = services()
    found = accounts.balances_of(svc.db, svc.settings, current_principal().user_id)
    return jsonify([balance_json(b) for b in found])


@bp.post("/admin/deposits")
@requires_auth(role="admin")
def deposit() -> Response:
    return _transfer(accounts.deposit)


@bp.post("/admin/withdrawals")
@requires_auth(role="admin")
def withdraw() -> Response:
    return _transfer(accounts.withdraw)


def _transfer(use_case) -> Response:  # type: ignore[no-untyped-def]
    body = json_body(frozenset({"username", "asset", "amount"}))
    svc = services()
    balance = use_case(svc.db, svc.settings, body.get("username"), body.get("asset"),
                       body.get("amount"))
    return jsonify({"username": body.get("username"), **balance_json(balance)})
