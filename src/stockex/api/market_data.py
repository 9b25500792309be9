"""Public market data (CONTRACT §5): markets, candles (JSON or CSV), ticker, depth, trades.

Every route parses its input here (a specific 400 code per mistake, 404 ``unknown_market``),
answers from the cache when it can (:mod:`stockex.cache` owns every key and TTL) and otherwise
from one read-only database session through :mod:`stockex.candle_queries` and
:mod:`stockex.book_queries`. A Redis outage only means answers come from the database.
"""

from __future__ import annotations

import csv
import io
import json
import time
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from stockex import cache as keys
from stockex.api import services
from stockex.api.params import before_id_param, int_param
from stockex.book_queries import read_depth, read_trades
from stockex.buckets import BucketClock, clock_for, validate_period
from stockex.candle_queries import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    CandlePage,
    CandleQuery,
    SeriesStates,
    Ticker,
    check_timezone,
    read_candles,
    read_ticker,
)
from stockex.config import MarketSettings
from stockex.errors import InvalidInput, UnknownMarket
from stockex.markets import market_json
from stockex.numbers import to_str

bp = Blueprint("market_data", __name__)

CSV_HEADER = ("time", "time_local", "open", "high", "low", "close", "volume")
FORMATS = ("json", "csv")
BOOK_DEFAULT_LIMIT = 50
BOOK_MAX_LIMIT = 1000


@bp.get("/markets")
def list_markets() -> Response:
    """Every configured market with its precisions, minimum amount and fees."""
    return jsonify([market_json(m) for m in services().settings.markets])


