"""Markets: the configured trading pairs, kept in the database for foreign keys and locking."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from stockex.config import MarketSettings, Settings
from stockex.db import Database
from stockex.models import Market
from stockex.numbers import to_str


def sync_markets(db: Database, settings: Settings) -> int:
    """Insert or update every configured market; returns how many rows changed.

    Markets removed from the configuration stay in the database (candles and orders refer to
    them) but are no longer served.
    """

    def work(session: Session) -> int:
        existing = {m.id: m for m in session.scalars(select(Market))}
        changed = 0
        for spec in settings.markets:
            row = existing.get(spec.id) or Market(id=spec.id)
            if _apply(row, spec):
                session.add(row)
                changed += 1
        return changed

    return db.transaction(work)


def _apply(row: Market, spec: MarketSettings) -> bool:
    changed = False
    for key in (
        "base",
        "quote",
        "price_precision",
        "amount_precision",
        "min_amount",
        "maker_fee",
        "taker_fee",
    ):
        value = getattr(spec, key)
        if getattr(row, key, None) != value:
            setattr(row, key, value)
            changed = True
    return changed


def market_json(spec: MarketSettings) -> dict[str, object]:
    return {
        "id": spec.id,
        "base": spec.base,
        "quote": spec.quote,
        "price_precision": spec.price_precision,
        "amount_precision": spec.amount_precision,
        "min_amount": to_str(spec.min_amount),
        "maker_fee": to_str(spec.maker_fee),
        "taker_fee": to_str(spec.taker_fee),
    }
