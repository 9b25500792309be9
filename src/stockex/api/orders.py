"""Order routes: ``/orders`` (place, list), ``/orders/{id}`` (get, cancel), ``/account/trades``.

Each route parses its input, calls one use case of :mod:`stockex.trading.orders` and renders
the result; the use cases own the transactions and raise the CONTRACT §6 error codes.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from stockex.api import services
from stockex.api.params import before_id_param, int_param, json_body
from stockex.api.ratelimits import limit_orders
from stockex.api.trading_json import fill_json, order_json
from stockex.auth import current_principal, requires_auth
from stockex.errors import InvalidInput, UnknownMarket
from stockex.trading import orders
from stockex.trading.order_request import parse_order_request

bp = Blueprint("orders", __name__)

ORDER_STATUSES = ("open", "filled", "cancelled")


@bp.post("/orders")
@requires_auth()
@limit_orders  # below the auth decorator: counts per user (g.user_id)
def place() -> tuple[Response, int]:
    """201 the new order with its fills; 200 the original for a repeated client_order_id."""
    svc = services()
    order_request = parse_order_request(json_body(), svc.settings)
    placement = orders.place_order(svc.db, svc.cache, current_principal().user_id, order_request)
    return jsonify(order_json(placement.order, svc.settings.tz)), 201 if placement.created else 200


@bp.get("/orders")
@requires_auth()
def list_orders() -> Response:
    svc = services()
    status = request.args.get("status") or None
    if status is not None and status not in ORDER_STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(ORDER_STATUSES)}",
                           code="invalid_status", details={"status": status})
    found = orders.list_orders(
        svc.db, current_principal().user_id, market=_market_param(), status=status,
        limit=int_param("limit", 100, 1, 500), before_id=before_id_param(),
    )
    return jsonify([order_json(o, svc.settings.tz) for o in found])


@bp.get("/orders/<int:order_id>")
@requires_auth()
def get_order(order_id: int) -> Response:
    svc = services()
    order = orders.get_order(svc.db, current_principal().user_id, order_id)
    return jsonify(order_json(order, svc.settings.tz))


@bp.delete("/orders/<int:order_id>")
@requires_auth()
def cancel_order(order_id: int) -> Response:
    """The cancelled order; 404 order_not_found; 409 order_not_open."""
    svc = services()
    order = orders.cancel_order(
        svc.db, svc.cache, svc.settings, current_principal().user_id, order_id
    )
    return jsonify(order_json(order, svc.settings.tz))


@bp.get("/account/trades")
@requires_auth()
def account_trades() -> Response:
    svc = services()
    found = orders.list_fills(
        svc.db, current_principal().user_id, market=_market_param(),
        limit=int_param("limit", 100, 1, 500), before_id=before_id_param(),
    )
    return jsonify([fill_json(f, svc.settings.tz) for f in found])


def _market_param() -> str | None:
    market = request.args.get("market") or None
    if market is not None and services().settings.market(market) is None:
        raise UnknownMarket(market)
    return market
