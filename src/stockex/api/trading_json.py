"""JSON shapes of orders, fills and balances (CONTRACT §5); amounts as decimal strings."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from stockex.numbers import to_str
from stockex.trading.accounts import BalanceView
from stockex.trading.orders import FillView, OrderView


def local_time(epoch: int, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(epoch, tz).isoformat()


def fill_json(fill: FillView, tz: ZoneInfo) -> dict[str, Any]:
    return {
        "id": fill.id,
        "order_id": fill.order_id,
        "market": fill.market,
        "side": fill.side,
        "role": fill.role,
        "price": to_str(fill.price),
        "amount": to_str(fill.amount),
        "total": to_str(fill.total),
        "fee": to_str(fill.fee),
        "fee_asset": fill.fee_asset,
        "created_at": fill.created_at,
        "created_at_local": local_time(fill.created_at, tz),
    }


def order_json(order: OrderView, tz: ZoneInfo) -> dict[str, Any]:
    return {
        "id": order.id,
        "client_order_id": order.client_order_id,
        "market": order.market,
        "side": order.side,
        "type": order.type,
        "time_in_force": order.time_in_force,
        "price": to_str(order.price),
        "amount": to_str(order.amount),
        "quote_amount": to_str(order.quote_amount),
        "filled_amount": to_str(order.filled_amount),
        "filled_quote": to_str(order.filled_quote),
        "avg_price": to_str(order.avg_price),
        "fee": to_str(order.fee),
        "fee_asset": order.fee_asset,
        "status": order.status,
        "created_at": order.created_at,
        "created_at_local": local_time(order.created_at, tz),
        "updated_at": order.updated_at,
        "updated_at_local": local_time(order.updated_at, tz),
        "fills": [fill_json(f, tz) for f in order.fills],
    }


def balance_json(balance: BalanceView) -> dict[str, Any]:
    return {
        "asset": balance.asset,
        "available": to_str(balance.available),
        "locked": to_str(balance.locked),
    }
