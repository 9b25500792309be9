"""One-minute candles: storing crawled minutes (and, with the market data work, rollups and
candle queries).

``store_minutes`` is the one way minutes enter the database. It is idempotent: a minute that
is already stored with the same values is not written again, a minute whose values changed
(it was fetched while still open, or the upstream corrected it) is updated in place.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from stockex.db import upsert_rows
from stockex.models import Candle
from stockex.tiki import Kline

_VALUE_COLUMNS = ("open", "high", "low", "close", "volume")


@dataclass(frozen=True)
class StoreResult:
    inserted: int
    updated: int
    first_changed: int | None  # earliest minute inserted or updated, for rollups and caches
    last_changed: int | None

    @property
    def written(self) -> int:
        return self.inserted + self.updated


def store_minutes(session: Session, market_id: str, klines: Sequence[Kline]) -> StoreResult:
    """Upsert ``klines`` (one market, any order) inside the caller's transaction."""
    if not klines:
        return StoreResult(0, 0, None, None)
    first = min(k.ts for k in klines)
    last = max(k.ts for k in klines)
    stored = {
        row.time: (row.open, row.high, row.low, row.close, row.volume)
        for row in session.execute(
            select(Candle.time, *(getattr(Candle, c) for c in _VALUE_COLUMNS)).where(
                Candle.market_id == market_id, Candle.time >= first, Candle.time <= last
            )
        )
    }
    now = int(time.time())
    inserted = updated = 0
    rows = []
    for k in klines:
        values = (k.open, k.high, k.low, k.close, k.volume)
        old = stored.get(k.ts)
        if old is not None and _same(old, values):
            continue
        if old is None:
            inserted += 1
        else:
            updated += 1
        rows.append(
            {"market_id": market_id, "time": k.ts, "open": k.open, "high": k.high, "low": k.low,
             "close": k.close, "volume": k.volume, "updated_at": now}
        )
    if rows:
        _upsert(session, rows)
    changed = [r["time"] for r in rows]
    return StoreResult(
        inserted, updated, min(changed) if changed else None, max(changed) if changed else None
    )


def _same(old: tuple[Decimal, ...], new: tuple[Decimal, ...]) -> bool:
    return all(a == b for a, b in zip(old, new, strict=True))


def _upsert(session: Session, rows: list[dict[str, object]]) -> None:
    upsert_rows(session, Candle.__table__, rows, ("market_id", "time"),
                (*_VALUE_COLUMNS, "updated_at"))