@bp.get("/markets/<market>/candles")
def candles(market: str) -> Response:
    """OHLCV candles of one period; see stockex.candle_queries for the semantics."""
    svc = services()
    spec = _market(market)
    clock = clock_for(svc.settings.timezone)
    period = validate_period(request.args.get("period"))
    limit = int_param("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    time_from, time_to = _time_range(clock)
    fmt = request.args.get("format") or "json"
    if fmt not in FORMATS:
        raise InvalidInput(
            f"format must be json or csv, got {fmt!r}", code="invalid_format",
            details={"format": fmt, "allowed": list(FORMATS)},
        )
    query = CandleQuery(spec.id, period, time_from, time_to, limit)
    now = int(time.time())
    state = _series_states().get(spec.id)
    check_timezone(state, query, svc.settings.timezone)
    key = keys.candles_key(spec.id, svc.settings.timezone, state.revision, period, time_from,
                           time_to, limit, fmt)
    ttl = keys.candles_ttl(query.settled(clock, now), svc.settings.crawler.interval_seconds)

    def compute() -> bytes:
        with svc.db.engine.connect() as conn:
            page = read_candles(conn, query, now)
        if fmt == "csv":
            return _candles_csv(page, clock)
        return _candles_json(spec.id, period, svc.settings.timezone, page, clock)

    body = keys.cached(svc.cache, key, ttl, compute)
    if fmt == "csv":
        start = "latest" if time_from is None else time_from  # 0 is a time too
        end = "now" if time_to is None else time_to
        name = f"{spec.id}-{period}m-{start}-{end}.csv"
        return Response(
            body, mimetype="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
    return Response(body, mimetype="application/json")


@bp.get("/markets/<market>/ticker")
def ticker(market: str) -> Response:
    """Last price and 24 h open/high/low/volume from the crawled minutes."""
    svc = services()
    spec = _market(market)
    clock = clock_for(svc.settings.timezone)

    def compute() -> bytes:
        with svc.db.read() as session:
            return _dumps(_ticker_json(read_ticker(session, spec.id, int(time.time())), clock))

    ttl = keys.open_data_ttl(svc.settings.crawler.interval_seconds)
    body = keys.cached(svc.cache, keys.ticker_key(spec.id, svc.settings.timezone), ttl, compute)
    return Response(body, mimetype="application/json")


@bp.get("/markets/<market>/depth")
def depth(market: str) -> Response:
    """Open internal limit orders summed per price; asks ascending, bids descending."""
    svc = services()
    spec = _market(market)
    limit = int_param("limit", BOOK_DEFAULT_LIMIT, 1, BOOK_MAX_LIMIT)

    def compute() -> bytes:
        with svc.db.read() as session:
            book = read_depth(session, spec.id, limit)
        now = int(time.time())
        return _dumps({
            "market": spec.id,
            "timestamp": now,
            "timestamp_local": clock_for(svc.settings.timezone).local_iso(now),
            "asks": [[to_str(p), to_str(a)] for p, a in book.asks],
            "bids": [[to_str(p), to_str(a)] for p, a in book.bids],
        })

    key = keys.depth_key(svc.cache, spec.id, svc.settings.timezone, limit)
    return Response(keys.cached(svc.cache, key, keys.BOOK_TTL, compute),
                    mimetype="application/json")


@bp.get("/markets/<market>/trades")
def trades(market: str) -> Response:
    """The market's internal trades, newest first; ``before_id`` pages (see read_trades)."""
    svc = services()
    spec = _market(market)
    clock = clock_for(svc.settings.timezone)
    limit = int_param("limit", BOOK_DEFAULT_LIMIT, 1, BOOK_MAX_LIMIT)
    time_from, time_to = _time_range(clock)
    before_id = before_id_param()

    def compute() -> bytes:
        with svc.db.read() as session:
            found = read_trades(session, spec.id, limit, time_from, time_to, before_id)
        return _dumps([
            {"id": t.id, "price": to_str(t.price), "amount": to_str(t.amount),
             "total": to_str(t.total), "taker_side": t.taker_side, "created_at": t.created_at,
             "created_at_local": clock.local_iso(t.created_at)}
            for t in found
        ])

    key = keys.trades_key(svc.cache, spec.id, svc.settings.timezone, limit, time_from,
                           time_to, before_id)
    return Response(keys.cached(svc.cache, key, keys.BOOK_TTL, compute),
                    mimetype="application/json")


# ---------------------------------------------------------------------------- input


def _series_states() -> SeriesStates:
    """The app's memo of each market's rollup timezone and revision (see SeriesStates)."""
    app = current_app
    states = app.extensions.get("stockex.series_states")
    if states is None:
        states = app.extensions.setdefault("stockex.series_states", SeriesStates(services().db))
    return states  # type: ignore[no-any-return]


def _market(market_id: str) -> MarketSettings:
    spec = services().settings.market(market_id)
    if spec is None:
        raise UnknownMarket(market_id)
    return spec


def _time_range(clock: BucketClock) -> tuple[int | None, int | None]:
    """``time_from`` / ``time_to`` as epoch seconds; 400 ``invalid_time_range`` when the
    range is reversed (each one's own 400 code comes from BucketClock.parse_time)."""
    values = []
    for name in ("time_from", "time_to"):
        raw = request.args.get(name)
        values.append(None if raw is None or raw.strip() == "" else clock.parse_time(raw, name))
    time_from, time_to = values
    if time_from is not None and time_to is not None and time_from > time_to:
        raise InvalidInput(
            "time_from must not be after time_to", code="invalid_time_range",
            details={"time_from": time_from, "time_to": time_to},
        )
    return time_from, time_to


# ---------------------------------------------------------------------------- output


def _dumps(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _candles_json(
    market_id: str, period: int, timezone: str, page: CandlePage, clock: BucketClock
) -> bytes:
    # Written out rather than json.dumps'd dicts: this is the hot path of the busiest route,
    # and every value is an int or a string of digits, "-", ".", ":", "+" and "T" made here.
    local = clock.local_iso
    candles = ",".join(
        f'{{"time":{t},"time_local":"{local(t)}","open":"{o}","high":"{h}","low":"{lo}",'
        f'"close":"{c}","volume":"{v}"}}'
        for t, o, h, lo, c, v in page.candles
    )
    head = _dumps({"market": market_id, "period": period, "timezone": timezone})
    following = "null" if page.next_time_from is None else str(int(page.next_time_from))
    return b"".join((
        head[:-1], b',"candles":[', candles.encode(), b'],"next_time_from":',
        following.encode(), b"}",
    ))


def _candles_csv(page: CandlePage, clock: BucketClock) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_HEADER)
    writer.writerows((t, clock.local_iso(t), *values) for t, *values in page.candles)
    return out.getvalue().encode()


def _ticker_json(t: Ticker, clock: BucketClock) -> dict[str, Any]:
    return {
        "market": t.market_id,
        "at": t.at,
        "at_local": clock.local_iso(t.at),
        "last": to_str(t.last),
        "last_time": t.last_time,
        "last_time_local": None if t.last_time is None else clock.local_iso(t.last_time),
        "open": to_str(t.open),
        "high": to_str(t.high),
        "low": to_str(t.low),
        "volume": to_str(t.volume),
        "price_change": to_str(t.price_change),
        "price_change_percent": to_str(t.price_change_percent),
    }
