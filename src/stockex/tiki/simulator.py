"""A deterministic local stand-in for Tiki-Exchange's k-line endpoint.

Serves ``GET /rally/markets/<market>/klines?period=1&time_from=S&time_to=S`` exactly like the
real exchange: a JSON array of ``[ts, open, high, low, close, volume]`` rows for the CLOSED
minutes in the inclusive window, ascending. Every minute's row is a pure function of
``(market, ts, seed)`` (:func:`kline_at`), so any test or demo can predict what it will get,
and the faults a crawler must survive (5xx, 429, slow answers, capped answers, gaps, a broken
row, a still-open minute) can be switched on through :class:`SimulatorConfig`.

Error answers: 400 ``{"errors": [...]}`` for missing or bad parameters or a period other than
1, 404 for an unknown market or path, 405 for a method other than GET. Injected 5xx answers
carry an HTML body, as a CDN in front of the exchange would send.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from http import HTTPStatus
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

__all__ = [
    "DEFAULT_ORIGIN",
    "DEFAULT_PORT",
    "Simulator",
    "SimulatorConfig",
    "SimulatorServer",
    "kline_at",
    "main",
    "provisional_kline_at",
    "run_simulator",
]

DEFAULT_ORIGIN = 1_704_042_000  # 2024-01-01T00:00:00+07:00, the crawler's default start
DEFAULT_PORT = 5011  # next to the API's default 5010

_BASE_PRICE = 25_000
# Three incommensurate integer triangle waves keep the price wandering in ~20,800..29,200 XU
# without any state, so a minute can be computed on its own.
_WAVES = ((9 * 86_400 + 7 * 3_600, 3_000), (86_400 + 97 * 60, 900), (3 * 3_600 + 11 * 60, 250))
_NOISE = 40  # +/- XU per minute
_MAX_WICK = 25  # XU a high/low may stick out beyond open/close
_MAX_VOLUME_MILLI = 5_000_000  # volume < 5,000 ASA, three decimals

_PATH = re.compile(r"/rally/markets/([^/]+)/klines/?")
_INTEGER = re.compile(r"-?\d{1,12}")

StartResponse = Callable[..., Any]
Row = tuple[int, int, int, int, int, int]  # ts, open, high, low, close, volume in 1/1000


@dataclass
class SimulatorConfig:
    """What the simulator serves and which upstream misbehaviour it imitates.

    ``*_every`` counters apply to the N-th, 2N-th, ... request the simulator receives (any
    path); 0 switches them off. ``gaps`` are inclusive ts ranges without trades.
    """

    origin: int = DEFAULT_ORIGIN
    markets: tuple[str, ...] = ("asaxu",)
    seed: int = 0
    max_rows: int | None = None
    error_every: int = 0
    error_rate: float = 0.0
    rate_limit_every: int = 0
    latency: float = 0.0
    slow_every: int = 0
    slow_seconds: float = 0.0
    malformed_ts: int | None = None
    gaps: tuple[tuple[int, int], ...] = ()
    serve_open_minute: bool = False
    clock: Callable[[], float] = field(default=time.time, repr=False)

    def __post_init__(self) -> None:
        self.markets = tuple(self.markets)
        self.gaps = tuple((int(a), int(b)) for a, b in self.gaps)
        if self.origin % 60:
            raise ValueError(f"origin {self.origin} is not a multiple of 60")
        if not self.markets:
            raise ValueError("markets must not be empty")
        if self.max_rows is not None and self.max_rows < 1:
            raise ValueError("max_rows must be at least 1 (or None for no cap)")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError("error_rate must be within [0, 1]")
        counters = (self.error_every, self.rate_limit_every, self.slow_every)
        if min(counters) < 0 or self.latency < 0 or self.slow_seconds < 0:
            raise ValueError("counters and delays must not be negative")


# --- deterministic price series -----------------------------------------------------------


@dataclass(frozen=True)
class _Series:
    """The price series of one (market, seed): smooth waves plus a seeded hash per minute."""

    hasher: Any  # a seeded blake2b object; copied per minute, which is twice as fast as keying
    phase: int

    def draw(self, ts: int) -> int:
        h = self.hasher.copy()
        h.update(ts.to_bytes(8, "big", signed=True))
        return int.from_bytes(h.digest(), "little")

    def close(self, ts: int, draw: int) -> int:
        t = ts + self.phase
        price = _BASE_PRICE + draw % (2 * _NOISE + 1) - _NOISE
        for period, amplitude in _WAVES:
            price += amplitude * (4 * abs(t % period - period // 2) - period) // period
        return price

    def row(self, ts: int, open_: int) -> Row:
        draw = self.draw(ts)
        close = self.close(ts, draw)
        wick_up = (draw >> 16 & 0xFFFF) % (_MAX_WICK + 1)
        wick_down = (draw >> 32 & 0xFFFF) % (_MAX_WICK + 1)
        volume = (draw >> 48 & 0xFFFFFFFF) % _MAX_VOLUME_MILLI
        high = max(open_, close) + wick_up
        low = min(open_, close) - wick_down
        return (ts, open_, high, low, close, volume)

    def rows(self, timestamps: Iterable[int]) -> Iterator[Row]:
        """Rows for ascending minutes; a minute's open is the previous minute's close."""
        prev_ts: int | None = None
        prev_close = 0
        for ts in timestamps:
            open_ = prev_close if prev_ts == ts - 60 else self.close(ts - 60, self.draw(ts - 60))
            row = self.row(ts, open_)
            prev_ts, prev_close = ts, row[4]
            yield row


@lru_cache(maxsize=64)
def _series(market: str, seed: int) -> _Series:
    hasher = hashlib.blake2b(f"{market}\0{seed}".encode(), digest_size=16)
    phase = int.from_bytes(hashlib.blake2b(f"phase\0{market}\0{seed}".encode()).digest()[:4])
    return _Series(hasher=hasher, phase=phase % (30 * 86_400))


def _provisional(series: _Series, final: Row, now: float) -> Row:
    # The open minute shows a close off by a few XU and only the volume traded so far, so
    # a crawler that stores it is caught when the final row differs.
    ts, open_, _, _, close, volume = final
    draw = series.draw(ts) >> 80
    elapsed = min(max(int(now) - ts, 0), 59)
    delta = 1 + draw % 9
    close_p = close + delta if draw & 0x100 else close - delta
    high = max(open_, close_p) + (draw >> 12) % (_MAX_WICK + 1) * elapsed // 60
    low = min(open_, close_p) - (draw >> 20) % (_MAX_WICK + 1) * elapsed // 60
    return (ts, open_, high, low, close_p, volume * elapsed // 60)


def _as_kline(row: Row) -> tuple[int, int, int, int, int, Decimal]:
    ts, open_, high, low, close, volume = row
    return (ts, open_, high, low, close, Decimal(volume).scaleb(-3))


def _check_minute(ts: int) -> None:
    if ts % 60:
        raise ValueError(f"ts {ts} is not a multiple of 60")


def kline_at(market: str, ts: int, seed: int = 0) -> tuple[int, int, int, int, int, Decimal]:
    """The final ``(ts, open, high, low, close, volume)`` of a minute; O(1), no state.

    Prices are integers (price_precision 0), volume a Decimal with three decimals; the row
    obeys high >= max(open, close) >= min(open, close) >= low, and open equals the previous
    minute's close. Raises ValueError when ``ts`` is not a minute start.
    """
    _check_minute(ts)
    return _as_kline(next(_series(market, seed).rows([ts])))


def provisional_kline_at(
    market: str, ts: int, seed: int = 0, now: float | None = None
) -> tuple[int, int, int, int, int, Decimal]:
    """What the still-open minute ``ts`` shows at ``now``: valid, but unlike its final row.

    Same open as :func:`kline_at`; the close differs by 1..9 XU and the volume is the share
    traded so far. Raises ValueError when ``ts`` is not a minute start.
    """
    _check_minute(ts)
    series = _series(market, seed)
    final = next(series.rows([ts]))
    return _as_kline(_provisional(series, final, time.time() if now is None else now))


# --- the WSGI application ------------------------------------------------------------------


def _format_rows(rows: Sequence[Row]) -> bytes:
    # Plain string formatting: this is the hot path of every backfill benchmark.
    parts = [f"[{t},{o},{h},{lo},{c},{v // 1000}.{v % 1000:03d}]" for t, o, h, lo, c, v in rows]
    return ("[" + ",".join(parts) + "]").encode()


def _floor_minute(t: float) -> int:
    return math.floor(t / 60) * 60


class Simulator:
    """WSGI app imitating the exchange's k-line endpoint; thread-safe request counting."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config if config is not None else SimulatorConfig()
        self._lock = threading.Lock()
        self._request_count = 0
        self._rng = random.Random(self.config.seed)  # noqa: S311 - reproducible faults

    @property
    def request_count(self) -> int:
        with self._lock:
            return self._request_count

    def rows(self, market: str, time_from: int, time_to: int) -> list[Row]:
        """Rows an answer holds right now: closed (plus maybe the open) minutes, capped."""
        cfg = self.config
        now = cfg.clock()
        open_minute = _floor_minute(now)
        start = max(-(-time_from // 60) * 60, cfg.origin)
        last = open_minute if cfg.serve_open_minute else open_minute - 60
        end = min(_floor_minute(time_to), last)
        minutes: Iterable[int] = range(start, end + 1, 60)
        if cfg.gaps:
            minutes = (ts for ts in minutes if not any(a <= ts <= b for a, b in cfg.gaps))
        series = _series(market, cfg.seed)
        rows: list[Row] = []
        for row in series.rows(minutes):
            if row[0] == open_minute:
                row = _provisional(series, row, now)
            elif row[0] == cfg.malformed_ts:
                row = (row[0], row[1], min(row[1], row[4]) - 1, *row[3:])
            rows.append(row)
            if cfg.max_rows is not None and len(rows) >= cfg.max_rows:
                break
        return rows

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        n = self._count_request()
        fault = self._inject_fault(n)
        if fault is not None:
            status, headers = fault
            body = f"<html><body><h1>{status} {HTTPStatus(status).phrase}</h1></body></html>"
            return _respond(start_response, status, body.encode(), "text/html", headers)
        match = _PATH.fullmatch(environ.get("PATH_INFO", ""))
        if match is None:
            return _error(start_response, 404, "record.not_found")
        if environ.get("REQUEST_METHOD") != "GET":
            return _error(start_response, 405, "method.not_allowed", [("Allow", "GET")])
        market = match.group(1)
        if market not in self.config.markets:
            return _error(start_response, 404, "market.market.doesnt_exist")
        try:
            time_from, time_to = _parse_query(environ.get("QUERY_STRING", ""))
        except ValueError as exc:
            return _error(start_response, 400, str(exc))
        body = _format_rows(self.rows(market, time_from, time_to))
        return _respond(start_response, 200, body, "application/json")

    def _count_request(self) -> int:
        with self._lock:
            self._request_count += 1
            return self._request_count

    def _inject_fault(self, n: int) -> tuple[int, list[tuple[str, str]]] | None:
        """Sleep as configured; return (status, headers) if request ``n`` must fail."""
        cfg = self.config
        if cfg.latency:
            time.sleep(cfg.latency)
        if cfg.slow_every and n % cfg.slow_every == 0:
            time.sleep(cfg.slow_seconds)
        if cfg.rate_limit_every and n % cfg.rate_limit_every == 0:
            return 429, [("Retry-After", "1")]
        if cfg.error_every and n % cfg.error_every == 0:
            return (500, 502, 503)[(n // cfg.error_every - 1) % 3], []
        if cfg.error_rate:
            with self._lock:
                unlucky = self._rng.random() < cfg.error_rate
            if unlucky:
                return 503, []
        return None

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> SimulatorServer:
        """Serve this app from a daemon thread; port 0 picks a free port."""
        server = make_server(host, port, self, threaded=True, request_handler=_QuietHandler)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        return SimulatorServer(server, thread)


def _parse_query(query: str) -> tuple[int, int]:
    """``(time_from, time_to)`` from the query string; ValueError names the bad parameter."""
    params = parse_qs(query, keep_blank_values=True)
    if params.get("period", ["1"])[0] != "1":
        raise ValueError("market.candle.invalid_period")
    bounds = []
    for name in ("time_from", "time_to"):
        value = params.get(name, [""])[0]
        if not _INTEGER.fullmatch(value):
            raise ValueError(f"market.candle.invalid_{name}")
        bounds.append(int(value))
    return bounds[0], bounds[1]


def _respond(
    start_response: StartResponse,
    status: int,
    body: bytes,
    content_type: str,
    headers: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    start_response(
        f"{status} {HTTPStatus(status).phrase}",
        [("Content-Type", content_type), ("Content-Length", str(len(body))), *(headers or [])],
    )
    return [body]


def _error(
    start_response: StartResponse,
    status: int,
    code: str,
    headers: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    # Peatio's error shape.
    body = json.dumps({"errors": [code]}).encode()
    return _respond(start_response, status, body, "application/json", headers)


class _QuietHandler(WSGIRequestHandler):
    """No access log: a backfill makes hundreds of requests per second."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class SimulatorServer:
    """Handle of a running simulator; ``shutdown()`` (or leaving ``with``) stops it."""

    def __init__(self, server: BaseWSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.host = server.server_address[0]
        self.port: int = server.port
        self.url = f"http://{self.host}:{self.port}"

    def shutdown(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> SimulatorServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()


# --- entry points --------------------------------------------------------------------------


def run_simulator(host: str = "127.0.0.1", port: int = DEFAULT_PORT, **config: Any) -> None:
    """Serve a simulator in the foreground until Ctrl-C; ``config`` are SimulatorConfig fields.

    Prints ``stockex sim listening on http://host:port`` to stderr once the port is bound.
    Raises TypeError/ValueError for a bad config and OSError when the port is taken.
    """
    simulator = Simulator(SimulatorConfig(**config))
    server = make_server(host, port, simulator, threaded=True, request_handler=_QuietHandler)
    print(f"stockex sim listening on http://{host}:{server.port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m stockex.tiki.simulator [--host H] [--port P] [--seed N] ...``."""
    parser = argparse.ArgumentParser(
        prog="stockex-sim", description="Local stand-in for the Tiki-Exchange k-line endpoint."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markets", default="asaxu", help="comma-separated market ids")
    parser.add_argument("--max-rows", type=int, default=None)
    parser.add_argument("--error-every", type=int, default=0)
    parser.add_argument("--rate-limit-every", type=int, default=0)
    args = parser.parse_args(argv)
    run_simulator(
        args.host,
        args.port,
        seed=args.seed,
        markets=tuple(m.strip() for m in args.markets.split(",") if m.strip()),
        max_rows=args.max_rows,
        error_every=args.error_every,
        rate_limit_every=args.rate_limit_every,
    )


if __name__ == "__main__":
    main()
