"""Validating a placement request (``POST /orders`` body) into an :class:`OrderRequest`.

Every mistake is a 400 with its own code (CONTRACT §6), before anything touches the database:

=============================  ==============================================================
``invalid_json``               the body is not a JSON object
``unknown_field``              a key other than the documented ones
``invalid_market``             ``market`` missing or not a string (404 ``unknown_market``
                               when it names no configured market)
``invalid_side``               not ``buy`` / ``sell``
``invalid_type``               not ``limit`` / ``market``
``invalid_time_in_force``      missing, not ``GTC`` / ``IOC`` / ``FOK``, or ``GTC`` on a market
                               order
``invalid_price``              missing on a limit order, given on a market order, not a
                               positive decimal string
``invalid_amount``             missing, not a positive decimal string, or given together with
                               ``quote_amount``; order value beyond DECIMAL(36,18)
``invalid_quote_amount``       given on anything but a market buy, or not a positive decimal
``too_many_decimals``          price / amount / quote_amount has more decimal places than the
                               market allows (``details.field``, ``details.max_decimals``)
``below_min_amount``           amount below the market's ``min_amount`` (for ``quote_amount``,
                               what it buys at the book's prices: checked while matching)
``invalid_client_order_id``    not 1-64 characters of ``[A-Za-z0-9_.:-]``
=============================  ==============================================================
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from stockex.config import MarketSettings, Settings
from stockex.errors import InvalidInput, UnknownMarket, refuse_unknown_fields
from stockex.numbers import EXACT, MAX_AMOUNT, decimal_places, parse_decimal, to_str

FIELDS = frozenset(
    {"market", "side", "type", "price", "amount", "quote_amount", "time_in_force",
     "client_order_id"}
)
CLIENT_ORDER_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


@dataclass(frozen=True)
class OrderRequest:
    market: MarketSettings
    side: str
    type: str
    time_in_force: str
    price: Decimal | None
    amount: Decimal | None
    quote_amount: Decimal | None
    client_order_id: str | None

    @property
    def fingerprint(self) -> str:
        """Identifies the request's meaning, for ``client_order_id`` idempotency."""
        text = "|".join(
            str(part) for part in (
                self.market.id, self.side, self.type, self.time_in_force,
                to_str(self.price), to_str(self.amount), to_str(self.quote_amount),
            )
        )
        return hashlib.sha256(text.encode()).hexdigest()


def _choice(body: dict[str, Any], key: str, allowed: tuple[str, ...], default: str | None) -> str:
    value = body.get(key, default)
    if value not in allowed:
        raise InvalidInput(
            f"{key} must be one of {', '.join(allowed)}",
            code=f"invalid_{key}", details={key: body.get(key)},
        )
    return str(value)


def _positive(body: dict[str, Any], key: str, places: int) -> Decimal | None:
    if body.get(key) is None:
        return None
    raw = body[key]
    number = parse_decimal(raw)
    if number is None or number <= 0 or number >= MAX_AMOUNT:
        raise InvalidInput(
            f"{key} must be below 10^18" if number is not None and number > 0 else
            f"{key} must be a positive decimal string, e.g. \"1.5\"",
            code=f"invalid_{key}", details={key: raw},
        )
    if decimal_places(number) > places:
        raise InvalidInput(
            f"{key} has more than {places} decimal places",
            code="too_many_decimals", details={"field": key, "max_decimals": places, key: raw},
        )
    return number


def parse_order_request(body: dict[str, Any], settings: Settings) -> OrderRequest:
    """Check a placement body against the contract and the market's rules (see module doc)."""
    refuse_unknown_fields(body, FIELDS)
    market_id = body.get("market")
    if not isinstance(market_id, str) or not market_id:
        raise InvalidInput("market is required" if market_id in (None, "") else
                           "market must be a market id string, e.g. \"asaxu\"",
                           code="invalid_market",
                           details={} if market_id is None else {"market": market_id})
    market = settings.market(market_id)
    if market is None:
        raise UnknownMarket(market_id)
    side = _choice(body, "side", ("buy", "sell"), None)
    kind = _choice(body, "type", ("limit", "market"), None)
    tif = _choice(body, "time_in_force", ("GTC", "IOC", "FOK"), None)  # required (CONTRACT §5)
    if kind == "market" and tif == "GTC":
        raise InvalidInput(
            "market orders never rest: time_in_force must be IOC or FOK",
            code="invalid_time_in_force", details={"time_in_force": tif},
        )

    price = _positive(body, "price", market.price_precision)
    amount = _positive(body, "amount", market.amount_precision)
    quote_amount = _positive(
        body, "quote_amount", market.price_precision + market.amount_precision
    )
    if kind == "limit" and price is None:
        raise InvalidInput("a limit order needs a price", code="invalid_price")
    if kind == "market" and price is not None:
        raise InvalidInput("a market order takes no price", code="invalid_price",
                           details={"price": body.get("price")})
    if quote_amount is not None and not (kind == "market" and side == "buy"):
        raise InvalidInput("quote_amount is only for market buys", code="invalid_quote_amount")
    if amount is not None and quote_amount is not None:
        raise InvalidInput("give amount or quote_amount, not both", code="invalid_amount")
    if amount is None and quote_amount is None:
        raise InvalidInput("amount is required", code="invalid_amount")
    if amount is not None and amount < market.min_amount:
        raise InvalidInput(
            f"amount is below the market's minimum {to_str(market.min_amount)}",
            code="below_min_amount",
            details={"amount": to_str(amount), "min_amount": to_str(market.min_amount)},
        )
    if price is not None and amount is not None and EXACT.multiply(price, amount) >= MAX_AMOUNT:
        raise InvalidInput("the order's value is too large", code="invalid_amount")

    client_order_id = body.get("client_order_id")
    if client_order_id is not None and (
        not isinstance(client_order_id, str) or not CLIENT_ORDER_ID_RE.fullmatch(client_order_id)
    ):
        raise InvalidInput(
            "client_order_id must be 1-64 characters of A-Z a-z 0-9 _ . : -",
            code="invalid_client_order_id",
        )
    return OrderRequest(market, side, kind, tif, price, amount, quote_amount, client_order_id)
