"""The matching engine: pure functions, no I/O (``orders.py`` feeds it and stores the result).

Rules (CONTRACT §6):

* Price-time priority: the book is walked best price first, oldest (lowest id) first within a
  price; every trade executes at the resting (maker) order's price.
* Self-trade prevention: a resting order of the taker's own user is cancelled (its reservation
  released) and matching goes on with the next one.
* A limit taker only trades at its limit or better; a market taker at any price. A market buy
  by ``quote_amount`` buys, at each price, as many whole amount steps as the remaining quote
  pays for, and stops at the first price where it cannot afford one step; what that comes to
  is held against ``min_amount`` (:func:`quote_buy_amount`).
* Fees come out of what each side receives (the buyer pays in base, the seller in quote) at the
  market's maker/taker rate, rounded down to 18 places, and go to the fee account.
* A buy order reserves price × amount of quote; after a fill at a better (maker) price the
  difference is released at once, so its reservation is always price × unfilled amount. A
  sell order reserves its unfilled amount of base.

Every function computes in :data:`stockex.numbers.EXACT` (``@exact``): Python's default
context keeps 28 digits and would round a total such as 1000000.12345678 × 1000000.12345678.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal

from stockex.config import MarketSettings
from stockex.numbers import exact

ZERO = Decimal(0)
_FEE_QUANTUM = Decimal(1).scaleb(-18)


@dataclass
class Taker:
    """An incoming order as validated: exactly one of ``amount`` / ``quote_amount`` is set
    (``quote_amount`` only for market buys); ``price`` is None for market orders."""

    user_id: int
    side: str  # buy | sell
    type: str  # limit | market
    time_in_force: str  # GTC | IOC | FOK
    price: Decimal | None
    amount: Decimal | None
    quote_amount: Decimal | None = None

    @property
    def limit_price(self) -> Decimal:
        if self.price is None:
            raise ValueError("a market order has no limit price")
        return self.price

    @property
    def base_amount(self) -> Decimal:
        if self.amount is None:
            raise ValueError("this order is sized by quote_amount")
        return self.amount

    @exact
    def reservation(self) -> Decimal:
        """What a limit order locks when placed: quote for a buy, base for a sell."""
        return self.limit_price * self.base_amount if self.side == "buy" else self.base_amount


@dataclass
class Resting:
    """A resting (maker) order as read from the book, updated in place by :func:`apply`."""

    id: int
    user_id: int
    side: str
    price: Decimal
    amount: Decimal
    filled_amount: Decimal
    filled_quote: Decimal
    fee: Decimal
    locked: Decimal

    @property
    @exact
    def remaining(self) -> Decimal:
        return self.amount - self.filled_amount


@dataclass
class Fill:
    maker: Resting
    price: Decimal
    amount: Decimal
    total: Decimal
    maker_fee: Decimal
    taker_fee: Decimal


@dataclass
class Match:
    fills: list[Fill] = field(default_factory=list)
    self_cancelled: list[Resting] = field(default_factory=list)
    filled_amount: Decimal = ZERO
    filled_quote: Decimal = ZERO
    taker_fee: Decimal = ZERO
    complete: bool = False  # the taker got all it asked for (or all its quote could buy)


def crosses(taker: Taker, maker_price: Decimal) -> bool:
    if taker.price is None:
        return True
    return maker_price <= taker.price if taker.side == "buy" else maker_price >= taker.price


@exact
def fee(received: Decimal, rate: Decimal) -> Decimal:
    if not rate:
        return ZERO
    return (received * rate).quantize(_FEE_QUANTUM, rounding=ROUND_DOWN)


@exact
def match(taker: Taker, book: Iterable[Resting], market: MarketSettings) -> Match:
    """Walk ``book`` (opposite side, best first) and decide every fill and self-cancel.

    Nothing is changed; :func:`apply` does that once the caller decided to go ahead.
    """
    result = Match()
    step = Decimal(1).scaleb(-market.amount_precision)
    remaining = taker.amount
    remaining_quote = taker.quote_amount or ZERO
    for maker in book:
        if not crosses(taker, maker.price):
            break
        if remaining is not None:
            wanted = remaining
        else:
            wanted = (remaining_quote / maker.price).quantize(step, rounding=ROUND_DOWN)
            if wanted <= 0:  # before the self-trade check: an own order it cannot reach stays
                result.complete = True  # the rest of the quote cannot buy one step here
                break
        if maker.user_id == taker.user_id:
            result.self_cancelled.append(maker)
            continue
        quantity = min(wanted, maker.remaining)
        total = quantity * maker.price
        if taker.side == "buy":
            taker_fee, maker_fee = fee(quantity, market.taker_fee), fee(total, market.maker_fee)
        else:
            taker_fee, maker_fee = fee(total, market.taker_fee), fee(quantity, market.maker_fee)
        result.fills.append(Fill(maker, maker.price, quantity, total, maker_fee, taker_fee))
        result.filled_amount += quantity
        result.filled_quote += total
        result.taker_fee += taker_fee
        if remaining is not None:
            remaining -= quantity
            if remaining == 0:
                result.complete = True
                break
        else:
            remaining_quote -= total
            if quantity == wanted:  # what is left buys no step here, nor at worse prices
                result.complete = True
                break
    return result


@exact
def quote_buy_amount(taker: Taker, result: Match, market: MarketSettings) -> Decimal:
    """What a market buy by ``quote_amount`` comes to in base, to hold against the market's
    ``min_amount`` as an order by ``amount`` is (Binance: a ``quoteOrderQty`` order's
    quantity must pass LOT_SIZE's ``minQty``). When its quote ran out, what it filled; when
    the book ran out first, that plus what the rest of its quote buys in whole steps at the
    last fill's price, the most it could have bought further up the book."""
    if result.complete or not result.fills:
        return result.filled_amount
    step = Decimal(1).scaleb(-market.amount_precision)
    rest = ((taker.quote_amount or ZERO) - result.filled_quote) / result.fills[-1].price
    return result.filled_amount + rest.quantize(step, rounding=ROUND_DOWN)


Posting = tuple[int, str, Decimal, Decimal]  # user_id, asset, Δavailable, Δlocked


@exact
def fill_postings(
    taker: Taker, fill: Fill, market: MarketSettings, fee_user_id: int
) -> list[Posting]:
    """The balance changes of one fill for taker, maker and the fee account.

    A limit taker pays from what it locked (a buy at its own limit price, releasing what the
    better maker price saves); a market taker pays from its available balance.
    """
    base, quote, maker = market.base, market.quote, fill.maker
    limit = taker.type == "limit"
    if taker.side == "buy":
        if limit:
            reserved = taker.limit_price * fill.amount  # what this fill held of the reservation
            paid = (quote, reserved - fill.total, -reserved)
        else:
            paid = (quote, -fill.total, ZERO)
        return [
            (taker.user_id, *paid),
            (taker.user_id, base, fill.amount - fill.taker_fee, ZERO),
            (maker.user_id, base, ZERO, -fill.amount),
            (maker.user_id, quote, fill.total - fill.maker_fee, ZERO),
            (fee_user_id, base, fill.taker_fee, ZERO),
            (fee_user_id, quote, fill.maker_fee, ZERO),
        ]
    paid = (base, ZERO, -fill.amount) if limit else (base, -fill.amount, ZERO)
    return [
        (taker.user_id, *paid),
        (taker.user_id, quote, fill.total - fill.taker_fee, ZERO),
        (maker.user_id, quote, ZERO, -fill.total),
        (maker.user_id, base, fill.amount - fill.maker_fee, ZERO),
        (fee_user_id, quote, fill.taker_fee, ZERO),
        (fee_user_id, base, fill.maker_fee, ZERO),
    ]


@exact
def apply_to_maker(fill: Fill) -> None:
    """Record a fill on its resting order (filled, fee, what it still reserves)."""
    maker = fill.maker
    maker.filled_amount += fill.amount
    maker.filled_quote += fill.total
    maker.fee += fill.maker_fee
    maker.locked -= fill.total if maker.side == "buy" else fill.amount


def reserved_asset(side: str, market: MarketSettings) -> str:
    return market.quote if side == "buy" else market.base
